"""Killing a spark-submit leaves no descendant behind; the operators publish links to the Spark application and
to TensorBoard."""

from __future__ import annotations

import json
import os
import subprocess
import time

import psutil
import pytest

from tfhub_spark.links import SparkApplicationLink, TensorBoardLink
from tfhub_spark.operators.spark_job import (PipelineSparkSubmitOperator, ProcessTreeSparkSubmitHook,
                                             TfHubFinetuneOperator)


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
    assert {type(link) for link in op.operator_extra_links} == {SparkApplicationLink, TensorBoardLink}
