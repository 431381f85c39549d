"""Reading the pipeline's storage URLs from the Airflow side: ``file://`` directly, ``hdfs://`` over WebHDFS.

Airflow-side code only looks at markers and small JSON files (``_SUCCESS``, ``metrics.json``); data and models
are read by the Spark applications.

The HDFS provider's WebHDFS connection names the namenodes of a high-availability pair as several hosts separated
by commas (one port): :func:`webhdfs_urls` turns it into their WebHDFS addresses, which the hook fails over
between and which the operators hand to the jobs (``TFHUB_WEBHDFS_URL``), so the address is configured once.
"""

from __future__ import annotations

import os
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from airflow.sdk.bases.hook import BaseHook


def webhdfs_urls(conn: Any) -> list[str]:
    """The WebHDFS address of each namenode of an Airflow WebHDFS connection, as the HDFS provider builds them.

    :param conn: the connection (``conn_type`` ``webhdfs``): ``host`` is one namenode or several separated by
        commas, all on ``port``; ``schema`` is a gateway's path prefix; ``extra`` ``use_ssl`` selects https.
    :return: ``http[s]://host:port[/schema]`` per namenode, in the connection's order.
    :raises ValueError: when the connection names no host.
    """
    hosts = [h.strip() for h in (conn.host or "").split(",")]
    if not any(hosts) or not all(hosts):
        raise ValueError(f"WebHDFS connection {conn.conn_id!r}: host {conn.host!r} must name the namenode, or the "
                         f"namenodes of an HA pair separated by commas (e.g. nn1.example.com,nn2.example.com)")
    use_ssl = conn.extra_dejson.get("use_ssl", False)
    scheme = "https" if use_ssl is True or str(use_ssl).lower() == "true" else "http"
    port = f":{conn.port}" if conn.port is not None else ""
    schema = f"/{conn.schema}" if conn.schema else ""
    return [f"{scheme}://{h}{port}{schema}" for h in hosts]


def _get_block_locations(client, path: str, **params):
    """The NameNode's ``GET_BLOCK_LOCATIONS`` through the ``hdfs`` library's request handler (namenode failover,
    errors raised as ``HdfsError``); the library has no method for it."""
    from hdfs.client import _Request

    return _Request("GET").to_method("GET_BLOCK_LOCATIONS")(client, path, **params)


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
        """The ``hdfs`` library client of the connection: the provider's (auth, TLS, Kerberos, proxy user), made
        for the namenode that answered as the active one, then given every namenode of the connection, that one
        first. The library sends each request to the namenode that last answered and moves on to the next on a
        ``StandbyException`` or a connection error, so a failover while the hook is in use is survived.
        """
        if self._client is None:
            from airflow.providers.apache.hdfs.hooks.webhdfs import WebHDFSHook

            hook = WebHDFSHook(webhdfs_conn_id=self.webhdfs_conn_id)
            client = hook.get_conn()
            urls = webhdfs_urls(hook.get_connection(self.webhdfs_conn_id))
            if len(urls) > 1:
                active = client.url.rstrip("/")
                ordered = [active, *(u for u in urls if u != active)]
                # What hdfs.Client.__init__ sets from a semicolon-separated URL list (its HA support).
                client.url = ";".join(ordered)
                client.urls = ordered
                client._urls = deque(ordered)
                self.log.info("WebHDFS connection %s: namenode %s is active; failover to %s", self.webhdfs_conn_id,
                              active, ", ".join(ordered[1:]))
            self._client = client
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

    def being_written(self, url: str) -> bool:
        """Whether a writer still holds the file at ``url`` open: on HDFS a file under construction (its writer
        holds the lease), which listings show as an ordinary file with the length of its completed blocks, often
        0. ``file://`` has no leases: False. A file that is gone is not being written: False.

        WebHDFS's public operations do not tell; the NameNode's ``GET_BLOCK_LOCATIONS`` (the operation Hadoop's own
        WebHDFS client falls back to) answers ``isUnderConstruction``.
        """
        scheme, path = self._scheme_path(url)
        if scheme == "file":
            return False
        from hdfs import HdfsError

        try:
            res = _get_block_locations(self._webhdfs(), path, offset=0, length=1)
        except HdfsError as e:
            if e.exception == "FileNotFoundException":
                return False
            raise
        return bool(res.json()["LocatedBlocks"]["isUnderConstruction"])

    def read_text(self, url: str) -> str:
        scheme, path = self._scheme_path(url)
        if scheme == "file":
            return Path(path).read_text()
        with self._webhdfs().read(path, encoding="utf-8") as reader:
            return reader.read()

    def read_bytes(self, url: str) -> bytes:
        scheme, path = self._scheme_path(url)
        if scheme == "file":
            return Path(path).read_bytes()
        with self._webhdfs().read(path) as reader:
            return reader.read()

    def write_text_atomic(self, url: str, text: str) -> None:
        """Replaces the file at ``url`` by writing a hidden sibling and renaming it over the target, as the jobs
        commit their files (``tasks/io/storage.py``): a reader sees the old content or the new, never a part.

        :param url: the file's storage URL; its folder must exist.
        :param text: the new content (UTF-8).
        """
        scheme, path = self._scheme_path(url)
        folder, _, name = path.rstrip("/").rpartition("/")
        tmp = f"{folder}/.{name}.tmp-{uuid.uuid4().hex}"
        if scheme == "file":
            Path(tmp).write_text(text, encoding="utf-8")
            os.replace(tmp, path)
            return
        client = self._webhdfs()
        client.write(tmp, data=text.encode("utf-8"), overwrite=True)
        # HDFS refuses to rename onto an existing file: delete it first (readers may see it absent, never partial).
        client.delete(path, recursive=False)
        client.rename(tmp, path)
