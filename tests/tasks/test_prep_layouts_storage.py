"""Data prep's input layouts, its hdfs:// path (WebHDFS test server), and its atomic, idempotent output.

Real Spark (local[2]); the killed run is a real ``python -m tasks.prepare_examples`` process, killed with SIGKILL
while its Spark tasks write shards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tasks.core import schema
from tasks.io import commit, storage
from tasks.prep import image_check, prep_tasks
from tasks import prepare_examples as P
from tests.conftest import make_partition
from tests.support import partitions as parts


def run_prep(raw_url, output_url, **kw):
    kw.setdefault("min_shards", 1)
    kw.setdefault("partition", "2026-11-20")  # the date of every partition these tests make
    return P.run(P.Config(raw=raw_url, output=output_url, **kw))


def tfrecords(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tfrecord"))}


def test_folders_layout_labels_records_by_their_folder(spark, tmp_path):
    source = make_partition(tmp_path / "src", "2026-11-20", num_images=12)
    raw = parts.to_folders(source, tmp_path / "raw" / "ds=2026-11-20")
    (raw / "loose.jpg").write_bytes(parts.image_bytes("JPEG"))
    manifest = run_prep(f"file://{raw}", f"file://{tmp_path}/examples/ds=2026-11-20", max_bad_fraction=0.1,
                        layout="folders")
    expected = {f"{label}/{rel.split('/')[1]}": label for rel, label in parts.read_rows(source)[1:]}
    records = parts.read_tfrecords((tmp_path / "examples" / "ds=2026-11-20").glob("*.tfrecord"))
    assert {r[schema.RECORD_ID]: r[schema.LABEL_TEXT] for r in records} == expected
    assert all(r[schema.IMAGE] == (raw / r[schema.RECORD_ID]).read_bytes() for r in records)
    assert manifest["labels"] == sorted(parts.CLASSES) and manifest["layout"] == "folders"
    index = [json.loads(x) for x in open(tmp_path / "quarantine" / "ds=2026-11-20" / P.QUARANTINE_INDEX)]
    assert [(q["id"], q["reason"]) for q in index] == [("loose.jpg", "unlabelled")]


def test_a_parquet_labels_manifest_works_like_labels_csv(spark, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = make_partition(tmp_path / "raw", "2026-11-20", num_images=10)
    rows = parts.read_rows(raw)[1:]
    pq.write_table(pa.table({"file": [r for r, _ in rows], "class": [label for _, label in rows]}),
                   raw / "labels.parquet")
    (raw / "labels.csv").unlink()
    manifest = run_prep(f"file://{raw}", f"file://{tmp_path}/examples/{raw.name}", labels_file="labels.parquet",
                        id_column="file", label_column="class")
    records = parts.read_tfrecords((tmp_path / "examples" / raw.name).glob("*.tfrecord"))
    assert {r[schema.RECORD_ID]: r[schema.LABEL_TEXT] for r in records} == dict(rows)
    assert manifest["bad_records"] == 0


def _parquet_partition(tmp_path, source):
    """The records of ``source`` as Parquet (two files, row groups of 7), plus a file of bad rows and a stray
    file; returns the partition and ``{id: reason}`` of the bad ones."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = parts.to_parquet(source, tmp_path / "raw" / source.name)
    first = parts.read_rows(source)[1]
    pq.write_table(pa.table({
        "path": [first[0], "images/null.png", "", "images/junk.jpg"],
        "label": ["circle", "square", "cross", "triangle"],
        "image": pa.array([b"another image under a taken id", None, parts.image_bytes(), b"junk"], pa.binary()),
    }), raw / "part-extra.parquet")
    (raw / "README.txt").write_text("not data")
    return raw, {"images/null.png": "empty", "part-extra.parquet#2": "missing_id", "images/junk.jpg": "not_an_image",
                 "README.txt": "unexpected_file"}, first[0]


def test_parquet_layout_reads_images_from_a_column(spark, tmp_path):
    source = make_partition(tmp_path / "src", "2026-11-20", num_images=20)
    raw, bad, duplicated = _parquet_partition(tmp_path, source)
    manifest = run_prep(f"file://{raw}", f"file://{tmp_path}/examples/{raw.name}", layout="parquet",
                        max_bad_fraction=0.5, min_shards=2)
    rows = dict(parts.read_rows(source)[1:])
    records = parts.read_tfrecords((tmp_path / "examples" / raw.name).glob("*.tfrecord"))
    assert {r[schema.RECORD_ID]: r[schema.LABEL_TEXT] for r in records} == {
        rid: label for rid, label in rows.items() if rid != duplicated}
    assert all(r[schema.IMAGE] == (source / r[schema.RECORD_ID]).read_bytes() for r in records)
    index = [json.loads(x) for x in open(tmp_path / "quarantine" / raw.name / P.QUARANTINE_INDEX)]
    # Both rows of the duplicated id are quarantined, each with its source row.
    assert sorted((q["id"], q["reason"]) for q in index) == sorted(
        [*bad.items(), (duplicated, "duplicate_id"), (duplicated, "duplicate_id")])
    assert manifest["num_records"] == 19 and manifest["bad_records"] == 6


def test_hdfs_raw_and_output_give_the_same_bytes_as_file(spark, tmp_path, hdfs):
    raw = make_partition(tmp_path / "raw", "2026-11-20", num_images=16)
    (raw / "images" / "half.png").write_bytes(parts.image_bytes("PNG", (64, 64))[:300])
    parts.write_rows(raw, parts.read_rows(raw) + [["images/half.png", "circle"]])
    shutil.copytree(raw, hdfs.root / "store" / "raw" / raw.name)

    local = run_prep(f"file://{raw}", f"file://{tmp_path}/file/examples/{raw.name}", min_shards=2,
                     max_bad_fraction=0.1)
    hdfs.clear_log()
    remote = run_prep(f"hdfs://namenode:8020/store/raw/{raw.name}", f"hdfs://namenode:8020/store/examples/{raw.name}",
                      min_shards=2, max_bad_fraction=0.1)

    out = hdfs.root / "store" / "examples" / raw.name
    assert tfrecords(out) == tfrecords(tmp_path / "file" / "examples" / raw.name)
    assert remote["files"] == local["files"] and remote["counts"] == local["counts"]
    assert (out / schema.SUCCESS).exists() and json.loads((out / schema.MANIFEST).read_text()) == remote
    q = hdfs.root / "store" / "quarantine" / raw.name
    assert [json.loads(x)["reason"] for x in open(q / P.QUARANTINE_INDEX)] == ["truncated"]
    assert sorted(p.name for p in (hdfs.root / "store" / "examples").iterdir()) == ["_vocabulary", raw.name]
    # The Spark tasks read the images and wrote their shards through WebHDFS, each shard renamed into place.
    calls = hdfs.calls("namenode")
    assert sum(1 for m, op, p in calls if op == "OPEN" and "/images/" in p) == 17
    shard_renames = [p for m, op, p in calls if op == "RENAME" and ".tfrecord.tmp-" in p]
    assert len(shard_renames) == sum(len(f) for f in remote["files"].values()) + 1  # + 1 quarantine piece


def test_hdfs_parquet_partition_is_read_by_byte_ranges(spark, tmp_path, hdfs):
    source = make_partition(tmp_path / "src", "2026-11-20", num_images=12)
    raw, _, _ = _parquet_partition(tmp_path, source)
    shutil.copytree(raw, hdfs.root / "store" / "raw" / raw.name)
    run_prep(f"file://{raw}", f"file://{tmp_path}/file/examples/{raw.name}", layout="parquet", max_bad_fraction=0.5)
    run_prep(f"hdfs://namenode:8020/store/raw/{raw.name}", f"hdfs://namenode:8020/store/examples/{raw.name}",
             layout="parquet", max_bad_fraction=0.5)
    assert tfrecords(hdfs.root / "store" / "examples" / raw.name) == tfrecords(
        tmp_path / "file" / "examples" / raw.name)
    assert (hdfs.root / "store" / "quarantine" / raw.name / P.QUARANTINE_INDEX).read_text() == (
        tmp_path / "file" / "quarantine" / raw.name / P.QUARANTINE_INDEX).read_text()


@pytest.mark.parametrize("scheme", ["file", "hdfs"])
def test_retried_and_speculative_shard_attempts_leave_one_whole_file(tmp_path, scheme, request):
    if scheme == "hdfs":
        request.getfixturevalue("hdfs")
        root = "hdfs://namenode:8020/store"
    else:
        root = f"file://{tmp_path}/store"
    raw = make_partition(tmp_path / "raw", "2026-11-20", num_images=6)
    records = tuple(prep_tasks.Planned(rel, label, rel, (raw / rel).stat().st_size, label_id=0)
                    for rel, label in sorted(parts.read_rows(raw)[1:]))
    task = prep_tasks.ShardTask(0, "train", "train-00000-of-00001.tfrecord", records)
    staging = commit.new_staging(storage.join(root, "out"))
    q_staging = commit.new_staging(storage.join(root, "q"))
    ctx = prep_tasks.Context(f"file://{raw}", staging, q_staging, image_check.Bounds(), storage.webhdfs_settings())
    first = prep_tasks.write_files_shard(task, ctx)
    data = storage.read_bytes(storage.join(staging, task.name))
    second = prep_tasks.write_files_shard(task, ctx)  # a retry, or a speculative copy finishing later
    assert (first["records"], first["bytes"]) == (second["records"], second["bytes"]) == (6, len(data))
    assert storage.read_bytes(storage.join(staging, task.name)) == data
    # An attempt killed mid-write leaves a hidden temporary file; committing drops it.
    commit.write_bytes_atomic(storage.join(staging, f".{task.name}.tmp-0123"), data[:100])
    commit.publish_dir(staging, storage.join(root, "out"))
    assert storage.list_names(storage.join(root, "out")) == [task.name]
    assert storage.list_names(root) == [q_staging.rpartition("/")[2], "out"]


def staged_files(folder):
    """Files in staging folders under ``folder`` (which may be renamed away while they are listed)."""
    try:
        return [f for d in folder.iterdir() if ".staging-" in d.name for f in d.iterdir()]
    except FileNotFoundError:
        return []


def test_a_killed_prep_leaves_no_partial_output_and_a_rerun_one_complete_copy(spark, tmp_path):
    raw = make_partition(tmp_path / "raw", "2026-11-20", num_images=120)
    P.run(P.Config(raw=f"file://{raw}", output=f"file://{tmp_path}/reference/examples/{raw.name}",
                   partition="2026-11-20", min_shards=4), spark)
    reference = tfrecords(tmp_path / "reference" / "examples" / raw.name)

    examples = tmp_path / "store" / "examples"
    cmd = [sys.executable, "-m", "tasks.prepare_examples", "--raw", f"file://{raw}", "--output",
           f"file://{examples}/{raw.name}", "--partition", "2026-11-20", "--min-shards", "4"]
    env = {**os.environ, "PYSPARK_SUBMIT_ARGS": "--master local[2] --conf spark.ui.enabled=false "
                                                "--conf spark.python.worker.reuse=false pyspark-shell"}
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            deadline = time.time() + 240
            written = []
            while time.time() < deadline and proc.poll() is None and not written:
                written = staged_files(examples)
                time.sleep(0.01)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver, its JVM and the Python workers: the whole group
            proc.wait()
    assert written, f"no shard appeared before the run ended:\n{(tmp_path / 'killed.log').read_text()[-3000:]}"
    assert not (examples / raw.name).exists()  # nothing committed: no partial output visible

    P.run(P.Config(raw=f"file://{raw}", output=f"file://{examples}/{raw.name}", partition="2026-11-20", min_shards=4),
          spark)
    assert tfrecords(examples / raw.name) == reference
    assert sorted(p.name for p in examples.iterdir()) == ["_vocabulary", raw.name]
    assert sorted(p.name for p in (tmp_path / "store" / "quarantine").iterdir()) == [raw.name]
    assert sorted(p.name for p in (examples / raw.name).iterdir()) == sorted(
        [*reference, schema.MANIFEST, P.STATS, schema.SUCCESS])
