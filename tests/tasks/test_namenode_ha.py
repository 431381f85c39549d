"""Job code on hdfs:// with NameNode high availability: a prep run and a training run survive a failover in
their middle.

The WebHDFS test server plays an HA pair over one namespace; ``TFHUB_WEBHDFS_URL`` lists both namenodes, as the
operators derive it from an Airflow connection with two hosts. Real Spark (local[2]): the driver and the Spark
tasks' Python workers each have their own client, and each finds the new active namenode by itself.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.core import schema
from tasks.io import storage
from tasks import prepare_examples as P
from tests.conftest import make_partition
from tests.support.webhdfs_server import WebHdfsTestServer


@pytest.fixture
def ha_hdfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebHdfsTestServer]:
    with WebHdfsTestServer(tmp_path / "hdfs", namenodes=2) as srv:
        monkeypatch.setenv("TFHUB_WEBHDFS_URL", srv.ha_url)
        monkeypatch.setattr(storage, "_client", None)
        yield srv
    storage._client = None


def test_prep_survives_a_namenode_failover_in_its_middle(spark, tmp_path: Path, ha_hdfs: WebHdfsTestServer) -> None:
    raw = make_partition(tmp_path / "raw", "2026-11-20", num_images=12)
    shutil.copytree(raw, ha_hdfs.root / "store" / "raw" / raw.name)
    nn1, nn2 = ha_hdfs.namenode_ports
    # While the Spark tasks read the images: the active namenode goes standby after the 4th image's OPEN, no
    # namenode is active for the next 3 requests, then the other one is.
    ha_hdfs.fail_over_after(4, op="OPEN", gap=3)

    result = P.run(P.Config(raw=f"hdfs://namenode:8020/store/raw/{raw.name}",
                            output=f"hdfs://namenode:8020/store/examples/{raw.name}", partition="2026-11-20",
                            min_shards=2))

    assert ha_hdfs.active == 1
    out = ha_hdfs.root / "store" / "examples" / raw.name
    assert sum(result["counts"].values()) == 12
    assert (out / schema.SUCCESS).exists() and json.loads((out / schema.MANIFEST).read_text()) == result
    assert len(list(out.glob("*.tfrecord"))) == sum(len(f) for f in result["files"].values())
    assert not [p for p in (ha_hdfs.root / "store").rglob(".*")], "a hidden temporary file or folder was left"

    namenode = [r for r in ha_hdfs.requests if r.node == "namenode"]
    switch = next(i for i, r in enumerate(namenode) if r.status == 403)
    before, after = namenode[:switch], namenode[switch:]
    # The switch came in the middle: image reads on both sides of it, and every write of the output after it.
    image_opens = [r for r in namenode if r.op == "OPEN" and "/images/" in r.path and r.status == 307]
    assert {r.port for r in before} == {nn1} and {r.port for r in image_opens} == {nn1, nn2}
    assert {r.port for r in after if r.status != 403} == {nn2}
    assert any(r.op == "RENAME" and r.port == nn2 and r.status == 200 for r in after)
    # The standby answered as Hadoop's does, and far from every request went to it first: each client remembers
    # the active namenode once it has found it.
    assert {r.status for r in after if r.port == nn1} == {403}
    assert len([r for r in after if r.port == nn1]) < len(after) / 4


def test_training_survives_a_namenode_failover_in_its_middle(spark, small_hub_module, tmp_path: Path,
                                                             ha_hdfs: WebHdfsTestServer) -> None:
    """The smallest fine-tuning run, on hdfs://: the active namenode turns standby once the first checkpoint is on
    HDFS, while the workers train; the other one takes over, and the run finishes without a relaunch."""
    from tasks import finetune as F

    raw = make_partition(tmp_path / "raw", "2026-11-20", num_images=40)
    P.run(P.Config(raw=f"file://{raw}", output=f"file://{tmp_path}/examples", partition="2026-11-20", min_shards=2),
          spark)
    shutil.copytree(tmp_path / "examples", ha_hdfs.root / "tfhub" / "examples")
    run_dir = ha_hdfs.root / "tfhub" / "runs" / "ds=2026-11-20"
    nn1, nn2 = ha_hdfs.namenode_ports

    switched = threading.Event()

    def switch_after_the_first_checkpoint() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not switched.is_set():
            if any(p.is_file() for p in (run_dir / "checkpoints").rglob("*")):
                ha_hdfs.fail_over_after(0, gap=2)
                switched.set()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=switch_after_the_first_checkpoint, daemon=True)
    watcher.start()
    root = "hdfs://namenode:8020/tfhub"
    cfg = F.Config(examples=f"{root}/examples", run_dir=f"{root}/runs/ds=2026-11-20", storage_root=root,
                   hub_module=str(small_hub_module), num_workers=2, epochs=1, batch_size=8,
                   checkpoint_every_steps=1, max_restarts=0)
    try:
        history = F.run(cfg, spark)
    finally:
        switched.set()
        watcher.join(timeout=5)

    assert ha_hdfs.active == 1 and history["restarts"] == 0
    assert (run_dir / "model" / "saved_model.pb").exists()
    namenode = [r for r in ha_hdfs.requests if r.node == "namenode"]
    switch = next(i for i, r in enumerate(namenode) if r.status == 403)
    assert {r.port for r in namenode[:switch]} == {nn1}
    assert {r.port for r in namenode[switch:] if r.status != 403} == {nn2}
    # The chief's later writes (checkpoints, the model) went to the new active namenode.
    later = [r.path for r in namenode[switch:] if r.op == "CREATE" and r.port == nn2]
    assert [p for p in later if "saved_model.pb" in p] and [p for p in later if "/checkpoints/" in p], later
