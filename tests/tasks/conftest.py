"""Fixtures of the job-code tests."""

from __future__ import annotations

import pytest

from tasks.io import storage
from tests.support.webhdfs_server import WebHdfsTestServer


@pytest.fixture
def hdfs(tmp_path, monkeypatch):
    """A WebHDFS test server that the job code's ``hdfs://`` URLs go to: ``hdfs://namenode:8020/x`` is
    ``<tmp_path>/hdfs/x``."""
    with WebHdfsTestServer(tmp_path / "hdfs") as srv:
        monkeypatch.setenv("TFHUB_WEBHDFS_URL", srv.url)
        monkeypatch.setattr(storage, "_client", None)
        yield srv
    storage._client = None
