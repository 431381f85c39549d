"""``config/local-hadoop/`` is ``config/cluster/`` pointed at the local Hadoop: the same connections, Variable keys
and pools, in client deploy mode, with every placeholder filled once the cluster's addresses are known. Needs no
cluster: it checks the files and how ``MiniHadoop.airflow_config`` fills them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.support.minihadoop import MiniHadoop

ROOT = Path(__file__).resolve().parents[2]


def load(folder: str, name: str) -> dict:
    return json.loads(re.sub(r'@WEBHDFS_PORT@', "0", (ROOT / "config" / folder / name).read_text()))


def test_same_connections_variable_keys_and_pools_as_the_cluster_config():
    local, cluster = load("local-hadoop", "connections.json"), load("cluster", "connections.json")
    assert {k: v["conn_type"] for k, v in local.items()} == {k: v["conn_type"] for k, v in cluster.items()}
    assert set(local["spark_tfhub"]["extra"]) == set(cluster["spark_tfhub"]["extra"])
    assert local["spark_tfhub"]["extra"]["deploy-mode"] == "client"
    local_var = load("local-hadoop", "variables.json")["tfhub_pipeline"]
    cluster_var = load("cluster", "variables.json")["tfhub_pipeline"]
    # No ResourceManager tracking: the provider only does it in cluster deploy mode.
    assert set(local_var) == set(cluster_var) - {"submit_options"}
    assert load("local-hadoop", "pools.json") == load("cluster", "pools.json")


def test_airflow_config_fills_every_placeholder(tmp_path):
    cluster = MiniHadoop(tmp_path / "cluster")
    cluster.info = {"fs_default_fs": "hdfs://localhost:1234", "webhdfs": ["http://localhost:5678"],
                    "rm_webapp": "http://localhost:9012"}
    out = cluster.airflow_config(tmp_path / "config", storage_root="hdfs://localhost:1234/tfhub")
    assert sorted(p.name for p in out.iterdir()) == ["connections.json", "pools.json", "variables.json"]
    for path in out.iterdir():
        assert "@" not in path.read_text(), path
    connections = json.loads((out / "connections.json").read_text())
    assert connections["webhdfs_tfhub"]["port"] == 5678
    assert connections["spark_tfhub"]["extra"]["yarn_resourcemanager_webapp_address"] == "http://localhost:9012"
    spark_conf = json.loads((out / "variables.json").read_text())["tfhub_pipeline"]["spark_conf"]
    assert Path(spark_conf["spark.pyspark.python"]).exists()
    assert Path(spark_conf["spark.yarn.jars"].removeprefix("local:").removesuffix("/*")).is_dir()
