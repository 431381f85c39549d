"""The partition sensor against the session's real NameNode, while a file of the partition is still being written.

Two ways a producer leaves a file half-written on HDFS: ``hdfs dfs -put`` streams into ``<name>._COPYING_`` and
renames it when done; a writer that streams under the final name holds the file's lease until it closes it, and
meanwhile the NameNode lists it as an ordinary file with the length of its completed blocks (0 here). The writers
below are real WebHDFS ``CREATE`` streams kept open until the test lets them finish.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import requests

from tasks.io.webhdfs import WebHdfsClient
from tests.support.minihadoop import MiniHadoop

CONN_ID = "webhdfs_tfhub"


class OpenWriter:
    """A WebHDFS ``CREATE`` of ``path`` whose body is sent in two parts: the first at once, the second when
    ``finish()`` is called. Until then the NameNode holds the file under construction, its lease with the writer."""

    def __init__(self, webhdfs_url: str, path: str) -> None:
        nn = requests.put(f"{webhdfs_url}/webhdfs/v1{path}", params={"op": "CREATE", "user.name": "producer"},
                          allow_redirects=False, timeout=60)
        assert nn.status_code == 307, nn.text
        self._sent, self._release = threading.Event(), threading.Event()
        self.status: list[int] = []
        self._thread = threading.Thread(target=self._put, args=(nn.headers["Location"],), daemon=True)
        self._thread.start()
        assert self._sent.wait(60)
        time.sleep(0.5)  # the DataNode has the first part: the file exists under construction

    def _put(self, location: str) -> None:
        def body() -> Iterator[bytes]:
            yield b"\x89PNG" + b"x" * 5000
            self._sent.set()
            self._release.wait(300)
            yield b"y" * 100

        self.status.append(requests.put(location, data=body(), timeout=300).status_code)

    def finish(self) -> None:
        self._release.set()
        self._thread.join(60)
        assert self.status == [201], self.status


@pytest.fixture
def partition(minihadoop: MiniHadoop, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, WebHdfsClient]]:
    """A partition on the real HDFS with one complete file and its ``_SUCCESS`` marker; its hdfs:// URL."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(
        {"conn_type": "webhdfs", "host": "localhost", "port": int(minihadoop.webhdfs_url.rsplit(":", 1)[1]),
         "login": "airflow"}))
    path = f"/sensor-{uuid.uuid4().hex[:8]}/raw/ds=2026-11-20"
    with WebHdfsClient(minihadoop.webhdfs_url, user="producer") as c:
        c.write_bytes(f"{path}/a.png", b"\x89PNG" + b"a" * 3000)
        c.write_bytes(f"{path}/_SUCCESS", b"")
        yield f"{minihadoop.fs_default_fs}{path}", c


def test_poke_waits_for_a_copying_file_and_proceeds_once_it_is_renamed(minihadoop: MiniHadoop, partition):
    from tfhub_spark.sensors.partition import PartitionReadySensor

    url, client = partition
    path = url.removeprefix(minihadoop.fs_default_fs)
    sensor = PartitionReadySensor(task_id="wait", path=url, webhdfs_conn_id=CONN_ID, min_files=2)
    writer = OpenWriter(minihadoop.webhdfs_url, f"{path}/b.png._COPYING_")  # what `hdfs dfs -put` writes first
    assert sensor.poke({}) is False
    assert "still being written" in sensor._last_reason and "b.png._COPYING_" in sensor._last_reason
    writer.finish()
    assert sensor.poke({}) is False  # complete, but still under its temporary name
    client.rename(f"{path}/b.png._COPYING_", f"{path}/b.png")
    assert sensor.poke({}) is True, sensor._last_reason
    assert sensor._last_reason.endswith("2 files, 8108 bytes")


def test_trigger_waits_while_a_writer_holds_a_file_open_and_fires_once_it_is_closed(minihadoop: MiniHadoop,
                                                                                    partition):
    """The deferred wait (the DAG's default): the marker is there and every name is final, but ``b.png`` is open
    with its length listed as 0."""
    from tfhub_spark.hooks.storage import StorageHook
    from tfhub_spark.sensors.partition import PartitionReadySensor
    from tfhub_spark.triggers.partition import PartitionReadyTrigger

    url, _ = partition
    path = url.removeprefix(minihadoop.fs_default_fs)
    writer = OpenWriter(minihadoop.webhdfs_url, f"{path}/b.png")
    assert {e.name: e.size for e in StorageHook(webhdfs_conn_id=CONN_ID).list(url)}["b.png"] == 0
    sensor = PartitionReadySensor(task_id="wait", path=url, webhdfs_conn_id=CONN_ID)
    assert sensor.poke({}) is False
    assert f"{url}/b.png is still open for writing" in sensor._last_reason

    trigger = PartitionReadyTrigger(path=url, marker="_SUCCESS", min_files=0, min_bytes=0, webhdfs_conn_id=CONN_ID,
                                    poke_interval=0.5, deadline=time.time() + 120)

    async def wait_for_event() -> tuple[dict, float]:
        event = await anext(trigger.run())
        return event.payload, time.monotonic()

    async def main() -> tuple[dict, float, float]:
        waiting = asyncio.create_task(wait_for_event())
        await asyncio.sleep(4)  # several checks while the file is open
        assert not waiting.done(), waiting.result()
        await asyncio.to_thread(writer.finish)
        closed = time.monotonic()
        payload, fired = await asyncio.wait_for(waiting, 60)
        return payload, closed, fired

    payload, closed, fired = asyncio.run(main())
    # The sizes come from the check's listing, which may predate the close: the count is what can be asserted.
    assert payload["status"] == "ready" and "is complete: _SUCCESS, 2 files" in payload["reason"], payload
    assert fired >= closed
