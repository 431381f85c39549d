"""Airflow Assets of the pipeline."""

from __future__ import annotations

from airflow.sdk import Asset

SERVED_MODEL = Asset(name="tfhub_served_model", uri="tfhub-serving://models/served",
                     extra={"description": "A blessed model published in TF Serving layout; each event carries the "
                                           "partition key it was trained on, and its extra names its model_name, "
                                           "version, partition, path and accuracy."})
"""Updated by ``export_model`` each time a version is published, one event per partition (its ``partition_key``):
partition-aware DAGs scheduled on it (``PartitionedAssetTimetable``, as ``tfhub_batch_score``) get one run per
published partition. A plain asset-scheduled DAG is not queued for a partitioned event (Airflow 3.3)."""
