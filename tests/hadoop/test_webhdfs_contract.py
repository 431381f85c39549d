"""The WebHDFS contract tests of ``tests/tasks/test_webhdfs.py``, the same bodies, against the real NameNode and
DataNode of the session's local Hadoop (or, when ``WEBHDFS_URL`` is set, against that endpoint instead, in a fresh
folder under ``WEBHDFS_TEST_ROOT``; ``TFHUB_WEBHDFS_USER`` and ``TFHUB_WEBHDFS_KERBEROS`` apply to it).

Each test works in a fresh folder that is deleted afterwards. What the real NameNode does differently from the
test server is listed in ``tests/support/WEBHDFS_FIDELITY.md``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tasks.io import webhdfs
from tasks.io.webhdfs import WebHdfsClient
from tests.support.minihadoop import MiniHadoop
from tests.tasks.test_webhdfs import (  # noqa: F401  (collected here, with the endpoint fixture below)
    Endpoint,
    test_bytes_round_trip_and_overwrite,
    test_create_without_overwrite_names_the_path,
    test_delete_semantics,
    test_five_megabyte_file_round_trip,
    test_hdfs_urls_name_paths,
    test_missing_file_error_names_op_path_and_exception,
    test_mkdirs,
    test_rename_semantics,
    test_status_and_list_fields,
    test_upload_dir_and_download_dir,
)


@pytest.fixture
def endpoint(request: pytest.FixtureRequest) -> Iterator[Endpoint]:
    url = os.environ.get("WEBHDFS_URL")
    env = dict(os.environ)
    if url:
        env[webhdfs.ENV_URL] = url
    else:
        cluster: MiniHadoop = request.getfixturevalue("minihadoop")
        env = {webhdfs.ENV_URL: cluster.webhdfs_url, webhdfs.ENV_USER: "tester"}
    root = f"{os.environ.get('WEBHDFS_TEST_ROOT', '/tmp/tfhub-contract').rstrip('/')}/{uuid.uuid4().hex}"
    with WebHdfsClient.from_env(env) as client:
        client.mkdirs(root)
        try:
            yield Endpoint(client, root, None)
        finally:
            client.delete(root, recursive=True)
