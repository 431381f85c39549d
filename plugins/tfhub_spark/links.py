"""Operator extra links: the Spark application's UI (or its YARN application page) and the run's TensorBoard logs.

The operator records the URLs while it runs (as soon as spark-submit prints them) and pushes them under each
link's XCom key, so the buttons work during the run; ``get_link`` returns what the operator recorded, which the
task runner stores again when the task ends.
"""

from __future__ import annotations

from airflow.sdk import BaseOperatorLink


class SparkApplicationLink(BaseOperatorLink):
    """The Spark UI of the application (client mode), or its page in the YARN ResourceManager (cluster mode)."""

    name = "Spark application"

    def get_link(self, operator, *, ti_key) -> str:
        return getattr(operator, "spark_app_url", "") or ""


class TensorBoardLink(BaseOperatorLink):
    """The run's TensorBoard event files: a TensorBoard server URL when the deployment names one
    (``tensorboard_url`` in the pipeline Variable, with ``{logdir}`` in it), else the storage URL of the logs."""

    name = "TensorBoard"

    def get_link(self, operator, *, ti_key) -> str:
        return getattr(operator, "tensorboard_url", "") or ""
