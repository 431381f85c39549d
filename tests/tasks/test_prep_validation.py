"""Data prep on partitions with the defects production data has: validation, quarantine, vocabulary, statistics.

Real Spark (local[2]) on partitions the tests generate; TFRecords are read back with TensorFlow.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter

import pytest

from tasks.core import schema
from tasks.prep import image_check, prep_stats, vocabulary
from tasks import prepare_examples as P
from tasks.prep import plan
from tests.conftest import make_partition
from tests.support import partitions as parts
from tests.tasks.test_image_check import IMAGE_REASONS


def prep(root, raw, **kw):
    kw.setdefault("min_shards", 1)
    kw.setdefault("partition", raw.name.removeprefix("ds="))  # the date the test made the partition for
    cfg = P.Config(raw=f"file://{raw}", output=f"file://{root}/examples/{raw.name}", **kw)
    return P.run(cfg)


def examples_of(root, ds):
    return parts.read_tfrecords(sorted((root / "examples" / ds).glob("*.tfrecord")))


def quarantine_of(root, ds):
    folder = root / "quarantine" / ds
    index = [json.loads(line) for line in open(folder / P.QUARANTINE_INDEX)]
    return index, parts.read_tfrecords(sorted(folder.glob("part-*.tfrecord")))


def test_valid_records_are_written_and_every_bad_one_is_quarantined_with_its_reason(spark, tmp_path):
    raw = make_partition(tmp_path / "raw", "2026-11-20", num_images=24)
    good = {rel: label for rel, label in parts.read_rows(raw)[1:]}
    expected_bad = parts.add_defects(raw)
    manifest = prep(tmp_path, raw, labels=parts.CLASSES, max_bad_fraction=0.5)

    records = examples_of(tmp_path, raw.name)
    assert sorted(r[schema.RECORD_ID] for r in records) == sorted(good)
    for r in records:
        assert r[schema.LABEL_TEXT] == good[r[schema.RECORD_ID]]
        assert r[schema.IMAGE] == (raw / r[schema.RECORD_ID]).read_bytes()
    assert manifest["num_records"] == 24 and manifest["bad_records"] == len(expected_bad)

    index, quarantined = quarantine_of(tmp_path, raw.name)
    assert {q["id"]: q["reason"] for q in index} == expected_bad
    assert [q["id"] for q in index] == sorted(q["id"] for q in index)
    assert all(q["detail"] for q in index)
    by_id = {q[schema.RECORD_ID]: q for q in quarantined}
    assert set(by_id) == set(expected_bad)
    for rel, q in by_id.items():
        assert q["quarantine/reason"] == expected_bad[rel]
        # The raw bytes are kept, so the record can be inspected and replayed; a missing file has none.
        assert q[schema.IMAGE] == ((raw / rel).read_bytes() if (raw / rel).exists() else b"")
    truncated = next(q for q in index if q["id"] == "images/truncated.jpg")
    assert "image file is truncated" in truncated["detail"] and truncated["label"] == "circle"
    # Through Spark too, each image's reason and detail are those of the reference check, a full decode.
    bounds = image_check.Bounds(P.Config.min_image_side, P.Config.max_image_side, P.Config.max_image_bytes)
    for q in index:
        if q["reason"] in IMAGE_REASONS:
            with pytest.raises(image_check.BadRecord) as reference:
                image_check.check_image_full((raw / q["id"]).read_bytes(), bounds)
            assert (q["reason"], q["detail"]) == (reference.value.reason, reference.value.detail)

    stats = json.loads((tmp_path / "examples" / raw.name / P.STATS).read_text())
    assert stats["records"] == {"total": 24 + len(expected_bad), "valid": 24, "bad": len(expected_bad),
                                "bad_fraction": round(len(expected_bad) / (24 + len(expected_bad)), 6)}
    assert stats["bad_reasons"] == dict(Counter(expected_bad.values()))
    summary = json.loads((tmp_path / "quarantine" / raw.name / P.QUARANTINE_SUMMARY).read_text())
    assert summary["bad"] == len(expected_bad) and summary["reasons"] == stats["bad_reasons"]


def test_a_partition_without_a_valid_record_fails_clearly(spark, tmp_path):
    raw = make_partition(tmp_path / "raw", "2026-11-20", num_images=4)
    for p in (raw / "images").iterdir():
        p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(P.PrepError, match=r"no valid records: all 4 records are bad \((not_an_image|truncated)"):
        prep(tmp_path, raw, max_bad_fraction=1.0)
    assert len(quarantine_of(tmp_path, raw.name)[0]) == 4


def test_an_empty_partition_fails_before_spark_starts(tmp_path):
    raw = tmp_path / "raw" / "ds=2026-11-20"
    raw.mkdir(parents=True)
    (raw / "_SUCCESS").write_bytes(b"")
    with pytest.raises(P.PrepError, match="holds no records in the folders layout"):
        P.run(P.Config(raw=f"file://{raw}", output=f"file://{tmp_path}/examples/{raw.name}", partition="2026-11-20",
                       layout="folders"))


def test_statistics_describe_the_partition_and_warn_when_labels_drift(spark, tmp_path, caplog):
    day1 = make_partition(tmp_path / "raw", "2026-11-20", num_images=16)
    prep(tmp_path, day1)
    stats1 = json.loads((tmp_path / "examples" / day1.name / P.STATS).read_text())
    assert stats1["labels"] == {name: 4 for name in parts.CLASSES}
    assert stats1["label_drift"]["previous"] is None
    assert sum(stats1["counts"].values()) == 16 and stats1["formats"].keys() <= {"jpeg", "png"}
    widths = stats1["image_size"]["width"]
    assert 56 <= widths["min"] <= widths["max"] <= 112 and sum(widths["histogram"].values()) == 16
    assert stats1["image_size"]["bytes"]["min"] > 0

    # The next day is mostly circles: the distribution moved, and the log says so.
    day2 = make_partition(tmp_path / "raw", "2026-11-21", num_images=16)
    rows = parts.read_rows(day2)
    parts.write_rows(day2, [rows[0]] + [[rel, "circle" if i % 8 else label] for i, (rel, label)
                                        in enumerate(rows[1:])])
    with caplog.at_level(logging.INFO, logger="prepare_examples"):
        prep(tmp_path, day2)
    drift = json.loads((tmp_path / "examples" / day2.name / P.STATS).read_text())["label_drift"]
    assert drift["previous"] == "ds=2026-11-20" and drift["moved"] is True and drift["total_variation"] > 0.5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("label distribution moved far from ds=2026-11-20's" in w for w in warnings), warnings
    assert any("16 valid records of 16" in r.getMessage() for r in caplog.records)


def test_total_variation_distance():
    assert prep_stats.total_variation({"a": 5, "b": 5}, {"a": 1, "b": 1}) == 0
    assert prep_stats.total_variation({"a": 1}, {"b": 3}) == 1
    assert prep_stats.total_variation({"a": 3, "b": 1}, {"a": 1, "b": 1}) == pytest.approx(0.25)


def _relabel(raw, mapping):
    rows = parts.read_rows(raw)
    parts.write_rows(raw, [rows[0]] + [[rel, mapping.get(label, label)] for rel, label in rows[1:]])


def test_label_ids_are_kept_across_days_and_new_labels_follow_the_policy(spark, tmp_path):
    day1 = make_partition(tmp_path / "raw", "2026-11-20", num_images=8)
    m1 = prep(tmp_path, day1)
    assert m1["labels"] == sorted(parts.CLASSES) and m1["vocabulary"]["version"] == 1

    # Day 2 brings "star" (the crosses are relabelled) and has no "circle" at all.
    day2 = make_partition(tmp_path / "raw", "2026-11-21", num_images=8)
    _relabel(day2, {"cross": "star", "circle": "square"})
    with pytest.raises(P.PrepError, match=r"labels not in vocabulary v1 .*: 'star' \(2 records\)\. Re-run with "
                                          r"--new-label-policy append"):
        prep(tmp_path, day2)
    assert not (tmp_path / "examples" / day2.name).exists()

    m2 = prep(tmp_path, day2, new_label_policy="quarantine", max_bad_fraction=0.5)
    assert m2["labels"] == m1["labels"] and m2["num_records"] == 6
    index, _ = quarantine_of(tmp_path, day2.name)
    assert {q["reason"] for q in index} == {"unknown_label"} and len(index) == 2

    m2 = prep(tmp_path, day2, new_label_policy="append")
    assert m2["labels"] == m1["labels"] + ["star"] and m2["vocabulary"]["version"] == 2
    ids = {r[schema.LABEL_TEXT]: r[schema.LABEL] for r in examples_of(tmp_path, day2.name)}
    assert ids == {"square": m1["labels"].index("square"), "triangle": m1["labels"].index("triangle"),
                   "star": 4}
    stats = json.loads((tmp_path / "examples" / day2.name / P.STATS).read_text())
    assert stats["new_labels"] == ["star"] and stats["vocabulary_version"] == 2
    saved = json.loads((tmp_path / "examples" / "_vocabulary" / "v000002.json").read_text())
    assert saved["history"][-1] == {"version": 2, "partition": "ds=2026-11-21", "added": ["star"]}

    # A backfill of day 1 after day 2 keeps day 1's ids, so its records are the same bytes as before.
    before = {p.name: p.read_bytes() for p in (tmp_path / "examples" / day1.name).glob("*.tfrecord")}
    m1_again = prep(tmp_path, day1)
    assert {p.name: p.read_bytes() for p in (tmp_path / "examples" / day1.name).glob("*.tfrecord")} == before
    assert m1_again["labels"] == m2["labels"]


def test_two_runs_adding_labels_at_once_never_share_an_id(spark, tmp_path, monkeypatch):
    day1 = make_partition(tmp_path / "raw", "2026-11-20", num_images=8)
    prep(tmp_path, day1)
    day2 = make_partition(tmp_path / "raw", "2026-11-21", num_images=8)
    _relabel(day2, {"cross": "star"})
    real_save = vocabulary.save
    calls = []

    def save_after_a_competitor(vocab):
        if not calls:  # another partition's run saves v2 with "moon" just before this one
            competitor = vocabulary.extend(vocabulary.load(vocab.url), ["moon"], "ds=2026-11-19")
            assert real_save(competitor)
        calls.append(vocab.version)
        return real_save(vocab)

    monkeypatch.setattr(vocabulary, "save", save_after_a_competitor)
    manifest = prep(tmp_path, day2, new_label_policy="append")
    assert calls == [2, 3]  # lost the race for v2, planned again, saved v3
    assert manifest["labels"] == sorted(parts.CLASSES) + ["moon", "star"]
    assert {r[schema.LABEL] for r in examples_of(tmp_path, day2.name) if r[schema.LABEL_TEXT] == "star"} == {5}


def test_vocabulary_versions_are_created_once():
    vocab = vocabulary.Vocabulary("file:///nonexistent", 0, ())
    with pytest.raises(vocabulary.VocabularyError, match="labels not in vocabulary v1"):
        vocabulary.resolve(vocabulary.extend(vocab, ["a"], "d1"), {"b": 3}, "fail", "d2")
    v, new = vocabulary.resolve(vocab, {"b": 1, "a": 2}, "fail", "d1")
    assert v.labels == ("a", "b") and v.version == 1 and new == ["a", "b"]


def test_vocabulary_save_is_compare_and_set(tmp_path):
    url = f"file://{tmp_path}/vocab"
    assert vocabulary.save(vocabulary.extend(vocabulary.load(url), ["a"], "d1")) is True
    assert vocabulary.save(vocabulary.extend(vocabulary.Vocabulary(url, 0, ()), ["z"], "d2")) is False
    assert vocabulary.load(url).labels == ("a",)


def test_splits_depend_on_the_record_alone_and_shards_on_the_target_size(spark, tmp_path):
    day1 = make_partition(tmp_path / "raw", "2026-11-20", num_images=30)
    cfg = P.Config(raw=f"file://{day1}", output="", partition="2026-11-20", min_shards=2, target_shard_bytes=20_000)
    m1 = prep(tmp_path, day1, min_shards=2, target_shard_bytes=20_000)
    # Shards of about 20 kB, as many as the split's bytes need, a multiple of min_shards, each listed with its
    # record count.
    for s in schema.SPLITS:
        split_bytes = sum(p.stat().st_size for p in (day1 / "images").iterdir()
                          if schema.split_of(f"images/{p.name}", cfg.split_fractions) == s)
        assert len(m1["files"][s]) == plan.num_shards(split_bytes, cfg)
        assert sum(f["records"] for f in m1["files"][s]) == m1["counts"][s]
    assert len(m1["files"]["train"]) > 2

    # The same records in another day's partition, with some gone and others new, go to the same splits.
    day2 = tmp_path / "raw" / "ds=2026-11-21"
    shutil.copytree(day1, day2)
    rows = parts.read_rows(day2)
    kept = rows[1:][5:]
    for rel, _ in rows[1:][:5]:
        (day2 / rel).unlink()
    for i in range(10):
        (day2 / "images" / f"new-{i}.png").write_bytes(parts.image_bytes("PNG", (32, 32), seed=i))
        kept.append([f"images/new-{i}.png", parts.CLASSES[i % 4]])
    parts.write_rows(day2, [rows[0]] + kept)
    prep(tmp_path, day2)

    def splits(ds):
        return {r[schema.RECORD_ID]: f.name.split("-")[0] for f in (tmp_path / "examples" / ds).glob("*.tfrecord")
                for r in parts.read_tfrecords([f])}

    before, after = splits(day1.name), splits(day2.name)
    common = set(before) & set(after)
    assert len(common) == 25 and len(after) == 35
    assert {rid: after[rid] for rid in common} == {rid: before[rid] for rid in common}


def test_num_shards_is_a_multiple_of_min_shards():
    cfg = P.Config(raw="", output="", partition="2026-11-20", min_shards=4, target_shard_bytes=100)
    assert [plan.num_shards(n, cfg) for n in (0, 100, 401, 900)] == [4, 4, 8, 12]


def test_check_image_bounds():
    data = parts.image_bytes("JPEG", (300, 20))
    assert image_check.check_image(data, image_check.Bounds(8, 300, 10**6)).width == 300
    with pytest.raises(image_check.BadRecord, match="300x20 pixels, a side > max_image_side 299"):
        image_check.check_image(data, image_check.Bounds(8, 299, 10**6))
    with pytest.raises(image_check.BadRecord, match="> max_image_bytes 100"):
        image_check.check_image(data, image_check.Bounds(8, 300, 100))
    assert image_check.label_problem("bad\nlabel").reason == "invalid_label"
    assert image_check.label_problem("  ").reason == "missing_label"
    assert image_check.label_problem("ok label") is None
