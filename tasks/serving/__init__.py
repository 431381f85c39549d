"""Evaluation, export and scoring as a library: the scoring engine that applies a SavedModel to records on the
Spark executors (``scoring``), the metrics, blessing and report of a candidate (``evaluation``), the export for
TF Serving (``export``) and its check in a fresh process (``verify_export``). The ``evaluate``, ``export_model``
and ``score_partition`` applications drive them."""
