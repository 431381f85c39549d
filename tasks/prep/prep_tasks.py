"""What the Spark tasks of data prep do: read records, check them, write one shard and its quarantine piece.

Runs in executors, so it imports neither TensorFlow nor PySpark. The driver (``tasks.prepare_examples``) plans
every record's split and shard; a shard task (a Spark task runs one or a few, ``shard_job.shard_groups``) receives
the records of one shard, in id order, reads their bytes from the raw partition (``file://`` directly, ``hdfs://``
through WebHDFS) and writes:

* the shard, ``<split>-NNNNN-of-NNNNN.tfrecord``, into the dataset's staging folder: the valid records as
  ``tf.train.Example``, in id order;
* when some of its records are bad, ``part-NNNNN.tfrecord`` into the quarantine's staging folder: one
  ``tf.train.Example`` per bad record with its id, label, reason, detail, source and raw bytes.

Both are functions of the records alone, so a retried or speculative attempt writes the same bytes, and each file
appears complete or not at all (``commit.atomic_writer``).

For the table layouts (Parquet; CSV for text) the bytes are inside Parquet row groups or CSV files that hold records of
every shard: one task per row group reads and checks them (``check_row_group``) and Spark shuffles the results to the
shard writers (``write_checked``). A Spark SQL table's rows (layout ``table``) are checked where the query gives them
(``check_table_rows``), then shuffled the same way; a table of image paths is read as files are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import Counter
from typing import Callable, Iterable, Iterator

from tasks.core import schema
from tasks.io import commit, storage
from tasks.prep import image_check, layouts, modality, tfrecord

QUARANTINE_REASON = "quarantine/reason"
QUARANTINE_DETAIL = "quarantine/detail"
QUARANTINE_SOURCE = "quarantine/source"


@dataclasses.dataclass
class Planned(layouts.RawRecord):
    """A record as the driver planned it: the listed record and its label's id."""

    label_id: int = -1
    """Index in the vocabulary; -1 for a record already known to be bad (and for a record scored, not trained on)."""


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """One shard: the unit of work of a Spark task."""

    index: int
    """Task number, in split and shard order; names the quarantine piece."""
    split: str
    name: str
    """The shard's file name."""
    records: tuple[Planned, ...]
    """Its records in id order (the files layouts); empty for Parquet, whose records come through a shuffle."""

    @property
    def bytes(self) -> int:
        return sum(r.size for r in self.records)


@dataclasses.dataclass(frozen=True)
class Context:
    """What every task needs besides its records."""

    raw: str
    staging: str
    """Staging folder URL of the dataset."""
    quarantine_staging: str
    """Staging folder URL of the quarantine."""
    bounds: image_check.Bounds | modality.TextBounds
    """Bounds of an acceptable record, of the task type's kind."""
    webhdfs: dict
    """The driver's WebHDFS settings (``storage.webhdfs_settings``)."""
    column: str = "image"
    """Column of the records' input in table layouts."""
    task_type: str = modality.IMAGE_CLASSIFICATION

    @property
    def modality(self) -> modality.Modality:
        return modality.of(self.task_type)


def quarantine_piece(index: int) -> str:
    return f"part-{index:05d}.tfrecord"


def _bucket(n: int) -> int:
    """Histogram bucket of a size: ``k`` holds values in ``[2**(k-1), 2**k)`` (0 holds 0)."""
    return int(n).bit_length()


class _Sizes:
    """Count, min, max, sum and a power-of-two histogram of one measure."""

    def __init__(self) -> None:
        self.count, self.min, self.max, self.sum = 0, None, None, 0
        self.hist: Counter = Counter()

    def add(self, n: int) -> None:
        self.count += 1
        self.sum += n
        if self.min is None or n < self.min:
            self.min = n
        if self.max is None or n > self.max:
            self.max = n
        self.hist[_bucket(n)] += 1

    def to_dict(self) -> dict:
        return {"count": self.count, "min": self.min, "max": self.max, "sum": self.sum, "hist": dict(self.hist)}


class _ShardWriter:
    """Writes one task's valid records to its shard and its bad records to its quarantine piece, and counts."""

    def __init__(self, task: ShardTask, ctx: Context, shard, files: contextlib.ExitStack) -> None:
        self.task, self.ctx, self._shard, self._files = task, ctx, shard, files
        self.quarantine_url = storage.join(ctx.quarantine_staging, quarantine_piece(task.index))
        self.labels: Counter = Counter()
        self.formats: Counter = Counter()
        self.sizes = {name: _Sizes() for name in ctx.modality.measures}
        self.bad: list[tuple[str, str, str, str, str, int]] = []  # id, label, reason, detail, source, size
        self.records = 0
        self._bad_file = None

    def good(self, record_id: str, label: str, label_id: int, data: bytes, info: modality.Checked) -> None:
        tfrecord.write_example(self._shard, _example_features(record_id, data, info.format, label_id, label,
                                                              self.ctx.modality))
        self.records += 1
        self.labels[label] += 1
        self.formats[info.format] += 1
        for name, value in info.measures.items():
            self.sizes[name].add(value)

    def bad_record(self, record_id: str, label: str, reason: str, detail: str, source: str, data: bytes,
                   size: int) -> None:
        if self._bad_file is None:  # most shards have no bad record: no quarantine piece
            self._bad_file = self._files.enter_context(commit.atomic_writer(self.quarantine_url))
        tfrecord.write_example(self._bad_file, {
            schema.RECORD_ID: record_id,
            schema.LABEL_TEXT: label,
            QUARANTINE_REASON: reason,
            QUARANTINE_DETAIL: detail,
            QUARANTINE_SOURCE: source,
            self.ctx.modality.feature: data,
        })
        self.bad.append((record_id, label, reason, detail, source, size))

    def result(self, shard_bytes: int) -> dict:
        return {
            "index": self.task.index, "split": self.task.split, "name": self.task.name,
            "records": self.records, "bytes": shard_bytes, "labels": dict(self.labels),
            "formats": dict(self.formats), "sizes": {k: v.to_dict() for k, v in self.sizes.items()},
            "bad": self.bad,
            "quarantine_file": quarantine_piece(self.task.index) if self.bad else None,
        }


def example_bytes(record_id: str, content: bytes, fmt: str, label_id: int, label: str,
                  kind: modality.Modality = modality.IMAGE) -> bytes:
    """The serialised ``tf.train.Example`` of a valid record (the schema of ``tasks.core.schema``)."""
    return tfrecord.encode_example(_example_features(record_id, content, fmt, label_id, label, kind))


def _example_features(record_id: str, content: bytes, fmt: str, label_id: int, label: str,
                      kind: modality.Modality) -> dict:
    features = {kind.feature: content, schema.LABEL: label_id, schema.LABEL_TEXT: label, schema.RECORD_ID: record_id}
    if kind is modality.IMAGE:
        features[schema.FORMAT] = fmt
    return features


def _write(task: ShardTask, ctx: Context, checked: Iterable[tuple]) -> dict:
    """Writes checked records, ``("good", id, label, label_id, data, info)`` or ``("bad", id, label, reason,
    detail, source, data, size)``, in the order given."""
    started, cpu = time.perf_counter(), time.process_time()
    with contextlib.ExitStack() as files:
        f = files.enter_context(commit.atomic_writer(storage.join(ctx.staging, task.name)))
        writer = _ShardWriter(task, ctx, f, files)
        for item in checked:
            if item[0] == "good":
                writer.good(*item[1:])
            else:
                writer.bad_record(*item[1:])
        shard_bytes = f.tell()
    return {**writer.result(shard_bytes), "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu}


def _check(record: Planned, data: bytes, ctx: Context) -> tuple:
    if record.problem is not None:
        return ("bad", record.id, record.label, *record.problem, record.source, data, record.size)
    try:
        info = ctx.modality.check(data, ctx.bounds)
    except image_check.BadRecord as bad:
        kept = b"" if bad.reason == "too_many_bytes" else data
        return ("bad", record.id, record.label, bad.reason, bad.detail, record.source, kept, len(data))
    return ("good", record.id, record.label, record.label_id, data, info)


def _read_and_check(r: Planned, ctx: Context, read: Callable[[str], bytes]) -> tuple:
    if not r.source:  # listed but absent: nothing to read or keep
        return _check(r, b"", ctx)
    if r.size > ctx.bounds.max_bytes:  # neither decoded nor copied to quarantine
        problem = r.problem or ("too_many_bytes", f"{r.size} bytes > the most a record may have, "
                                                  f"{ctx.bounds.max_bytes}")
        return ("bad", r.id, r.label, problem[0], problem[1] + "; bytes not copied", r.source, b"", r.size)
    return _check(r, read(r.source), ctx)


def write_files_shard(task: ShardTask, ctx: Context) -> dict:
    """The task of the files layouts: reads, checks and writes the records of one shard; returns its counts."""
    storage.use_webhdfs(ctx.webhdfs)
    read = storage.child_reader(ctx.raw)
    return _write(task, ctx, (_read_and_check(r, ctx, read) for r in task.records))


def check_files(rows: list[tuple[int, Planned]], ctx: Context) -> Iterator[tuple]:
    """Reads and checks records that are files (in a Parquet partition, the files that are not Parquet).

    Yields:
        ``(shard task index, checked record)``, as ``check_row_group`` does.
    """
    storage.use_webhdfs(ctx.webhdfs)
    read = storage.child_reader(ctx.raw)
    for task_index, record in rows:
        yield task_index, _read_and_check(record, ctx, read)


def check_row_group(file: str, group: int, rows: list[tuple[int, Planned]], ctx: Context) -> Iterator[tuple]:
    """The first task of the table layouts: reads one Parquet row group's (or one CSV file's) inputs and checks
    them.

    Args:
        file: the Parquet or CSV file, relative to the raw partition.
        group: the row group (0 for CSV).
        rows: ``(shard task index, planned record)`` of each row, in row order.
        ctx: the job's context.

    Yields:
        ``(shard task index, checked record)`` for the shuffle to the shard writers.
    """
    import pyarrow.parquet as pq

    storage.use_webhdfs(ctx.webhdfs)
    if file.endswith(".csv"):
        values = [row[1] for row in layouts.read_csv_table(ctx.raw, file, [ctx.column])]
    else:
        with storage.open_child(ctx.raw, file) as f:
            values = pq.ParquetFile(f).read_row_group(group, columns=[ctx.column]).column(0).to_pylist()
    if len(values) != len(rows):
        raise RuntimeError(f"{file} row group {group}: {len(values)} rows now, {len(rows)} when listed; the raw "
                           "partition changed while it was read")
    for (task_index, record), data in zip(rows, values):
        if isinstance(data, str):  # CSV text keeps undecodable bytes as surrogates: the check reports them
            data = data.encode("utf-8", "surrogateescape")
        yield task_index, _check(record, data or b"", ctx)


def check_table_rows(rows: Iterable, lookup: dict, ctx: Context) -> Iterator[tuple]:
    """The first task of the table layout: checks the inputs of a Spark SQL table's rows where the query gives
    them.

    Args:
        rows: ``(id, label, input, digest)`` rows of ``layouts.RawPartition.frame``.
        lookup: ``(id, label, digest)`` -> ``(shard task index, planned record)``, as the driver listed them.
        ctx: the job's context.

    Yields:
        ``(shard task index, checked record)`` for the shuffle to the shard writers.

    Raises:
        RuntimeError: a row the driver did not list: the query's result changed between the two reads.
    """
    storage.use_webhdfs(ctx.webhdfs)
    for record_id, label, data, digest in rows:
        try:
            task_index, record = lookup[(record_id, label, digest)]
        except KeyError:
            raise RuntimeError(f"a row (id {record_id!r}, label {label!r}) was not in the table or query's result "
                               "when it was listed: the result changed between two reads (a table written "
                               "meanwhile, or a query that is not deterministic: rand(), LIMIT without ORDER BY, "
                               "TABLESAMPLE); make it deterministic and re-run") from None
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        yield task_index, _check(record, bytes(data or b""), ctx)


def write_checked(task: ShardTask, checked: Iterable[tuple], ctx: Context) -> dict:
    """The second task of the Parquet layout: writes one shard from the checked records the shuffle brought, in
    id order (then source, for duplicate ids)."""
    storage.use_webhdfs(ctx.webhdfs)
    items = sorted(checked, key=lambda item: (item[1], item[5] if item[0] == "bad" else ""))
    return _write(task, ctx, items)
