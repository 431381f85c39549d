"""The deferred half of ``PartitionReadySensor``: waits in the triggerer, not in a worker slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class PartitionReadyTrigger(BaseTrigger):
    """Checks a partition every ``poke_interval`` seconds until it is ready or ``deadline`` (epoch seconds) passes.

    :param path: storage URL of the partition folder.
    :param marker: completion marker.
    :param min_files: least number of data files.
    :param min_bytes: least total size.
    :param webhdfs_conn_id: WebHDFS connection for ``hdfs://``.
    :param poke_interval: seconds between checks.
    :param deadline: epoch seconds after which the trigger reports a timeout.
    """

    def __init__(self, *, path: str, marker: str, min_files: int, min_bytes: int, webhdfs_conn_id: str,
                 poke_interval: float, deadline: float) -> None:
        super().__init__()
        self.path, self.marker = path, marker
        self.min_files, self.min_bytes = min_files, min_bytes
        self.webhdfs_conn_id = webhdfs_conn_id
        self.poke_interval, self.deadline = poke_interval, deadline

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("tfhub_spark.triggers.partition.PartitionReadyTrigger", {
            "path": self.path, "marker": self.marker, "min_files": self.min_files, "min_bytes": self.min_bytes,
            "webhdfs_conn_id": self.webhdfs_conn_id, "poke_interval": self.poke_interval, "deadline": self.deadline,
        })

    def _check(self):
        from tfhub_spark.hooks.storage import StorageHook
        from tfhub_spark.readiness import check_partition

        return check_partition(StorageHook(webhdfs_conn_id=self.webhdfs_conn_id), self.path, self.marker,
                               self.min_files, self.min_bytes)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            # The storage calls block (HTTP for hdfs://): keep them off the triggerer's event loop.
            state = await asyncio.to_thread(self._check)
            if state.ready:
                yield TriggerEvent({"status": "ready", "reason": state.reason})
                return
            if time.time() >= self.deadline:
                yield TriggerEvent({"status": "timeout", "reason": state.reason})
                return
            self.log.info("waiting: %s", state.reason)
            await asyncio.sleep(min(self.poke_interval, max(0.0, self.deadline - time.time())))
