"""The WebHDFS wire protocol under ``WebHdfsClient`` (``tasks/io/webhdfs.py``): requests, retries, failover, errors.

This module owns how one WebHDFS operation travels: the namenode request and, for ``OPEN``, ``CREATE`` and
``APPEND``, the second request to the datanode the namenode redirects to; the bounded retries of connection
failures, ``503`` and ``RetriableException`` answers (a request that may have reached the server repeated only
when that is harmless); the failover between the namenodes of a high-availability pair; and the mapping of
answers to ``WebHdfsError``. The file-system operations built on it (status, list, read, write, upload...) and the
configuration from the environment are in ``webhdfs.py``, whose docstring tells the behaviour.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import IO
from urllib.parse import quote, urlparse

import requests
from requests.auth import AuthBase
from urllib3.exceptions import NewConnectionError

log = logging.getLogger("tasks.io.webhdfs")

ENV_URL = "TFHUB_WEBHDFS_URL"
PREFIX = "/webhdfs/v1"

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


class WebHdfsTransport:
    """The requests of a WebHDFS client: see the module docstring; ``WebHdfsClient`` adds the operations.

    Args: those of ``WebHdfsClient``.
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

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> WebHdfsTransport:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- the two-step protocol, retries and failover ---------------------------------------------------------------

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
        return self._expect(resp, op, path, ok)

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
        return self._expect(resp, op, path, ok)

    def _expect(self, resp: requests.Response, op: str, path: str, ok: Iterable[int]) -> requests.Response:
        """``resp`` when its status is one of ``ok``; otherwise it is closed and its error raised."""
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
                    other, rounds = self._fail_over(node, failed, rounds, op, f"unreachable ({type(e).__name__})",
                                                    "unreachable, and so are the others")
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
                    other, rounds = self._fail_over(node, failed, rounds, op, "a standby",
                                                    "a standby, and so are the others", before_wait=resp.close)
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

    def _fail_over(self, node: int, failed: set[int], rounds: int, op: str, why: str, why_all: str,
                   before_wait: Callable[[], None] | None = None) -> tuple[int | None, int]:
        """After namenode ``node`` failed (``why``): the next one to try and the waits so far. When every namenode
        has failed since the last wait and fewer than ``failover_retries`` waits were made, waits first and starts
        a new round; None when there is no namenode left to try."""
        failed.add(node)
        other = self._next_namenode(node, failed, op, why)
        if other is None and rounds < self.failover_retries:
            if before_wait is not None:
                before_wait()
            self._wait(rounds)
            rounds += 1
            failed.clear()
            other = self._next_namenode(node, failed, op, why_all)
        return other, rounds

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
