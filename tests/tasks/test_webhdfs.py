"""The WebHDFS client of the job code (tasks/io/webhdfs.py), over HTTP against the WebHDFS test server.

The contract tests at the top run against the test server here, and against a real NameNode (the session's local
Hadoop, or ``WEBHDFS_URL``) in ``tests/hadoop/test_webhdfs_contract.py``, which imports them. The tests below them
need the test server: its request log and its faults.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tasks.io import webhdfs
from tasks.io.webhdfs import WebHdfsClient, WebHdfsError, hdfs_path
from tests.support.webhdfs_server import WebHdfsTestServer

STATUS_FIELDS = {"pathSuffix", "type", "length", "modificationTime", "permission", "owner", "group", "replication",
                 "blockSize", "accessTime"}


@dataclass
class Endpoint:
    """A WebHDFS endpoint under test: a client and a scratch folder it may do anything in."""

    client: WebHdfsClient
    root: str
    server: WebHdfsTestServer | None

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[Endpoint]:
    # tests/hadoop/test_webhdfs_contract.py runs the same contract tests against a real NameNode.
    with WebHdfsTestServer(tmp_path / "hdfs") as srv:
        with WebHdfsClient(srv.url, user="tester", backoff_s=0.01) as client:
            yield Endpoint(client, "/scratch", srv)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WebHdfsTestServer]:
    with WebHdfsTestServer(tmp_path / "hdfs") as srv:
        yield srv


@pytest.fixture
def client(server: WebHdfsTestServer) -> Iterator[WebHdfsClient]:
    with WebHdfsClient(server.url, user="tester", retries=3, backoff_s=0.01) as c:
        yield c


def _error(excinfo: pytest.ExceptionInfo[WebHdfsError]) -> WebHdfsError:
    return excinfo.value


# -- contract: the same checks on the test server and, with WEBHDFS_URL, on a real endpoint ---------------------


def test_bytes_round_trip_and_overwrite(endpoint: Endpoint) -> None:
    c, f = endpoint.client, endpoint.path("new/parents/data.bin")
    payload = bytes(range(256)) * 40
    c.write_bytes(f, payload)
    assert c.read_bytes(f) == payload
    assert c.read_bytes(f, offset=1000, length=24) == payload[1000:1024]
    assert c.read_bytes(f, offset=10_000) == payload[10_000:]
    c.write_bytes(f, b"second")
    assert c.read_bytes(f) == b"second"
    c.write_bytes(endpoint.path("empty"), b"")
    assert c.read_bytes(endpoint.path("empty")) == b""
    c.append_bytes(f, b" and more")
    assert c.read_bytes(f) == b"second and more"


def test_hdfs_urls_name_paths(endpoint: Endpoint) -> None:
    c = endpoint.client
    url = f"hdfs://namenode.example:8020{endpoint.path('ds=2026-11-20', 'a b.txt')}"
    c.write_bytes(url, b"x")
    assert c.read_bytes(endpoint.path("ds=2026-11-20", "a b.txt")) == b"x"
    assert [e["pathSuffix"] for e in c.list(f"hdfs://other{endpoint.path('ds=2026-11-20')}")] == ["a b.txt"]


def test_five_megabyte_file_round_trip(endpoint: Endpoint, tmp_path: Path) -> None:
    c, f = endpoint.client, endpoint.path("big.bin")
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(5 * 1024 * 1024 + 17))
    c.upload(src, f)
    assert c.status(f)["length"] == src.stat().st_size
    out = tmp_path / "out" / "big.bin"
    assert c.download(f, out) == src.stat().st_size
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
    assert [p.name for p in out.parent.iterdir()] == ["big.bin"]  # no partial file left beside it
    assert c.read_bytes(f, offset=4 * 1024 * 1024, length=100) == src.read_bytes()[4 * 1024 * 1024:][:100]


def test_status_and_list_fields(endpoint: Endpoint) -> None:
    c = endpoint.client
    c.write_bytes(endpoint.path("d/b.txt"), b"12345")
    c.write_bytes(endpoint.path("d/a.txt"), b"1")
    c.mkdirs(endpoint.path("d/sub"))
    before_ms = (time.time() - 3600) * 1000

    st = c.status(endpoint.path("d/b.txt"))
    assert st is not None and STATUS_FIELDS <= st.keys()
    assert (st["type"], st["length"], st["pathSuffix"]) == ("FILE", 5, "")
    assert st["modificationTime"] > before_ms and st["blockSize"] > 0 and st["replication"] >= 1
    assert int(st["permission"], 8) & 0o400  # the owner may read it
    d = c.status(endpoint.path("d"))
    assert d is not None and (d["type"], d["length"]) == ("DIRECTORY", 0)
    assert c.status(endpoint.path("nope")) is None
    assert c.exists(endpoint.path("d")) and not c.exists(endpoint.path("nope"))

    entries = c.list(endpoint.path("d"))
    assert [(e["pathSuffix"], e["type"], e["length"]) for e in entries] == [
        ("a.txt", "FILE", 1), ("b.txt", "FILE", 5), ("sub", "DIRECTORY", 0)]
    assert all(STATUS_FIELDS <= e.keys() for e in entries)
    assert c.list(endpoint.path("d/sub")) == []
    with pytest.raises(WebHdfsError, match="is a file, not a directory"):
        c.list(endpoint.path("d/b.txt"))
    with pytest.raises(WebHdfsError, match="FileNotFoundException") as excinfo:
        c.list(endpoint.path("nope"))
    assert _error(excinfo).status == 404

    summary = c.content_summary(endpoint.path("d"))
    assert (summary["fileCount"], summary["directoryCount"], summary["length"]) == (2, 2, 6)


def test_mkdirs(endpoint: Endpoint) -> None:
    c = endpoint.client
    c.mkdirs(endpoint.path("a/b/c"))
    c.mkdirs(endpoint.path("a/b/c"))  # again: fine
    assert c.status(endpoint.path("a/b"))["type"] == "DIRECTORY"
    c.mkdirs(endpoint.path("private"), permission=0o750)
    assert c.status(endpoint.path("private"))["permission"] == "750"
    c.write_bytes(endpoint.path("a/file"), b"x")
    with pytest.raises(WebHdfsError, match="MKDIRS .*a/file/under"):
        c.mkdirs(endpoint.path("a/file/under"))


def test_rename_semantics(endpoint: Endpoint) -> None:
    c = endpoint.client
    c.write_bytes(endpoint.path("src.txt"), b"src")
    c.write_bytes(endpoint.path("taken.txt"), b"taken")
    c.mkdirs(endpoint.path("dir"))

    assert c.rename(endpoint.path("src.txt"), endpoint.path("moved.txt")) is True
    assert not c.exists(endpoint.path("src.txt")) and c.read_bytes(endpoint.path("moved.txt")) == b"src"
    # Onto an existing file: false, both left as they were.
    assert c.rename(endpoint.path("moved.txt"), endpoint.path("taken.txt")) is False
    assert c.read_bytes(endpoint.path("taken.txt")) == b"taken" and c.exists(endpoint.path("moved.txt"))
    # A missing source, a destination whose parent is missing: false.
    assert c.rename(endpoint.path("missing"), endpoint.path("x")) is False
    assert c.rename(endpoint.path("moved.txt"), endpoint.path("no/parent/x")) is False
    # Onto an existing folder: moved into it.
    assert c.rename(endpoint.path("moved.txt"), endpoint.path("dir")) is True
    assert c.read_bytes(endpoint.path("dir/moved.txt")) == b"src"
    # A folder, with what is in it, under an hdfs:// URL.
    assert c.rename(endpoint.path("dir"), f"hdfs://nn{endpoint.path('dir2')}") is True
    assert c.read_bytes(endpoint.path("dir2/moved.txt")) == b"src" and not c.exists(endpoint.path("dir"))


def test_delete_semantics(endpoint: Endpoint) -> None:
    c = endpoint.client
    c.write_bytes(endpoint.path("full/f.txt"), b"x")
    c.mkdirs(endpoint.path("empty"))
    with pytest.raises(WebHdfsError, match="PathIsNotEmptyDirectoryException") as excinfo:
        c.delete(endpoint.path("full"))
    assert endpoint.path("full") in str(excinfo.value) and _error(excinfo).status == 403
    assert c.exists(endpoint.path("full/f.txt"))
    assert c.delete(endpoint.path("full/f.txt")) is True
    assert c.delete(endpoint.path("empty")) is True
    c.write_bytes(endpoint.path("full/deeper/g.txt"), b"x")
    assert c.delete(endpoint.path("full"), recursive=True) is True
    assert not c.exists(endpoint.path("full"))
    assert c.delete(endpoint.path("full"), recursive=True) is False  # already gone


def test_create_without_overwrite_names_the_path(endpoint: Endpoint) -> None:
    c, f = endpoint.client, endpoint.path("once.txt")
    c.write_bytes(f, b"first", overwrite=False)
    with pytest.raises(WebHdfsError) as excinfo:
        c.write_bytes(f, b"second", overwrite=False)
    err = _error(excinfo)
    assert (err.op, err.path, err.exception, err.status) == ("CREATE", f, "FileAlreadyExistsException", 403)
    assert str(err).startswith(f"WebHDFS CREATE {f}: FileAlreadyExistsException: ")
    assert f in (err.remote_message or "")
    assert c.read_bytes(f) == b"first"


def test_missing_file_error_names_op_path_and_exception(endpoint: Endpoint, tmp_path: Path) -> None:
    c, f = endpoint.client, endpoint.path("missing.bin")
    with pytest.raises(WebHdfsError, match=f"^WebHDFS OPEN {f}: FileNotFoundException: .*missing.bin") as excinfo:
        c.read_bytes(f)
    assert _error(excinfo).status == 404
    with pytest.raises(WebHdfsError, match="FileNotFoundException"):
        c.download(f, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(WebHdfsError, match=f"APPEND {f}: FileNotFoundException"):
        c.append_bytes(f, b"x")


def test_upload_dir_and_download_dir(endpoint: Endpoint, tmp_path: Path) -> None:
    c = endpoint.client
    src = tmp_path / "model"
    (src / "variables").mkdir(parents=True)
    (src / "assets").mkdir()  # empty: must arrive too
    (src / "saved_model.pb").write_bytes(b"pb" * 1000)
    (src / "variables" / "variables.index").write_bytes(b"index")
    (src / "variables" / "variables.data-00000-of-00001").write_bytes(os.urandom(300_000))

    copied = c.upload_dir(src, endpoint.path("model"))
    assert sorted(copied) == ["saved_model.pb", "variables/variables.data-00000-of-00001",
                              "variables/variables.index"]
    assert [(e["pathSuffix"], e["type"]) for e in c.list(endpoint.path("model"))] == [
        ("assets", "DIRECTORY"), ("saved_model.pb", "FILE"), ("variables", "DIRECTORY")]

    out = tmp_path / "back"
    assert sorted(c.download_dir(endpoint.path("model"), out)) == sorted(copied)
    assert (out / "assets").is_dir() and not any((out / "assets").iterdir())
    for rel in copied:
        assert (out / rel).read_bytes() == (src / rel).read_bytes()
    with pytest.raises(WebHdfsError, match="does not exist"):
        c.download_dir(endpoint.path("nope"), tmp_path / "nope")


# -- paths and configuration ----------------------------------------------------------------------------------


def test_hdfs_path() -> None:
    assert hdfs_path("hdfs://nn:8020/a/ds=1") == "/a/ds=1"
    assert hdfs_path("hdfs://nn") == "/"
    assert hdfs_path("/a/b") == "/a/b"
    with pytest.raises(WebHdfsError, match="not an hdfs:// URL"):
        hdfs_path("s3://bucket/a")
    with pytest.raises(WebHdfsError, match="relative"):
        hdfs_path("a/b")


def test_from_env_needs_the_url_and_sends_the_user(server: WebHdfsTestServer) -> None:
    with pytest.raises(WebHdfsError, match="TFHUB_WEBHDFS_URL is not set"):
        WebHdfsClient.from_env({})
    with WebHdfsClient.from_env({webhdfs.ENV_URL: server.url, webhdfs.ENV_USER: "etl"}) as c:
        c.mkdirs("/by-etl")
        assert c.status("/by-etl")["owner"] == "etl"
    with WebHdfsClient.from_env({webhdfs.ENV_URL: server.url}) as c:
        c.mkdirs("/anonymous")
        assert c.status("/anonymous")["owner"] == "dr.who"  # Hadoop's static web user
    assert {r.user for r in server.requests if r.path == "/by-etl"} == {"etl"}


def test_from_env_kerberos(server: WebHdfsTestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from requests_kerberos import HTTPKerberosAuth

    env = {webhdfs.ENV_URL: server.url, webhdfs.ENV_KERBEROS: "1", webhdfs.ENV_USER: "etl"}
    c = WebHdfsClient.from_env(env)
    assert isinstance(c._session.auth, HTTPKerberosAuth)
    assert c._params("GETFILESTATUS", {}) == {"op": "GETFILESTATUS", "doas": "etl"}  # the ticket is the identity
    with pytest.raises(WebHdfsError, match="TFHUB_WEBHDFS_KERBEROS='maybe'"):
        WebHdfsClient.from_env({**env, webhdfs.ENV_KERBEROS: "maybe"})
    monkeypatch.setitem(sys.modules, "requests_kerberos", None)  # as if not installed
    with pytest.raises(WebHdfsError, match="needs the requests-kerberos package"):
        WebHdfsClient.from_env(env)


# -- the protocol, seen from the server: redirects and retries -------------------------------------------------


def test_data_goes_through_the_datanode_redirect(client: WebHdfsClient, server: WebHdfsTestServer) -> None:
    client.write_bytes("/r/f.bin", b"0123456789")
    assert [(r.node, r.method, r.op, r.status, r.body_bytes) for r in server.requests] == [
        ("namenode", "PUT", "CREATE", 307, 0),  # step one: no data to the namenode
        ("datanode", "PUT", "CREATE", 201, 10),
    ]
    server.clear_log()
    assert client.read_bytes("/r/f.bin", offset=2, length=3) == b"234"
    assert [(r.node, r.method, r.op, r.status) for r in server.requests] == [
        ("namenode", "GET", "OPEN", 307), ("datanode", "GET", "OPEN", 200)]
    server.clear_log()
    client.append_bytes("/r/f.bin", b"!")
    assert [(r.node, r.method, r.op, r.status, r.body_bytes) for r in server.requests] == [
        ("namenode", "POST", "APPEND", 307, 0), ("datanode", "POST", "APPEND", 200, 1)]
    assert server.calls() == [("POST", "APPEND", "/r/f.bin")] * 2
    assert (server.root / "r" / "f.bin").read_bytes() == b"0123456789!"


def test_retries_503_on_namenode_and_datanode(client: WebHdfsClient, server: WebHdfsTestServer,
                                              tmp_path: Path) -> None:
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(200_000))
    server.inject_faults(2, node="datanode", op="CREATE")
    client.upload(src, "/up.bin")  # the file body is sent again from its start
    assert (server.root / "up.bin").read_bytes() == src.read_bytes()
    assert [(r.node, r.status) for r in server.requests] == [
        ("namenode", 307), ("datanode", 503), ("datanode", 503), ("datanode", 201)]

    server.clear_log()
    server.inject_faults(3, op="GETFILESTATUS")
    assert client.status("/up.bin")["length"] == 200_000
    assert [r.status for r in server.requests] == [503, 503, 503, 200]


def test_gives_up_after_the_configured_retries(server: WebHdfsTestServer) -> None:
    server.inject_faults(10, op="LISTSTATUS", message="upstream namenode unavailable")
    with WebHdfsClient(server.url, retries=2, backoff_s=0.01) as c:
        with pytest.raises(WebHdfsError, match="^WebHDFS LISTSTATUS /x: HTTP 503 .*upstream namenode unavailable") \
                as excinfo:
            c.list("/x")
    assert _error(excinfo).status == 503
    assert len(server.requests) == 3


def test_retriable_exception_is_retried_other_remote_exceptions_are_not(client: WebHdfsClient,
                                                                        server: WebHdfsTestServer) -> None:
    server.inject_faults(1, exception="RetriableException", message="NameNode still not started")
    client.mkdirs("/m")
    assert [r.status for r in server.requests] == [403, 200]
    server.clear_log()
    server.inject_faults(1, exception="AccessControlException",
                         message="Permission denied: user=tester, access=READ_EXECUTE, inode=\"/m\"")
    with pytest.raises(WebHdfsError, match="GETFILESTATUS /m: AccessControlException: Permission denied") as excinfo:
        client.status("/m")  # a denied status is an error, not "missing"
    assert _error(excinfo).status == 403
    assert len(server.requests) == 1


def test_dropped_connection_retried_only_when_repeating_is_harmless(client: WebHdfsClient,
                                                                    server: WebHdfsTestServer) -> None:
    client.write_bytes("/a.txt", b"a")
    server.clear_log()
    server.inject_faults(1, status=0, op="GETFILESTATUS")
    assert client.exists("/a.txt")
    assert [r.status for r in server.requests] == [0, 200]

    server.clear_log()
    server.inject_faults(1, status=0, op="RENAME")
    with pytest.raises(WebHdfsError, match="^WebHDFS RENAME /a.txt: ConnectionError"):
        client.rename("/a.txt", "/b.txt")  # it may have been done: repeating it could answer a wrong False
    assert server.calls() == [("PUT", "RENAME", "/a.txt")]


def test_connection_refused_is_retried_then_reported() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with WebHdfsClient(f"http://127.0.0.1:{port}", retries=2, backoff_s=0.01) as c:
        with pytest.raises(WebHdfsError, match="^WebHDFS DELETE /x: ConnectionError after 3 attempts"):
            c.delete("/x")  # never sent, so retried although DELETE is not repeatable


# -- NameNode high availability ---------------------------------------------------------------------------------


@pytest.fixture
def ha_server(tmp_path: Path) -> Iterator[WebHdfsTestServer]:
    with WebHdfsTestServer(tmp_path / "hdfs", namenodes=2) as srv:
        yield srv


def test_namenode_urls_are_a_comma_separated_list(ha_server: WebHdfsTestServer) -> None:
    nn1, nn2 = ha_server.urls
    client = WebHdfsClient.from_env({webhdfs.ENV_URL: f" {nn1}/ , {nn2}"})
    assert client.base_urls == (nn1, nn2) and client.base_url == nn1
    for bad, why in [(f"{nn1},,{nn2}", "empty entry"), (f"{nn1},namenode:9870", "must start with http"),
                     (f"{nn1},{nn1}/", "the same namenode twice")]:
        with pytest.raises(WebHdfsError, match=f"^TFHUB_WEBHDFS_URL: .*{why}"):
            WebHdfsClient.from_env({webhdfs.ENV_URL: bad})


def test_client_fails_over_to_the_active_namenode_and_remembers_it(ha_server: WebHdfsTestServer) -> None:
    nn1_port, nn2_port = ha_server.namenode_ports
    ha_server.fail_over(to=1)  # the first namenode listed is the standby
    with WebHdfsClient(ha_server.ha_url, user="tester", backoff_s=0.01) as c:
        c.write_bytes("/ha/a.txt", b"first")
        # The standby refused the first request as Hadoop's does (403, StandbyException), the active one did it.
        first, *rest = ha_server.requests
        assert (first.port, first.status, first.op) == (nn1_port, 403, "CREATE")
        assert {r.port for r in rest if r.node == "namenode"} == {nn2_port} and c.base_url == ha_server.urls[1]

        ha_server.clear_log()
        ha_server.fail_over(to=0)  # a failover while the client is in use
        assert c.read_bytes("/ha/a.txt") == b"first"
        assert [(r.port, r.status) for r in ha_server.requests if r.node == "namenode"] == [
            (nn2_port, 403), (nn1_port, 307)]

        ha_server.clear_log()
        ha_server.fail_over_after(0, to=1, gap=3)  # none active for the next 3 requests: the client waits
        c.rename("/ha/a.txt", "/ha/b.txt")  # not idempotent, but a standby did not do it: safe to send again
        assert [r.status for r in ha_server.requests] == [403, 403, 403, 200]
        assert (ha_server.root / "ha" / "b.txt").read_bytes() == b"first"


def test_client_fails_over_when_the_active_namenode_is_down(ha_server: WebHdfsTestServer) -> None:
    with WebHdfsClient(ha_server.ha_url, user="tester", backoff_s=0.01) as c:
        c.mkdirs("/d")
        ha_server.stop_namenode(0)  # crashed: connections refused, and the other one takes over
        ha_server.fail_over(to=1)
        ha_server.clear_log()
        c.write_bytes("/d/x.bin", b"x" * 10)
        assert c.base_url == ha_server.urls[1]
        assert [(r.node, r.op, r.status) for r in ha_server.requests] == [
            ("namenode", "CREATE", 307), ("datanode", "CREATE", 201)]


def test_no_active_namenode_is_reported_after_bounded_retries(ha_server: WebHdfsTestServer) -> None:
    ha_server.fail_over_after(0, gap=100)
    with WebHdfsClient(ha_server.ha_url, backoff_s=0.01, failover_retries=2) as c:
        with pytest.raises(WebHdfsError, match="^WebHDFS GETFILESTATUS /x: StandbyException: Operation category READ "
                                               "is not supported in state standby.*list every namenode") as excinfo:
            c.status("/x")
    assert _error(excinfo).exception == "StandbyException"
    assert len(ha_server.requests) == 6  # 2 namenodes, tried 1 + 2 times each

    with WebHdfsClient(ha_server.urls[0], backoff_s=0.01) as single:  # one namenode listed: no failover
        with pytest.raises(WebHdfsError, match="StandbyException"):
            single.status("/x")


def test_unreachable_namenodes_are_reported_after_bounded_retries(ha_server: WebHdfsTestServer) -> None:
    urls = ha_server.urls
    ha_server.stop()
    with WebHdfsClient(urls, backoff_s=0.01, failover_retries=1) as c:
        with pytest.raises(WebHdfsError, match=f"^WebHDFS DELETE /x: ConnectionError after 4 attempts on each of the "
                                               f"namenodes {urls[0]}, {urls[1]}"):
            c.delete("/x")  # never sent, so retried although DELETE is not repeatable


def test_status_during_create_reports_only_completed_blocks(tmp_path: Path) -> None:
    """A NameNode knows a file under construction by its completed blocks, not by the bytes written so far."""
    with WebHdfsTestServer(tmp_path / "hdfs", block_size=1024) as srv, requests.Session() as s:
        base = f"{srv.url}/webhdfs/v1"
        r = s.put(f"{base}/f.bin?op=CREATE&overwrite=true", allow_redirects=False)
        seen: list[tuple[int, int]] = []
        local = srv.root / "f.bin"

        def body() -> Iterator[bytes]:
            written = 0
            for piece in (b"a" * 700, b"b" * 700, b"c" * 100):
                yield piece
                written += len(piece)
                deadline = time.monotonic() + 30
                while not (local.exists() and local.stat().st_size >= written):  # until the datanode has it
                    assert time.monotonic() < deadline, f"the server did not write {written} bytes"
                    time.sleep(0.01)
                st = s.get(f"{base}/f.bin?op=GETFILESTATUS").json()["FileStatus"]
                summary = s.get(f"{base}/?op=GETCONTENTSUMMARY").json()["ContentSummary"]
                seen.append((st["length"], summary["length"]))

        with requests.Session() as writer:
            assert writer.put(r.headers["Location"], data=body()).status_code == 201
        assert seen == [(0, 0), (1024, 1024), (1024, 1024)]
        assert s.get(f"{base}/f.bin?op=GETFILESTATUS").json()["FileStatus"]["length"] == 1500


# -- the test server keeps to the protocol ----------------------------------------------------------------------


def test_server_speaks_webhdfs(server: WebHdfsTestServer) -> None:
    base = f"{server.url}/webhdfs/v1"
    with requests.Session() as s:
        r = s.get(f"{base}/x?op=NOSUCHOP")
        assert r.status_code == 400
        assert r.json()["RemoteException"]["exception"] == "IllegalArgumentException"
        r = s.put(f"{base}/x?op=GETFILESTATUS")  # a GET operation under PUT
        assert r.status_code == 400

        # CREATE: overwrite defaults to false, data may come chunked, the answer is 201 with the file's hdfs URL.
        r = s.put(f"{base}/c.txt?op=CREATE&user.name=u", allow_redirects=False)
        assert r.status_code == 307 and r.headers["Location"].startswith(server.datanode_url)
        location = r.headers["Location"]
        r = s.put(location, data=iter([b"chunked ", b"body"]))
        assert (r.status_code, r.headers["Location"]) == (201, f"hdfs://127.0.0.1:{server.port}/c.txt")
        r = s.put(location, data=b"again")
        assert r.status_code == 403
        assert r.json()["RemoteException"]["javaClassName"] == "org.apache.hadoop.fs.FileAlreadyExistsException"
        assert (server.root / "c.txt").read_bytes() == b"chunked body"

        # The datanode only serves requests the namenode redirected.
        r = s.get(f"{server.datanode_url}/webhdfs/v1/c.txt?op=OPEN")
        assert r.status_code == 400 and "namenoderpcaddress" in r.json()["RemoteException"]["message"]

        r = s.get(f"{base}/c.txt?op=GETFILESTATUS")
        assert r.json()["FileStatus"]["owner"] == "u"
        r = s.get(f"{base}/missing?op=GETFILESTATUS")
        assert (r.status_code, r.json()) == (404, {"RemoteException": {
            "exception": "FileNotFoundException", "javaClassName": "java.io.FileNotFoundException",
            "message": "File does not exist: /missing"}})
        assert s.delete(f"{base}/missing?op=DELETE").json() == {"boolean": False}
        r = s.put(f"{base}/c.txt?op=RENAME&destination=relative")
        assert r.status_code == 400
        r = s.get(f"{base}/c.txt?op=OPEN&offset=100")
        assert r.status_code == 403 and "out of the range" in r.json()["RemoteException"]["message"]
        r = s.put(f"{base}/n.txt?op=CREATE&noredirect=true")
        assert r.status_code == 200 and r.json()["Location"].startswith(server.datanode_url)
        assert s.get(f"{base}/a/%2E%2E/c.txt?op=GETFILESTATUS").status_code == 400  # no way out of the root
