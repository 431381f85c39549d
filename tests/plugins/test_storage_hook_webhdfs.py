"""StorageHook and PartitionReadySensor on hdfs:// URLs: through the HDFS provider's WebHDFSHook (the ``hdfs``
library's InsecureClient) and an Airflow connection, against the WebHDFS test server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hdfs import HdfsError

from tasks.io.webhdfs import WebHdfsClient
from tests.support.webhdfs_server import WebHdfsTestServer
from tfhub_spark.hooks.storage import Entry, StorageHook
from tfhub_spark.sensors.partition import PartitionReadySensor

CONN_ID = "webhdfs_tfhub"


@pytest.fixture
def hdfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebHdfsTestServer]:
    with WebHdfsTestServer(tmp_path / "hdfs") as srv:
        monkeypatch.setenv("AIRFLOW_CONN_WEBHDFS_TFHUB", json.dumps(
            {"conn_type": "webhdfs", "host": "127.0.0.1", "port": srv.port, "login": "tester"}))
        yield srv


@pytest.fixture
def producer(hdfs: WebHdfsTestServer) -> Iterator[WebHdfsClient]:
    """Writes to HDFS the way the Spark jobs do: with the job code's client."""
    with WebHdfsClient(hdfs.url, user="producer") as c:
        yield c


def test_exists_list_read_text(hdfs: WebHdfsTestServer, producer: WebHdfsClient) -> None:
    producer.write_bytes("/runs/ds=2026-11-20/metrics.json", json.dumps({"accuracy": 0.95, "name": "Größe"}).encode())
    producer.mkdirs("/runs/ds=2026-11-20/model")
    hook = StorageHook(webhdfs_conn_id=CONN_ID)
    run = "hdfs://namenode:8020/runs/ds=2026-11-20"

    assert hook.exists(run) and hook.exists(f"{run}/metrics.json")
    assert not hook.exists(f"{run}/blessing.json") and not hook.exists("hdfs://namenode:8020/elsewhere")
    size = (hdfs.root / "runs" / "ds=2026-11-20" / "metrics.json").stat().st_size
    assert hook.list(run) == [Entry("metrics.json", False, size), Entry("model", True, 0)]
    assert hook.list(f"{run}/model") == []
    assert hook.list("hdfs://namenode:8020/elsewhere") == []
    assert hook.list(f"{run}/metrics.json") == []  # a file, as for file:// URLs
    assert json.loads(hook.read_text(f"{run}/metrics.json")) == {"accuracy": 0.95, "name": "Größe"}

    # The connection's login is the user, and the read went through the datanode redirect.
    assert {r.user for r in hdfs.requests if r.node == "namenode" and r.method == "GET"} == {"tester"}
    opens = [(r.node, r.status) for r in hdfs.requests if r.op == "OPEN"]
    assert opens == [("namenode", 307), ("datanode", 200)]


def test_read_text_of_a_missing_file_names_it(hdfs: WebHdfsTestServer) -> None:
    with pytest.raises(HdfsError, match="/runs/missing.json"):
        StorageHook(webhdfs_conn_id=CONN_ID).read_text("hdfs://nn/runs/missing.json")


def test_exists_raises_on_errors_other_than_not_found(hdfs: WebHdfsTestServer, producer: WebHdfsClient) -> None:
    producer.mkdirs("/raw/ds=2026-11-20")
    hook = StorageHook(webhdfs_conn_id=CONN_ID)
    assert hook.exists("hdfs://nn/raw/ds=2026-11-20")  # connects (the hook checks "/" first)
    hdfs.inject_faults(1, op="GETFILESTATUS", exception="AccessControlException",
                       message='Permission denied: user=tester, access=EXECUTE, inode="/raw"')
    # A sensor must not take a permission error for "not there yet" and poke until it times out.
    with pytest.raises(HdfsError, match="Permission denied"):
        hook.exists("hdfs://nn/raw/ds=2026-11-20")


def test_partition_sensor_on_hdfs(hdfs: WebHdfsTestServer, producer: WebHdfsClient,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    part = "/raw/ds=2026-11-20"
    sensor = PartitionReadySensor(task_id="wait", path=f"hdfs://namenode:8020{part}", webhdfs_conn_id=CONN_ID)
    assert sensor.poke({}) is False
    assert "does not exist or is empty" in capsys.readouterr().out
    producer.write_bytes(f"{part}/a.jpg", b"\xff\xd8")
    assert sensor.poke({}) is False
    assert "has no _SUCCESS marker yet" in capsys.readouterr().out
    producer.write_bytes(f"{part}/_SUCCESS", b"")
    assert sensor.poke({}) is True
    assert ("GET", "LISTSTATUS", part) in hdfs.calls(node="namenode")


def test_hook_follows_a_namenode_failover(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An HA pair as the provider's connection names it: two hosts, one port. The hook starts on the active one
    and keeps working when the other one takes over while the hook is in use."""
    with WebHdfsTestServer(tmp_path / "hdfs", namenode_hosts=["127.0.0.1", "127.0.0.2"]) as srv:
        monkeypatch.setenv("AIRFLOW_CONN_WEBHDFS_TFHUB", json.dumps(
            {"conn_type": "webhdfs", "host": "127.0.0.1,127.0.0.2", "port": srv.port, "login": "tester"}))
        srv.fail_over(to=1)  # the first host listed is the standby
        with WebHdfsClient(srv.ha_url, user="producer") as producer:
            producer.write_bytes("/runs/ds=2026-11-20/blessing.json", b'{"blessed": true}')
        hook = StorageHook(webhdfs_conn_id=CONN_ID)
        assert hook.exists("hdfs://nn/runs/ds=2026-11-20/blessing.json")

        srv.clear_log()
        srv.fail_over(to=0)
        assert json.loads(hook.read_text("hdfs://nn/runs/ds=2026-11-20/blessing.json")) == {"blessed": True}
        assert hook.list("hdfs://nn/runs") == [Entry("ds=2026-11-20", True, 0)]
        answered = [(r.host, r.status) for r in srv.requests if r.node == "namenode"]
        # One refusal by the new standby, then the new active answers, and keeps answering: it is remembered.
        assert answered[0] == ("127.0.0.2", 403) and answered[1:] and {a for a in answered[1:]} == {
            ("127.0.0.1", 307), ("127.0.0.1", 200)}


def test_webhdfs_urls_of_a_connection() -> None:
    from airflow.models.connection import Connection

    from tfhub_spark.hooks.storage import webhdfs_urls

    conn = Connection(conn_id="w", conn_type="webhdfs", host="nn1.example.com, nn2.example.com", port=9870)
    assert webhdfs_urls(conn) == ["http://nn1.example.com:9870", "http://nn2.example.com:9870"]
    tls = Connection(conn_id="w", conn_type="webhdfs", host="gw", port=8443, schema="gateway/default",
                     extra=json.dumps({"use_ssl": "True"}))
    assert webhdfs_urls(tls) == ["https://gw:8443/gateway/default"]
    with pytest.raises(ValueError, match="WebHDFS connection 'w': host 'nn1,' must name the namenode"):
        webhdfs_urls(Connection(conn_id="w", conn_type="webhdfs", host="nn1,", port=9870))
