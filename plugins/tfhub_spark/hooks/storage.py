"""Reading the pipeline's storage URLs from the Airflow side: ``file://`` directly, ``hdfs://`` over WebHDFS.

Airflow-side code only looks at markers and small JSON files (``_SUCCESS``, ``metrics.json``); data and models
are read by the Spark applications.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from airflow.sdk.bases.hook import BaseHook


@dataclass(frozen=True)
class Entry:
    name: str
    is_dir: bool
    size: int


class StorageHook(BaseHook):
    """Lists and reads ``file://`` and ``hdfs://`` URLs.

    :param webhdfs_conn_id: the HDFS provider's WebHDFS connection, used for ``hdfs://`` URLs.
    """

    conn_name_attr = "webhdfs_conn_id"
    hook_name = "TF Hub pipeline storage"

    def __init__(self, webhdfs_conn_id: str = "webhdfs_default", **kwargs) -> None:
        super().__init__(**kwargs)
        self.webhdfs_conn_id = webhdfs_conn_id
        self._client = None

    @staticmethod
    def _scheme_path(url: str) -> tuple[str, str]:
        parsed = urlparse(url)
        scheme = parsed.scheme or "file"
        if scheme not in ("file", "hdfs"):
            raise ValueError(f"storage URL {url!r}: scheme {scheme!r} is not supported (file:// or hdfs://)")
        if scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file URL {url!r} names host {parsed.netloc!r}; use file:///absolute/path")
        return scheme, parsed.path

    def _webhdfs(self):
        if self._client is None:
            from airflow.providers.apache.hdfs.hooks.webhdfs import WebHDFSHook

            self._client = WebHDFSHook(webhdfs_conn_id=self.webhdfs_conn_id).get_conn()
        return self._client

    def _hdfs_status(self, path: str) -> dict | None:
        """The WebHDFS FileStatus of ``path``; None only when it does not exist.

        ``status(path, strict=False)`` would answer None for any error (a permission denied, a namenode in
        trouble), which a sensor would take for "not there yet" and poke on until its timeout; here only a
        ``FileNotFoundException`` means absent, and other errors are raised.
        """
        from hdfs import HdfsError

        try:
            return self._webhdfs().status(path)
        except HdfsError as e:
            if e.exception == "FileNotFoundException":
                return None
            raise

    def exists(self, url: str) -> bool:
        scheme, path = self._scheme_path(url)
        if scheme == "file":
            return Path(path).exists()
        return self._hdfs_status(path) is not None

    def list(self, url: str) -> list[Entry]:
        """Entries directly under a folder; an empty list when it does not exist or is a file."""
        scheme, path = self._scheme_path(url)
        if scheme == "file":
            p = Path(path)
            if not p.is_dir():
                return []
            return [Entry(c.name, c.is_dir(), 0 if c.is_dir() else c.stat().st_size) for c in sorted(p.iterdir())]
        status = self._hdfs_status(path)
        if status is None or status["type"] != "DIRECTORY":
            return []  # the hdfs client's list() raises "is not a directory" for a file
        return [Entry(name, st["type"] == "DIRECTORY", int(st.get("length", 0)))
                for name, st in self._webhdfs().list(path, status=True)]

    def read_text(self, url: str) -> str:
        scheme, path = self._scheme_path(url)
        if scheme == "file":
            return Path(path).read_text()
        with self._webhdfs().read(path, encoding="utf-8") as reader:
            return reader.read()
