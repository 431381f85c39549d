"""Data prep with ``task_type=text_classification``: the text layouts, text validation and quarantine, text
statistics, and the same splits, vocabulary and idempotent output as images. Real Spark (local[2])."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest

from tasks.core import schema
from tasks.prep import layouts, modality
from tasks import prepare_examples as P
from tests.support import partitions as parts

PARTITION = "2026-11-20"
DS = f"ds={PARTITION}"
TOPICS = {"sports": "the team won the match after a late goal", "weather": "rain and wind are expected tomorrow",
          "cooking": "simmer the sauce and add fresh basil"}


def docs(n: int = 30) -> list[tuple[str, str, str]]:
    """``(id, label, text)`` rows, distinct texts, the labels in turn."""
    labels = sorted(TOPICS)
    return [(f"doc-{i:03d}", labels[i % 3], f"{TOPICS[labels[i % 3]]} number {i}") for i in range(n)]


def write_csv(path, rows, header=("id", "label", "text")) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def finish(raw):
    (raw / "_SUCCESS").write_bytes(b"")
    return f"file://{raw}"


def prep(tmp_path, raw_url, **kw):
    kw.setdefault("min_shards", 2)
    kw.setdefault("max_bad_fraction", 0.5)
    return P.run(P.Config(raw=raw_url, output=f"file://{tmp_path}/examples/{DS}", partition=PARTITION,
                          task_type="text_classification", **kw))


def records(tmp_path):
    return parts.read_tfrecords(sorted((tmp_path / "examples" / DS).glob("*.tfrecord")))


def quarantined(tmp_path):
    return sorted((q["id"], q["reason"]) for q in
                  map(json.loads, open(tmp_path / "quarantine" / DS / P.QUARANTINE_INDEX)))


def quarantined_bytes(tmp_path) -> dict[str, bytes]:
    import tensorflow as tf

    out = {}
    for path in (tmp_path / "quarantine" / DS).glob("part-*.tfrecord"):
        for rec in tf.data.TFRecordDataset(str(path)):
            f = tf.train.Example.FromString(rec.numpy()).features.feature
            out[f[schema.RECORD_ID].bytes_list.value[0].decode()] = f[schema.TEXT].bytes_list.value[0]
    return out


def test_csv_layout_validates_texts_and_quarantines_the_bad_ones(spark, tmp_path):
    raw = tmp_path / "raw" / DS
    good = docs()
    write_csv(raw / "texts.csv", good + [
        ("blank", "sports", "   "),
        ("long", "weather", "word " * 50),
        ("nolabel", "", "a text without a label"),
        ("newline", "cooking", "a quoted text\nover two lines, with \"quotes\", kept whole"),
    ])
    with open(raw / "texts.csv", "ab") as f:  # a row whose text is not UTF-8
        f.write(b"latin1,weather,caf\xe9 au lait\r\n")
    manifest = prep(tmp_path, finish(raw), layout="csv", max_text_chars=200)
    assert manifest["task_type"] == "text_classification"
    assert manifest["features"]["text"] == schema.TEXT and "image" not in manifest["features"]
    got = {r[schema.RECORD_ID]: (r[schema.LABEL_TEXT], r[schema.TEXT]) for r in records(tmp_path)}
    expected = {i: (label, text) for i, label, text in good}
    expected["newline"] = ("cooking", "a quoted text\nover two lines, with \"quotes\", kept whole")
    assert got == expected
    assert quarantined(tmp_path) == [("blank", "empty_text"), ("latin1", "undecodable_text"),
                                     ("long", "text_too_long"), ("nolabel", "missing_label")]
    # The quarantine keeps the raw bytes, undecodable ones included.
    assert quarantined_bytes(tmp_path)["latin1"] == b"caf\xe9 au lait"
    stats = json.loads((tmp_path / "examples" / DS / P.STATS).read_text())
    assert stats["task_type"] == "text_classification" and "image_size" not in stats
    lengths = stats["text_length"]
    assert lengths["words"]["min"] >= 8 and lengths["chars"]["max"] == max(len(t) for *_, t in expected.values())
    assert stats["bad_reasons"] == {"empty_text": 1, "missing_label": 1, "text_too_long": 1, "undecodable_text": 1}


def test_csv_without_ids_takes_a_digest_of_the_text_and_a_repeated_text_is_a_duplicate(spark, tmp_path):
    raw = tmp_path / "raw" / DS
    rows = [(label, text) for _, label, text in docs(12)]
    write_csv(raw / "a.csv", rows[:6] + [("sports", rows[0][1])], header=("label", "text"))
    write_csv(raw / "b.csv", rows[6:], header=("label", "text"))
    (raw / "notes.md").write_text("not data")
    manifest = prep(tmp_path, finish(raw), layout="csv")
    digest = {layouts.content_id(text): label for label, text in rows[1:]}
    assert {r[schema.RECORD_ID]: r[schema.LABEL_TEXT] for r in records(tmp_path)} == digest
    first = layouts.content_id(rows[0][1])
    assert first == "sha256:" + hashlib.sha256(rows[0][1].encode()).hexdigest()[:32]
    assert quarantined(tmp_path) == sorted([(first, "duplicate_id"), (first, "duplicate_id"),
                                            ("notes.md", "unexpected_file")])
    # The split is a hash of the id: the same text lands in the same split on every day.
    assert manifest["num_records"] == 11


def test_parquet_and_folder_layouts_hold_text_too(spark, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = docs(18)
    raw = tmp_path / "raw" / DS
    raw.mkdir(parents=True)
    pq.write_table(pa.table({"id": [d[0] for d in good], "label": [d[1] for d in good],
                             "text": [d[2] for d in good]}), raw / "part-0.parquet")
    prep(tmp_path, finish(raw), layout="parquet")
    from_parquet = {r[schema.RECORD_ID]: (r[schema.LABEL_TEXT], r[schema.TEXT]) for r in records(tmp_path)}
    assert from_parquet == {i: (label, text) for i, label, text in good}

    folders = tmp_path / "folders" / DS
    for i, label, text in good:
        (folders / label).mkdir(parents=True, exist_ok=True)
        (folders / label / f"{i}.txt").write_text(text)
    (folders / "sports" / "empty.txt").write_text("")
    out = tmp_path / "by-folder"
    manifest = P.run(P.Config(raw=finish(folders), output=f"file://{out}/examples/{DS}",
                              partition=PARTITION, layout="folders",
                              task_type="text_classification", min_shards=2, max_bad_fraction=0.5))
    got = {r[schema.RECORD_ID]: r[schema.TEXT] for r in parts.read_tfrecords(
        sorted((out / "examples" / DS).glob("*.tfrecord")))}
    assert got == {f"{label}/{i}.txt": text for i, label, text in good}
    assert manifest["labels"] == sorted(TOPICS)


def test_a_rerun_writes_the_same_bytes(spark, tmp_path):
    raw = tmp_path / "raw" / DS
    write_csv(raw / "texts.csv", docs(24))
    url = finish(raw)
    prep(tmp_path, url, layout="csv")
    first = {p.name: p.read_bytes() for p in (tmp_path / "examples" / DS).iterdir()}
    prep(tmp_path, url, layout="csv")
    assert {p.name: p.read_bytes() for p in (tmp_path / "examples" / DS).iterdir()} == first


def test_the_task_type_and_layout_must_match(tmp_path):
    with pytest.raises(SystemExit):
        P.parse_args(["--raw", "file:///r", "--output", "file:///o", "--partition", "2026-11-20", "--layout", "csv"])
    cfg = P.Config(raw="file:///r", output="file:///o", partition="2026-11-20", layout="csv")
    with pytest.raises(P.PrepError, match="layout 'csv' does not hold image_classification data"):
        P.run(cfg)


def test_check_text_names_what_is_wrong():
    bounds = modality.TextBounds(min_chars=2, max_chars=12, max_bytes=40)
    checked = modality.check_text("\ufeffhéllo wörld".encode(), bounds)
    assert checked.measures == {"chars": 11, "words": 2, "bytes": 16} and checked.format == "utf-8"
    for data, reason in ((b"", "empty"), (b" \n ", "empty_text"), (b"a", "empty_text"),
                         (b"\xff\xfe bad", "undecodable_text"), (b"bin\x00ary", "undecodable_text"),
                         (b"x" * 13, "text_too_long"), (b"y" * 41, "too_many_bytes")):
        with pytest.raises(modality.BadRecord) as e:
            modality.check_text(data, bounds)
        assert e.value.reason == reason, data
