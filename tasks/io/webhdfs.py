"""A small WebHDFS client, so that the job code can read and write ``hdfs://`` storage URLs.

Why WebHDFS: TensorFlow 2.21 has no ``hdfs://`` filesystem (it was moved to tensorflow-io, and tensorflow-io does
not support it for current TensorFlow releases), and the other native route, libhdfs through pyarrow, needs a Hadoop
install, ``HADOOP_HOME`` and a ``CLASSPATH`` of Hadoop jars on every Spark executor. The WebHDFS REST API
(https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html) is served by every namenode
and needs only HTTP: this module speaks it with ``requests``, and nothing else.

Where to connect comes from the environment, so that the same job code runs on any cluster:

- ``TFHUB_WEBHDFS_URL``: the namenode's WebHDFS address, e.g. ``http://namenode:9870``; with NameNode high
  availability, every namenode's, separated by commas (``http://nn1:9870,http://nn2:9870``). An ``hdfs://`` URL's
  own ``namenode[:port]`` part names the RPC endpoint, which WebHDFS does not use; only its path is. On Airflow,
  the operators set it from the WebHDFS connection (``plugins/tfhub_spark/operators/spark_job.py``).
- ``TFHUB_WEBHDFS_USER``: the user to act as (sent as ``user.name``) on a cluster without Kerberos.
- ``TFHUB_WEBHDFS_KERBEROS=1``: authenticate with SPNEGO (``requests_kerberos``) from the process's Kerberos ticket;
  ``TFHUB_WEBHDFS_USER`` is then sent as ``doas``, a proxy user.

Reads and writes follow the protocol's two steps explicitly: the namenode answers ``OPEN``, ``CREATE`` and
``APPEND`` with a ``307`` redirect to a datanode, and the data goes to or comes from that datanode. (``requests``
would follow a 307 for a ``PUT`` by re-sending the body to the new address, but only a body it can rewind, and it
would send the whole body to the namenode first.) Connection failures and ``503 Service Unavailable`` answers are
retried a bounded number of times with exponential back-off; a request that may have reached the server is only
retried when repeating it is harmless.

With several namenodes, a namenode request that is answered with a ``StandbyException`` (a standby namenode, 403) or
that cannot connect goes to the next namenode at once, and the client remembers the one that answered, as Hadoop's
``ConfiguredFailoverProxyProvider`` does. When every namenode has failed in turn (a failover in progress: none is
active yet), the client waits and tries them all again, ``failover_retries`` times. Datanode requests are not
affected: a datanode serves whichever namenode is active.

This module owns the configuration from the environment and the file-system operations of ``WebHdfsClient``
(status, list, mkdirs, delete, rename, reads, writes, folder uploads and downloads); how each request travels
(the two steps, retries, failover, errors) is ``webhdfs_protocol.py``'s.

Example::

    client = WebHdfsClient.from_env()
    client.write_bytes("hdfs://nn:8020/data/x.json", b"{}")
    client.read_bytes("hdfs://nn:8020/data/x.json")
"""

from __future__ import annotations

import builtins
import os
import posixpath
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import requests
from requests.auth import AuthBase

from tasks.io.webhdfs_protocol import ENV_URL, PREFIX, WebHdfsError, WebHdfsTransport, hdfs_path, namenode_urls

__all__ = ["ENV_KERBEROS", "ENV_URL", "ENV_USER", "PREFIX", "WebHdfsClient", "WebHdfsError", "hdfs_path",
           "namenode_urls"]

ENV_USER = "TFHUB_WEBHDFS_USER"
ENV_KERBEROS = "TFHUB_WEBHDFS_KERBEROS"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _flag(environ: Mapping[str, str], name: str) -> bool:
    value = environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise WebHdfsError(f"{name}={environ[name]!r}: use 1 or 0")


def _kerberos_auth() -> AuthBase:
    try:
        from requests_kerberos import OPTIONAL, HTTPKerberosAuth
    except ImportError as e:
        raise WebHdfsError(f"{ENV_KERBEROS}=1 needs the requests-kerberos package, which cannot be imported: {e}") \
            from e
    return HTTPKerberosAuth(mutual_authentication=OPTIONAL)


class WebHdfsClient(WebHdfsTransport):
    """A WebHDFS client of one namenode, or of the namenodes of a high-availability pair (or more).

    Paths are absolute HDFS paths or ``hdfs://`` URLs (whose namenode part is not used, see the module docstring).

    Args:
        base_url: the namenode's WebHDFS address, ``http[s]://host:port`` (a gateway's prefix path may follow);
            with high availability, every namenode's, as a comma-separated string or a sequence.
        user: the user to act as: ``user.name`` without ``auth``, ``doas`` (a proxy user) with it.
        auth: a ``requests`` authentication, e.g. ``HTTPKerberosAuth``.
        retries: how many times a request is repeated after a connection failure or a 503 answer.
        backoff_s: the wait before the first repetition; it doubles with each one, up to ``max_backoff_s``.
        max_backoff_s: the longest wait between two attempts.
        timeout_s: the connect and read timeout of each request.
        failover_retries: with several namenodes, how many times all of them are tried again (after a wait, as
            for ``retries``) when none answered as the active one.
        chunk_size: the size of the pieces downloads are read in.
        session: a ``requests.Session`` to use (for TLS settings, say); a new one by default.
    """

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> WebHdfsClient:
        """A client configured by ``TFHUB_WEBHDFS_URL``, ``TFHUB_WEBHDFS_USER`` and ``TFHUB_WEBHDFS_KERBEROS``.

        Args:
            environ: the environment to read, ``os.environ`` by default.
            **kwargs: further arguments of :class:`WebHdfsClient` (``retries``...).

        Raises:
            WebHdfsError: when ``TFHUB_WEBHDFS_URL`` is not set, or Kerberos is asked for and unavailable.
        """
        env = os.environ if environ is None else environ
        url = env.get(ENV_URL, "").strip()
        if not url:
            raise WebHdfsError(f"{ENV_URL} is not set: set it to the namenode's WebHDFS address "
                               f"(e.g. http://namenode:9870; with high availability every namenode's, separated by "
                               f"commas) to use hdfs:// storage URLs")
        try:
            urls = namenode_urls(url)
        except WebHdfsError as e:
            raise WebHdfsError(f"{ENV_URL}: {e}") from None
        auth = _kerberos_auth() if _flag(env, ENV_KERBEROS) else None
        return cls(urls, user=env.get(ENV_USER) or None, auth=auth, **kwargs)

    # -- metadata ----------------------------------------------------------------------------------------------

    def status(self, path: str) -> dict[str, Any] | None:
        """The ``FileStatus`` of a file or folder (``type``, ``length``, ``modificationTime``...); None if missing."""
        resp = self._namenode("GET", "GETFILESTATUS", path, ok=(200, 404))
        if resp.status_code == 404:
            err = self._error("GETFILESTATUS", path, resp)
            if err.exception == "FileNotFoundException":
                return None
            raise err  # a 404 without a RemoteException: not a WebHDFS endpoint (a wrong URL or port)
        return resp.json()["FileStatus"]

    def exists(self, path: str) -> bool:
        return self.status(path) is not None

    def list(self, path: str) -> list[dict[str, Any]]:
        """The ``FileStatus`` of each entry of a folder, by name; an entry's name is its ``pathSuffix``.

        Raises:
            WebHdfsError: when the folder does not exist or ``path`` is a file.
        """
        statuses = self._namenode("GET", "LISTSTATUS", path).json()["FileStatuses"]["FileStatus"]
        if len(statuses) == 1 and statuses[0]["pathSuffix"] == "":
            raise WebHdfsError(f"WebHDFS LISTSTATUS {path}: is a file, not a directory", op="LISTSTATUS", path=path)
        return statuses

    def content_summary(self, path: str) -> dict[str, Any]:
        """The ``ContentSummary`` of a file or folder: ``length``, ``fileCount``, ``directoryCount``..."""
        return self._namenode("GET", "GETCONTENTSUMMARY", path).json()["ContentSummary"]

    def mkdirs(self, path: str, permission: int | None = None) -> None:
        """Creates a folder and its missing parents; an existing folder is fine.

        Args:
            path: the folder.
            permission: its mode (e.g. ``0o750``); the namenode's default (755) otherwise.
        """
        params = {} if permission is None else {"permission": format(permission, "o")}
        if not self._namenode("PUT", "MKDIRS", path, params=params).json()["boolean"]:
            raise WebHdfsError(f"WebHDFS MKDIRS {path}: the namenode answered false", op="MKDIRS", path=path)

    def delete(self, path: str, recursive: bool = False) -> bool:
        """Deletes a file or folder; False when it did not exist.

        Raises:
            WebHdfsError: for a folder that is not empty, unless ``recursive``.
        """
        resp = self._namenode("DELETE", "DELETE", path, params={"recursive": str(recursive).lower()},
                              idempotent=False)
        return bool(resp.json()["boolean"])

    def rename(self, src: str, dst: str) -> bool:
        """Renames ``src`` to ``dst`` with HDFS's semantics.

        When ``dst`` is an existing folder, ``src`` is moved into it. HDFS answers False, not an error, when ``src``
        does not exist, ``dst`` exists as a file (or ``dst``/name of ``src`` exists) or ``dst``'s parent does not.
        """
        resp = self._namenode("PUT", "RENAME", src, params={"destination": hdfs_path(dst)}, idempotent=False)
        return bool(resp.json()["boolean"])

    # -- data --------------------------------------------------------------------------------------------------

    def read_bytes(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        """The content of a file, or ``length`` bytes of it from ``offset``."""
        resp = self._open(path, offset, length)
        try:
            return resp.content
        except requests.RequestException as e:
            raise self._transport_error("OPEN", path, e) from e
        finally:
            resp.close()

    def download(self, path: str, local_file: os.PathLike[str] | str) -> int:
        """Streams a file to a local file, in ``chunk_size`` pieces; returns the number of bytes.

        The data goes to a hidden sibling first, renamed over ``local_file`` once complete, so an interrupted
        download leaves no partial file behind.
        """
        target = Path(local_file)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part-{uuid.uuid4().hex}")
        resp = self._open(path, 0, None)
        n = 0
        try:
            with open(tmp, "wb") as f:
                for chunk in resp.iter_content(self.chunk_size):
                    f.write(chunk)
                    n += len(chunk)
            os.replace(tmp, target)
        except requests.RequestException as e:
            raise self._transport_error("OPEN", path, e) from e
        finally:
            resp.close()
            tmp.unlink(missing_ok=True)
        return n

    def write_bytes(self, path: str, data: bytes, overwrite: bool = True) -> None:
        """Creates (or, with ``overwrite``, replaces) a file with ``data``; missing parent folders are created.

        Raises:
            WebHdfsError: ``FileAlreadyExistsException`` when the file exists and not ``overwrite``.
        """
        self._create(path, lambda: data, overwrite)

    def append_bytes(self, path: str, data: bytes) -> None:
        """Appends ``data`` to an existing file."""
        location = self._redirect("POST", "APPEND", path, {})
        self._datanode("POST", "APPEND", path, location, lambda: data, idempotent=False)

    def upload(self, local_file: os.PathLike[str] | str, path: str, overwrite: bool = True) -> None:
        """Streams a local file to HDFS; like :meth:`write_bytes` otherwise."""
        with open(local_file, "rb") as f:
            def body() -> IO[bytes]:
                f.seek(0)
                return f

            self._create(path, body, overwrite)

    def upload_dir(self, local_dir: os.PathLike[str] | str, path: str,
                   overwrite: bool = True) -> builtins.list[str]:
        """Copies a local folder's files and folders, empty ones included, into ``path`` (created if missing).

        Entries already under ``path`` that the local folder does not have are left alone.

        Returns:
            The copied files' paths relative to ``local_dir``, with ``/`` separators, in the order copied.
        """
        root = Path(local_dir)
        if not root.is_dir():
            raise NotADirectoryError(f"{root} is not a folder")
        base = hdfs_path(path)
        self.mkdirs(path)
        copied: builtins.list[str] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = Path(dirpath).relative_to(root).as_posix()
            remote = base if rel == "." else posixpath.join(base, rel)
            for d in dirnames:
                self.mkdirs(posixpath.join(remote, d))
            for name in sorted(filenames):
                self.upload(Path(dirpath) / name, posixpath.join(remote, name), overwrite=overwrite)
                copied.append(name if rel == "." else f"{rel}/{name}")
        return copied

    def download_dir(self, path: str, local_dir: os.PathLike[str] | str) -> builtins.list[str]:
        """Copies an HDFS folder's files and folders, empty ones included, into ``local_dir`` (created if missing).

        Returns:
            The copied files' paths relative to ``path``, with ``/`` separators, in the order copied.
        """
        st = self.status(path)
        if st is None or st["type"] != "DIRECTORY":
            raise WebHdfsError(f"WebHDFS download_dir {path}: " + ("does not exist" if st is None else
                                                                 "is a file, not a directory"), path=path)
        root = Path(local_dir)
        root.mkdir(parents=True, exist_ok=True)
        copied: builtins.list[str] = []
        pending = [""]
        base = hdfs_path(path)
        while pending:
            rel = pending.pop(0)
            for entry in self.list(posixpath.join(base, rel) if rel else base):
                child = f"{rel}/{entry['pathSuffix']}" if rel else entry["pathSuffix"]
                if entry["type"] == "DIRECTORY":
                    (root / child).mkdir(exist_ok=True)
                    pending.append(child)
                else:
                    self.download(posixpath.join(base, child), root / child)
                    copied.append(child)
        return copied

