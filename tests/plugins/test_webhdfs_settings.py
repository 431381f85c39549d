"""The jobs' WebHDFS settings come from the Airflow WebHDFS connection, once: the operators derive
``TFHUB_WEBHDFS_URL`` (every namenode of an HA pair) and ``TFHUB_WEBHDFS_USER`` for the driver and the executors."""

from __future__ import annotations

import json

import pytest

from tfhub_spark.operators.spark_job import PipelineSparkSubmitOperator

HA_URL = "http://nn1.example.com:9870,http://nn2.example.com:9870"


@pytest.fixture
def hdfs_deployment(monkeypatch: pytest.MonkeyPatch) -> dict:
    pipeline = {"storage_root": "hdfs://nameservice1/tfhub", "spark_conf": {"spark.driver.memory": "2g"}}
    monkeypatch.setenv("AIRFLOW_VAR_TFHUB_PIPELINE", json.dumps(pipeline))
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_TFHUB", json.dumps(
        {"conn_type": "spark", "host": "local[2]", "extra": {"deploy-mode": "client"}}))
    monkeypatch.setenv("AIRFLOW_CONN_WEBHDFS_TFHUB", json.dumps(
        {"conn_type": "webhdfs", "host": "nn1.example.com,nn2.example.com", "port": 9870, "login": "etl"}))
    return pipeline


def operator(**kwargs) -> PipelineSparkSubmitOperator:
    return PipelineSparkSubmitOperator(task_id="prepare_examples", job="prepare_examples",
                                       webhdfs_conn_id="webhdfs_tfhub", job_args={"--min-shards": 2}, **kwargs)


def confs(cmd: list[str]) -> dict[str, str]:
    return dict(cmd[i + 1].split("=", 1) for i, arg in enumerate(cmd) if arg == "--conf")


def test_driver_and_executors_get_the_connections_namenodes(hdfs_deployment, tmp_path) -> None:
    op = operator()
    op.prepare_submit({}, str(tmp_path))
    hook = op._get_hook()
    cmd = hook._build_spark_submit_command(op.application)
    c = confs(cmd)
    assert c["spark.executorEnv.TFHUB_WEBHDFS_URL"] == HA_URL
    assert c["spark.executorEnv.TFHUB_WEBHDFS_USER"] == "etl"
    # Client mode: the driver is spark-submit's child; the provider starts spark-submit with this environment.
    assert hook._env == {"TFHUB_WEBHDFS_URL": HA_URL, "TFHUB_WEBHDFS_USER": "etl"}


def test_a_second_copy_in_the_variable_is_refused(hdfs_deployment, monkeypatch, tmp_path) -> None:
    hdfs_deployment["spark_conf"]["spark.executorEnv.TFHUB_WEBHDFS_URL"] = "http://nn1.example.com:9870"
    monkeypatch.setenv("AIRFLOW_VAR_TFHUB_PIPELINE", json.dumps(hdfs_deployment))
    with pytest.raises(ValueError, match=r"tfhub_pipeline.spark_conf sets spark.executorEnv.TFHUB_WEBHDFS_URL, which "
                                         r"the operators derive from the WebHDFS connection 'webhdfs_tfhub'"):
        operator().prepare_submit({}, str(tmp_path))
    del hdfs_deployment["spark_conf"]["spark.executorEnv.TFHUB_WEBHDFS_URL"]
    monkeypatch.setenv("AIRFLOW_VAR_TFHUB_PIPELINE", json.dumps(hdfs_deployment))
    with pytest.raises(ValueError, match="env_vars sets TFHUB_WEBHDFS_USER='other'"):
        operator(env_vars={"TFHUB_WEBHDFS_USER": "other"}).prepare_submit({}, str(tmp_path))


def test_an_hdfs_root_without_the_connection_names_it(hdfs_deployment, monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_WEBHDFS_TFHUB")
    with pytest.raises(ValueError, match="connection 'webhdfs_tfhub', which is not defined"):
        operator().prepare_submit({}, str(tmp_path))


def test_a_file_root_needs_no_webhdfs_settings(hdfs_deployment, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_TFHUB_PIPELINE", json.dumps({"storage_root": "file:///data"}))
    op = operator()
    op.prepare_submit({}, str(tmp_path))
    assert not [k for k in op.conf if "TFHUB_WEBHDFS" in k] and not op.env_vars
