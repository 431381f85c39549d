"""Training input streamed from hdfs:// (``tasks.training.streamed_input``), on the WebHDFS test server: the records arrive
as written, in order, through bounded read-ahead and no local disk; failed ranges are read again, and a file that
keeps failing fails with its name; the worker log names the mode and why; and a real training in stream mode."""

from __future__ import annotations

import json
import logging
import random
import shutil
import time

import pytest

from tasks import finetune as F
from tasks.training import streamed_input as S
from tasks.training.shard_cache import ShardCache
from tasks.prep import tfrecord

DATA = "hdfs://namenode:8020/data"


def write_shards(root, sizes_per_shard: list[list[int]], seed: int = 7,
                 examples: bool = False) -> dict[str, list[bytes]]:
    """TFRecord files of random records of the given sizes under ``root``/data (``tf.train.Example``s of a text
    about that long and a label, with ``examples``); returns name -> records."""
    rng = random.Random(seed)
    (root / "data").mkdir(parents=True, exist_ok=True)
    shards = {}
    for i, sizes in enumerate(sizes_per_shard):
        records = [tfrecord.encode_example({"text": "x" * n, "label": k}) if examples else rng.randbytes(n)
                   for k, n in enumerate(sizes)]
        with open(root / "data" / f"train-{i:05d}.tfrecord", "wb") as f:
            tfrecord.write_records(f, records)
        shards[f"train-{i:05d}.tfrecord"] = records
    return shards


def test_streamed_records_are_the_written_ones_in_order_through_bounded_ranged_reads(hdfs):
    # Records smaller than a range, spanning several ranges, and one much larger than the read-ahead.
    shards = write_shards(hdfs.root, [[10, 900, 0, 3000, 77] * 5, [12000, 5, 999, 1000, 1001], [1]])
    for name, records in shards.items():
        stream = S.ShardStream(f"{DATA}/{name}", chunk_bytes=1000, readahead=2)
        assert list(stream) == records, name
        it = iter(stream)  # each iteration reads the file again
        got = [next(it)]
        time.sleep(0.5)  # a slow consumer: the reader thread must stop two ranges ahead
        got += list(it)
        assert got == records
        # Never more in memory than the read-ahead and the range read while it is full.
        assert 0 < stream.max_buffered <= (2 + 1) * 1000, name
    opens = [r for r in hdfs.requests if r.op == "OPEN" and r.node == "datanode"]
    total = sum((hdfs.root / "data" / n).stat().st_size for n in shards)
    assert len(opens) == 2 * sum(-(-(hdfs.root / "data" / n).stat().st_size // 1000) for n in shards)
    assert total > 30000


def test_local_copies_stay_under_the_cap_and_serve_the_next_passes(hdfs, tmp_path):
    shards = write_shards(hdfs.root, [[4000] * 100, [4000] * 100, [4000] * 100])  # about 0.4 MB each
    names = sorted(shards)
    size = (hdfs.root / "data" / names[0]).stat().st_size
    folder = tmp_path / "cache"
    cache = ShardCache(folder, cap_bytes=2 * size + size // 2)  # room for two copies, not three

    def disk() -> int:
        return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0

    # A shard abandoned half-way is not kept, and gives its room back.
    it = iter(S.ShardStream(f"{DATA}/{names[2]}", chunk_bytes=50000, cache=cache))
    next(it)
    it.close()
    assert cache.used == 0 and disk() == 0
    largest = 0
    for _ in range(2):
        hdfs.clear_log()
        for name in names:
            got = []
            for record in S.ShardStream(f"{DATA}/{name}", chunk_bytes=50000, cache=cache):
                got.append(record)
                largest = max(largest, disk())
            assert got == shards[name], name
    assert largest <= cache.cap_bytes and cache.max_used <= cache.cap_bytes
    assert sorted(p.name for p in folder.iterdir()) == [f"1-{names[0]}", f"2-{names[1]}"]
    # The second pass streamed only the shard that did not fit.
    assert {r.path.rsplit("/", 1)[1] for r in hdfs.requests if r.op == "OPEN"} == {names[2]}


def test_a_range_that_fails_for_a_while_is_read_again(hdfs, caplog):
    shards = write_shards(hdfs.root, [[500] * 20])
    # A datanode failure the WebHDFS client itself does not retry (403 IOException), three times in a row.
    hdfs.inject_faults(3, exception="IOException", message="DataNode is shutting down", op="OPEN", node="datanode")
    stream = S.ShardStream(f"{DATA}/train-00000.tfrecord", chunk_bytes=4096, retries=3, backoff_s=0.01)
    with caplog.at_level(logging.WARNING, logger="tasks.training.streamed_input"):
        assert list(stream) == shards["train-00000.tfrecord"]
    assert stream.retried == 3
    assert "retry 3 of 3" in caplog.text and "DataNode is shutting down" in caplog.text


def test_a_file_that_keeps_failing_fails_the_worker_input_with_the_file_named(hdfs, monkeypatch):
    from tasks.training import model as M

    write_shards(hdfs.root, [[500] * 20, [500] * 20])
    url = f"{DATA}/train-00001.tfrecord"
    stream = S.ShardStream(url, chunk_bytes=4096, retries=2, backoff_s=0.01)
    hdfs.inject_faults(100, exception="IOException", message="no live datanode", op="OPEN", node="datanode")
    with pytest.raises(S.StreamReadError, match=rf"{url}: reading bytes 0-4095 failed 3 times, the last with: .*"
                                                r"no live datanode"):
        list(stream)
    # Through tf.data, as a worker trains: the error that fails the worker names the file.
    monkeypatch.setattr(S, "RETRIES", 1)
    monkeypatch.setattr(S, "BACKOFF_S", 0.01)
    plan = S.InputPlan("stream", "test", [url], [], 0.0)
    ds = S.make_dataset(plan, [url], None, 4, training=False, task_type="text_classification")
    with pytest.raises(M.tf.errors.OpError, match=rf"{url}: reading .* failed 2 times"):
        list(ds)
    # And a missing file at once, without waiting through the retries.
    with pytest.raises(S.StreamReadError, match=rf"{DATA}/train-00009.tfrecord: does not exist"):
        list(S.ShardStream(f"{DATA}/train-00009.tfrecord", retries=50, backoff_s=10))


def test_corrupt_framing_is_named_with_the_file_and_offset(hdfs):
    write_shards(hdfs.root, [[100, 100, 100]])
    path = hdfs.root / "data" / "train-00000.tfrecord"
    data = bytearray(path.read_bytes())
    data[116 + 50] ^= 0xFF  # inside the second record's data
    path.write_bytes(bytes(data))
    with pytest.raises(S.StreamReadError, match=rf"{DATA}/train-00000.tfrecord: corrupt TFRecord framing: data "
                                                r"checksum mismatch at byte 116"):
        list(S.ShardStream(f"{DATA}/train-00000.tfrecord", chunk_bytes=64))


def test_the_mode_is_chosen_by_size_logged_with_why_and_streaming_leaves_local_disk_empty(hdfs, tmp_path, caplog):
    shards = write_shards(hdfs.root, [[2000] * 200, [2000] * 200, [2000] * 50], examples=True)
    names = sorted(shards)
    sizes = {n: (hdfs.root / "data" / n).stat().st_size for n in names}  # about 0.4 MB each
    scratch = tmp_path / "scratch"
    with caplog.at_level(logging.INFO, logger="tasks.training.streamed_input"):
        plan = S.plan_inputs(DATA, names[:2], names[2:], sizes, scratch, "auto", 0.5, rank=1)
    assert plan.mode == "stream" and plan.train == [f"{DATA}/{n}" for n in names[:2]]
    assert "worker 1: input mode stream (input_mode=auto: this worker's share, 0.9 MB, is over " \
           "input_prefetch_max_mb=0.5" in caplog.text
    # Streamed: every record, and nothing on local disk while reading.
    seen, disk = [], []
    for batch in S.make_dataset(plan, plan.train, None, 50, training=False, task_type="text_classification"):
        seen += [int(v) for v in batch[1].numpy()]
        disk.append(sum(f.stat().st_size for f in scratch.rglob("*") if f.is_file()) if scratch.exists() else 0)
    assert len(seen) == 400 and max(disk) == 0
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tasks.training.streamed_input"):
        small = S.plan_inputs(DATA, names[:2], names[2:], sizes, scratch, "auto", 1.0, rank=0)
        forced = S.plan_inputs(DATA, names[:1], [], sizes, tmp_path / "s2", "stream", 1000, rank=0)
    assert small.mode == "prefetch" and forced.mode == "stream"
    assert "worker 0: input mode prefetch (input_mode=auto: this worker's share, 0.9 MB, is at most " in caplog.text
    assert "worker 0: input mode stream (input_mode=stream)" in caplog.text
    assert sorted(p.name for p in scratch.iterdir()) == names  # prefetched: the whole share is local
    assert small.train == [str(scratch / n) for n in names[:2]]
    local = S.plan_inputs(f"file://{hdfs.root}/data", names[:1], [], sizes, scratch, "stream", 0, rank=0)
    assert local.mode == "local" and local.train == [str(hdfs.root / "data" / names[0])]


def _text_records(n: int) -> list[bytes]:
    return [tfrecord.encode_example({"text": f"t{i}", "label": i}) for i in range(n)]


def test_stream_and_prefetch_give_the_same_records(hdfs, tmp_path):
    from tasks.core import schema

    assert schema.LABEL == "label"
    (hdfs.root / "data").mkdir()
    for i in range(3):
        with open(hdfs.root / "data" / f"s{i}", "wb") as f:
            tfrecord.write_records(f, _text_records(40)[i::3])
    names = ["s0", "s1", "s2"]
    sizes = {n: 1 for n in names}
    got = {}
    for mode in ("stream", "prefetch"):
        plan = S.plan_inputs(DATA, names, [], sizes, tmp_path / mode, mode, 0, rank=0)
        ds = S.make_dataset(plan, plan.train, None, 7, training=False, shard=(2, 1), task_type="text_classification")
        got[mode] = [int(v) for b in ds for v in b[1].numpy()]
    assert got["stream"] == got["prefetch"] and len(got["stream"]) == 20


def test_a_real_training_streams_from_hdfs_and_a_killed_worker_resumes_from_its_checkpoint(
        spark, small_hub_module, prepared_demo_dataset, hdfs, tmp_path, caplog):
    """One worker streams the prepared demo dataset from the test server; it is killed (SIGKILL) right after its
    first checkpoint is committed, and the relaunched stage streams again from the checkpoint's step."""
    import os
    import re
    import signal

    import psutil

    shutil.copytree(prepared_demo_dataset.examples, hdfs.root / "examples" / f"ds={prepared_demo_dataset.ds}")
    examples = f"hdfs://namenode:8020/examples/ds={prepared_demo_dataset.ds}"
    killed: dict = {}

    class Killer(logging.Handler):
        def emit(self, record):
            m = re.match(r"\[w0 [^\]]*:(\d+)\] worker 0 checkpoint at epoch 1 step", record.getMessage())
            if m and not killed:  # attempt 0 only: a relaunched worker's lines carry "(attempt 1)"
                pid = int(m.group(1))
                assert psutil.Process(pid).exe() == psutil.Process().exe()  # a Python worker of this test's Spark
                os.kill(pid, signal.SIGKILL)
                killed.update(pid=pid)

    killer = Killer()
    logging.getLogger("finetune.worker").addHandler(killer)
    cfg = F.Config(examples=examples, run_dir=f"file://{tmp_path}/run", storage_root=f"file://{tmp_path}",
                   hub_module=str(small_hub_module), num_workers=1, epochs=2, batch_size=32, max_restarts=1,
                   checkpoint_every_steps=5, input_mode="stream")
    try:
        with caplog.at_level(logging.INFO):
            history = F.run(cfg, spark)
    finally:
        logging.getLogger("finetune.worker").removeHandler(killer)
    assert killed, "worker 0 committed no checkpoint in attempt 0"
    assert history["restarts"] == 1 and history["resumed_from"]["global_step"] >= 5
    assert len(history["history"]) == 2 and history["history"][-1]["examples_per_sec"] > 0
    assert history["input"] == {0: {"mode": "stream", "reason": "input_mode=stream"}}
    assert (tmp_path / "run" / "model" / "saved_model.pb").exists()
    relayed = [r.getMessage() for r in caplog.records if r.name == "finetune.worker"]
    streamed = [m for m in relayed if "worker 0: input mode stream (input_mode=stream)" in m]
    assert len(streamed) == 2 and "(attempt 1)" in streamed[1], relayed[:20]
    # Every training and eval file was read over WebHDFS (the driver read only the manifest).
    manifest = json.loads((prepared_demo_dataset.examples / "manifest.json").read_text())
    wanted = {f["name"] for split in ("train", "eval") for f in manifest["files"][split] if f["records"]}
    opened = {r.path.rsplit("/", 1)[1] for r in hdfs.requests if r.op == "OPEN" and r.node == "datanode"}
    assert opened - {"manifest.json"} == wanted
