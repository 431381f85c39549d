"""Airflow Assets of the pipeline."""

from __future__ import annotations

from airflow.sdk import Asset

SERVED_MODEL = Asset(name="tfhub_served_model", uri="tfhub-serving://models/served",
                     extra={"description": "A blessed model published in TF Serving layout; each event's extra "
                                           "names its model_name, version, path and accuracy."})
"""Updated by ``export_model`` each time a version is published; DAGs scheduled on it react to new models."""
