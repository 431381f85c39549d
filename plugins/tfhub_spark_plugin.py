"""Registers the pipeline's operator extra links with Airflow, so the UI can show them."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from tfhub_spark.links import SparkApplicationLink, TensorBoardLink


class TfHubSparkPlugin(AirflowPlugin):
    name = "tfhub_spark"
    operator_extra_links = [SparkApplicationLink(), TensorBoardLink()]
