"""A sensor that waits for a date partition to be complete, on ``file://`` or ``hdfs://``."""

from __future__ import annotations

from collections.abc import Sequence

from airflow.sdk.bases.sensor import BaseSensorOperator

from tfhub_spark.hooks.storage import StorageHook


class PartitionReadySensor(BaseSensorOperator):
    """Waits until a partition folder holds its ``_SUCCESS`` marker.

    :param path: storage URL of the partition folder (templated).
    :param marker: name of the completion marker.
    :param webhdfs_conn_id: WebHDFS connection for ``hdfs://`` paths.
    """

    template_fields: Sequence[str] = ("path",)
    ui_color = "#e8f4fd"

    def __init__(self, *, path: str, marker: str = "_SUCCESS", webhdfs_conn_id: str = "webhdfs_default",
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.marker = marker
        self.webhdfs_conn_id = webhdfs_conn_id

    def poke(self, context) -> bool:
        hook = StorageHook(webhdfs_conn_id=self.webhdfs_conn_id)
        marker_url = self.path.rstrip("/") + "/" + self.marker
        if hook.exists(marker_url):
            self.log.info("partition %s is ready: %s exists", self.path, self.marker)
            return True
        if hook.exists(self.path):
            self.log.info("partition %s exists but has no %s yet: the producer is still writing", self.path,
                          self.marker)
        else:
            self.log.info("partition %s does not exist yet", self.path)
        return False
