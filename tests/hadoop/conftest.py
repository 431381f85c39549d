"""One real HDFS + YARN (``hadoop/MiniHadoop.java``) for the whole test session, shared by every test here.

Starting it takes about a minute on 2 cores (more while other work runs); its first start on a machine also
fetches the Hadoop jars with Maven (``hadoop/pom.xml``, into ``var/hadoop/lib``). Without ``java`` or ``mvn`` the
fixture fails with a message that says what to install: these tests are part of ``make test``, they do not skip.

``MINIHADOOP_DIR=var/hadoop/cluster`` (after ``make hadoop-up``) runs them against that running cluster instead:
quicker when working on these tests; the session then leaves it running.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.minihadoop import MiniHadoop


@pytest.fixture(scope="session")
def minihadoop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MiniHadoop]:
    if os.environ.get("MINIHADOOP_DIR"):
        yield MiniHadoop.attach(os.environ["MINIHADOOP_DIR"])
        return
    with MiniHadoop(tmp_path_factory.mktemp("minihadoop")) as cluster:
        print(f"\nminihadoop: started in {cluster.start_s:.1f} s: {cluster.fs_default_fs}, WebHDFS "
              f"{cluster.webhdfs_url}, ResourceManager {cluster.rm_webapp}")
        yield cluster
