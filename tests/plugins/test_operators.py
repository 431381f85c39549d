"""The operators build the exact spark-submit command lines, from the connection and the pipeline Variable."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from tfhub_spark.operators.spark_job import PipelineSparkSubmitOperator, TfHubFinetuneOperator, build_tasks_zip

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def deployment(monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_TFHUB_PIPELINE", json.dumps({
        "storage_root": "file:///data",
        "spark_conf": {"spark.pyspark.python": "/venv/bin/python", "spark.driver.memory": "2g"},
    }))
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_TFHUB", json.dumps({
        "conn_type": "spark", "host": "local[2]", "extra": {"deploy-mode": "client"}}))


def command(op, tmp_path):
    op.prepare_submit({}, str(tmp_path))
    return op._get_hook()._build_spark_submit_command(op.application)


def test_prepare_examples_command_line(deployment, tmp_path):
    op = PipelineSparkSubmitOperator(task_id="prepare_examples", job="prepare_examples",
                                     job_args={"--raw": "file:///data/raw/ds=2026-11-20", "--output": "file:///o",
                                               "--min-shards": 4, "--skip": None})
    assert command(op, tmp_path) == [
        "spark-submit", "--master", "local[2]",
        "--conf", "spark.pyspark.python=/venv/bin/python",
        "--conf", "spark.driver.memory=2g",
        "--conf", "spark.executorEnv.TF_USE_LEGACY_KERAS=1",
        "--conf", "spark.yarn.appMasterEnv.TF_USE_LEGACY_KERAS=1",
        "--py-files", str(tmp_path / "tasks.zip"),
        "--name", "tfhub-prepare_examples",
        "--deploy-mode", "client",
        str(ROOT / "tasks" / "prepare_examples.py"),
        "--raw", "file:///data/raw/ds=2026-11-20", "--output", "file:///o", "--min-shards", "4",
    ]


def test_finetune_command_line_passes_only_what_the_run_sets(deployment, tmp_path):
    op = TfHubFinetuneOperator(task_id="finetune", examples="file:///e", run_dir="file:///r",
                               storage_root="file:///data", hub_module="hub/m", num_workers="2", epochs="3",
                               batch_size="16", learning_rate="0.01", fine_tune=False, image_size="",
                               conf={"spark.driver.memory": "4g"})
    cmd = command(op, tmp_path)
    confs = dict(c.split("=", 1) for c in cmd[cmd.index("--conf") + 1::2] if "=" in c and c.startswith("spark."))
    # The barrier stage's Spark settings are the job's own (tasks.training.preflight.SESSION_CONF, SESSION_DEFAULTS).
    assert not {k for k in confs if "barrier" in k or k in ("spark.dynamicAllocation.enabled",
                                                             "spark.python.worker.reuse")}
    assert confs["spark.driver.memory"] == "4g"  # the operator's own conf wins over the deployment's
    app = cmd.index(str(ROOT / "tasks" / "finetune.py"))
    # Options left at None (or rendered empty) are not passed: the job's defaults apply.
    assert cmd[app + 1:] == ["--examples", "file:///e", "--run-dir", "file:///r", "--storage-root", "file:///data",
                             "--hub-module", "hub/m", "--num-workers", "2", "--epochs", "3", "--batch-size", "16",
                             "--learning-rate", "0.01", "--fine-tune", "false"]


def test_finetune_barrier_sync_timeout_when_set(deployment, tmp_path):
    op = TfHubFinetuneOperator(task_id="finetune", examples="file:///e", run_dir="file:///r",
                               storage_root="file:///data", hub_module="hub/m", barrier_sync_timeout=120,
                               max_restarts="0")
    cmd = command(op, tmp_path)
    assert cmd[cmd.index("spark.barrier.sync.timeout=120") - 1] == "--conf"
    assert cmd[cmd.index(str(ROOT / "tasks" / "finetune.py")) + 1:][-2:] == ["--max-restarts", "0"]


def test_tasks_zip_ships_the_package_reproducibly(tmp_path):
    a = build_tasks_zip(ROOT / "tasks", str(tmp_path))
    names = zipfile.ZipFile(a).namelist()
    assert "tasks/__init__.py" in names and "tasks/finetune.py" in names and "tasks/io/storage.py" in names
    assert not [n for n in names if n.startswith("tasks/demo/")], "the demo inputs are not shipped to executors"
    assert not any("__pycache__" in n for n in names)
    first = Path(a).read_bytes()
    (tmp_path / "again").mkdir()
    assert Path(build_tasks_zip(ROOT / "tasks", str(tmp_path / "again"))).read_bytes() == first


def test_missing_application_is_named(deployment, tmp_path):
    op = PipelineSparkSubmitOperator(task_id="x", job="no_such_job", tasks_dir=str(ROOT / "tasks"))
    with pytest.raises(FileNotFoundError, match="no_such_job.py does not exist"):
        op.prepare_submit({}, str(tmp_path))


def test_bad_job_arg_key_is_refused(deployment, tmp_path):
    op = PipelineSparkSubmitOperator(task_id="x", job="evaluate", job_args={"run-dir": "x"})
    with pytest.raises(ValueError, match="must start with --"):
        op.prepare_submit({}, str(tmp_path))
