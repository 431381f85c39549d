"""The stages' storage primitives behave the same on file:// and on hdfs:// (WebHDFS test server)."""

from __future__ import annotations

import pytest

from tasks import storage
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
    storage.write_text_atomic(url, '{"x": 1}')
    storage.write_text_atomic(url, '{"x": 2}')
    assert storage.read_text(url) == '{"x": 2}'
    assert storage.list_names(storage.join(root, "a")) == ["metrics.json"]


def test_publish_dir_replaces_a_folder_and_can_roll_back(root, tmp_path):
    url = storage.join(root, "out")
    for content in ("one", "two"):
        staging = storage.output_staging(url)
        (staging / "sub").mkdir()
        (staging / "sub" / "data.txt").write_text(content)
        previous = storage.publish_dir(staging, url, keep_previous=True)
        assert storage.read_text(storage.join(url, "sub", "data.txt")) == content
    assert previous is not None
    storage.roll_back_url(url, previous)
    assert storage.read_text(storage.join(url, "sub", "data.txt")) == "one"
    assert storage.list_names(root) == ["out"]
    local = storage.fetch(url, tmp_path / "scratch")
    assert (local / "sub" / "data.txt").read_text() == "one"


def test_clean_stale_removes_leftovers(root):
    url = storage.join(root, "out")
    storage.makedirs(storage.join(root, ".out.staging-dead"))
    storage.makedirs(url)
    storage.clean_stale(url)
    assert storage.list_names(root) == ["out"]


def test_unknown_scheme_is_named():
    with pytest.raises(storage.StorageError, match="scheme 's3'"):
        storage.exists("s3://bucket/x")
