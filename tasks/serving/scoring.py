"""The scoring engine: a SavedModel applied to records on the Spark executors, in batches.

Shared by batch scoring (``tasks.score_partition``) and evaluation (``tasks.evaluate``). It owns:

* **which records**: work units (``Unit``) of a raw partition in any input layout, listed on the driver by
  ``tasks.prep.layouts`` and read and checked on the executors by ``tasks.prep.prep_tasks`` (the same readers and checks
  as data prep), or the TFRecord shards of a prepared split;
* **the Spark job** (``execute``): an RDD ``mapPartitions`` on the executors, one Spark task per unit (units of a
  small input packed into fewer tasks, ``task_groups``), where each unit reads its records where they are, scores
  the good ones ``batch_size`` at a time, writes its predictions as one Parquet part file and its bad records as
  one quarantine piece into staging folders (``tasks.io.storage``, so ``file://`` and ``hdfs://``), and returns a
  small summary (counts, and for evaluation the probabilities);
* which model, and loading it once per Python worker, are ``tasks.serving.models``'; each work unit reports
  whether it paid the load.

Records that fail the checks, and images the model's own decoder refuses (``model_rejected``), are bad: they are
not scored and go to quarantine with their reason.

Imports neither TensorFlow nor PySpark at module level: the driver side only plans and merges.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pickle
import time
from collections import Counter
from typing import Iterable, Iterator

import numpy as np

from tasks.core import schema
from tasks.io import commit, storage
from tasks.prep import image_check, layouts, modality, prep_tasks, tfrecord
from tasks.serving.models import ModelRef, Scorer, ScoringError, load_scorer

log = logging.getLogger("scoring")

MODEL_REJECTED = "model_rejected"
"""Reason of a record that passed the checks but that the model's decoder refuses."""

PREDICTION_COLUMNS = ("record_id", "label", "predicted_label", "top_probability", "probabilities", "model_name",
                      "model_version", "partition")
"""Columns of the predictions' Parquet files, in order; ``probabilities`` follows the order of ``labels`` in
``_manifest.json`` (and in each file's Parquet metadata)."""


@dataclasses.dataclass(frozen=True)
class Unit:
    """One Spark task's work: a TFRecord shard, a table file's row group, or a run of files."""

    index: int
    kind: str
    """``tfrecord``, ``table`` (Parquet row group, CSV file) or ``files``."""
    file: str = ""
    """The shard or the table file, relative to the source folder."""
    group: int = 0
    rows: tuple[prep_tasks.Planned, ...] = ()
    """The records of a ``table`` or ``files`` unit, as listed."""
    records: int = 0
    """The record count of a ``tfrecord`` unit (its manifest entry's); 0: unknown."""

    @property
    def size(self) -> int:
        return sum(r.size for r in self.rows)

    @property
    def count(self) -> int:
        """Records in the unit: as listed, or as the manifest counts them; 0: unknown."""
        return len(self.rows) or self.records


@dataclasses.dataclass(frozen=True)
class Job:
    """What every unit needs besides its records."""

    source: str
    """Storage URL of the raw partition or of the prepared dataset."""
    model: ModelRef
    labels: tuple[str, ...]
    """The model's class names, in the order of its outputs."""
    batch_size: int = 64
    output_staging: str = ""
    """Staging folder of the predictions; empty: do not write them (evaluation collects them instead)."""
    quarantine_staging: str = ""
    """Staging folder of the bad records' pieces; empty: bad records are only reported."""
    collect: bool = False
    """Return every record's id, label and probabilities to the driver (evaluation)."""
    bounds: object = image_check.Bounds()
    webhdfs: dict = dataclasses.field(default_factory=dict)
    column: str = "image"
    """Input column of table layouts."""
    model_name: str = ""
    model_version: int = 0
    partition: str = ""

    @property
    def modality(self) -> modality.Modality:
        return modality.of(self.model.task_type)

    def prep_context(self) -> prep_tasks.Context:
        return prep_tasks.Context(raw=self.source, staging=self.output_staging,
                                  quarantine_staging=self.quarantine_staging, bounds=self.bounds,
                                  webhdfs=self.webhdfs, column=self.column, task_type=self.model.task_type)


# ---------------------------------------------------------------------------------------------------------------
# Work units: planned on the driver.


def raw_units(raw: layouts.RawPartition, units_hint: int, unit_records: int) -> list[Unit]:
    """Units of a listed raw partition: one per table row group (or CSV file), and the files cut into runs of
    about ``unit_records`` records, at least ``units_hint`` units in all so every executor core gets work.

    A record without a label is scored like any other (the listing's ``unlabelled`` is a prep problem only)."""
    def planned(r: layouts.RawRecord) -> prep_tasks.Planned:
        problem = None if r.problem and r.problem[0] == "unlabelled" else r.problem
        return prep_tasks.Planned(r.id, r.label, r.source, r.size, problem)

    units: list[Unit] = []
    in_groups: set[int] = set()
    for g in raw.parquet_groups:
        rows = tuple(planned(raw.records[g.first + i]) for i in range(g.rows))
        in_groups.update(range(g.first, g.first + g.rows))
        units.append(Unit(len(units), "table", g.file, g.index, rows))
    files = sorted((planned(r) for i, r in enumerate(raw.records) if i not in in_groups),
                   key=lambda p: (p.id, p.source))
    if files:
        count = min(len(files), max(units_hint - len(units), math.ceil(len(files) / unit_records), 1))
        for i in range(count):
            units.append(Unit(len(units), "files", rows=tuple(files[i::count])))
    return units


def split_units(manifest: dict, split: str) -> list[Unit]:
    """One unit per TFRecord shard of a prepared split that holds records."""
    return [Unit(i, "tfrecord", f["name"], records=f["records"])
            for i, f in enumerate(f for f in manifest["files"][split] if f["records"])]


# ---------------------------------------------------------------------------------------------------------------
# What a unit does on an executor.


def _tfrecord_checked(job: Job, name: str) -> Iterator[tuple]:
    """The records of a prepared shard, as prep's checked records (they were checked when prepared)."""
    from tensorflow.core.example import example_pb2

    feature = job.modality.feature
    with storage.open_child(job.source, name) as f:
        for i, data in enumerate(tfrecord.read_records(f)):
            ex = example_pb2.Example.FromString(data).features.feature
            record_id = ex[schema.RECORD_ID].bytes_list.value[0].decode()
            label = ex[schema.LABEL_TEXT].bytes_list.value[0].decode() if schema.LABEL_TEXT in ex else ""
            label_id = int(ex[schema.LABEL].int64_list.value[0]) if schema.LABEL in ex else -1
            yield ("good", record_id, label, label_id, ex[feature].bytes_list.value[0], None, f"{name}#{i}")


def checked_records(unit: Unit, job: Job) -> Iterator[tuple]:
    """A unit's records read and checked, ``("good", id, label, label_id, data, info, source)`` or ``("bad", id,
    label, reason, detail, source, data, size)``, by prep's readers and checks."""
    if unit.kind == "tfrecord":
        yield from _tfrecord_checked(job, unit.file)
        return
    ctx = job.prep_context()
    numbered = [(0, r) for r in unit.rows]
    items = (prep_tasks.check_row_group(unit.file, unit.group, numbered, ctx) if unit.kind == "table"
             else prep_tasks.check_files(numbered, ctx))
    for (_, checked), planned in zip(items, unit.rows):
        yield (*checked, planned.source) if checked[0] == "good" else checked


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def _predictions_table(job: Job, ids: list[str], labels: list[str], probs: np.ndarray):
    import pyarrow as pa

    n = len(ids)
    probs = probs.astype(np.float32).reshape(n, len(job.labels))
    top = probs.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    fields = [
        pa.field("record_id", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("predicted_label", pa.string(), nullable=False),
        pa.field("top_probability", pa.float64(), nullable=False),
        pa.field("probabilities", pa.list_(pa.float32()), nullable=False),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.int64(), nullable=False),
        pa.field("partition", pa.string(), nullable=False),
    ]
    schema_ = pa.schema(fields, metadata={"labels": json.dumps(list(job.labels))})
    offsets = pa.array(np.arange(0, (n + 1) * len(job.labels), len(job.labels), dtype=np.int32))
    columns = [
        pa.array(ids, pa.string()),
        pa.array([label or None for label in labels], pa.string()),
        pa.array([job.labels[i] for i in top], pa.string()),
        pa.array(probs[np.arange(n), top].astype(np.float64) if n else [], pa.float64()),
        pa.ListArray.from_arrays(offsets, pa.array(probs.reshape(-1), pa.float32())),
        pa.array([job.model_name] * n, pa.string()),
        pa.array([job.model_version] * n, pa.int64()),
        pa.array([job.partition] * n, pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=schema_)


def _score_batch(scorer: Scorer, batch: list[tuple]) -> tuple[list[tuple], np.ndarray, list[tuple]]:
    """Scores a batch of good records; when the model's decoder refuses the batch, scores them one by one and
    returns the refused ones as bad."""
    tf = scorer.tf
    try:
        return batch, scorer.predict([r[4] for r in batch]), []
    except tf.errors.InvalidArgumentError:
        pass
    kept, probs, bad = [], [], []
    for r in batch:
        try:
            probs.append(scorer.predict([r[4]]))
            kept.append(r)
        except tf.errors.InvalidArgumentError as e:
            bad.append(("bad", r[1], r[2], MODEL_REJECTED, f"the model's decoder refuses it: {e.message[:300]}",
                        r[6], r[4], len(r[4])))
    return kept, (np.concatenate(probs) if probs else np.zeros((0, 0), np.float32)), bad


def score_unit(unit: Unit, job: Job) -> dict:
    """Reads, checks and scores one unit's records; writes its Parquet part and quarantine piece; returns its
    summary."""
    started = time.perf_counter()
    storage.use_webhdfs(job.webhdfs)
    scorer, load_seconds = load_scorer(job.model)
    ids: list[str] = []
    labels: list[str] = []
    label_ids: list[int] = []
    probs: list[np.ndarray] = []
    bad: list[tuple] = []
    batch: list[tuple] = []

    def flush() -> None:
        kept, p, refused = _score_batch(scorer, batch)
        bad.extend(refused)
        if kept:
            ids.extend(r[1] for r in kept)
            labels.extend(r[2] for r in kept)
            label_ids.extend(r[3] for r in kept)
            probs.append(p)
        batch.clear()

    for item in checked_records(unit, job):
        if item[0] == "bad":
            bad.append(item)
            continue
        batch.append(item)
        if len(batch) >= job.batch_size:
            flush()
    if batch:
        flush()
    p = np.concatenate(probs) if probs else np.zeros((0, len(job.labels)), np.float32)
    if p.shape[1] != len(job.labels):
        raise ScoringError(f"the model {job.model.url} gives {p.shape[1]} probabilities per record but has "
                           f"{len(job.labels)} labels")
    summary = {"index": unit.index, "records": len(ids), "bad": [b[1:6] + (b[7],) for b in bad],
               "predicted": dict(Counter(job.labels[i] for i in p.argmax(axis=1))) if len(ids) else {},
               "top_sum": float(p.max(axis=1).sum()) if len(ids) else 0.0, "pid": os.getpid(),
               "load_seconds": load_seconds, "quarantine_file": None}
    if job.output_staging:
        import pyarrow.parquet as pq

        with commit.atomic_writer(storage.join(job.output_staging, part_name(unit.index))) as f:
            pq.write_table(_predictions_table(job, ids, labels, p), f)
    if bad and job.quarantine_staging:
        name = prep_tasks.quarantine_piece(unit.index)
        with commit.atomic_writer(storage.join(job.quarantine_staging, name)) as f:
            for b in bad:
                f.write(tfrecord.frame(tfrecord.encode_example({
                    schema.RECORD_ID: b[1], schema.LABEL_TEXT: b[2], prep_tasks.QUARANTINE_REASON: b[3],
                    prep_tasks.QUARANTINE_DETAIL: b[4], prep_tasks.QUARANTINE_SOURCE: b[5],
                    job.modality.feature: b[6]})))
        summary["quarantine_file"] = name
    if job.collect:
        summary.update(ids=ids, labels=labels, label_ids=label_ids, probabilities=p)
    summary["seconds"] = time.perf_counter() - started
    return summary


# ---------------------------------------------------------------------------------------------------------------
# The Spark job.


PACK_RECORDS = 256
"""Units are packed into one Spark task until it holds this many records. Each Spark task that runs at the same
time needs a Python worker of its own, and each worker pays ~10 CPU-seconds importing TensorFlow and loading the
model: for a few hundred records that is more than scoring them costs, so a small input is scored by one worker.
A unit of this size or more (a real shard, ``unit_records`` files, a row group) is always a task of its own."""


def task_groups(units: list[Unit], pack_records: int | None = None) -> list[list[Unit]]:
    """The units of each Spark task, largest unit first: consecutive units (in that order) share a task while
    their records add up to at most ``pack_records`` (default ``PACK_RECORDS``; 0: one task per unit); a unit
    whose count is unknown is a task of its own."""
    pack_records = PACK_RECORDS if pack_records is None else pack_records
    groups: list[list[Unit]] = []
    held = pack_records
    for u in sorted(units, key=lambda u: (-u.size, u.index)):
        if u.count and held + u.count <= pack_records:
            groups[-1].append(u)
            held += u.count
        else:
            groups.append([u])
            held = u.count if u.count else pack_records
    return groups


def spark_context(spark=None, app_name: str = ""):
    """The SparkContext of ``spark`` (a SparkSession or a SparkContext), or the application's own, named
    ``app_name``. The scoring job is a plain RDD job: a SparkSession would start Spark SQL in the driver's JVM for
    nothing (6-10 s before the first job, on 2 cores)."""
    if spark is not None:
        return getattr(spark, "sparkContext", spark)
    from pyspark import SparkConf, SparkContext

    return SparkContext.getOrCreate(SparkConf().setAppName(app_name))


def _score_partition(specs: Iterable[bytes], job: Job) -> Iterator[bytes]:
    for spec in specs:
        for unit in pickle.loads(spec):
            yield pickle.dumps(score_unit(unit, job))


def execute(spark, units: list[Unit], job: Job) -> list[dict]:
    """Scores every unit on the executors, one Spark task per unit (largest first) or per group of small units
    (``task_groups``); returns the summaries by unit index. Each task receives its own units in its partition (not
    the whole plan in the closure). ``spark``: a SparkSession or a SparkContext.

    A plain RDD ``mapPartitions``, not a DataFrame ``mapInArrow``: a unit is one small row in and one small
    summary out (the records are read on the executor and scored there in batches of ``batch_size``), so Arrow
    carries nothing here, and on 2 executors of 1 core the DataFrame route cost 2× the RDD's per job once warm and
    tens of seconds more on its first use in an executor (measured on 8 units of 500 records)."""
    if not units:
        return []
    groups = task_groups(units)
    specs = spark_context(spark).parallelize([pickle.dumps(g) for g in groups], len(groups))
    rows = specs.mapPartitions(lambda part: _score_partition(part, job)).collect()
    results = sorted((pickle.loads(r) for r in rows), key=lambda s: s["index"])
    if [s["index"] for s in results] != [u.index for u in units]:
        raise RuntimeError(f"scored {len(results)} units of {len(units)}: a Spark task's result is missing")
    return results


def load_report(results: list[dict]) -> dict:
    """How many Python workers loaded the model, how long each took, and how many units reused it."""
    loads = [s["load_seconds"] for s in results if s["load_seconds"] is not None]
    return {"workers": len({s["pid"] for s in results}), "loads": len(loads),
            "load_seconds": [round(x, 3) for x in loads], "units": len(results),
            "units_reusing_a_loaded_model": len(results) - len(loads)}


def collected(results: list[dict]) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Ids, labels, label ids and probabilities of collected results, in record id order."""
    ids = [i for s in results for i in s["ids"]]
    labels = [x for s in results for x in s["labels"]]
    label_ids = np.array([x for s in results for x in s["label_ids"]], dtype=np.int64)
    probs = np.concatenate([s["probabilities"] for s in results]) if results else np.zeros((0, 0))
    order = sorted(range(len(ids)), key=ids.__getitem__)
    return [ids[i] for i in order], [labels[i] for i in order], label_ids[order], probs[order]

