"""Spark data prep on real Spark (local[2]) over generated partitions."""

from __future__ import annotations

import csv
import json

import pytest

from tasks.core import schema
from tasks.prep import layouts
from tasks import prepare_examples as P
from tasks.prep import inputs
from tests.conftest import make_partition


def run_prep(tmp_path, raw, **kw):
    kw.setdefault("partition", raw.name.removeprefix("ds="))  # the date the test made the partition for
    cfg = P.Config(raw=f"file://{raw}", output=f"file://{tmp_path}/examples/{raw.name}", **kw)
    return cfg, P.run(cfg)


def read_examples(path):
    import tensorflow as tf

    out = []
    for rec in tf.data.TFRecordDataset(str(path)):
        f = tf.train.Example.FromString(rec.numpy()).features.feature
        out.append({
            "id": f[schema.RECORD_ID].bytes_list.value[0].decode(),
            "label": f[schema.LABEL].int64_list.value[0],
            "label_text": f[schema.LABEL_TEXT].bytes_list.value[0].decode(),
            "image": f[schema.IMAGE].bytes_list.value[0],
            "format": f[schema.FORMAT].bytes_list.value[0].decode(),
        })
    return out


def test_every_raw_record_lands_once_in_its_split(spark, tmp_path):
    raw = make_partition(tmp_path / "raw", "2026-11-20", num_images=60)
    cfg, manifest = run_prep(tmp_path, raw, min_shards=3)
    out = tmp_path / "examples" / raw.name
    assert (out / schema.SUCCESS).exists()
    labels = {r["path"]: r["label"] for r in csv.DictReader(open(raw / "labels.csv"))}
    assert manifest["labels"] == sorted(set(labels.values()))
    seen = {}
    for split in schema.SPLITS:
        files = sorted(out.glob(f"{split}-*.tfrecord"))
        assert len(files) == 3
        assert [f["name"] for f in manifest["files"][split]] == [f.name for f in files]
        for f in files:
            recs = read_examples(f)
            assert [r["id"] for r in recs] == sorted(r["id"] for r in recs)  # sorted within a shard
            for r in recs:
                assert r["id"] not in seen
                seen[r["id"]] = split
                assert schema.split_of(r["id"], cfg.split_fractions) == split
                assert r["label_text"] == labels[r["id"]]
                assert manifest["labels"][r["label"]] == r["label_text"]
                assert r["image"] == (raw / r["id"]).read_bytes()
                assert r["format"] == ("png" if r["id"].endswith(".png") else "jpeg")
    assert set(seen) == set(labels)
    assert sum(manifest["counts"].values()) == 60 == manifest["num_records"]
    assert {s: sum(1 for v in seen.values() if v == s) for s in schema.SPLITS} == manifest["counts"]


def test_rerun_gives_byte_identical_files_and_one_copy(spark, tmp_path):
    raw = make_partition(tmp_path / "raw", "2026-11-21", num_images=30)
    (raw / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    rows = list(csv.reader(open(raw / "labels.csv")))
    with open(raw / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows + [["images/broken.jpg", "circle"]])
    run_prep(tmp_path, raw, min_shards=2, max_bad_fraction=0.1)
    out = tmp_path / "examples" / raw.name
    quarantine = tmp_path / "quarantine" / raw.name
    first = {p.name: p.read_bytes() for d in (out, quarantine) for p in d.iterdir()}
    # A killed earlier attempt left staging folders behind; the rerun cleans them and commits one copy.
    (tmp_path / "examples" / f".{raw.name}.staging-deadbeef").mkdir()
    (tmp_path / "quarantine" / f".{raw.name}.staging-deadbeef").mkdir()
    run_prep(tmp_path, raw, min_shards=2, max_bad_fraction=0.1)
    second = {p.name: p.read_bytes() for d in (out, quarantine) for p in d.iterdir()}
    assert first == second
    pieces = [name for name in first if name.startswith("part-")]
    assert len(pieces) == 1  # the one bad record's quarantine piece
    assert sorted(set(first) - set(pieces)) == [
        "_SUCCESS", "eval-00000-of-00002.tfrecord", "eval-00001-of-00002.tfrecord", "manifest.json",
        "quarantine.jsonl", "stats.json", "summary.json", "test-00000-of-00002.tfrecord",
        "test-00001-of-00002.tfrecord", "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    assert sorted(p.name for p in (tmp_path / "examples").iterdir()) == ["_vocabulary", raw.name]
    assert sorted(p.name for p in (tmp_path / "quarantine").iterdir()) == [raw.name]


def test_partition_without_success_marker_is_refused(spark, tmp_path):
    raw = make_partition(tmp_path / "raw", "2026-11-22", num_images=8)
    (raw / "_SUCCESS").unlink()
    with pytest.raises(P.PrepError, match="no _SUCCESS marker"):
        run_prep(tmp_path, raw)


def add_stray_and_missing(raw):
    src = next(p for p in sorted((raw / "images").iterdir()))
    (raw / "images" / "stray.png").write_bytes(src.read_bytes())
    rows = list(csv.reader(open(raw / "labels.csv")))
    rows.append(["images/missing.jpg", "circle"])
    with open(raw / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_mismatch_between_files_and_labels_goes_to_quarantine(spark, tmp_path):
    raw = make_partition(tmp_path / "raw", "2026-11-23", num_images=20)
    add_stray_and_missing(raw)
    _, manifest = run_prep(tmp_path, raw, min_shards=1, max_bad_fraction=0.1)
    assert manifest["num_records"] == 20 and manifest["bad_records"] == 2
    index = [json.loads(line) for line in open(tmp_path / "quarantine" / raw.name / P.QUARANTINE_INDEX)]
    assert [(r["id"], r["reason"]) for r in index] == [("images/missing.jpg", "missing_file"),
                                                       ("images/stray.png", "unlabelled")]
    assert index[0]["detail"] == "labels.csv:22 lists 'images/missing.jpg', which is not in the partition"


def test_too_many_bad_records_fail_naming_them_and_the_counts(spark, tmp_path):
    raw = make_partition(tmp_path / "raw", "2026-11-23", num_images=8)
    add_stray_and_missing(raw)
    with pytest.raises(P.PrepError, match=r"2 of 10 records are bad \(20.0% > max_bad_fraction 5.0%\): "
                                          r"missing_file 1, unlabelled 1; first: images/missing.jpg \(missing_file: "
                                          r".*\); images/stray.png \(unlabelled: not listed in labels.csv\)\. "
                                          r"They are in file://.*/quarantine/ds=2026-11-23"):
        run_prep(tmp_path, raw)
    assert not (tmp_path / "examples" / raw.name).exists()
    assert [p.name for p in (tmp_path / "examples").iterdir()] == []  # no staging left, no vocabulary saved
    summary = json.loads((tmp_path / "quarantine" / raw.name / P.QUARANTINE_SUMMARY).read_text())
    assert summary["reasons"] == {"missing_file": 1, "unlabelled": 1} and summary["records"] == 10


def test_bad_labels_manifest_is_reported(tmp_path):
    (tmp_path / "labels.csv").write_text("file,class\n")
    with pytest.raises(P.PrepError, match="header must name columns 'path' and 'label'"):
        layouts.read_manifest(f"file://{tmp_path}", "labels.csv")
    (tmp_path / "labels.csv").write_text("path,label\n")
    with pytest.raises(P.PrepError, match="lists no records"):
        layouts.read_manifest(f"file://{tmp_path}", "labels.csv")
    with pytest.raises(P.PrepError, match="labels manifest .*/other.csv is missing"):
        layouts.read_manifest(f"file://{tmp_path}", "other.csv")


def test_a_path_listed_twice_is_quarantined_with_both_lines(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "labels.csv").write_text("path,label\na.jpg,circle\na.jpg,square\n")
    listed = layouts.list_manifest(f"file://{tmp_path}", "labels.csv")
    assert [(r.id, r.problem) for r in listed.records] == [
        ("a.jpg", ("duplicate_id", "listed 2 times in labels.csv (labels.csv:2 'circle', labels.csv:3 'square')"))]


def test_the_partition_option_is_the_source_of_truth_of_the_derived_locations(capsys):
    """``--partition`` names the quarantine folder, the previous day's stats and the table filter, whatever the
    folders are called; it is required: nothing reads the date back from folder names."""
    base = ["--raw", "file:///s/raw/incoming", "--output", "file:///s/examples/staged"]
    cfg = P.parse_args([*base, "--partition", "2026-11-20"])
    assert cfg.partition == "2026-11-20" and inputs.partition_name(cfg) == "ds=2026-11-20"
    assert inputs.quarantine_url(cfg) == "file:///s/quarantine/ds=2026-11-20"
    assert inputs.previous_stats_url(cfg) == (f"file:///s/examples/ds=2026-11-19/{P.STATS}", "ds=2026-11-19")
    table = P.parse_args([*base, "--partition", "2026-03-01", "--layout", "table", "--table", "db.t",
                          "--partition-column", "ds"])
    assert inputs.table_input(table, inputs.partition_name(table)).partition_value == "2026-03-01"
    assert "2026-03-01" in inputs.input_name(table)
    with pytest.raises(SystemExit):  # folders named ds=YYYY-MM-DD do not stand in for it
        P.parse_args(["--raw", "file:///s/raw/ds=2026-11-20", "--output", "file:///s/examples/ds=2026-11-20"])
    assert "the following arguments are required: --partition" in capsys.readouterr().err
    for bad in ("20261120", "2026-02-30", "ds=2026-11-20"):
        with pytest.raises(SystemExit):
            P.parse_args([*base, "--partition", bad])


def test_a_run_records_the_partition_it_is_given(spark, tmp_path):
    raw = make_partition(tmp_path / "raw", "2026-11-20", num_images=8).rename(tmp_path / "raw" / "incoming")
    cfg = P.Config(raw=f"file://{raw}", output=f"file://{tmp_path}/examples/ds=2026-11-20", partition="2026-11-20",
                   min_shards=1)
    manifest = P.run(cfg, spark)
    assert manifest["partition"] == "ds=2026-11-20"
    stats = json.loads((tmp_path / "examples" / "ds=2026-11-20" / P.STATS).read_text())
    assert stats["partition"] == "ds=2026-11-20"


def test_parse_args_validates_fractions():
    with pytest.raises(SystemExit):
        P.parse_args(["--raw", "file:///r", "--output", "file:///o", "--partition", "2026-11-20", "--split-fractions", "0.5,0.5,0.5"])
    cfg = P.parse_args(["--raw", "file:///r", "--output", "file:///o", "--partition", "2026-11-20", "--min-shards", "6"])
    assert cfg.min_shards == 6 and cfg.split_fractions == (0.7, 0.1, 0.2)
    # Today's behaviour by default: images with a labels.csv manifest.
    assert (cfg.layout, cfg.labels_file, cfg.new_label_policy, cfg.labels) == ("manifest", "labels.csv", "fail", ())
    cfg = P.parse_args(["--raw", "file:///r", "--output", "file:///o", "--partition", "2026-11-20", "--layout", "parquet", "--labels", "a, b",
                        "--max-bad-fraction", "0.2", "--target-shard-mb", "0.5", "--new-label-policy", "append"])
    assert (cfg.layout, cfg.labels, cfg.max_bad_fraction, cfg.target_shard_bytes, cfg.new_label_policy) == (
        "parquet", ("a", "b"), 0.2, 2**19, "append")
    for bad in (["--max-bad-fraction", "1.5"], ["--layout", "zip"], ["--min-image-side", "0"],
                ["--new-label-policy", "ignore"]):
        with pytest.raises(SystemExit):
            P.parse_args(["--raw", "file:///r", "--output", "file:///o", "--partition", "2026-11-20", *bad])


def test_shards_are_grouped_into_few_spark_tasks_of_about_the_same_bytes():
    from tasks.prep import prep_tasks
    from tasks.prep.shard_job import MAX_SHARDS_PER_TASK, shard_groups, spark_task_count

    def shard(index, sizes):
        records = tuple(prep_tasks.Planned(f"{index}-{i}", "x", f"{index}-{i}.jpg", n) for i, n in enumerate(sizes))
        return prep_tasks.ShardTask(index, "train", f"train-{index:05d}", records)

    tasks = [shard(i, [1000 + 37 * i] * (5 + i % 4)) for i in range(32)]
    groups = shard_groups(tasks, 6)
    assert len(groups) == 6
    assert sorted(t.index for g in groups for t in g) == list(range(32))  # every shard once
    loads = [sum(t.bytes for t in g) for g in groups]
    assert loads == sorted(loads, reverse=True)  # the heaviest Spark task first
    assert max(loads) - min(loads) <= max(t.bytes for t in tasks)
    assert shard_groups(tasks, 6) == groups  # a function of the plan alone
    assert [len(g) for g in shard_groups(tasks[:3], 6)] == [1, 1, 1]  # never more groups than shards
    assert [len(g) for g in shard_groups(tasks, 0)] == [32]
    assert spark_task_count(32, 2) == 6  # three per core
    assert spark_task_count(1000, 2) == 1000 // MAX_SHARDS_PER_TASK  # and never many shards in one
