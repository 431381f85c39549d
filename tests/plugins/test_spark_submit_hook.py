"""The provider's private members the operators rely on still exist, and the adapter answers from them.

Every private member of the Spark provider's ``SparkSubmitHook`` this package uses is named in
``tfhub_spark.hooks.spark_submit.PROVIDER_PRIVATE_MEMBERS`` and used in that module only: a provider release that
renames or drops one fails here, not in a crash retry on a cluster.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

from tfhub_spark.hooks.spark_submit import (PROVIDER_OPERATOR_PRIVATE_MEMBERS, PROVIDER_PRIVATE_MEMBERS,
                                            PROVIDER_VERSION_CHECKED, ProcessTreeSparkSubmitHook)
from tfhub_spark.operators.spark_job import PipelineSparkSubmitOperator

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


@pytest.fixture
def connections(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_LOCAL", json.dumps({"conn_type": "spark", "host": "local[2]"}))
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_STANDALONE", json.dumps({
        "conn_type": "spark", "host": "spark://master", "port": 7077,
        "extra": {"deploy-mode": "cluster", "standalone_webui_url": "http://master:8080"}}))
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_YARN", json.dumps({
        "conn_type": "spark", "host": "yarn", "extra": {"deploy-mode": "cluster"}}))


def test_the_provider_still_has_every_private_member_the_adapter_uses(connections):
    hook = SparkSubmitHook(conn_id="spark_local")
    hook._submit_sp = None  # set by submit(); its absence before is no rename
    missing = [name for name in PROVIDER_PRIVATE_MEMBERS if not hasattr(hook, name)]
    assert missing == [], (f"apache-airflow-providers-apache-spark no longer has {missing} (checked against "
                           f"{PROVIDER_VERSION_CHECKED}): update tfhub_spark/hooks/spark_submit.py")
    assert "_submit_sp" in SparkSubmitHook.submit.__code__.co_names
    op = SparkSubmitOperator(task_id="x", application="app.py", conn_id="spark_local")
    missing = [name for name in PROVIDER_OPERATOR_PRIVATE_MEMBERS if not hasattr(op, name)]
    assert missing == [], f"SparkSubmitOperator no longer has {missing}: update tfhub_spark/operators/spark_job.py"
    assert {name for name in PipelineSparkSubmitOperator.SUBMIT_OPTIONS.values() if name.startswith("_")} <= \
        set(PROVIDER_OPERATOR_PRIVATE_MEMBERS)


def test_no_private_member_of_the_provider_hook_is_used_outside_the_adapter():
    pattern = re.compile(r"\.(" + "|".join(PROVIDER_PRIVATE_MEMBERS) + r")\b")
    uses = {f"{path.relative_to(PLUGINS)}: {m.group(1)}"
            for path in PLUGINS.rglob("*.py") if path.name != "spark_submit.py"
            for m in pattern.finditer(path.read_text())}
    assert uses == set()


def test_adapter_answers_from_the_connection(connections):
    local = ProcessTreeSparkSubmitHook(conn_id="spark_local")
    assert (local.conn_id, local.master, local.tracks_driver_status, local.reattaches()) == \
        ("spark_local", "local[2]", False, False)
    standalone = ProcessTreeSparkSubmitHook(conn_id="spark_standalone")
    assert standalone.master == "spark://master:7077"
    assert standalone.tracks_driver_status and standalone.reattaches()
    assert standalone.connection_extra()["standalone_webui_url"] == "http://master:8080"
    yarn = ProcessTreeSparkSubmitHook(conn_id="spark_yarn")
    assert yarn.is_yarn_cluster_mode and not yarn.tracks_yarn_via_rm_api and not yarn.reattaches()
    tracked = ProcessTreeSparkSubmitHook(conn_id="spark_yarn", yarn_track_via_rm_api=True)
    assert tracked.tracks_yarn_via_rm_api and tracked.reattaches()
    with pytest.raises(ValueError):  # the connection names no ResourceManager web address
        yarn.yarn_rm_base_url()
