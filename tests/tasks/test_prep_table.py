"""Data prep's ``table`` layout: rows of a Spark SQL table or query, made here with Spark SQL.

Real Spark (the shared ``local[2]`` session, whose in-memory catalog holds the test's tables); the image bytes, the
image paths and the texts go through the same checks, quarantine, splits, vocabulary and statistics as the other
layouts: a query's result prepared as a table gives the same TFRecord bytes as the same rows as a Parquet partition.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from tasks.core import schema
from tasks.prep import layouts
from tasks import prepare_examples as P
from tasks.prep.layouts import PrepError
from tests.support import partitions as parts

DB = "prep_table_test"
DS = "2026-11-20"


@pytest.fixture
def catalog(spark, tmp_path):
    """A database of the session's catalog, dropped with its tables afterwards."""
    spark.sql(f"CREATE DATABASE {DB} LOCATION '{tmp_path}/warehouse'")
    yield DB
    spark.sql(f"DROP DATABASE {DB} CASCADE")


def insert(spark, table: str, rows: list[tuple], schema_ddl: str) -> None:
    spark.createDataFrame(rows, schema_ddl).createOrReplaceTempView("new_rows")
    spark.sql(f"INSERT INTO {table} SELECT * FROM new_rows")


def tfrecords(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tfrecord"))}


def quarantined(folder) -> list[tuple[str, str]]:
    return sorted((q["id"], q["reason"]) for q in map(json.loads, open(folder / P.QUARANTINE_INDEX)))


def test_a_query_joining_a_label_table_is_prepared_like_the_same_rows_in_parquet(spark, catalog, tmp_path):
    good = {f"img-{i:03d}": (parts.image_bytes("PNG" if i % 2 else "JPEG", (40, 30), seed=i), parts.CLASSES[i % 4])
            for i in range(16)}
    spark.sql(f"CREATE TABLE {DB}.images (id STRING, image BINARY, ds STRING) USING parquet")
    spark.sql(f"CREATE TABLE {DB}.labels (image_id STRING, class STRING) USING parquet")
    insert(spark, f"{DB}.images", [
        *((rid, data, DS) for rid, (data, _) in good.items()),
        ("junk", b"not an image at all", DS),
        ("null-image", None, DS),
        ("img-000", parts.image_bytes(seed=99), DS),         # a second row under a taken id
        ("no-label", parts.image_bytes(seed=98), DS),        # not in the label table
        *((f"old-{i}", parts.image_bytes(seed=100 + i), "2026-11-19") for i in range(3)),  # another partition
    ], "id string, image binary, ds string")
    insert(spark, f"{DB}.labels", [*((rid, label) for rid, (_, label) in good.items()), ("junk", "circle"),
                                   ("null-image", "square"), ("old-0", "cross"), ("old-1", "cross")],
           "image_id string, class string")
    query = (f"SELECT i.id, l.class AS label, i.image FROM {DB}.images i LEFT JOIN {DB}.labels l "
             "ON l.image_id = i.id WHERE i.ds = :ds")
    out = tmp_path / "examples" / f"ds={DS}"
    manifest = P.run(P.Config(raw=f"file://{tmp_path}/raw/ds={DS}", partition=DS, output=f"file://{out}", layout="table",
                              query=query, id_column="id", max_bad_fraction=0.5, min_shards=2), spark)

    records = parts.read_tfrecords(out.glob("*.tfrecord"))
    assert {r[schema.RECORD_ID]: r[schema.LABEL_TEXT] for r in records} == {
        rid: label for rid, (_, label) in good.items() if rid != "img-000"}
    assert all(r[schema.IMAGE] == good[r[schema.RECORD_ID]][0] for r in records)
    assert quarantined(tmp_path / "quarantine" / f"ds={DS}") == [
        ("img-000", "duplicate_id"), ("img-000", "duplicate_id"), ("junk", "not_an_image"),
        ("no-label", "missing_label"), ("null-image", "empty")]
    assert manifest["layout"] == "table" and manifest["source"].startswith("query (SELECT i.id")
    assert (manifest["num_records"], manifest["bad_records"]) == (15, 5)
    assert manifest["labels"] == sorted(parts.CLASSES)
    stats = json.loads((out / P.STATS).read_text())
    assert stats["records"]["valid"] == 15 and stats["image_size"]["width"]["max"] == 40
    assert stats["bad_reasons"] == {"duplicate_id": 2, "empty": 1, "missing_label": 1, "not_an_image": 1}

    # The same rows written as a Parquet partition: the same records, splits, shards and bytes.
    pq_raw = tmp_path / "pq" / "raw" / f"ds={DS}"
    spark.sql(query, args={"ds": DS}).write.parquet(str(pq_raw))
    pq_out = tmp_path / "pq" / "examples" / f"ds={DS}"
    P.run(P.Config(raw=f"file://{pq_raw}", output=f"file://{pq_out}", partition=DS, layout="parquet", id_column="id",
                   max_bad_fraction=0.5, min_shards=2), spark)
    assert tfrecords(out) == tfrecords(pq_out)
    assert quarantined(tmp_path / "pq" / "quarantine" / f"ds={DS}") == quarantined(
        tmp_path / "quarantine" / f"ds={DS}")


def test_a_table_of_image_paths_filtered_by_its_partition_column(spark, catalog, tmp_path):
    root = tmp_path / "image-store"
    (root / "2026").mkdir(parents=True)
    files = {}
    for i in range(8):
        rel = f"2026/{i:02d}.png"
        files[rel] = parts.image_bytes("PNG", (32, 32), seed=i)
        (root / rel).write_bytes(files[rel])
    (tmp_path / "secret.png").write_bytes(parts.image_bytes(seed=50))
    day = dt.date.fromisoformat(DS)
    spark.sql(f"CREATE TABLE {DB}.image_paths (id STRING, file STRING, label STRING, ds DATE) USING parquet")
    insert(spark, f"{DB}.image_paths", [
        *((f"p{i}", rel, parts.CLASSES[i % 4], day) for i, rel in enumerate(files)),
        ("gone", "2026/gone.png", "circle", day),
        ("escape", "../secret.png", "circle", day),
        ("yesterday", "2026/00.png", "circle", day - dt.timedelta(days=1)),
    ], "id string, file string, label string, ds date")
    out = tmp_path / "examples" / f"ds={DS}"
    manifest = P.run(P.Config(raw=f"file://{tmp_path}/raw/ds={DS}", partition=DS, output=f"file://{out}", layout="table",
                              table=f"{DB}.image_paths", partition_column="ds", image_root=f"file://{root}",
                              id_column="id", image_column="file", max_bad_fraction=0.5, min_shards=1), spark)
    records = parts.read_tfrecords(out.glob("*.tfrecord"))
    assert {r[schema.RECORD_ID]: r[schema.IMAGE] for r in records} == {
        f"p{i}": data for i, data in enumerate(files.values())}
    assert quarantined(tmp_path / "quarantine" / f"ds={DS}") == [("escape", "missing_file"), ("gone", "missing_file")]
    assert manifest["source"] == f"table {DB}.image_paths where ds = '{DS}'"


def test_a_text_table_with_integer_ids(spark, catalog, tmp_path):
    spark.sql(f"CREATE TABLE {DB}.texts (id BIGINT, body STRING, topic STRING) USING parquet")
    texts = {i: (f"sentence number {i} about the weather and rain", "weather" if i % 2 else "sports")
             for i in range(1, 13)}
    insert(spark, f"{DB}.texts", [*((i, t, topic) for i, (t, topic) in texts.items()), (99, "   ", "sports")],
           "id bigint, body string, topic string")
    out = tmp_path / "examples" / f"ds={DS}"
    manifest = P.run(P.Config(raw=f"file://{tmp_path}/raw/ds={DS}", partition=DS, output=f"file://{out}", layout="table",
                              task_type="text_classification", table=f"{DB}.texts", text_column="body",
                              label_column="topic", max_bad_fraction=0.2, min_shards=1), spark)
    records = parts.read_tfrecords(out.glob("*.tfrecord"))
    assert {r[schema.RECORD_ID]: r[schema.TEXT] for r in records} == {
        str(i): t for i, (t, _) in texts.items()}
    assert quarantined(tmp_path / "quarantine" / f"ds={DS}") == [("99", "empty_text")]
    assert manifest["task_type"] == "text_classification" and manifest["labels"] == ["sports", "weather"]


def test_bad_table_input_is_named_in_the_error(spark, catalog, tmp_path):
    spark.sql(f"CREATE TABLE {DB}.t (id STRING, image BINARY, path STRING, n INT) USING parquet")

    def prep(**kw):
        return P.run(P.Config(raw=f"file://{tmp_path}/raw/ds={DS}", partition=DS, output=f"file://{tmp_path}/ex/ds={DS}",
                              layout="table", id_column="id", **kw), spark)

    with pytest.raises(PrepError, match=rf"--table {DB}\.missing: not readable from the Spark catalog"):
        prep(table=f"{DB}.missing")
    with pytest.raises(PrepError, match=r"query \(SELECT id, image FROM .*\) has no column 'label'"):
        prep(query=f"SELECT id, image FROM {DB}.t")
    with pytest.raises(PrepError, match=r"column 'label' is int, expected string; cast it"):
        prep(query=f"SELECT id, image, n AS label FROM {DB}.t")
    with pytest.raises(PrepError, match=r"column 'image' is string, expected binary; if it holds image paths, "
                                        r"set --image-root"):
        prep(query=f"SELECT id, path AS image, path AS label FROM {DB}.t")
    with pytest.raises(PrepError, match=rf"table {DB}\.t where day = '{DS}': no column 'day'"):
        prep(table=f"{DB}.t", partition_column="day")
    with pytest.raises(PrepError, match="--query does not run: .*nope"):
        prep(query="SELECT nope FROM")
    with pytest.raises(PrepError, match=f"gives no rows for partition ds={DS}"):
        prep(query=f"SELECT id, image, path AS label FROM {DB}.t")
    with pytest.raises(SystemExit):
        P.parse_args(["--raw", "file:///r/ds=x", "--output", "file:///o/ds=x", "--partition", DS, "--layout", "table"])
    with pytest.raises(SystemExit):
        P.parse_args(["--raw", "file:///r/ds=x", "--output", "file:///o/ds=x", "--partition", DS, "--table", "t"])
    cfg = P.parse_args(["--raw", "file:///r/ds=x", "--output", "file:///o/ds=x", "--partition", DS, "--layout", "table", "--query",
                        "SELECT 1", "--partition-column", "ds", "--image-root", "file:///images"])
    assert (cfg.query, cfg.partition_column, cfg.image_root) == ("SELECT 1", "ds", "file:///images")
    assert "table" in layouts.LAYOUTS


def test_image_paths_under_an_hdfs_root_are_looked_up_and_read_through_webhdfs(spark, catalog, tmp_path, hdfs):
    store = hdfs.root / "images"
    store.mkdir(parents=True)
    files = {f"{i}.png": parts.image_bytes("PNG", (32, 32), seed=i) for i in range(3)}
    for rel, data in files.items():
        (store / rel).write_bytes(data)
    spark.sql(f"CREATE TABLE {DB}.remote (path STRING, label STRING) USING parquet")
    insert(spark, f"{DB}.remote", [*((rel, "circle") for rel in files), ("gone.png", "circle")],
           "path string, label string")
    out = tmp_path / "examples" / f"ds={DS}"
    hdfs.clear_log()
    P.run(P.Config(raw=f"file://{tmp_path}/raw/ds={DS}", partition=DS, output=f"file://{out}", layout="table",
                   table=f"{DB}.remote", image_root="hdfs://namenode:8020/images", image_column="path",
                   max_bad_fraction=0.3, min_shards=1), spark)
    records = parts.read_tfrecords(out.glob("*.tfrecord"))
    assert {r[schema.RECORD_ID]: r[schema.IMAGE] for r in records} == files
    assert quarantined(tmp_path / "quarantine" / f"ds={DS}") == [("gone.png", "missing_file")]
    calls = hdfs.calls("namenode")
    assert sorted(p.rsplit("/", 1)[1] for _, op, p in calls if op == "GETFILESTATUS" and "/images/" in p) == [
        "0.png", "1.png", "2.png", "gone.png"]
    assert sum(1 for _, op, p in calls if op == "OPEN" and "/images/" in p) == 3
