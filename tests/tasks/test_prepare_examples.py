"""Spark data prep on real Spark (local[2]) over generated partitions."""

from __future__ import annotations

import csv
import json

import pytest

from tasks import prepare_examples as P
from tasks import schema, tfrecord
from tests.conftest import make_partition


def run_prep(tmp_path, raw, **kw):
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
    run_prep(tmp_path, raw, min_shards=2)
    out = tmp_path / "examples" / raw.name
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    # A killed earlier attempt left a staging folder behind; the rerun cleans it and commits one copy.
    (tmp_path / "examples" / f".{raw.name}.staging-deadbeef").mkdir()
    run_prep(tmp_path, raw, min_shards=2)
    second = {p.name: p.read_bytes() for p in out.iterdir()}
    assert first == second
    assert sorted(p.name for p in (tmp_path / "examples").iterdir()) == [raw.name]


def test_partition_without_success_marker_is_refused(spark, tmp_path):
    raw = make_partition(tmp_path / "raw", "2026-11-22", num_images=8)
    (raw / "_SUCCESS").unlink()
    with pytest.raises(P.PrepError, match="no _SUCCESS marker"):
        run_prep(tmp_path, raw)


def test_mismatch_between_files_and_labels_names_them(spark, tmp_path):
    raw = make_partition(tmp_path / "raw", "2026-11-23", num_images=8)
    (raw / "images" / "stray.png").write_bytes((raw / "images" / "img-00000.png").read_bytes()
                                               if (raw / "images" / "img-00000.png").exists()
                                               else (raw / "images" / "img-00000.jpg").read_bytes())
    rows = list(csv.reader(open(raw / "labels.csv")))
    rows.append(["images/missing.jpg", "circle"])
    with open(raw / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(P.PrepError, match=r"1 labelled records have no file \(first: \['images/missing.jpg'\]\), "
                                          r"1 files have no label in labels.csv \(first: \['images/stray.png'\]\)"):
        run_prep(tmp_path, raw)
    assert not (tmp_path / "examples").exists() or not any((tmp_path / "examples").iterdir())


def test_bad_labels_manifest_is_reported_with_line(tmp_path):
    (tmp_path / "labels.csv").write_text("path,label\na.jpg,circle\na.jpg,square\n")
    with pytest.raises(P.PrepError, match=r"labels.csv:3: 'a.jpg' is listed twice"):
        P.read_labels(tmp_path, "labels.csv")
    (tmp_path / "labels.csv").write_text("file,class\n")
    with pytest.raises(P.PrepError, match="header must name columns"):
        P.read_labels(tmp_path, "labels.csv")


def test_parse_args_validates_fractions():
    with pytest.raises(SystemExit):
        P.parse_args(["--raw", "file:///r", "--output", "file:///o", "--split-fractions", "0.5,0.5,0.5"])
    cfg = P.parse_args(["--raw", "file:///r", "--output", "file:///o", "--min-shards", "6"])
    assert cfg.min_shards == 6 and cfg.split_fractions == (0.7, 0.1, 0.2)
