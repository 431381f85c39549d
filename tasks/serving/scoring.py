"""The scoring engine: a SavedModel applied to records on the Spark executors, in batches.

Shared by batch scoring (``tasks.score_partition``) and evaluation (``tasks.evaluate``). It owns:

* **which model**: a published version in TF Serving layout (``served``: its ``serving_default`` signature takes
  inputs as stored, encoded image bytes or texts) or a run's Keras model (``keras``: ``runs/ds=…/model``, fed
  through ``tasks.training.model.preprocess_batch``, as training and evaluation feed it);
* **loading it once per Python worker**: ``load_scorer`` keeps a module-level cache keyed by the model's URL, so
  with ``spark.python.worker.reuse`` (Spark's default, set explicitly by the operators) every task a worker runs
  after the first scores with the model already in memory; each work unit reports whether it paid the load;
* **which records**: work units (``Unit``) of a raw partition in any input layout, listed on the driver by
  ``tasks.prep.layouts`` and read and checked on the executors by ``tasks.prep.prep_tasks`` (the same readers and checks as
  data prep), or the TFRecord shards of a prepared split;
* **the Spark job** (``execute``): one RDD partition per unit, ``mapPartitions`` on the executors, where each unit
  reads its records where they are, scores the good ones ``batch_size`` at a time, writes its predictions as one
  Parquet part file and its bad records as one quarantine piece into staging folders (``tasks.io.storage``, so
  ``file://`` and ``hdfs://``), and returns a small summary (counts, and for evaluation the probabilities).

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
import tempfile
import time
from collections import Counter
from typing import Iterable, Iterator

import numpy as np

from tasks.core import run_folder, runtime, schema
from tasks.io import commit, storage
from tasks.prep import image_check, layouts, modality, prep_tasks, tfrecord

log = logging.getLogger("scoring")

SERVED = "served"
KERAS = "keras"
LABELS_ASSET = run_folder.LABELS_ASSET
PROVENANCE = run_folder.PROVENANCE
MODEL_REJECTED = "model_rejected"
"""Reason of a record that passed the checks but that the model's decoder refuses."""

PREDICTION_COLUMNS = ("record_id", "label", "predicted_label", "top_probability", "probabilities", "model_name",
                      "model_version", "partition")
"""Columns of the predictions' Parquet files, in order; ``probabilities`` follows the order of ``labels`` in
``_manifest.json`` (and in each file's Parquet metadata)."""


class ScoringError(RuntimeError):
    """A scoring job that cannot run, with the model, partition or setting to look at."""


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A model as the executors load it."""

    url: str
    """Storage URL of the model folder."""
    kind: str
    """``served`` (TF Serving layout) or ``keras`` (a run's ``model/``)."""
    task_type: str
    image_size: tuple[int, int] | None = None
    """(height, width) the Keras model takes; served models resize inside their graph."""
    threads: int = 0
    """TensorFlow threads per worker; 0: the Spark task's CPUs (1 when not in a Spark task)."""


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

    @property
    def size(self) -> int:
        return sum(r.size for r in self.rows)


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
# Models: resolved on the driver, loaded once per Python worker.


def published_versions(serving_root: str, model_name: str) -> list[int]:
    """Numeric versions with a complete SavedModel under ``<serving_root>/<model_name>/``, highest last."""
    folder = storage.join(serving_root, model_name)
    if not storage.exists(folder):
        return []
    return sorted(int(name) for name in storage.list_names(folder)
                  if name.isdigit() and storage.exists(storage.join(folder, name, "saved_model.pb")))


@dataclasses.dataclass(frozen=True)
class Served:
    """A published version: where it is, and what its ``assets`` say about it."""

    url: str
    version: int
    labels: tuple[str, ...]
    task_type: str
    provenance: dict


def resolve_served(serving_root: str, model_name: str, version: int = 0) -> Served:
    """The published version to score with: ``version``, or the highest one when it is 0.

    Raises:
        ScoringError: nothing is published under that name, or the pinned version is not.
    """
    versions = published_versions(serving_root, model_name)
    if not versions:
        raise ScoringError(f"no published version of model {model_name!r} under {serving_root} (no numeric folder "
                           "with a saved_model.pb): publish one with tfhub_finetune, or set model_name")
    if version and version not in versions:
        raise ScoringError(f"version {version} of model {model_name!r} is not published under {serving_root}; "
                           f"published: {versions}")
    version = version or versions[-1]
    url = storage.join(serving_root, model_name, str(version))
    labels = tuple(line for line in storage.read_text(storage.join(url, LABELS_ASSET)).splitlines() if line)
    prov_url = storage.join(url, PROVENANCE)
    provenance = json.loads(storage.read_text(prov_url)) if storage.exists(prov_url) else {}
    return Served(url, version, labels, provenance.get("task_type", modality.IMAGE_CLASSIFICATION), provenance)


class Scorer:
    """A loaded model: ``predict(inputs)`` gives class probabilities for inputs as stored (bytes)."""

    def __init__(self, ref: ModelRef, local_dir: str) -> None:
        runtime.set_legacy_keras()
        import tensorflow as tf

        threads = ref.threads or _task_cpus()
        try:  # only possible before the process's first TensorFlow op; a reused worker already has them set
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            pass
        self.tf, self.ref = tf, ref
        kind = modality.of(ref.task_type)
        if ref.kind == SERVED:
            serve = tf.saved_model.load(local_dir).signatures["serving_default"]
            takes = sorted(serve.structured_input_signature[1])
            if kind.serving_input not in takes:
                raise ScoringError(f"the model {ref.url} takes {takes}, not {kind.serving_input!r}: it is a model of "
                                   f"another task type than {ref.task_type}")
            self._fn = lambda batch: serve(**{kind.serving_input: batch})["probabilities"]
        elif ref.kind == KERAS:
            from tasks.training import model as M

            model = M.load_trained(local_dir)
            self._fn = lambda batch: model(M.preprocess_batch(batch, ref.image_size, ref.task_type), training=False)
        else:
            raise ValueError(f"unknown model kind {ref.kind!r}; use {SERVED!r} or {KERAS!r}")

    def predict(self, inputs: list[bytes]) -> np.ndarray:
        return self._fn(self.tf.constant(inputs, dtype=self.tf.string)).numpy()


def _task_cpus() -> int:
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        return int(ctx.cpus()) if ctx is not None else 1
    except ImportError:
        return 1


_SCORERS: dict[tuple[str, str], Scorer] = {}
_SCRATCH: list[str] = []


def load_scorer(ref: ModelRef) -> tuple[Scorer, float | None]:
    """The model of ``ref``, loaded once per process; returns it and the seconds this call spent loading it (None
    when it was already loaded)."""
    key = (ref.url, ref.kind)
    if key in _SCORERS:
        return _SCORERS[key], None
    t0 = time.perf_counter()
    if not _SCRATCH:
        _SCRATCH.append(tempfile.mkdtemp(prefix="tfhub-score-"))
    local = storage.fetch(ref.url, os.path.join(_SCRATCH[0], str(len(_SCORERS))))
    scorer = Scorer(ref, str(local))
    _SCORERS[key] = scorer
    return scorer, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------------------
# Work units: planned on the driver.


def raw_units(raw: layouts.RawPartition, units_hint: int, unit_records: int) -> list[Unit]:
    """Units of a listed raw partition: one per table row group (or CSV file), and the files cut into runs of
    about ``unit_records`` records, at least ``units_hint`` units in all so every executor core gets work.

    A record without a label is scored like any other (the listing's ``unlabelled`` is a prep problem only)."""
    def planned(r: layouts.RawRecord) -> prep_tasks.Planned:
        problem = None if r.problem and r.problem[0] == "unlabelled" else r.problem
        return prep_tasks.Planned(r.id, r.label, -1, r.source, r.size, problem)

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
    return [Unit(i, "tfrecord", f["name"]) for i, f in enumerate(f for f in manifest["files"][split] if f["records"])]


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


def _score_partition(specs: Iterable[bytes], job: Job) -> Iterator[bytes]:
    for spec in specs:
        yield pickle.dumps(score_unit(pickle.loads(spec), job))


def execute(spark, units: list[Unit], job: Job) -> list[dict]:
    """Scores every unit on the executors, one Spark task per unit (largest first); returns the summaries by
    unit index. Each task receives its own unit in its partition (not the whole plan in the closure).

    A plain RDD ``mapPartitions``, not a DataFrame ``mapInArrow``: a unit is one small row in and one small
    summary out (the records are read on the executor and scored there in batches of ``batch_size``), so Arrow
    carries nothing here, and on 2 executors of 1 core the DataFrame route cost 2× the RDD's per job once warm and
    tens of seconds more on its first use in an executor (measured on 8 units of 500 records)."""
    if not units:
        return []
    order = sorted(units, key=lambda u: (-u.size, u.index))
    specs = spark.sparkContext.parallelize([pickle.dumps(u) for u in order], len(order))
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

