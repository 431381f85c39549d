"""The names of the jobs' files that the Airflow side reads or links to.

The jobs name them in ``tasks/core/run_folder.py``, which the Airflow side may not import (``plugins/`` and ``dags/``
never import ``tasks``); this is the copy of the few it needs, and ``tests/test_one_source_of_truth.py`` fails when
the two disagree.
"""

SUCCESS = "_SUCCESS"
"""Written last into every committed folder; the partition sensor waits for it in a raw partition."""
BLESSING = "blessing.json"
"""In a run folder: evaluate's decision, which the gate reads and the approval step adds the reviewer's to."""
METRICS = "metrics.json"
"""In a run folder: the candidate's metrics on the test split, which the approval step shows."""
REPORT = "report.md"
"""In a run folder: evaluate's report for a reviewer, which the report link opens."""
CONFUSION_MATRIX = "confusion_matrix.png"
"""In a run folder: written by evaluate, opened by the confusion matrix link."""
TRAINING_CURVES = "training_curves.png"
"""In a run folder: written by finetune, opened by the training curves link."""
PUBLISHED = "published.json"
"""In a run folder: what export_model published, which the export operator returns."""
TENSORBOARD = "tensorboard"
"""In a run folder: finetune's TensorBoard event files, which the TensorBoard link points at."""
PREDICTIONS_STATS = "_stats.json"
"""In a predictions folder: the scoring job's statistics, which the batch-scoring DAG summarizes."""
