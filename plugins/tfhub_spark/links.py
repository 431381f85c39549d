"""Operator extra links: the Spark application's UI (or its YARN application page), the run's TensorBoard, and what
a reviewer looks at in a run folder (the evaluation report, the confusion matrix, the training curves) and the
published version.

The Spark and TensorBoard links are recorded by the operators while they run (as soon as spark-submit prints the
URL) and pushed under each link's XCom key, so the buttons work during the run. The run-folder links point at the
API server's read-only file view (``tfhub_spark.files_view``, mounted at ``/tfhub/files``), which renders the
Markdown report with its plots and serves the PNGs, so each one opens in the browser whatever the storage
(``file://`` or ``hdfs://``); the task runner stores their URLs when the task ends.
"""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink

from tfhub_spark.run_folder import CONFUSION_MATRIX, REPORT, TRAINING_CURVES

FILES_PREFIX = "/tfhub/files"
"""Where the file view is mounted in the API server."""
PIPELINE_VARIABLE = "tfhub_pipeline"


def storage_root() -> str:
    """The deployment's storage root (the pipeline Variable's ``storage_root``), read when a link is made."""
    from airflow.sdk import Variable

    pipeline = Variable.get(PIPELINE_VARIABLE, default=None, deserialize_json=True) or {}
    root = str(pipeline.get("storage_root") or "")
    if not root:
        raise ValueError(f"the {PIPELINE_VARIABLE} Variable names no storage_root")
    return root


def api_base_url() -> str:
    """The API server's address (``[api] base_url``); empty: links are relative to the UI's own address."""
    from airflow.sdk.configuration import conf

    return (conf.get("api", "base_url", fallback="") or "").rstrip("/")


def files_url(url: str, root: str, base_url: str = "") -> str:
    """The file view's address of a storage URL under the storage root.

    :param url: a storage URL under ``root`` (``file:///srv/tfhub/runs/ds=2026-11-20/report.md``).
    :param root: the storage root.
    :param base_url: the API server's address; empty gives a path from the server's root.
    :return: ``<base_url>/tfhub/files/runs/ds=2026-11-20/report.md``; empty when ``url`` is not under ``root``.
    """
    root = root.rstrip("/") + "/"
    if not url.startswith(root):
        return ""
    return f"{base_url}{FILES_PREFIX}/{quote(url[len(root):], safe='/=')}"


def run_dir_of(operator) -> str:
    """The run folder a task works on: its ``run_dir`` argument, or the ``--run-dir`` of its job."""
    run_dir = getattr(operator, "run_dir", None) or (getattr(operator, "job_args", None) or {}).get("--run-dir")
    return str(run_dir or "").rstrip("/")


class SparkApplicationLink(BaseOperatorLink):
    """The Spark UI of the application (client mode), or its page in the YARN ResourceManager (cluster mode)."""

    name = "Spark application"

    def get_link(self, operator, *, ti_key) -> str:
        return getattr(operator, "spark_app_url", "") or ""


class TensorBoardLink(BaseOperatorLink):
    """The run's TensorBoard: the TensorBoard server of the deployment when the pipeline Variable names it
    (``tensorboard_url``, with ``{run}``, the run folder's name, and ``{logdir}``, the storage URL of the event
    files, filled in; ``make tensorboard`` serves the runs folder), else the event files in the file view."""

    name = "TensorBoard"

    def get_link(self, operator, *, ti_key) -> str:
        return getattr(operator, "tensorboard_url", "") or ""


class RunFileLink(BaseOperatorLink):
    """A file of the task's run folder, opened in the API server's file view."""

    name: ClassVar[str]
    file_name: ClassVar[str]

    def get_link(self, operator, *, ti_key) -> str:
        run_dir = run_dir_of(operator)
        if not run_dir:
            return ""
        return files_url(f"{run_dir}/{self.file_name}", storage_root(), api_base_url())


class EvaluationReportLink(RunFileLink):
    """The evaluation report (``report.md``, rendered, with the confusion matrix and the training curves)."""

    name = "Evaluation report"
    file_name = REPORT


class ConfusionMatrixLink(RunFileLink):
    """The confusion matrix of the test split (``confusion_matrix.png``)."""

    name = "Confusion matrix"
    file_name = CONFUSION_MATRIX


class TrainingCurvesLink(RunFileLink):
    """Loss and accuracy per epoch, training and validation (``training_curves.png``)."""

    name = "Training curves"
    file_name = TRAINING_CURVES


class PublishedVersionLink(BaseOperatorLink):
    """The published version's folder (SavedModel, provenance, labels, warm-up requests) in the file view; set by
    the export task from what it published."""

    name = "Published version"

    def get_link(self, operator, *, ti_key) -> str:
        published = getattr(operator, "published_url", "") or ""
        return files_url(published.rstrip("/") + "/", storage_root(), api_base_url()) if published else ""


REVIEW_LINKS = (EvaluationReportLink(), ConfusionMatrixLink(), TrainingCurvesLink())
"""What a reviewer opens from the evaluation and approval tasks."""
ALL_LINKS = (SparkApplicationLink(), TensorBoardLink(), *REVIEW_LINKS, PublishedVersionLink())
"""Every link class, registered by the plugin so the API server knows them."""
