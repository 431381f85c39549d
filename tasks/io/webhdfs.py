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

Example::

    client = WebHdfsClient.from_env()
    client.write_bytes("hdfs://nn:8020/data/x.json", b"{}")
    client.read_bytes("hdfs://nn:8020/data/x.json")
"""

from __future__ import annotations

import builtins
import logging
import os
import posixpath
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote, urlparse

import requests
from requests.auth import AuthBase
from urllib3.exceptions import NewConnectionError

log = logging.getLogger(__name__)

ENV_URL = "TFHUB_WEBHDFS_URL"
ENV_USER = "TFHUB_WEBHDFS_USER"
ENV_KERBEROS = "TFHUB_WEBHDFS_KERBEROS"

PREFIX = "/webhdfs/v1"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")

Body = bytes | IO[bytes] | None


class WebHdfsError(RuntimeError):
    """A WebHDFS operation that failed, or a client that cannot be set up.

    Attributes:
        op: the WebHDFS operation (``"CREATE"``...), None for set-up errors.
        path: the path or ``hdfs://`` URL as the caller gave it.
        status: the HTTP status, None when no answer came.
        exception: the ``RemoteException``'s class (``"FileNotFoundException"``...), when the server sent one.
        remote_message: the ``RemoteException``'s message, when the server sent one.
    """

    def __init__(self, message: str, *, op: str | None = None, path: str | None = None, status: int | None = None,
                 exception: str | None = None, remote_message: str | None = None) -> None:
        super().__init__(message)
        self.op = op
        self.path = path
        self.status = status
        self.exception = exception
        self.remote_message = remote_message


def hdfs_path(url: str) -> str:
    """The absolute HDFS path of an ``hdfs://namenode[:port]/path`` URL or of an absolute path.

    The path is taken literally, as Hadoop's ``Path`` does: ``%`` is not an escape.

    Raises:
        WebHdfsError: for another scheme or a relative path.
    """
    if "://" in url:
        parsed = urlparse(url)
        if parsed.scheme != "hdfs":
            raise WebHdfsError(f"{url!r} is not an hdfs:// URL")
        path = parsed.path or "/"
    else:
        path = url
    if not path.startswith("/"):
        raise WebHdfsError(f"HDFS path {url!r} is relative; use an absolute path or an hdfs:// URL")
    return path


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


def namenode_urls(value: str | Sequence[str]) -> list[str]:
    """The WebHDFS addresses of a comma-separated list (or a sequence) of namenode URLs, without trailing slashes.

    Raises:
        WebHdfsError: for an empty list, a URL that is not ``http[s]://``, or the same URL twice.
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    urls = [u.strip().rstrip("/") for u in items]
    if not urls or any(not u for u in urls):
        raise WebHdfsError(f"WebHDFS URL list {value!r} has an empty entry; separate namenode URLs with commas, "
                           f"e.g. http://nn1:9870,http://nn2:9870")
    for u in urls:
        if not u.startswith(("http://", "https://")):
            raise WebHdfsError(f"WebHDFS URL {u!r} must start with http:// or https://")
    if len(set(urls)) != len(urls):
        raise WebHdfsError(f"WebHDFS URL list {value!r} names the same namenode twice")
    return urls


def _never_sent(exc: requests.RequestException) -> bool:
    """Whether a request failed before any of it reached the server (no connection could be made)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError)


class WebHdfsClient:
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

    def __init__(self, base_url: str | Sequence[str], *, user: str | None = None, auth: AuthBase | None = None,
                 retries: int = 3, backoff_s: float = 0.2, max_backoff_s: float = 5.0, timeout_s: float = 60.0,
                 failover_retries: int = 8, chunk_size: int = 1 << 20,
                 session: requests.Session | None = None) -> None:
        self.base_urls = tuple(namenode_urls(base_url))
        if retries < 0:
            raise ValueError(f"retries must be at least 0, not {retries}")
        if failover_retries < 0:
            raise ValueError(f"failover_retries must be at least 0, not {failover_retries}")
        self._active = 0  # index in base_urls of the namenode that last answered as the active one
        self.user = user
        self.retries = retries
        self.failover_retries = failover_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.chunk_size = chunk_size
        self._session = session or requests.Session()
        self._kerberos = auth is not None
        if auth is not None:
            self._session.auth = auth

    @property
    def base_url(self) -> str:
        """The WebHDFS address of the namenode that requests go to first: the one that last answered as active."""
        return self.base_urls[self._active]

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

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> WebHdfsClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

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

    # -- protocol ----------------------------------------------------------------------------------------------

    def _url(self, path: str, base_url: str | None = None) -> str:
        return f"{base_url or self.base_url}{PREFIX}{quote(hdfs_path(path), safe='/')}"

    def _params(self, op: str, extra: Mapping[str, str]) -> dict[str, str]:
        params = {"op": op}
        if self.user:
            params["doas" if self._kerberos else "user.name"] = self.user
        params.update(extra)
        return params

    def _namenode(self, method: str, op: str, path: str, params: Mapping[str, str] | None = None, *,
                  ok: Iterable[int] = (200,), idempotent: bool = True, stream: bool = False) -> requests.Response:
        resp = self._send(method, op, path, None, params=self._params(op, params or {}), idempotent=idempotent,
                          stream=stream)
        if resp.status_code not in ok:
            err = self._error(op, path, resp)
            resp.close()
            raise err
        return resp

    def _redirect(self, method: str, op: str, path: str, params: Mapping[str, str]) -> str:
        """Step one of OPEN, CREATE and APPEND: the datanode address the namenode redirects to."""
        resp = self._namenode(method, op, path, params, ok=(307,))
        location = resp.headers.get("Location")
        if not location:
            raise WebHdfsError(f"WebHDFS {op} {path}: the namenode's 307 answer has no Location header",
                               op=op, path=path, status=307)
        return location

    def _datanode(self, method: str, op: str, path: str, location: str, body: Callable[[], Body], *,
                  idempotent: bool, ok: Iterable[int] = (200,), stream: bool = False) -> requests.Response:
        """Step two: the request to the datanode, at the address the namenode gave (it carries the parameters)."""
        resp = self._send(method, op, path, location, body=body, idempotent=idempotent, stream=stream)
        if resp.status_code not in ok:
            err = self._error(op, path, resp)
            resp.close()
            raise err
        return resp

    def _open(self, path: str, offset: int, length: int | None) -> requests.Response:
        params = {"offset": str(offset)}
        if length is not None:
            params["length"] = str(length)
        # A namenode redirects to a datanode; HttpFS (and some gateways) answer with the data themselves.
        resp = self._namenode("GET", "OPEN", path, params, ok=(200, 307), stream=True)
        if resp.status_code == 200:
            return resp
        location = resp.headers.get("Location")
        resp.close()
        if not location:
            raise WebHdfsError(f"WebHDFS OPEN {path}: the namenode's 307 answer has no Location header",
                               op="OPEN", path=path, status=307)
        return self._datanode("GET", "OPEN", path, location, lambda: None, idempotent=True, stream=True)

    def _create(self, path: str, body: Callable[[], Body], overwrite: bool) -> None:
        location = self._redirect("PUT", "CREATE", path, {"overwrite": str(overwrite).lower()})
        # Repeating a CREATE that may have been received is harmless only when it overwrites.
        self._datanode("PUT", "CREATE", path, location, body, idempotent=overwrite, ok=(200, 201)).close()

    def _send(self, method: str, op: str, path: str, url: str | None, *, params: Mapping[str, str] | None = None,
              body: Callable[[], Body] | None = None, idempotent: bool, stream: bool = False) -> requests.Response:
        """One HTTP request, repeated after a connection failure or a 503 (or a ``RetriableException``).

        ``url`` None is a namenode request: it goes to the active namenode and fails over to the others (see the
        module docstring). A request that failed after it may have reached the server is repeated, on the same
        namenode or another, only when ``idempotent``.
        """
        attempt = 0  # waits so far for 503s, RetriableExceptions and connection failures
        rounds = 0  # waits so far because every namenode was a standby or unreachable
        failed: set[int] = set()  # namenodes that failed (standby or unreachable) since the last wait
        several = url is None and len(self.base_urls) > 1
        node = self._active
        sent = 0
        while True:
            target = self._url(path, self.base_urls[node]) if url is None else url
            sent += 1
            data = body() if body is not None else None
            headers = {"Content-Type": "application/octet-stream"} if data is not None else None
            try:
                resp = self._session.request(method, target, params=params, data=data, headers=headers,
                                             allow_redirects=False, stream=stream, timeout=self.timeout_s)
            except (requests.ConnectionError, requests.Timeout) as e:
                repeatable = idempotent or _never_sent(e)
                if several and repeatable:
                    failed.add(node)
                    other = self._next_namenode(node, failed, op, f"unreachable ({type(e).__name__})")
                    if other is None and rounds < self.failover_retries:
                        self._wait(rounds)
                        rounds += 1
                        failed.clear()
                        other = self._next_namenode(node, failed, op, "unreachable, and so are the others")
                    if other is not None:
                        node = other
                        continue
                    raise self._transport_error(op, path, e, attempts=sent, namenodes=len(self.base_urls)) from e
                if attempt < self.retries and repeatable:
                    self._wait(attempt)
                    attempt += 1
                    continue
                raise self._transport_error(op, path, e, attempts=attempt + 1) from e
            if url is None and _remote_exception_if_403(resp) == "StandbyException":
                if several:
                    failed.add(node)
                    other = self._next_namenode(node, failed, op, "a standby")
                    if other is None and rounds < self.failover_retries:
                        resp.close()
                        self._wait(rounds)
                        rounds += 1
                        failed.clear()
                        other = self._next_namenode(node, failed, op, "a standby, and so are the others")
                    if other is not None:
                        resp.close()
                        node = other
                        continue
                return resp  # an error naming the StandbyException (see _error)
            if attempt < self.retries and self._retriable(resp):
                resp.close()
                self._wait(attempt)
                attempt += 1
                continue
            if url is None:
                self._active = node  # the one that answered; the next requests go to it first
            return resp

    def _next_namenode(self, node: int, failed: set[int], op: str, why: str) -> int | None:
        """The next namenode after ``node`` not in ``failed``, now the one requests go to; None when all failed."""
        n = len(self.base_urls)
        for step in range(1, n):
            other = (node + step) % n
            if other not in failed:
                log.warning("WebHDFS %s: namenode %s is %s; failing over to %s", op, self.base_urls[node], why,
                            self.base_urls[other])
                self._active = other
                return other
        return None

    @staticmethod
    def _retriable(resp: requests.Response) -> bool:
        if resp.status_code == 503:
            return True
        # Hadoop's "try again later", e.g. a namenode still starting up, sent before the operation is attempted.
        return resp.status_code == 403 and _remote_exception(resp)[0] == "RetriableException"

    def _wait(self, attempt: int) -> None:
        time.sleep(min(self.backoff_s * 2**attempt, self.max_backoff_s))

    @staticmethod
    def _error(op: str, path: str, resp: requests.Response) -> WebHdfsError:
        exception, message = _remote_exception(resp)
        if exception is not None:
            text = f"WebHDFS {op} {path}: {exception}: {message} (HTTP {resp.status_code})"
            if exception == "StandbyException":
                text += (f"; no namenode answered as the active one ({ENV_URL} must list every namenode of an HA "
                         f"pair, separated by commas)")
        else:
            body = " ".join(resp.text.split())[:300]
            text = f"WebHDFS {op} {path}: HTTP {resp.status_code} {resp.reason}" + (f": {body}" if body else "")
        return WebHdfsError(text, op=op, path=path, status=resp.status_code, exception=exception,
                            remote_message=message)

    def _transport_error(self, op: str, path: str, e: Exception, attempts: int | None = None,
                         namenodes: int = 1) -> WebHdfsError:
        tries = f" after {attempts} attempts" if attempts and attempts > 1 else ""
        where = f" on each of the namenodes {', '.join(self.base_urls)}" if namenodes > 1 else ""
        return WebHdfsError(f"WebHDFS {op} {path}: {type(e).__name__}{tries}{where}: {e}", op=op, path=path)


def _remote_exception_if_403(resp: requests.Response) -> str | None:
    """The ``RemoteException`` class of a 403 answer (a standby namenode's ``StandbyException``...), else None."""
    return _remote_exception(resp)[0] if resp.status_code == 403 else None


def _remote_exception(resp: requests.Response) -> tuple[str | None, str | None]:
    """The ``(exception, message)`` of a WebHDFS ``RemoteException`` answer; ``(None, None)`` for another body."""
    try:
        remote = resp.json()["RemoteException"]
        return str(remote["exception"]), str(remote.get("message", ""))
    except (ValueError, KeyError, TypeError):
        return None, None
