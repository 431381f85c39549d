"""A sensor that waits for a producer's date partition to be complete, on ``file://`` or ``hdfs://``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk.exceptions import AirflowSensorTimeout
from airflow.sdk.bases.sensor import BaseSensorOperator

from tfhub_spark.hooks.storage import StorageHook
from tfhub_spark.readiness import check_partition
from tfhub_spark.run_folder import SUCCESS


class PartitionReadySensor(BaseSensorOperator):
    """Waits until a partition is complete: its ``_SUCCESS`` marker exists, no in-flight files (``_COPYING_``,
    ``_temporary``, ``*.tmp``) remain, and optional minimum file count and size are met.

    ``hdfs://`` goes through the HDFS provider's ``WebHDFSHook`` and connection (Kerberos and TLS as the
    connection sets them). With ``deferrable=True`` the wait runs in the triggerer (``PartitionReadyTrigger``),
    freeing the worker slot; otherwise it pokes in ``poke``/``reschedule`` mode. Either way it fails after
    ``timeout`` seconds with a message naming the path and what was missing.

    :param path: storage URL of the partition folder (templated).
    :param marker: name of the completion marker.
    :param min_files: least number of data files (0: any).
    :param min_bytes: least total size of the data files (0: any).
    :param webhdfs_conn_id: WebHDFS connection for ``hdfs://`` paths.
    :param deferrable: wait in the triggerer.
    :param no_wait_reason: when it renders to a non-empty text (templated), the run has no partition folder to wait
        for (the input is a Spark SQL table): the sensor logs this reason and succeeds without checking ``path``.
    """

    template_fields: Sequence[str] = ("path", "no_wait_reason")
    ui_color = "#e8f4fd"

    def __init__(self, *, path: str, marker: str = SUCCESS, min_files: int = 0, min_bytes: int = 0,
                 webhdfs_conn_id: str = "webhdfs_default", deferrable: bool = False, no_wait_reason: str = "",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.no_wait_reason = no_wait_reason
        self.path = path
        self.marker = marker
        self.min_files = min_files
        self.min_bytes = min_bytes
        self.webhdfs_conn_id = webhdfs_conn_id
        self.deferrable = deferrable

    def _readiness(self):
        return check_partition(StorageHook(webhdfs_conn_id=self.webhdfs_conn_id), self.path, self.marker,
                               self.min_files, self.min_bytes)

    def poke(self, context) -> bool:
        state = self._readiness()
        self.log.info("%s: %s", "ready" if state.ready else "not ready", state.reason)
        self._last_reason = state.reason
        return state.ready

    def execute(self, context) -> Any:
        if self.no_wait_reason:
            self.log.info("not waiting for %s: %s", self.path, self.no_wait_reason)
            return None
        self.log.info("waiting for partition %s", self.path)
        if not self.deferrable:
            try:
                return super().execute(context)
            except AirflowSensorTimeout as e:
                raise AirflowSensorTimeout(f"partition {self.path} not ready after {self.timeout:.0f}s: "
                                           f"{getattr(self, '_last_reason', e)}") from e
        state = self._readiness()
        if state.ready:
            self.log.info("ready: %s", state.reason)
            return None
        self.log.info("not ready, deferring to the triggerer: %s", state.reason)
        from tfhub_spark.triggers.partition import PartitionReadyTrigger

        self.defer(
            trigger=PartitionReadyTrigger(path=self.path, marker=self.marker, min_files=self.min_files,
                                          min_bytes=self.min_bytes, webhdfs_conn_id=self.webhdfs_conn_id,
                                          poke_interval=float(self.poke_interval),
                                          deadline=time.time() + float(self.timeout)),
            method_name="execute_complete",
            # A backstop only: the trigger reports its own timeout with the reason.
            timeout=timedelta(seconds=float(self.timeout) + 3 * float(self.poke_interval) + 60),
        )

    def execute_complete(self, context, event: dict[str, Any]) -> None:
        if event["status"] == "ready":
            self.log.info("ready: %s", event["reason"])
            return None
        raise AirflowSensorTimeout(f"partition {self.path} not ready after {self.timeout:.0f}s: {event['reason']}")
