"""The WebHDFS test server (tests/support/webhdfs_server.py) answers raw WebHDFS requests as the real NameNode and
DataNode of the session's local Hadoop do: the same requests go to both, and what each answers (HTTP status,
``RemoteException`` class, the JSON result that matters) must be the same. The client-level contract tests are in
``test_webhdfs_contract.py``; this one looks below the client, at the protocol. What the real one does that the
test server does not model is in ``tests/support/WEBHDFS_FIDELITY.md``.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import requests

from tests.support.minihadoop import MiniHadoop
from tests.support.webhdfs_server import WebHdfsTestServer

USER = "tester"


def observe(base_url: str, root: str) -> dict[str, object]:
    """Sends the same sequence of requests under ``root`` and records what matters of each answer."""
    s = requests.Session()
    seen: dict[str, object] = {}

    def call(method: str, path: str, op: str, data: bytes | None = None, **params) -> requests.Response:
        return s.request(method, f"{base_url}/webhdfs/v1{path}", params={"op": op, "user.name": USER, **params},
                         data=data, allow_redirects=False, timeout=60)

    def sig(r: requests.Response) -> tuple:
        try:
            body = r.json()
        except ValueError:
            return (r.status_code,)
        if "RemoteException" in body:
            return r.status_code, body["RemoteException"]["exception"]
        if "boolean" in body:
            return r.status_code, body["boolean"]
        return r.status_code, sorted(body)

    def create(path: str, data: bytes, **params) -> tuple[requests.Response, requests.Response | None]:
        first = call("PUT", path, "CREATE", **params)
        if first.status_code != 307:
            return first, None
        return first, s.put(first.headers["Location"], data=data, timeout=60)

    seen["mkdirs"] = sig(call("PUT", root, "MKDIRS"))
    nn, dn = create(f"{root}/a.txt", b"hello")
    location = urlsplit(nn.headers["Location"])
    seen["create: namenode redirects"] = (nn.status_code, "namenoderpcaddress" in parse_qs(location.query))
    seen["create: datanode"] = dn.status_code
    nn, dn = create(f"{root}/a.txt", b"again", overwrite="false")
    seen["create existing, overwrite=false: namenode"] = nn.status_code
    seen["create existing, overwrite=false: datanode"] = sig(dn) if dn is not None else None
    bare = s.put(f"{location.scheme}://{location.netloc}{location.path}",
                 params={"op": "CREATE", "user.name": USER}, data=b"x", timeout=60)
    seen["datanode without namenoderpcaddress"] = bare.status_code
    st = call("GET", f"{root}/a.txt", "GETFILESTATUS").json()["FileStatus"]
    seen["file status"] = (st["type"], st["length"], st["permission"], st["owner"], st["replication"])
    seen["dir permission"] = call("GET", root, "GETFILESTATUS").json()["FileStatus"]["permission"]
    r = call("GET", f"{root}/a.txt", "OPEN")
    seen["open: namenode"] = r.status_code
    seen["open: datanode"] = (s.get(r.headers["Location"], timeout=60).content, )
    r = call("GET", f"{root}/a.txt", "OPEN", offset="2", length="2")
    seen["open offset/length"] = s.get(r.headers["Location"], timeout=60).content
    r = call("GET", f"{root}/a.txt", "OPEN", offset="99")
    seen["open past the end: namenode"] = sig(r)
    if r.status_code == 307:
        seen["open past the end: datanode"] = sig(s.get(r.headers["Location"], timeout=60))
    seen["status of missing"] = sig(call("GET", f"{root}/missing", "GETFILESTATUS"))
    seen["open missing"] = sig(call("GET", f"{root}/missing", "OPEN"))
    seen["append missing"] = sig(call("POST", f"{root}/missing", "APPEND"))
    seen["list missing"] = sig(call("GET", f"{root}/missing", "LISTSTATUS"))
    r = call("GET", f"{root}/a.txt", "LISTSTATUS")
    seen["list a file"] = (r.status_code, [e["pathSuffix"] for e in r.json()["FileStatuses"]["FileStatus"]])
    seen["mkdirs under a file"] = sig(call("PUT", f"{root}/a.txt/sub", "MKDIRS"))
    seen["mkdirs existing"] = sig(call("PUT", root, "MKDIRS"))
    create(f"{root}/b.txt", b"b")
    seen["rename onto an existing file"] = sig(call("PUT", f"{root}/a.txt", "RENAME", destination=f"{root}/b.txt"))
    seen["rename a missing source"] = sig(call("PUT", f"{root}/nope", "RENAME", destination=f"{root}/c.txt"))
    seen["rename, missing parent"] = sig(call("PUT", f"{root}/a.txt", "RENAME", destination=f"{root}/x/y.txt"))
    seen["rename relative destination"] = sig(call("PUT", f"{root}/a.txt", "RENAME", destination="rel/y.txt"))
    call("PUT", f"{root}/d", "MKDIRS")
    seen["rename into a folder"] = sig(call("PUT", f"{root}/a.txt", "RENAME", destination=f"{root}/d"))
    seen["moved into it"] = call("GET", f"{root}/d/a.txt", "GETFILESTATUS").status_code
    seen["delete non-empty, not recursive"] = sig(call("DELETE", f"{root}/d", "DELETE"))
    seen["delete non-empty, recursive"] = sig(call("DELETE", f"{root}/d", "DELETE", recursive="true"))
    seen["delete missing"] = sig(call("DELETE", f"{root}/d", "DELETE"))
    seen["unknown op"] = sig(call("GET", root, "NOSUCHOP"))
    seen["bad permission"] = sig(call("PUT", f"{root}/p", "MKDIRS", permission="999"))
    seen["bad offset"] = sig(call("GET", f"{root}/b.txt", "OPEN", offset="-1"))
    seen["home"] = call("GET", "/", "GETHOMEDIRECTORY").json()
    summary = call("GET", root, "GETCONTENTSUMMARY").json()["ContentSummary"]
    seen["content summary"] = (summary["directoryCount"], summary["fileCount"], summary["length"])

    # A file under construction: its length is that of its completed blocks (none yet), while the data flows.
    nn = call("PUT", f"{root}/growing.bin", "CREATE")
    sent = threading.Event()
    release = threading.Event()

    def body():
        yield b"x" * 65536
        sent.set()
        release.wait(30)
        yield b"y" * 10

    writer_result: list[int] = []
    writer = threading.Thread(target=lambda: writer_result.append(
        requests.put(nn.headers["Location"], data=body(), timeout=60).status_code))
    writer.start()
    sent.wait(30)
    deadline = time.monotonic() + 30
    while call("GET", f"{root}/growing.bin", "GETFILESTATUS").status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.1)
    during = call("GET", f"{root}/growing.bin", "GETFILESTATUS").json()["FileStatus"]["length"]

    def under_construction() -> tuple:
        r = call("GET", f"{root}/growing.bin", "GET_BLOCK_LOCATIONS", offset="0", length="1")
        return r.status_code, r.json()["LocatedBlocks"]["isUnderConstruction"]

    uc_during = under_construction()
    release.set()
    writer.join(60)
    after = call("GET", f"{root}/growing.bin", "GETFILESTATUS").json()["FileStatus"]["length"]
    seen["length during and after CREATE"] = (during, after, writer_result)
    # What the partition sensor asks to tell a file still being written from a complete one.
    seen["under construction during and after CREATE"] = (uc_during, under_construction())
    seen["block locations of a folder"] = sig(call("GET", root, "GET_BLOCK_LOCATIONS"))
    seen["block locations of a missing file"] = sig(call("GET", f"{root}/missing", "GET_BLOCK_LOCATIONS"))
    return seen


def test_test_server_answers_as_the_real_namenode(minihadoop: MiniHadoop, tmp_path: Path):
    root = f"/tmp/fidelity-{uuid.uuid4().hex}"
    real = observe(minihadoop.webhdfs_url, root)
    with WebHdfsTestServer(tmp_path / "hdfs") as srv:
        fake = observe(srv.url, root)
    # The owner of a new file is the request's user on both; the home folder is /user/<user> on both.
    assert real["home"] == {"Path": f"/user/{USER}"}
    differences = {k: (real[k], fake.get(k)) for k in real if real[k] != fake.get(k)}
    differences.update({k: (None, fake[k]) for k in fake if k not in real})
    assert not differences, "real NameNode vs test server: " + "; ".join(
        f"{k}: real {r!r}, test server {f!r}" for k, (r, f) in differences.items())
