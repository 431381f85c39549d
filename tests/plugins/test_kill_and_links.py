"""Killing a spark-submit leaves no descendant behind; the operators publish links to the Spark application, to
TensorBoard, and to the run folder's report and plots and the published version in the API server's file view."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tfhub_spark.links import (EvaluationReportLink, PublishedVersionLink, SparkApplicationLink, TensorBoardLink,
                               TrainingCurvesLink, files_url)
from tfhub_spark.hooks.spark_submit import ProcessTreeSparkSubmitHook
from tfhub_spark.operators.approval import ModelApprovalOperator
from tfhub_spark.operators.spark_job import ModelExportOperator, PipelineSparkSubmitOperator, TfHubFinetuneOperator

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def deployment(monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_TFHUB_PIPELINE", json.dumps({"storage_root": "file:///data"}))
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_TFHUB", json.dumps({"conn_type": "spark", "host": "local[2]"}))
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_YARN", json.dumps({
        "conn_type": "spark", "host": "yarn", "extra": {"deploy-mode": "cluster",
                                                        "yarn_resourcemanager_webapp_address": "rm:8088"}}))


def test_on_kill_stops_descendants_in_other_process_groups(deployment):
    # Like spark-submit: a JVM whose PySpark daemon moves itself and its workers into a process group of their own.
    hook = PipelineSparkSubmitOperator(task_id="x", job="evaluate")._get_hook()
    assert isinstance(hook, ProcessTreeSparkSubmitHook)
    hook._connection = hook._resolve_connection()
    hook._submit_sp = subprocess.Popen(
        ["bash", "-c", "setsid bash -c 'sleep 300 & sleep 300 & wait' & sleep 300 & wait"])
    deadline = time.time() + 10
    while time.time() < deadline and len(psutil.Process(hook._submit_sp.pid).children(recursive=True)) < 4:
        time.sleep(0.05)
    tree = psutil.Process(hook._submit_sp.pid).children(recursive=True)
    assert len(tree) >= 4
    # Some of them are out of spark-submit's process group: killing the group would miss them.
    assert {os.getpgid(p.pid) for p in tree} - {os.getpgid(hook._submit_sp.pid)}
    hook.grace_seconds = 5
    hook.on_kill()
    hook._submit_sp.wait(timeout=10)
    alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == []


def test_spark_ui_and_yarn_application_links(deployment):
    op = PipelineSparkSubmitOperator(task_id="x", job="evaluate")
    op._hook = op._get_hook()
    op._watch_line("26/11/21 12:48:10 INFO Utils: Successfully started service 'SparkUI' on port 4041.")
    assert getattr(op, "spark_app_url", "") == ""
    op._watch_line("26/11/21 12:48:10 INFO SparkUI: Bound SparkUI to 0.0.0.0, and started at http://vm:4041")
    assert SparkApplicationLink().get_link(op, ti_key=None) == "http://vm:4041"

    yarn = PipelineSparkSubmitOperator(task_id="y", job="evaluate", conn_id="spark_yarn")
    yarn._hook = yarn._get_hook()
    yarn._hook._connection = yarn._hook._resolve_connection()
    yarn._watch_line("INFO Client: Submitted application application_1732190000000_0007")
    assert SparkApplicationLink().get_link(yarn, ti_key=None) == \
        "http://rm:8088/cluster/app/application_1732190000000_0007"


def test_tensorboard_link_names_the_runs_logs(deployment):
    op = TfHubFinetuneOperator(task_id="finetune", examples="file:///e", run_dir="file:///data/runs/ds=2026-11-20",
                               storage_root="file:///data", hub_module="hub/m")
    assert TensorBoardLink().get_link(op, ti_key=None) == ""
    op.tensorboard_url = "file:///data/runs/ds=2026-11-20/tensorboard"
    assert TensorBoardLink().get_link(op, ti_key=None) == "file:///data/runs/ds=2026-11-20/tensorboard"
    assert {type(link) for link in op.operator_extra_links} == {SparkApplicationLink, TensorBoardLink,
                                                                TrainingCurvesLink}


def test_tensorboard_link_opens_the_deployments_server_or_the_event_files(deployment, monkeypatch):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.example:8080")
    op = TfHubFinetuneOperator(task_id="finetune", examples="file:///e", run_dir="file:///data/runs/ds=2026-11-20",
                               storage_root="file:///data", hub_module="hub/m")
    # `make tensorboard` serves the runs folder: a run is its folder name there.
    assert op.tensorboard_link({"storage_root": "file:///data",
                                "tensorboard_url": "http://tb.example:6006/?runFilter={run}#timeseries"}) == \
        "http://tb.example:6006/?runFilter=ds=2026-11-20#timeseries"
    # No TensorBoard server named: the event files, listed by the API server's file view.
    assert op.tensorboard_link({"storage_root": "file:///data"}) == \
        "http://airflow.example:8080/tfhub/files/runs/ds=2026-11-20/tensorboard/"


def test_run_folder_links_open_the_file_view(deployment, monkeypatch):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.example:8080")
    view = "http://airflow.example:8080/tfhub/files"
    evaluate = PipelineSparkSubmitOperator(task_id="evaluate", job="evaluate",
                                           job_args={"--run-dir": "file:///data/runs/ds=2026-11-20"})
    assert {link.name: link.get_link(evaluate, ti_key=None) for link in evaluate.operator_extra_links} == {
        "Spark application": "",
        "Evaluation report": f"{view}/runs/ds=2026-11-20/report.md",
        "Confusion matrix": f"{view}/runs/ds=2026-11-20/confusion_matrix.png",
        "Training curves": f"{view}/runs/ds=2026-11-20/training_curves.png"}
    # Only evaluate has a report: the other jobs of the same operator class have no such buttons.
    prep = PipelineSparkSubmitOperator(task_id="prepare_examples", job="prepare_examples")
    assert [type(link) for link in prep.operator_extra_links] == [SparkApplicationLink]

    approve = ModelApprovalOperator(task_id="approve", run_dir="file:///data/topics/runs/ds=2026-11-20",
                                    approval="required", approval_timeout="60", model_name="topics",
                                    version="20261120")
    assert [link.get_link(approve, ti_key=None) for link in approve.operator_extra_links] == [
        f"{view}/topics/runs/ds=2026-11-20/report.md", f"{view}/topics/runs/ds=2026-11-20/confusion_matrix.png",
        f"{view}/topics/runs/ds=2026-11-20/training_curves.png"]

    export = ModelExportOperator(task_id="export_model", run_dir="file:///data/runs/ds=2026-11-20",
                                 examples="file:///e", serving_root="file:///data/serving", model_name="shapes",
                                 version="20261120")
    assert PublishedVersionLink().get_link(export, ti_key=None) == ""  # nothing published yet
    export.published_url = "file:///data/serving/shapes/20261120"
    assert PublishedVersionLink().get_link(export, ti_key=None) == f"{view}/serving/shapes/20261120/"
    # Outside the storage root the view serves nothing: no link rather than a dead one.
    assert EvaluationReportLink().get_link(
        PipelineSparkSubmitOperator(task_id="e", job="evaluate", job_args={"--run-dir": "file:///elsewhere/r"}),
        ti_key=None) == ""
    assert files_url("file:///data2/runs/x", "file:///data") == ""
    assert files_url("hdfs://nn:8020/tfhub/runs/ds=2026-11-20/report.md", "hdfs://nn:8020/tfhub/") == \
        "/tfhub/files/runs/ds=2026-11-20/report.md"


def test_the_links_of_every_task_survive_the_dags_serialization():
    """The API server shows the links of the serialized DAG: each link class must be registered by the plugin."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    dag = DagSerialization.from_dict(DagSerialization.to_dict(bag.dags["tfhub_finetune"]))
    links = {t.task_id: set(t.extra_links) for t in dag.tasks}
    review = {"Evaluation report", "Confusion matrix", "Training curves"}
    assert links["finetune"] == {"Spark application", "TensorBoard", "Training curves"}
    assert links["evaluate"] == {"Spark application", *review}
    assert links["approve"] == review
    assert links["export_model"] == {"Spark application", "Published version"}
