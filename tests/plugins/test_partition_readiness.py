"""What 'partition ready' means, on file:// and hdfs:// (WebHDFS test server): in poke mode, in reschedule mode,
and deferred to the trigger."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from airflow.sdk.exceptions import AirflowSensorTimeout, TaskDeferred

from tasks.io.webhdfs import WebHdfsClient
from tests.support.webhdfs_server import WebHdfsTestServer
from tfhub_spark.hooks.storage import StorageHook
from tfhub_spark.readiness import check_partition
from tfhub_spark.sensors.partition import PartitionReadySensor
from tfhub_spark.triggers.partition import PartitionReadyTrigger


class LocalProducer:
    def __init__(self, root):
        self.root = root

    def put(self, rel: str, data: bytes = b"x") -> None:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    def remove(self, rel: str) -> None:
        (self.root / rel).unlink()


class HdfsProducer:
    def __init__(self, client: WebHdfsClient):
        self.client = client

    def put(self, rel: str, data: bytes = b"x") -> None:
        self.client.write_bytes("/" + rel, data)

    def remove(self, rel: str) -> None:
        self.client.delete("/" + rel)


@pytest.fixture(params=["file", "hdfs"])
def store(request, tmp_path, monkeypatch):
    """(URL of the raw root, a producer writing under it, the webhdfs conn id)."""
    if request.param == "file":
        yield f"file://{tmp_path}", LocalProducer(tmp_path), "webhdfs_default"
        return
    with WebHdfsTestServer(tmp_path / "hdfs") as srv, WebHdfsClient(srv.url, user="producer") as client:
        monkeypatch.setenv("AIRFLOW_CONN_WEBHDFS_TFHUB", json.dumps(
            {"conn_type": "webhdfs", "host": "127.0.0.1", "port": srv.port}))
        yield "hdfs://namenode:8020", HdfsProducer(client), "webhdfs_tfhub"


def test_ready_needs_marker_no_in_flight_files_and_minimums(store):
    root, producer, conn = store
    part = f"{root}/raw/ds=2026-11-20"
    hook = StorageHook(webhdfs_conn_id=conn)

    def check(**kw):
        return check_partition(hook, part, **kw)

    assert "does not exist" in check().reason
    producer.put("raw/ds=2026-11-20/images/a.jpg", b"12345")
    assert "no _SUCCESS marker yet (1 files, 5 bytes so far)" in check().reason
    producer.put("raw/ds=2026-11-20/images/b.jpg._COPYING_", b"12")
    producer.put("raw/ds=2026-11-20/_SUCCESS", b"")
    state = check()
    assert not state.ready and "1 files are still being written" in state.reason and "b.jpg._COPYING_" in state.reason
    producer.remove("raw/ds=2026-11-20/images/b.jpg._COPYING_")
    producer.put("raw/ds=2026-11-20/images/b.jpg", b"123")
    assert check().ready and check().files == 2 and check().bytes == 8
    assert "fewer than min_files=3" in check(min_files=3).reason
    assert "fewer than min_bytes=100" in check(min_bytes=100).reason
    assert check(min_files=2, min_bytes=8).ready


def test_poke_mode_times_out_naming_path_and_what_is_missing(store):
    root, producer, conn = store
    producer.put("raw/ds=2026-11-21/images/a.jpg")
    sensor = PartitionReadySensor(task_id="wait", path=f"{root}/raw/ds=2026-11-21", webhdfs_conn_id=conn,
                                  poke_interval=0.05, timeout=0.3, mode="poke")
    with pytest.raises(AirflowSensorTimeout, match=r"partition .*ds=2026-11-21 not ready after 0s: .*no _SUCCESS"):
        sensor.execute({})


def test_deferrable_sensor_defers_then_completes(store):
    root, producer, conn = store
    part = f"{root}/raw/ds=2026-11-22"
    sensor = PartitionReadySensor(task_id="wait", path=part, webhdfs_conn_id=conn, deferrable=True,
                                  poke_interval=0.05, timeout=30)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    trigger = deferred.value.trigger
    assert isinstance(trigger, PartitionReadyTrigger) and deferred.value.method_name == "execute_complete"
    classpath, kwargs = trigger.serialize()
    assert classpath == "tfhub_spark.triggers.partition.PartitionReadyTrigger"
    assert PartitionReadyTrigger(**kwargs).serialize() == (classpath, kwargs)

    async def first_event(trig, produce_after: float | None):
        async def produce():
            await asyncio.sleep(produce_after)
            await asyncio.to_thread(producer.put, "raw/ds=2026-11-22/a.jpg")
            await asyncio.to_thread(producer.put, "raw/ds=2026-11-22/_SUCCESS")

        task = asyncio.ensure_future(produce()) if produce_after is not None else None
        async for event in trig.run():
            if task:
                await task
            return event.payload

    # The partition arrives late: the trigger keeps checking, then fires.
    t0 = time.time()
    payload = asyncio.run(first_event(PartitionReadyTrigger(**kwargs), produce_after=0.3))
    assert payload["status"] == "ready" and time.time() - t0 >= 0.3
    assert sensor.execute_complete({}, payload) is None

    # Nothing arrives: the trigger reports the timeout with the reason; the sensor fails with it.
    kwargs.update(path=f"{root}/raw/ds=2026-11-23", deadline=time.time() + 0.2)
    payload = asyncio.run(first_event(PartitionReadyTrigger(**kwargs), produce_after=None))
    assert payload["status"] == "timeout" and "does not exist" in payload["reason"]
    with pytest.raises(AirflowSensorTimeout, match="not ready after 30s: .* does not exist"):
        sensor.execute_complete({}, payload)


def test_deferrable_sensor_does_not_defer_when_already_ready(store):
    root, producer, conn = store
    producer.put("raw/ds=2026-11-24/a.jpg")
    producer.put("raw/ds=2026-11-24/_SUCCESS")
    sensor = PartitionReadySensor(task_id="wait", path=f"{root}/raw/ds=2026-11-24", webhdfs_conn_id=conn,
                                  deferrable=True)
    assert sensor.execute({}) is None
