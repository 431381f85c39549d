"""The stages' storage primitives behave the same on file:// and on hdfs:// (WebHDFS test server)."""

from __future__ import annotations

import pytest

from tasks.io import commit, storage
from tests.support.webhdfs_server import WebHdfsTestServer


@pytest.fixture(params=["file", "hdfs"])
def root(request, tmp_path, monkeypatch):
    if request.param == "file":
        yield f"file://{tmp_path}/store"
        return
    with WebHdfsTestServer(tmp_path / "hdfs") as srv:
        monkeypatch.setenv("TFHUB_WEBHDFS_URL", srv.url)
        monkeypatch.setattr(storage, "_client", None)
        yield "hdfs://namenode:8020/store"
    storage._client = None


def test_files_round_trip_and_replace_atomically(root):
    url = storage.join(root, "a", "metrics.json")
    assert not storage.exists(url)
    commit.write_text_atomic(url, '{"x": 1}')
    commit.write_text_atomic(url, '{"x": 2}')
    assert storage.read_text(url) == '{"x": 2}'
    assert storage.list_names(storage.join(root, "a")) == ["metrics.json"]


def test_publish_dir_replaces_a_folder_and_can_roll_back(root, tmp_path):
    url = storage.join(root, "out")
    for content in ("one", "two"):
        staging = commit.output_staging(url)
        (staging / "sub").mkdir()
        (staging / "sub" / "data.txt").write_text(content)
        previous = commit.publish_dir(staging, url, keep_previous=True)
        assert storage.read_text(storage.join(url, "sub", "data.txt")) == content
    assert previous is not None
    commit.roll_back(url, previous)
    assert storage.read_text(storage.join(url, "sub", "data.txt")) == "one"
    assert storage.list_names(root) == ["out"]
    local = storage.fetch(url, tmp_path / "scratch")
    assert (local / "sub" / "data.txt").read_text() == "one"


def test_clean_stale_removes_leftovers(root):
    url = storage.join(root, "out")
    storage.makedirs(storage.join(root, ".out.staging-dead"))
    storage.makedirs(url)
    commit.clean_stale(url)
    assert storage.list_names(root) == ["out"]


def test_unknown_scheme_is_named():
    with pytest.raises(storage.StorageError, match="scheme 's3'"):
        storage.exists("s3://bucket/x")


def test_walk_lists_files_recursively_without_hidden_ones(root):
    for rel, data in (("a.txt", b"1"), ("sub/b 1%.bin", b"22"), ("sub/deeper/c", b"333"), ("_SUCCESS", b""),
                      (".staging-x/d", b"4"), ("sub/.hidden", b"5")):
        commit.write_bytes_atomic(storage.join(root, "p", rel), data)
    assert storage.walk(storage.join(root, "p")) == [("a.txt", 1), ("sub/b 1%.bin", 2), ("sub/deeper/c", 3)]
    assert ("_SUCCESS", 0) in storage.walk(storage.join(root, "p"), include_hidden=True)
    # Names are taken literally: "%" is not an escape.
    assert storage.read_child(storage.join(root, "p"), "sub/b 1%.bin") == b"22"
    with pytest.raises(storage.StorageError, match="does not exist"):
        storage.walk(storage.join(root, "nothing"))


def test_create_new_is_a_compare_and_set(root):
    url = storage.join(root, "v", "v000001.json")
    assert commit.create_new(url, b"first") is True
    assert commit.create_new(url, b"second") is False
    assert storage.read_bytes(url) == b"first"
    assert storage.list_names(storage.join(root, "v")) == ["v000001.json"]


def test_staging_written_elsewhere_is_committed_whole(root):
    url = storage.join(root, "out")
    for content in (b"old", b"new"):
        staging = commit.new_staging(url)
        with commit.atomic_writer(storage.join(staging, "data.bin")) as f:
            f.write(content)
        commit.write_bytes_atomic(storage.join(staging, ".data.bin.tmp-dead"), b"left by a killed attempt")
        commit.publish_dir(staging, url)
    assert storage.list_names(url) == ["data.bin"] and storage.read_bytes(storage.join(url, "data.bin")) == b"new"
    assert storage.list_names(root) == ["out"]


def test_atomic_writer_leaves_nothing_when_the_writer_fails(root):
    url = storage.join(root, "d", "x.bin")
    storage.makedirs(storage.join(root, "d"))
    with pytest.raises(ValueError, match="boom"):
        with commit.atomic_writer(url) as f:
            f.write(b"partial")
            raise ValueError("boom")
    assert storage.list_names(storage.join(root, "d")) == []


def test_open_child_reads_byte_ranges(root, tmp_path):
    data = bytes(range(256)) * 4096  # 1 MiB, more than one read-ahead buffer
    commit.write_bytes_atomic(storage.join(root, "f", "big.bin"), data)
    with storage.open_child(storage.join(root, "f"), "big.bin") as f:
        f.seek(-10, 2)
        assert f.read() == data[-10:]
        f.seek(300_000)
        assert f.read(5) == data[300_000:300_005]
        assert f.tell() == 300_005
    local = storage.fetch_files(storage.join(root, "f"), ["big.bin"], tmp_path / "scratch")
    assert (local / "big.bin").read_bytes() == data


def test_tasks_switch_to_the_webhdfs_settings_they_are_given(tmp_path, monkeypatch):
    with WebHdfsTestServer(tmp_path / "a") as a, WebHdfsTestServer(tmp_path / "b") as b:
        monkeypatch.setattr(storage, "_client", None)
        monkeypatch.delenv("TFHUB_WEBHDFS_URL", raising=False)
        (a.root / "x").write_bytes(b"from a")
        (b.root / "x").write_bytes(b"from b")
        storage.use_webhdfs({"TFHUB_WEBHDFS_URL": a.url})
        assert storage.read_bytes("hdfs://nn/x") == b"from a"
        storage.use_webhdfs({"TFHUB_WEBHDFS_URL": b.url})  # a reused Python worker, another job
        assert storage.read_bytes("hdfs://nn/x") == b"from b"
        assert storage.webhdfs_settings() == {"TFHUB_WEBHDFS_URL": b.url}
    storage._client = None
