"""A WebHDFS REST API test double: a namenode and a datanode HTTP server over a local folder.

HDFS cannot be installed on the machines that run the tests, so code that talks to HDFS is tested over the real
WebHDFS protocol against this server instead. It follows the Hadoop WebHDFS REST API
(https://hadoop.apache.org/docs/stable/hadoop-project-dist/hadoop-hdfs/WebHDFS.html) for the operations it
implements, including the parts clients get wrong most often:

- two servers on two ports: the "namenode" answers metadata operations and redirects ``OPEN``, ``CREATE`` and
  ``APPEND`` with ``307 Temporary Redirect`` to the "datanode", which moves the bytes; the datanode refuses requests
  that did not come through a namenode redirect (no ``namenoderpcaddress``), as Hadoop's does;
- ``CREATE`` defaults to ``overwrite=false``; an existing file is a ``FileAlreadyExistsException`` (403) raised by the
  datanode, when the data arrives, not by the namenode;
- ``RENAME`` answers ``{"boolean": false}`` rather than an error when the source is missing, the destination exists
  as a file or its parent is missing, and moves the source *into* an existing destination directory;
- ``DELETE`` of a missing path is ``{"boolean": false}``; of a non-empty directory without ``recursive=true`` it is a
  ``PathIsNotEmptyDirectoryException``;
- errors are ``{"RemoteException": {...}}`` JSON with the HTTP status Hadoop's ``ExceptionHandler`` gives the
  exception class: 404 for ``FileNotFoundException``, 400 for ``IllegalArgumentException`` and
  ``UnsupportedOperationException``, 403 for every other ``IOException``;
- ``CREATE`` (and ``APPEND``) write to the real path as the data arrives: like an HDFS file under construction, the
  file is visible while it is written, but its status and content summary report only the length of its completed
  blocks (what a NameNode knows), not the bytes written so far;
- high availability: with ``namenodes=2`` (or more) there are that many namenodes over one namespace, one of them
  active; the others answer every request with a ``StandbyException`` (403), as a standby NameNode does. Tests
  switch the active one (:meth:`WebHdfsTestServer.fail_over`, or :meth:`WebHdfsTestServer.fail_over_after` to
  switch in the middle of a run) and stop one (:meth:`WebHdfsTestServer.stop_namenode`);
- request bodies may come with ``Content-Length`` or ``Transfer-Encoding: chunked``; connections are kept alive
  (HTTP/1.1).

Operations: ``GETFILESTATUS``, ``LISTSTATUS``, ``GETCONTENTSUMMARY``, ``GETHOMEDIRECTORY``, ``GET_BLOCK_LOCATIONS``
(only ``isUnderConstruction``, ``fileLength`` and ``isLastBlockComplete``), ``OPEN`` (``offset``,
``length``), ``MKDIRS``, ``CREATE`` (``overwrite``, ``permission``, ``noredirect``), ``APPEND``, ``RENAME``,
``DELETE``. Other valid WebHDFS operations answer ``UnsupportedOperationException`` (400), unknown ones
``IllegalArgumentException`` (400). There is no permission checking, no quota and one datanode; owners are the
``user.name`` of the request that created a path (``dr.who`` without one, as Hadoop's static web user), and
``superuser`` for what was already in the folder.

Tests can read the request log (``server.requests``, or ``server.calls()`` for ``(method, op, path)`` triples) to
check that redirects were followed, and make the next requests fail with :meth:`WebHdfsTestServer.inject_faults`.
What the server does not model is listed in ``WEBHDFS_FIDELITY.md`` beside this file.

Usage::

    with WebHdfsTestServer(tmp_path) as srv:
        requests.get(f"{srv.url}/webhdfs/v1/?op=LISTSTATUS&user.name=tester")
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

PREFIX = "/webhdfs/v1"
STATIC_WEB_USER = "dr.who"
CHUNK = 64 * 1024

# Valid operations per HTTP method (Hadoop's GetOpParam, PutOpParam, PostOpParam, DeleteOpParam); the subset this
# server implements is in the dispatch tables of _NamenodeHandler and _DatanodeHandler.
_VALID_OPS = {
    "GET": {"OPEN", "GETFILESTATUS", "LISTSTATUS", "GETCONTENTSUMMARY", "GETQUOTAUSAGE", "GETFILECHECKSUM",
            "GETHOMEDIRECTORY", "GETDELEGATIONTOKEN", "GETTRASHROOT", "GETXATTRS", "LISTXATTRS", "GETACLSTATUS",
            "CHECKACCESS", "LISTSTATUS_BATCH", "GETALLSTORAGEPOLICY", "GETSTORAGEPOLICY", "GETSNAPSHOTDIFF",
            "GETSNAPSHOTTABLEDIRECTORYLIST", "GETFILEBLOCKLOCATIONS", "GETSERVERDEFAULTS", "GETSTATUS",
            "GETECPOLICY", "GETSNAPSHOTLIST", "GET_BLOCK_LOCATIONS"},
    "PUT": {"CREATE", "MKDIRS", "CREATESYMLINK", "RENAME", "SETREPLICATION", "SETOWNER", "SETPERMISSION",
            "SETTIMES", "RENEWDELEGATIONTOKEN", "CANCELDELEGATIONTOKEN", "MODIFYACLENTRIES", "REMOVEACLENTRIES",
            "REMOVEDEFAULTACL", "REMOVEACL", "SETACL", "SETXATTR", "REMOVEXATTR", "ALLOWSNAPSHOT",
            "DISALLOWSNAPSHOT", "CREATESNAPSHOT", "RENAMESNAPSHOT", "SETSTORAGEPOLICY", "SATISFYSTORAGEPOLICY",
            "SETQUOTA", "SETQUOTABYSTORAGETYPE", "ENABLEECPOLICY", "DISABLEECPOLICY", "SETECPOLICY"},
    "POST": {"APPEND", "CONCAT", "TRUNCATE", "UNSETSTORAGEPOLICY", "UNSETECPOLICY"},
    "DELETE": {"DELETE", "DELETESNAPSHOT"},
}
_OP_ENUM = {"GET": "GetOpParam", "PUT": "PutOpParam", "POST": "PostOpParam", "DELETE": "DeleteOpParam"}

_JAVA_CLASS = {
    "FileNotFoundException": "java.io.FileNotFoundException",
    "FileAlreadyExistsException": "org.apache.hadoop.fs.FileAlreadyExistsException",
    "ParentNotDirectoryException": "org.apache.hadoop.fs.ParentNotDirectoryException",
    "PathIsNotEmptyDirectoryException": "org.apache.hadoop.fs.PathIsNotEmptyDirectoryException",
    "InvalidPathException": "org.apache.hadoop.fs.InvalidPathException",
    "AccessControlException": "org.apache.hadoop.security.AccessControlException",
    "RetriableException": "org.apache.hadoop.ipc.RetriableException",
    "StandbyException": "org.apache.hadoop.ipc.StandbyException",
    "SafeModeException": "org.apache.hadoop.hdfs.server.namenode.SafeModeException",
    "IOException": "java.io.IOException",
    "EOFException": "java.io.EOFException",
    "IllegalArgumentException": "java.lang.IllegalArgumentException",
    "UnsupportedOperationException": "java.lang.UnsupportedOperationException",
}
# Hadoop's web ExceptionHandler: FileNotFoundException -> 404, IllegalArgumentException (InvalidPathException is
# one) and UnsupportedOperationException -> 400, any other IOException -> 403.
_BAD_REQUEST = {"IllegalArgumentException", "UnsupportedOperationException", "InvalidPathException"}


def http_status_of(exception: str) -> int:
    """The HTTP status Hadoop's WebHDFS answers a RemoteException of this (simple) class name with."""
    if exception == "FileNotFoundException":
        return 404
    if exception in _BAD_REQUEST:
        return 400
    return 403


class RemoteError(Exception):
    """An error answered as a WebHDFS ``RemoteException``."""

    def __init__(self, exception: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{exception}: {message}")
        self.exception = exception
        self.message = message
        self.status = status if status is not None else http_status_of(exception)

    def body(self) -> dict[str, Any]:
        return {"RemoteException": {
            "exception": self.exception,
            "javaClassName": _JAVA_CLASS.get(self.exception, "java.io.IOException"),
            "message": self.message,
        }}


class LoggedRequest(NamedTuple):
    """One request as the test server saw it; the first three fields are ``(method, op, path)``."""

    method: str
    op: str
    path: str
    node: str  # "namenode" or "datanode"
    user: str
    status: int  # 0 when no answer was sent (a dropped connection)
    body_bytes: int  # request body bytes received
    port: int = 0  # the port of the node that received it (tells the namenodes of an HA pair apart)
    host: str = ""  # the address of the node that received it (namenodes may share a port on other addresses)


@dataclass
class _Fault:
    remaining: int
    status: int
    exception: str | None
    message: str
    op: str | None
    node: str | None

    def matches(self, node: str, op: str) -> bool:
        return self.remaining > 0 and self.node in (None, node) and self.op in (None, op)


def _invalid_param(name: str, value: str, why: str) -> RemoteError:
    return RemoteError("IllegalArgumentException", f'Invalid value for webhdfs parameter "{name}": {why}')


class _Params:
    """Query parameters, with Hadoop's parsing: case-insensitive names, typed values, defaults."""

    def __init__(self, query: str) -> None:
        self.raw = {k.lower(): v for k, v in parse_qsl(query, keep_blank_values=True)}

    def get(self, name: str) -> str | None:
        return self.raw.get(name)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw.get(name)
        if value is None or value == "":
            return default
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise _invalid_param(name, value, f'Failed to parse "{value}" to Boolean.')

    def long(self, name: str, default: int | None, minimum: int = 0) -> int | None:
        value = self.raw.get(name)
        if value is None or value == "" or value.lower() == "null":
            return default
        try:
            n = int(value, 10)
        except ValueError:
            raise _invalid_param(name, value, f'Failed to parse "{value}" as a radix-10 long integer.') from None
        if n < minimum:
            raise _invalid_param(name, value, f"{n} = {name} < {minimum}")
        return n

    def permission(self, default: int) -> int:
        value = self.raw.get("permission")
        if value is None or value == "":
            return default
        try:
            mode = int(value, 8)
        except ValueError:
            raise _invalid_param("permission", value, f'Failed to parse "{value}" as a radix-8 short integer.') \
                from None
        if not 0 <= mode <= 0o1777:
            raise _invalid_param("permission", value, f"{value} is out of range [0, 1777]")
        return mode


class _Namespace:
    """The HDFS namespace over a local folder: path validation, file statuses, ownership and the namespace lock."""

    def __init__(self, root: Path, superuser: str, group: str, block_size: int, replication: int) -> None:
        self.root = root
        self.superuser = superuser
        self.group = group
        self.block_size = block_size
        self.replication = replication
        self.lock = threading.RLock()  # the namenode's global lock: one metadata change at a time
        self._owners: dict[str, str] = {}
        # Files under construction (a CREATE or APPEND receiving data), by inode, so that a rename or a delete
        # while they are written needs no bookkeeping: inode -> the file's length before the write began.
        self._writing: dict[int, int] = {}

    def begin_write(self, fd: int, length: int) -> None:
        self._writing[os.fstat(fd).st_ino] = length

    def end_write(self, fd: int) -> None:
        self._writing.pop(os.fstat(fd).st_ino, None)

    def is_being_written(self, st: os.stat_result) -> bool:
        return st.st_ino in self._writing

    def length_of(self, st: os.stat_result) -> int:
        """A file's length as a NameNode reports it: for a file under construction, only its completed blocks
        (the block being written counts once it is complete), never less than its length before the write."""
        start = self._writing.get(st.st_ino)
        if start is None:
            return st.st_size
        return max(start, st.st_size // self.block_size * self.block_size)

    @staticmethod
    def normalize(raw: str) -> str:
        """An absolute, normalised HDFS path; a component of ``.``, ``..`` or with ``:`` is invalid, as in HDFS."""
        parts = [p for p in raw.split("/") if p]
        for p in parts:
            if p in (".", "..") or ":" in p:
                raise RemoteError("InvalidPathException", f"Invalid path name Invalid file name: {raw}")
        return "/" + "/".join(parts)

    def local(self, path: str) -> Path:
        return self.root.joinpath(*[p for p in path.split("/") if p])

    @staticmethod
    def parent(path: str) -> str:
        return path.rsplit("/", 1)[0] or "/"

    @staticmethod
    def ancestors(path: str) -> list[str]:
        """Proper ancestors of ``path``, from the root down, root excluded."""
        parts = [p for p in path.split("/") if p]
        return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]

    def owner(self, path: str) -> str:
        return self._owners.get(path, self.superuser)

    def set_owner(self, path: str, user: str) -> None:
        self._owners[path] = user

    def forget(self, path: str) -> None:
        prefix = path.rstrip("/") + "/"
        for p in [p for p in self._owners if p == path or p.startswith(prefix)]:
            del self._owners[p]

    def move_owners(self, src: str, dst: str) -> None:
        prefix = src.rstrip("/") + "/"
        moved = {p: u for p, u in self._owners.items() if p == src or p.startswith(prefix)}
        for p in moved:
            del self._owners[p]
        for p, u in moved.items():
            self._owners[dst + p[len(src):]] = u

    def status_of(self, path: str) -> os.stat_result | None:
        """The local status of ``path``, None when missing or when the path goes through a file."""
        try:
            return os.stat(self.local(path))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def file_status(self, path: str, suffix: str, st: os.stat_result) -> dict[str, Any]:
        is_dir = stat.S_ISDIR(st.st_mode)
        return {
            "accessTime": 0 if is_dir else st.st_atime_ns // 1_000_000,
            "blockSize": 0 if is_dir else self.block_size,
            "childrenNum": len(os.listdir(self.local(path))) if is_dir else 0,
            "fileId": st.st_ino,
            "group": self.group,
            "length": 0 if is_dir else self.length_of(st),
            "modificationTime": st.st_mtime_ns // 1_000_000,
            "owner": self.owner(path),
            "pathSuffix": suffix,
            "permission": format(stat.S_IMODE(st.st_mode) & 0o1777, "o"),
            "replication": 0 if is_dir else self.replication,
            "storagePolicy": 0,
            "type": "DIRECTORY" if is_dir else "FILE",
        }

    def check_parents_for_create(self, path: str) -> None:
        """Raises ParentNotDirectoryException when an existing ancestor of ``path`` is a file."""
        for a in self.ancestors(path):
            st = self.status_of(a)
            if st is None:
                return
            if not stat.S_ISDIR(st.st_mode):
                raise RemoteError("ParentNotDirectoryException", f"{a} (is not a directory)")

    def make_dirs(self, path: str, user: str, mode: int) -> None:
        """Creates ``path`` and its missing ancestors (the caller has checked that no ancestor is a file)."""
        for p in [*self.ancestors(path), path]:
            if self.status_of(p) is None:
                os.mkdir(self.local(p))
                os.chmod(self.local(p), mode)
                self.set_owner(p, user)


class _Node(ThreadingHTTPServer):
    """One threaded HTTP server (namenode or datanode) that can drop its kept-alive connections on stop."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, name: str, owner: WebHdfsTestServer, handler: type[BaseHTTPRequestHandler],
                 address: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.name = name
        self.owner = owner
        self.stopped = False
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._open_lock:
            sockets = list(self._open)
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass



def _open_file(ns: _Namespace, path: str, mode: str, missing: str):
    """The file at ``path`` opened in ``mode``, or the NameNode's answer for a path that is none: ``missing`` when
    nothing is there (OPEN and APPEND word it differently)."""
    try:
        return open(ns.local(path), mode)  # noqa: SIM115 - the caller's with-block closes it
    except (FileNotFoundError, NotADirectoryError):
        raise RemoteError("FileNotFoundException", missing) from None
    except IsADirectoryError:
        raise RemoteError("FileNotFoundException", f"Path is not a file: {path}") from None

class _Handler(BaseHTTPRequestHandler):
    """Parses a WebHDFS request, applies injected faults, dispatches to the node's operation, logs it."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm and the client's delayed
    # ACK add 40 ms to every kept-alive request.
    disable_nagle_algorithm = True
    server: _Node

    # Set per request.
    _op = ""
    _path = ""
    _user = STATIC_WEB_USER
    _status = 0
    _body_bytes = 0
    _body_done = False

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    # -- request body ------------------------------------------------------------------------------------------

    def body_chunks(self) -> Iterator[bytes]:
        """The request body, as sent with Content-Length or chunked transfer encoding."""
        if self._body_done:
            return
        self._body_done = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                yield from self._read_body(size)
                self.rfile.readline(3)  # CRLF after the chunk
        else:
            yield from self._read_body(int(self.headers.get("Content-Length") or 0))

    def _read_body(self, left: int) -> Iterator[bytes]:
        """The next ``left`` bytes of the request body, in pieces of at most ``CHUNK``."""
        while left:
            data = self.rfile.read(min(left, CHUNK))
            if not data:
                raise ConnectionError("request body ended early")
            left -= len(data)
            self._body_bytes += len(data)
            yield data

    def drain(self) -> None:
        for _ in self.body_chunks():
            pass

    # -- responses ---------------------------------------------------------------------------------------------

    def start_response(self, status: int) -> None:
        """Reads what is left of the request body, logs the request and sends the status line.

        The log entry is written before the client can see the response, so a test can assert on the log as soon
        as its request returns.
        """
        self.drain()
        self._status = status
        self.server.owner._log(self._entry())
        self.send_response(status)

    def _entry(self) -> LoggedRequest:
        return LoggedRequest(self.command, self._op, self._path, self.server.name, self._user, self._status,
                             self._body_bytes, self.server.server_address[1], self.server.server_address[0])

    def send_bytes(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.start_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def send_json(self, obj: Any, status: int = 200) -> None:
        self.send_bytes(status, json.dumps(obj).encode(), "application/json")

    def send_redirect(self, location: str) -> None:
        self.send_bytes(307, b"", "application/octet-stream", {"Location": location})

    def begin_stream(self, status: int, length: int, headers: dict[str, str] | None = None) -> None:
        self.start_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()

    # -- dispatch ----------------------------------------------------------------------------------------------

    def _handle(self) -> None:
        self._op, self._path, self._user = "", "", STATIC_WEB_USER
        self._status, self._body_bytes, self._body_done = 0, 0, False
        owner = self.server.owner
        try:
            url = urlsplit(self.path)
            params = _Params(url.query)
            self._user = params.get("user.name") or STATIC_WEB_USER
            self._op = (params.get("op") or "").upper()
            if not url.path.startswith(PREFIX):
                self.send_bytes(404, b"Not Found", "text/plain")
                return
            self._path = unquote(url.path[len(PREFIX):]) or "/"
            fault = owner._take_fault(self.server.name, self._op)
            if fault is not None:
                if fault.status == 0:  # drop the connection without an answer, as a crashing server would
                    self.drain()
                    self.close_connection = True
                    owner._log(self._entry())
                elif fault.exception is None:
                    self.send_bytes(fault.status, fault.message.encode(), "text/plain")
                else:
                    raise RemoteError(fault.exception, fault.message, fault.status)
                return
            valid = _VALID_OPS.get(self.command, set())
            if self._op not in valid:
                raise RemoteError("IllegalArgumentException",
                                  f'Invalid value for webhdfs parameter "op": No enum constant '
                                  f"org.apache.hadoop.hdfs.web.resources.{_OP_ENUM.get(self.command, 'GetOpParam')}"
                                  f".Op.{self._op or 'NULL'}")
            self._path = _Namespace.normalize(self._path)
            self.dispatch(self._op, self._path, params)
        except RemoteError as e:
            if self._status == 0:
                self.send_json(e.body(), e.status)
        except ConnectionError:  # the client went away (BrokenPipeError and ConnectionResetError are ones)
            self.close_connection = True
            if self._status == 0:
                owner._log(self._entry())  # with status 0: no answer was sent
        except Exception as e:  # noqa: BLE001 - a bug in the test server: answer 500 with the cause, as Jetty would
            if self._status == 0:
                err = RemoteError("RuntimeException", f"WebHDFS test server error: {type(e).__name__}: {e}", 500)
                self.send_json(err.body(), 500)
            else:
                self.close_connection = True

    def dispatch(self, op: str, path: str, params: _Params) -> None:
        raise NotImplementedError


class _NamenodeHandler(_Handler):
    """Metadata operations and redirects of data operations to the datanode."""

    def dispatch(self, op: str, path: str, params: _Params) -> None:
        ns = self.server.owner.namespace
        if not self.server.owner._is_active(self.server, op):
            # Hadoop's StandbyState.checkOperation: every client operation, read or write, is refused by a standby.
            category = "READ" if self.command == "GET" else "WRITE"
            raise RemoteError("StandbyException", f"Operation category {category} is not supported in state "
                                                  f"standby. Visit https://s.apache.org/sbnn-error")
        handler = {
            "GETFILESTATUS": self.get_file_status,
            "LISTSTATUS": self.list_status,
            "GETCONTENTSUMMARY": self.get_content_summary,
            "GETHOMEDIRECTORY": self.get_home_directory,
            "GET_BLOCK_LOCATIONS": self.get_block_locations,
            "OPEN": self.open,
            "MKDIRS": self.mkdirs,
            "RENAME": self.rename,
            "DELETE": self.delete,
            "CREATE": self.create,
            "APPEND": self.append,
        }.get(op)
        if handler is None:
            raise RemoteError("UnsupportedOperationException", f"{op} is not supported by the WebHDFS test server")
        with ns.lock:
            handler(ns, path, params)

    def get_file_status(self, ns: _Namespace, path: str, params: _Params) -> None:
        st = ns.status_of(path)
        if st is None:
            raise RemoteError("FileNotFoundException", f"File does not exist: {path}")
        self.send_json({"FileStatus": ns.file_status(path, "", st)})

    def list_status(self, ns: _Namespace, path: str, params: _Params) -> None:
        st = ns.status_of(path)
        if st is None:
            raise RemoteError("FileNotFoundException", f"File {path} does not exist.")
        if not stat.S_ISDIR(st.st_mode):
            statuses = [ns.file_status(path, "", st)]
        else:
            statuses = []
            for name in sorted(os.listdir(ns.local(path)), key=lambda n: n.encode()):
                child = path.rstrip("/") + "/" + name
                cst = ns.status_of(child)
                if cst is not None:
                    statuses.append(ns.file_status(child, name, cst))
        self.send_json({"FileStatuses": {"FileStatus": statuses}})

    def get_content_summary(self, ns: _Namespace, path: str, params: _Params) -> None:
        st = ns.status_of(path)
        if st is None:
            raise RemoteError("FileNotFoundException", f"File does not exist: {path}")
        dirs = files = length = 0
        if stat.S_ISDIR(st.st_mode):
            for dirpath, _, names in os.walk(ns.local(path)):
                dirs += 1
                files += len(names)
                length += sum(ns.length_of(os.stat(os.path.join(dirpath, n))) for n in names)
        else:
            files, length = 1, ns.length_of(st)
        self.send_json({"ContentSummary": {
            "directoryCount": dirs, "fileCount": files, "length": length, "quota": -1,
            "spaceConsumed": length * ns.replication, "spaceQuota": -1, "typeQuota": {},
        }})

    def get_block_locations(self, ns: _Namespace, path: str, params: _Params) -> None:
        """The NameNode's (undocumented) ``GET_BLOCK_LOCATIONS``: of its ``LocatedBlocks`` only what says whether
        the file is under construction (a writer holds its lease), without the blocks themselves."""
        st = ns.status_of(path)
        if st is None:
            raise RemoteError("FileNotFoundException", f"File does not exist: {path}")
        if stat.S_ISDIR(st.st_mode):
            raise RemoteError("FileNotFoundException", f"Path is not a file: {path}")
        writing = ns.is_being_written(st)
        self.send_json({"LocatedBlocks": {"fileLength": ns.length_of(st), "isUnderConstruction": writing,
                                          "isLastBlockComplete": not writing}})

    def get_home_directory(self, ns: _Namespace, path: str, params: _Params) -> None:
        self.send_json({"Path": f"/user/{self._user}"})

    def mkdirs(self, ns: _Namespace, path: str, params: _Params) -> None:
        mode = params.permission(0o755)
        st = ns.status_of(path)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise RemoteError("FileAlreadyExistsException", f"Path is not a directory: {path}")
        ns.check_parents_for_create(path)
        ns.make_dirs(path, self._user, mode)
        self.send_json({"boolean": True})

    def delete(self, ns: _Namespace, path: str, params: _Params) -> None:
        recursive = params.boolean("recursive", False)
        st = ns.status_of(path)
        if st is None:
            self.send_json({"boolean": False})
            return
        local = ns.local(path)
        if stat.S_ISDIR(st.st_mode):
            if not recursive and os.listdir(local):
                raise RemoteError("PathIsNotEmptyDirectoryException", f"`{path} is non empty': Directory is not empty")
            if path == "/":  # HDFS never deletes the root
                self.send_json({"boolean": False})
                return
            shutil.rmtree(local)
        else:
            os.unlink(local)
        ns.forget(path)
        self.send_json({"boolean": True})

    def rename(self, ns: _Namespace, path: str, params: _Params) -> None:
        raw = params.get("destination")
        if not raw:
            raise RemoteError("IllegalArgumentException", "Required param destination for op: RENAME is null or empty")
        if not raw.startswith("/"):
            raise RemoteError("IllegalArgumentException",
                              f'Invalid parameter value: destination = "{raw}" is not an absolute path.')
        dst = _Namespace.normalize(raw)
        self.send_json({"boolean": self._rename(ns, path, dst)})

    @staticmethod
    def _rename(ns: _Namespace, src: str, dst: str) -> bool:
        # HDFS's (deprecated, option-less) rename, FSDirRenameOp.renameTo: problems are answered with false.
        if src == "/" or ns.status_of(src) is None:
            return False
        dst_st = ns.status_of(dst)
        if dst_st is not None and stat.S_ISDIR(dst_st.st_mode):
            dst = dst.rstrip("/") + "/" + src.rsplit("/", 1)[1]
        if dst == src:
            return True
        if dst.startswith(src.rstrip("/") + "/"):
            return False  # into itself
        if ns.status_of(dst) is not None:
            return False
        parent = ns.status_of(ns.parent(dst))
        if parent is None or not stat.S_ISDIR(parent.st_mode):
            return False
        os.rename(ns.local(src), ns.local(dst))
        ns.move_owners(src, dst)
        return True

    def _datanode_location(self, path: str, params: _Params, extra: dict[str, str]) -> str:
        owner = self.server.owner
        query = {"op": self._op, "user.name": self._user, "namenoderpcaddress": f"{owner.host}:{owner.port}"}
        for k, v in params.raw.items():
            if k not in ("op", "user.name", "noredirect"):
                query[k] = v
        query.update(extra)
        return f"{owner.datanode_url}{PREFIX}{quote(path)}?{urlencode(query)}"

    def open(self, ns: _Namespace, path: str, params: _Params) -> None:
        offset = params.long("offset", 0)
        params.long("length", None)
        st = ns.status_of(path)
        if st is None:
            raise RemoteError("FileNotFoundException", f"File {path} not found.")
        if stat.S_ISDIR(st.st_mode):
            raise RemoteError("FileNotFoundException", f"Path is not a file: {path}")
        assert offset is not None
        if offset >= st.st_size > 0:
            raise RemoteError("IOException", f"Offset={offset} out of the range [0, {st.st_size}); OPEN, path={path}")
        self._redirect(path, params, {"offset": str(offset)})

    def create(self, ns: _Namespace, path: str, params: _Params) -> None:
        # The namenode only parses the parameters and picks a datanode; existence is checked when the data comes.
        overwrite = params.boolean("overwrite", False)
        params.permission(0o644)
        self._redirect(path, params, {"overwrite": str(overwrite).lower()})

    def append(self, ns: _Namespace, path: str, params: _Params) -> None:
        st = ns.status_of(path)
        if st is None:
            raise RemoteError("FileNotFoundException", f"File {path} not found.")
        self._redirect(path, params, {})

    def _redirect(self, path: str, params: _Params, extra: dict[str, str]) -> None:
        location = self._datanode_location(path, params, extra)
        if params.boolean("noredirect", False):
            self.send_json({"Location": location})
        else:
            self.send_redirect(location)


class _DatanodeHandler(_Handler):
    """Reads and writes the bytes of OPEN, CREATE and APPEND, reached through a namenode redirect."""

    def dispatch(self, op: str, path: str, params: _Params) -> None:
        if not params.get("namenoderpcaddress"):
            raise RemoteError("IllegalArgumentException", "namenoderpcaddress is not specified.")
        handler = {"OPEN": self.open, "CREATE": self.create, "APPEND": self.append}.get(op)
        if handler is None:
            raise RemoteError("IllegalArgumentException", f"Invalid operation {op}")
        handler(self.server.owner.namespace, path, params)

    def open(self, ns: _Namespace, path: str, params: _Params) -> None:
        offset = params.long("offset", 0) or 0
        length = params.long("length", None)
        with _open_file(ns, path, "rb", f"File does not exist: {path}") as f:
            size = os.fstat(f.fileno()).st_size
            if offset > size:
                raise RemoteError("EOFException", "Cannot seek after EOF")
            n = size - offset if length is None else min(length, size - offset)
            f.seek(offset)
            self.begin_stream(200, n)
            while n:
                data = f.read(min(n, CHUNK))
                if not data:  # the file shrank while being read: the response cannot be completed
                    self.close_connection = True
                    return
                self.wfile.write(data)
                n -= len(data)

    def create(self, ns: _Namespace, path: str, params: _Params) -> None:
        overwrite = params.boolean("overwrite", False)
        create_parent = params.boolean("createparent", True)
        mode = params.permission(0o644)
        with ns.lock:
            st = ns.status_of(path)
            if st is not None and stat.S_ISDIR(st.st_mode):
                raise RemoteError("FileAlreadyExistsException", f"{path} already exists as a directory")
            if st is not None and not overwrite:
                raise RemoteError("FileAlreadyExistsException",
                                  f"{path} for client {self.client_address[0]} already exists")
            ns.check_parents_for_create(path)
            if ns.status_of(ns.parent(path)) is None:
                if not create_parent:
                    raise RemoteError("FileNotFoundException", f"Parent directory doesn't exist: {ns.parent(path)}")
                ns.make_dirs(ns.parent(path), self._user, 0o755)
            flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
            fd = os.open(ns.local(path), flags, 0o600)
            os.fchmod(fd, mode)
            ns.set_owner(path, self._user)
            ns.begin_write(fd, 0)
        # The data is written to the real path outside the namespace lock: like an HDFS file under construction,
        # the file is visible while it is written, with the length of its completed blocks (see length_of).
        with os.fdopen(fd, "wb") as f:
            self._write_body(ns, f)
        owner = self.server.owner
        self.send_bytes(201, b"", "application/octet-stream",
                        {"Location": f"hdfs://{owner.host}:{owner.port}{quote(path)}"})

    def append(self, ns: _Namespace, path: str, params: _Params) -> None:
        with _open_file(ns, path, "r+b", f"File {path} not found.") as f:
            with ns.lock:
                ns.begin_write(f.fileno(), f.seek(0, os.SEEK_END))
            self._write_body(ns, f)
        self.send_bytes(200, b"", "application/octet-stream")

    def _write_body(self, ns: _Namespace, f) -> None:
        """Writes the request body to ``f`` (a file ``begin_write`` opened a write on), then ends that write."""
        try:
            for data in self.body_chunks():
                f.write(data)
                f.flush()  # on disk as it arrives, as a pipeline's acknowledged packets are on the datanodes
        finally:
            with ns.lock:
                ns.end_write(f.fileno())


class WebHdfsTestServer:
    """A WebHDFS test double: a namenode and a datanode on ephemeral ports of 127.0.0.1, over ``root_dir``.

    Args:
        root_dir: the local folder that holds the HDFS namespace (``/`` is this folder); created if missing.
        superuser: the owner reported for paths the server did not create.
        group: the group of every path.
        block_size: the ``blockSize`` of files.
        replication: the ``replication`` of files.
        namenodes: how many namenodes share the namespace (2 for an HA pair); the first one starts active.
        namenode_hosts: instead of ``namenodes``, the loopback addresses (``127.0.0.1``, ``127.0.0.2``...) of
            namenodes that share one port, as an Airflow WebHDFS connection with several hosts describes them.

    Attributes:
        host: the namenode's address, ``127.0.0.1``.
        port: the (first) namenode's port.
        url: ``http://127.0.0.1:<port>``, the WebHDFS base URL of the (first) namenode.
        urls: the WebHDFS base URLs of all the namenodes, in order.
        ha_url: ``urls`` joined by commas, the form ``TFHUB_WEBHDFS_URL`` takes.
        active: the index in ``urls`` of the active namenode; None while none is (in a failover).
        datanode_port: the datanode's port.
        datanode_url: the datanode's base URL.
        requests: every request received, in the order the responses were sent.
    """

    def __init__(self, root_dir: os.PathLike[str] | str, *, superuser: str = "hdfs", group: str = "supergroup",
                 block_size: int = 128 * 1024 * 1024, replication: int = 1, namenodes: int = 1,
                 namenode_hosts: list[str] | None = None) -> None:
        if namenodes < 1:
            raise ValueError(f"namenodes must be at least 1, not {namenodes}")
        self._namenode_hosts = list(namenode_hosts) if namenode_hosts else None
        if self._namenode_hosts:
            namenodes = len(self._namenode_hosts)
        root = Path(root_dir)
        root.mkdir(parents=True, exist_ok=True)
        self.namespace = _Namespace(root.resolve(), superuser, group, block_size, replication)
        self.host = "127.0.0.1"
        self.port = 0
        self.datanode_port = 0
        self.requests: list[LoggedRequest] = []
        self._log_lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._nodes: list[_Node] = []
        self._threads: list[threading.Thread] = []
        self._namenode_count = namenodes
        self.namenode_ports: list[int] = []
        self.namenode_hosts: list[str] = []
        self.active: int | None = 0
        # A scheduled failover: (requests before it, gap, the next active, the operation counted or None).
        self._switch: tuple[int, int, int, str | None] | None = None

    @property
    def root(self) -> Path:
        return self.namespace.root

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def urls(self) -> list[str]:
        return [f"http://{h}:{p}" for h, p in zip(self.namenode_hosts, self.namenode_ports, strict=True)]

    @property
    def ha_url(self) -> str:
        return ",".join(self.urls)

    @property
    def datanode_url(self) -> str:
        return f"http://127.0.0.1:{self.datanode_port}"

    def start(self) -> WebHdfsTestServer:
        if self._nodes:
            raise RuntimeError("the WebHDFS test server is already running")
        if self._namenode_hosts:
            first = _Node("namenode", self, _NamenodeHandler, (self._namenode_hosts[0], 0))
            port = first.server_address[1]
            namenodes = [first, *(_Node("namenode", self, _NamenodeHandler, (h, port))
                                  for h in self._namenode_hosts[1:])]
        else:
            namenodes = [_Node("namenode", self, _NamenodeHandler) for _ in range(self._namenode_count)]
        datanode = _Node("datanode", self, _DatanodeHandler)
        self.namenode_hosts = [n.server_address[0] for n in namenodes]
        self.namenode_ports = [n.server_address[1] for n in namenodes]
        self.host = self.namenode_hosts[0]
        self.port = self.namenode_ports[0]
        self.datanode_port = datanode.server_address[1]
        self._nodes = [*namenodes, datanode]
        for node in self._nodes:
            t = threading.Thread(target=node.serve_forever, kwargs={"poll_interval": 0.05},
                                 name=f"webhdfs-test-{node.name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for node in self._nodes:
            self._stop_node(node)
        for t in self._threads:
            t.join(timeout=5)
        self._nodes, self._threads = [], []

    @staticmethod
    def _stop_node(node: _Node) -> None:
        if node.stopped:
            return
        node.stopped = True
        node.shutdown()
        node.drop_connections()
        node.server_close()

    # -- high availability -------------------------------------------------------------------------------------

    def fail_over(self, to: int | None = None) -> None:
        """Makes namenode ``to`` (by default the one after the active one) the active one; the others standbys."""
        with self._log_lock:
            self._switch = None
            self.active = self._next_active(to)

    def fail_over_after(self, requests: int, *, op: str | None = None, to: int | None = None, gap: int = 0) -> None:
        """Fails over in the middle of a run: after ``requests`` more namenode requests (to any namenode; only
        those of operation ``op`` when given), the active namenode turns standby; the ``gap`` namenode requests
        after that find no active namenode (a failover in progress); then namenode ``to`` (by default the next
        one) is active."""
        with self._log_lock:
            self._switch = (requests, gap, self._next_active(to), op.upper() if op else None)

    def stop_namenode(self, index: int) -> None:
        """Stops namenode ``index`` as a crash would: its port refuses connections, open ones are dropped."""
        self._stop_node(self._nodes[index])

    def _next_active(self, to: int | None) -> int:
        if to is None:
            to = 0 if self.active is None else (self.active + 1) % self._namenode_count
        if not 0 <= to < self._namenode_count:
            raise ValueError(f"there is no namenode {to} (namenodes: {self._namenode_count})")
        return to

    def _is_active(self, node: _Node, op: str) -> bool:
        """Whether namenode ``node`` answers this request as the active one; advances a scheduled switch."""
        with self._log_lock:
            if self._switch is not None:
                left, gap, to, counted = self._switch
                if left > 0:
                    if counted in (None, op):
                        self._switch = (left - 1, gap, to, counted)
                elif gap > 0:
                    self.active = None
                    self._switch = (0, gap - 1, to, counted)
                else:
                    self.active = to
                    self._switch = None
            return self.active is not None and self._nodes[self.active] is node

    def __enter__(self) -> WebHdfsTestServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- request log and faults --------------------------------------------------------------------------------

    def calls(self, node: str | None = None) -> list[tuple[str, str, str]]:
        """``(method, op, path)`` of each logged request, optionally only those of one node."""
        with self._log_lock:
            return [(r.method, r.op, r.path) for r in self.requests if node in (None, r.node)]

    def clear_log(self) -> None:
        with self._log_lock:
            self.requests.clear()

    def inject_faults(self, count: int = 1, *, status: int | None = None, exception: str | None = None,
                      message: str | None = None, op: str | None = None, node: str | None = None) -> None:
        """Makes the next ``count`` matching requests fail, unprocessed (their body is read and discarded).

        Args:
            count: how many requests fail.
            status: the HTTP status to answer: by default Hadoop's status for ``exception``, or 503 without one;
                0 closes the connection without answering.
            exception: a RemoteException class name (``"AccessControlException"``, ``"RetriableException"``...) to
                answer as WebHDFS JSON; without it the body is plain text, like a proxy's or Jetty's own error page.
            message: the RemoteException message or the plain-text body.
            op: only requests of this operation (``"CREATE"``...).
            node: only requests to ``"namenode"`` or ``"datanode"``.
        """
        if status is None:
            status = 503 if exception is None else http_status_of(exception)
        text = message if message is not None else (
            "Service Unavailable" if exception is None else f"injected {exception}")
        with self._log_lock:
            self._faults.append(_Fault(count, status, exception, text, op.upper() if op else None, node))

    def _take_fault(self, node: str, op: str) -> _Fault | None:
        with self._log_lock:
            fault = next((f for f in self._faults if f.matches(node, op)), None)
            if fault is not None:
                fault.remaining -= 1
                self._faults = [f for f in self._faults if f.remaining > 0]
            return fault

    def _log(self, entry: LoggedRequest) -> None:
        with self._log_lock:
            self.requests.append(entry)
