"""Spark application: one raw image partition to sharded TFRecords of ``tf.train.Example``.

Input ``<raw>/``: image files and ``labels.csv`` (``path,label``, paths relative to the partition).

Output ``<output>/``, committed as a whole by renaming a staging folder into place::

    train-00000-of-0000N.tfrecord ...   records sorted by id within a shard
    eval-...  test-...
    manifest.json                       counts per split and label, label vocabulary, files and their counts
    _SUCCESS

Each record's split and shard are hashes of its id, and its bytes do not depend on the run, so a rerun on the
same input writes byte-identical files.

Usage (spark-submit with the ``tasks`` package on ``--py-files``)::

    spark-submit tasks/prepare_examples.py --raw file:///.../raw/ds=2026-11-20 \
        --output file:///.../examples/ds=2026-11-20 --min-shards 4
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import math
import os
import shutil
import sys
import time

from tasks import runtime, schema, storage, tfrecord

log = logging.getLogger("prepare_examples")


@dataclasses.dataclass
class Config:
    raw: str
    """Storage URL of the raw partition folder."""
    output: str
    """Storage URL of the prepared dataset folder for this partition."""
    labels_file: str = "labels.csv"
    """The labels manifest inside the raw partition."""
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    """Fractions of train, eval and test, by hash of the record id."""
    min_shards: int = 4
    """Fewest shards per split, so every training worker gets files (set it to a multiple of num_workers)."""
    target_shard_bytes: int = 64 * 1024 * 1024
    """Aim for shards of about this size when a split is large."""


def parse_args(argv: list[str]) -> Config:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--raw", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--labels-file", default=Config.labels_file)
    p.add_argument("--split-fractions", default=",".join(str(x) for x in Config.split_fractions),
                   help="train,eval,test fractions summing to 1")
    p.add_argument("--min-shards", type=int, default=Config.min_shards)
    p.add_argument("--target-shard-mb", type=float, default=Config.target_shard_bytes / 2**20)
    a = p.parse_args(argv)
    fractions = tuple(float(x) for x in a.split_fractions.split(","))
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        p.error(f"--split-fractions {a.split_fractions!r}: need three non-negative numbers summing to 1")
    if a.min_shards < 1:
        p.error("--min-shards must be at least 1")
    return Config(raw=a.raw, output=a.output, labels_file=a.labels_file, split_fractions=fractions,
                  min_shards=a.min_shards, target_shard_bytes=int(a.target_shard_mb * 2**20))


class PrepError(RuntimeError):
    pass


def read_labels(raw_dir, labels_file: str) -> dict[str, str]:
    """``{relative path: label}`` from the partition's labels manifest, with errors naming file and line."""
    path = raw_dir / labels_file
    if not path.exists():
        raise PrepError(f"labels manifest {path} is missing")
    labels: dict[str, str] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
            raise PrepError(f"{path}: header must name columns 'path' and 'label', got {reader.fieldnames}")
        for line_no, row in enumerate(reader, start=2):
            rel, label = (row["path"] or "").strip(), (row["label"] or "").strip()
            if not rel or not label:
                raise PrepError(f"{path}:{line_no}: empty path or label in {row}")
            if rel in labels:
                raise PrepError(f"{path}:{line_no}: {rel!r} is listed twice")
            labels[rel] = label
    if not labels:
        raise PrepError(f"labels manifest {path} lists no records")
    return labels


def relative_to_partition(file_path: str, partition_name: str) -> str:
    """``images/a.jpg`` from ``file:/.../ds=2026-11-20/images/a.jpg``."""
    marker = "/" + partition_name + "/"
    i = file_path.rfind(marker)
    if i < 0:
        raise PrepError(f"{file_path} is not under a folder named {partition_name}")
    return file_path[i + len(marker):]


def num_shards(split_bytes: int, cfg: Config) -> int:
    return max(cfg.min_shards, math.ceil(split_bytes / cfg.target_shard_bytes))


def example_bytes(record_id: str, content: bytes, label_id: int, label: str) -> bytes:
    fmt = schema.image_format(content)
    return tfrecord.encode_example({
        schema.IMAGE: content,
        schema.FORMAT: fmt or "unknown",
        schema.LABEL: label_id,
        schema.LABEL_TEXT: label,
        schema.RECORD_ID: record_id,
    })


def write_shard(staging: str, name: str, records) -> tuple[str, int, int]:
    """Writes one shard file from ``(record_id, example bytes)`` pairs in id order.

    The file is written under an attempt-unique name and renamed, so a speculative or retried Spark task that
    writes the same shard leaves one whole file.
    """
    records = sorted(records)
    target = os.path.join(staging, name)
    tmp = f"{target}.attempt-{os.getpid()}-{time.monotonic_ns()}"
    with open(tmp, "wb") as f:
        n = tfrecord.write_records(f, (r for _, r in records))
    os.replace(tmp, target)
    return name, n, os.path.getsize(target)


def run(cfg: Config, spark=None) -> dict:
    """Runs the stage and returns the manifest it wrote."""
    from pyspark.sql import SparkSession, functions as F

    raw_dir = storage.local_path(cfg.raw)
    partition_name = raw_dir.name
    if not (raw_dir / schema.SUCCESS).exists():
        raise PrepError(f"raw partition {cfg.raw} has no {schema.SUCCESS} marker: the producer has not finished")
    t0 = time.time()
    labels_by_path = read_labels(raw_dir, cfg.labels_file)
    vocabulary = sorted(set(labels_by_path.values()))
    label_ids = {name: i for i, name in enumerate(vocabulary)}
    log.info("%s: %d records in %s, %d labels: %s", cfg.raw, len(labels_by_path), cfg.labels_file,
             len(vocabulary), ", ".join(vocabulary))

    spark = spark or SparkSession.builder.appName(f"prepare_examples {partition_name}").getOrCreate()
    sc = spark.sparkContext
    files = (spark.read.format("binaryFile")
             .option("recursiveFileLookup", "true")
             .load(str(raw_dir))
             .where(~F.col("path").rlike(r"/[_.][^/]*$"))   # markers and hidden files
             .where(~F.col("path").endswith("/" + cfg.labels_file)))

    # Pass 1: sizes only (binaryFile does not read content when it is not selected).
    sized = files.select("path", "length").collect()
    by_rel = {relative_to_partition(r.path, partition_name): (r.path, r.length) for r in sized}
    unlabelled = sorted(set(by_rel) - set(labels_by_path))
    missing = sorted(set(labels_by_path) - set(by_rel))
    if unlabelled or missing:
        raise PrepError(
            f"{cfg.raw}: {len(missing)} labelled records have no file (first: {missing[:5]}), "
            f"{len(unlabelled)} files have no label in {cfg.labels_file} (first: {unlabelled[:5]})"
        )
    split_bytes = {s: 0 for s in schema.SPLITS}
    for rel, (_, length) in by_rel.items():
        split_bytes[schema.split_of(rel, cfg.split_fractions)] += length
    shards = {s: num_shards(split_bytes[s], cfg) for s in schema.SPLITS}
    keys = [(s, i) for s in schema.SPLITS for i in range(shards[s])]
    key_index = {k: n for n, k in enumerate(keys)}
    log.info("pass 1: %d files, %.1f MB; shards per split %s (%.1fs)", len(by_rel),
             sum(split_bytes.values()) / 2**20, shards, time.time() - t0)

    storage.clean_stale(cfg.output)
    staging = storage.staging_dir(cfg.output)
    try:
        fractions = cfg.split_fractions
        b_labels = sc.broadcast({rel: (label_ids[lab], lab) for rel, lab in labels_by_path.items()})
        staging_str = str(staging)

        def keyed(row):
            rel = relative_to_partition(row.path, partition_name)
            split = schema.split_of(rel, fractions)
            label_id, label = b_labels.value[rel]
            return (split, schema.shard_of(rel, shards[split])), (rel, example_bytes(rel, bytes(row.content),
                                                                                     label_id, label))

        def write_partition(index, items):
            split, shard = keys[index]
            yield write_shard(staging_str, schema.shard_name(split, shard, shards[split]), (v for _, v in items))

        written = (files.select("path", "content").rdd
                   .map(keyed)
                   .partitionBy(len(keys), lambda k: key_index[k])
                   .mapPartitionsWithIndex(write_partition)
                   .collect())

        counts_by_file = {name: n for name, n, _ in written}
        split_counts = {s: 0 for s in schema.SPLITS}
        label_counts = {s: {lab: 0 for lab in vocabulary} for s in schema.SPLITS}
        for rel, lab in labels_by_path.items():
            s = schema.split_of(rel, cfg.split_fractions)
            split_counts[s] += 1
            label_counts[s][lab] += 1
        for s in schema.SPLITS:
            in_files = sum(n for name, n in counts_by_file.items() if name.startswith(s + "-"))
            if in_files != split_counts[s]:
                raise PrepError(f"split {s}: wrote {in_files} records but expected {split_counts[s]}")
        manifest = {
            "partition": partition_name,
            "source": cfg.raw,
            "labels": vocabulary,
            "num_records": len(labels_by_path),
            "counts": split_counts,
            "label_counts": label_counts,
            "files": {s: [{"name": name, "records": counts_by_file[name]}
                          for name in sorted(counts_by_file) if name.startswith(s + "-")]
                      for s in schema.SPLITS},
            "features": {"image": schema.IMAGE, "format": schema.FORMAT, "label": schema.LABEL,
                         "label_text": schema.LABEL_TEXT, "record_id": schema.RECORD_ID},
            "config": dataclasses.asdict(cfg),
        }
        (staging / schema.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        (staging / schema.SUCCESS).write_bytes(b"")
        storage.commit_dir(staging, cfg.output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote %d records to %s: %s in %d files (%.1fs)", manifest["num_records"], cfg.output,
             ", ".join(f"{s}={n}" for s, n in split_counts.items()), len(written), time.time() - t0)
    return manifest


def main(argv: list[str] | None = None) -> None:
    runtime.setup_logging()
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    log.info("config:\n%s", runtime.config_json(cfg))
    run(cfg)


if __name__ == "__main__":
    main()
