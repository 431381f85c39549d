"""The names of the files and folders the jobs write: in a run folder, in a prepared dataset, in quarantine and in
predictions. Every job names them from here.

The Airflow side (``plugins/``, ``dags/``) cannot import ``tasks``; the few names it reads have their own copy in
``plugins/tfhub_spark/run_folder.py``, and ``tests/test_one_source_of_truth.py`` checks that the copies agree.

A run folder, ``<data>/runs/ds=<partition>/``::

    model/                  the fine-tuned Keras SavedModel (finetune, written by the chief)
    checkpoints/            training state while training runs (finetune; removed when it is done)
    tensorboard/            event files (finetune)
    finetune_config.json    finetune's resolved config
    history.json            epochs, restarts, timings, image size, labels (finetune)
    training_curves.png     (finetune)
    metrics.json            the candidate's metrics on the test split (evaluate)
    blessing.json           the decision and its reasons (evaluate; the gate reads it)
    confusion_matrix.png    (evaluate)
    report.md               what a reviewer reads (evaluate)
    export_check.json       the trained model's predictions the export is checked against (export_model)
    published.json          where and as what version the model was published (export_model)
"""

from __future__ import annotations

# -- a run folder ---------------------------------------------------------------------------------------------------
MODEL = "model"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
FINETUNE_CONFIG = "finetune_config.json"
HISTORY = "history.json"
TRAINING_CURVES = "training_curves.png"
METRICS = "metrics.json"
BLESSING = "blessing.json"
CONFUSION_MATRIX = "confusion_matrix.png"
REPORT = "report.md"
EXPORT_CHECK = "export_check.json"
PUBLISHED = "published.json"

# -- a prepared dataset (examples/ds=<partition>/) and every committed folder ---------------------------------------
SUCCESS = "_SUCCESS"
"""Written last into every committed folder (and by the producer of a raw partition)."""
MANIFEST = "manifest.json"
"""The prepared dataset's label vocabulary, counts and files: the contract between prep and training."""
STATS = "stats.json"
"""The prepared dataset's statistics (and the previous partition's, for drift)."""
VOCABULARY = "_vocabulary"
"""The label vocabulary folder, beside the dataset's partitions."""

# -- quarantine/ds=<partition>/ -------------------------------------------------------------------------------------
QUARANTINE_INDEX = "quarantine.jsonl"
QUARANTINE_SUMMARY = "summary.json"

# -- predictions/<model>/ds=<partition>/ (``_`` names: Parquet readers skip them) -----------------------------------
PREDICTIONS_STATS = "_stats.json"
PREDICTIONS_MANIFEST = "_manifest.json"

# -- a published version (serving/<model>/<version>/) ---------------------------------------------------------------
PROVENANCE = "assets.extra/provenance.json"
LABELS_ASSET = "assets/labels.txt"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
"""TF Serving's warm-up requests (``PredictionLog`` records), read when it loads the version."""
