"""Spark application: one raw partition to training-ready, sharded TFRecords of ``tf.train.Example``.

Input ``<raw>/`` in one of these layouts (``--layout``, see ``tasks.layouts``): files and a labels manifest
(``labels.csv`` or a Parquet file: path, label), the default; one folder per class; Parquet files with the input
(image bytes or text) in a column; for text, CSV files (text, label, optional id). ``_SUCCESS`` must be there: the
producer has finished. Or ``--layout table``: the rows of a Spark SQL table or query (``--table``/``--query``,
filtered to the partition by ``:ds`` in the query or ``--partition-column``), with no folder and no marker.

``--partition YYYY-MM-DD`` is the partition's date (the DAG passes its run's partition key); without it, the date
is read off the folder names (``ds=YYYY-MM-DD``), so ``--raw`` names the partition of a table.

``--task-type`` (``tasks.modality``) says what a record is. Every record is checked: an image decodes and its size
is within bounds (``tasks.image_check``), a text is UTF-8, not blank and not too long; its label is known.
Output ``<output>/``, committed as a whole by renaming a staging folder into place, ``_SUCCESS`` last::

    train-00000-of-0000N.tfrecord ...   the valid records, sorted by id within a shard
    eval-...  test-...
    manifest.json                       label vocabulary, counts per split and label, files and their counts
    stats.json                          counts, label distribution and its drift, image sizes or text lengths,
                                        bad-record reasons
    _SUCCESS

Bad records go to ``<quarantine>/`` (default ``<storage root>/quarantine/ds=<partition>``), committed the same way,
also when the stage then fails::

    part-NNNNN.tfrecord   one tf.train.Example per bad record: record/id, label/text, quarantine/reason,
                          quarantine/detail, quarantine/source, image/encoded or text (its raw bytes)
    quarantine.jsonl      one line per bad record: id, label, reason, detail, source, bytes, file
    summary.json          counts by reason
    _SUCCESS

The stage fails, naming the first bad records and the counts, when more than ``max_bad_fraction`` of the records
are bad or none is valid. Label ids come from a vocabulary kept beside the dataset (``tasks.vocabulary``): ids are
given once; a label new to the vocabulary follows ``--new-label-policy``.

A record's split and shard are hashes of its id; its bytes depend on the record and its label id alone; so a
rerun on the same input writes byte-identical files, and a retried or speculative Spark attempt writes the same
file again (``tasks.prep_tasks``).

Storage: ``file://`` and ``hdfs://``. The driver lists the partition and the Spark tasks read the bytes and write
their shards through ``tasks.storage``: directly for ``file://``, through WebHDFS for ``hdfs://`` (a task writes
its shard to a local file, uploads it into the HDFS staging folder and renames it into place). Spark's own
``hdfs://`` reader is not used: it needs Hadoop RPC, and the ``webhdfs://`` file system of the Hadoop client that
Spark 4.2 bundles fails (its shaded Jersey runtime is missing), so WebHDFS through our client is the one path that
works, and is tested, for both reads and writes.

Usage (spark-submit with the ``tasks`` package on ``--py-files``)::

    spark-submit tasks/prepare_examples.py --partition 2026-11-20 --raw file:///.../raw/ds=2026-11-20 \\
        --output file:///.../examples/ds=2026-11-20 --min-shards 4
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import re
import threading
import time
from collections import Counter

from tasks import (image_check, layouts, modality, prep_stats, prep_tasks, run_folder, runtime, schema, storage,
                   tfrecord, vocabulary)
from tasks.layouts import PrepError

log = logging.getLogger("prepare_examples")

STATS = run_folder.STATS
QUARANTINE_INDEX = run_folder.QUARANTINE_INDEX
QUARANTINE_SUMMARY = run_folder.QUARANTINE_SUMMARY


@dataclasses.dataclass
class Config:
    raw: str
    """Storage URL of the raw partition folder."""
    output: str
    """Storage URL of the prepared dataset folder for this partition."""
    partition: str = ""
    """The partition's date, ``YYYY-MM-DD`` (the DAG passes its run's partition key): the table layout's filter
    value and ``:ds``, the day before's stats for label drift, the quarantine folder ``quarantine/ds=<date>`` and the
    partition recorded in the manifest. Empty: the date is read off the folder names (``--raw``'s and ``--output``'s
    ``ds=YYYY-MM-DD``), for direct spark-submit use."""
    task_type: str = modality.IMAGE_CLASSIFICATION
    """``image_classification`` or ``text_classification`` (``tasks.modality``); written into the manifest, where
    the later stages read it."""
    layout: str = "manifest"
    """Input layout: ``manifest``, ``folders``, ``parquet``, or for text ``csv`` (see ``tasks.layouts.LAYOUTS``)."""
    labels_file: str = "labels.csv"
    """The labels manifest inside the raw partition (manifest layout): CSV, or Parquet when it ends in .parquet."""
    id_column: str = ""
    """Column of the record id; empty: ``path`` (the file's path in a manifest, and the image tables' id), or
    ``id`` in text tables, where it is optional (without it, a record's id is a digest of its text)."""
    label_column: str = "label"
    """Column of the label."""
    image_column: str = "image"
    """Column of the encoded image bytes (parquet layout)."""
    text_column: str = "text"
    """Column of the text (text tables)."""
    table: str = ""
    """Table layout: a table of the Spark catalog, ``[database.]name``, holding the rows (or set ``query``)."""
    query: str = ""
    """Table layout: a Spark SQL query giving the rows (filters and joins are the query's); ``:ds`` in it is the
    partition's date (``--partition``), bound as a named parameter."""
    partition_column: str = ""
    """Table layout: keep the rows whose column equals the partition's date; empty: every row the table or query
    gives (then the query selects the partition with ``:ds``)."""
    image_root: str = ""
    """Table layout: storage URL that the image column's paths are relative to; empty: the image column holds the
    encoded image bytes."""
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    """Fractions of train, eval and test, by hash of the record id."""
    min_shards: int = 4
    """Fewest shards per split, and the shard count is a multiple of it, so every training worker gets files
    (set it to a multiple of num_workers, e.g. twice it)."""
    target_shard_bytes: int = 64 * 1024 * 1024
    """Aim for shards of about this size when a split is large."""
    min_image_side: int = 8
    """Images with a side shorter than this (pixels) are bad."""
    max_image_side: int = 16384
    """Images with a side longer than this (pixels) are bad, and are not decoded."""
    max_image_bytes: int = 64 * 1024 * 1024
    """Records larger than this (bytes) are bad, and are not read."""
    min_text_chars: int = 1
    """Texts shorter than this after stripping white space are bad (``empty_text``)."""
    max_text_chars: int = 20000
    """Texts longer than this are bad (``text_too_long``)."""
    max_text_bytes: int = 1024 * 1024
    """Text records larger than this (bytes) are bad, and are not read."""
    labels: tuple[str, ...] = ()
    """The declared labels; records with any other label are bad (unknown_label). Empty: any label."""
    new_label_policy: str = "fail"
    """Labels not in the vocabulary yet: ``fail``, ``append`` (new ids) or ``quarantine`` (see
    ``tasks.vocabulary.POLICIES``)."""
    vocabulary: str = ""
    """Storage URL of the label vocabulary folder; empty: ``_vocabulary`` beside the output partition."""
    quarantine: str = ""
    """Storage URL for the bad records; empty: ``<output's grandparent>/quarantine/ds=<partition>``."""
    max_bad_fraction: float = 0.05
    """The stage fails when a larger fraction of the records is bad."""
    previous_stats: str = ""
    """Storage URL of the previous partition's ``stats.json``, for label drift; empty: the day before's
    (``ds=<partition - 1 day>``), beside the output."""
    drift_threshold: float = 0.2
    """Warn when the total variation distance between this and the previous label distribution is larger."""


MB_OPTIONS = {"target_shard_bytes": "target_shard_mb", "max_image_bytes": "max_image_mb",
              "max_text_bytes": "max_text_mb"}
"""Config fields given on the command line in MiB, and their options."""


def parse_args(argv: list[str]) -> Config:
    p = runtime.build_parser(
        Config, __doc__.splitlines()[0], skip=MB_OPTIONS.keys() | {"split_fractions", "labels"},
        choices={"task_type": sorted(modality.TASK_TYPES), "layout": sorted(layouts.LAYOUTS),
                 "new_label_policy": sorted(vocabulary.POLICIES)})
    docs = runtime.field_docs(Config)
    p.add_argument("--split-fractions", default=",".join(str(x) for x in Config.split_fractions),
                   help=docs["split_fractions"] + " Comma-separated: train,eval,test, summing to 1.")
    for field, option in MB_OPTIONS.items():
        p.add_argument(runtime.flag(option), type=float, default=getattr(Config, field) / 2**20,
                       help=f"{docs[field]} In MiB.")
    p.add_argument("--labels", default="", help=docs["labels"] + " Comma-separated.")
    a = p.parse_args(argv)
    fractions = tuple(float(x) for x in a.split_fractions.split(","))
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        p.error(f"--split-fractions {a.split_fractions!r}: need three non-negative numbers summing to 1")
    if a.min_shards < 1:
        p.error("--min-shards must be at least 1")
    if a.target_shard_mb <= 0 or a.max_image_mb <= 0:
        p.error("--target-shard-mb and --max-image-mb must be positive")
    kind = modality.of(a.task_type)
    if a.layout not in kind.layouts:
        p.error(f"--layout {a.layout} does not hold {a.task_type} data; use one of {', '.join(kind.layouts)}")
    if a.layout == "table" and bool(a.table) == bool(a.query):
        p.error("--layout table reads a catalog table (--table) or a query (--query): give exactly one")
    if a.layout != "table" and (a.table or a.query or a.partition_column or a.image_root):
        p.error(f"--table, --query, --partition-column and --image-root are for --layout table, not {a.layout}")
    if a.image_root and a.task_type != modality.IMAGE_CLASSIFICATION:
        p.error("--image-root is for image tables whose image column holds paths; a text table holds the texts")
    if not 0 <= a.min_text_chars <= a.max_text_chars or a.max_text_mb <= 0:
        p.error(f"need 0 <= --min-text-chars ({a.min_text_chars}) <= --max-text-chars ({a.max_text_chars}) and a "
                "positive --max-text-mb")
    if not 1 <= a.min_image_side <= a.max_image_side:
        p.error(f"need 1 <= --min-image-side ({a.min_image_side}) <= --max-image-side ({a.max_image_side})")
    for name in ("max_bad_fraction", "drift_threshold"):
        if not 0 <= getattr(a, name) <= 1:
            p.error(f"--{name.replace('_', '-')} must be within [0, 1], got {getattr(a, name)}")
    if a.partition:
        try:
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", a.partition):
                raise ValueError("not of the form YYYY-MM-DD")
            dt.date.fromisoformat(a.partition)
        except ValueError as e:
            p.error(f"--partition {a.partition!r} is not a date YYYY-MM-DD: {e}")
    for k in ("raw", "output", "vocabulary", "quarantine", "previous_stats", "image_root"):
        problem = storage.check_segments(getattr(a, k), f"--{k.replace('_', '-')}")
        if problem:
            p.error(problem)
    declared = tuple(x.strip() for x in a.labels.split(",") if x.strip())
    options = {k: v for k, v in vars(a).items() if k not in {*MB_OPTIONS.values(), "split_fractions", "labels"}}
    return Config(**options, split_fractions=fractions, labels=declared,
                  **{field: int(getattr(a, option) * 2**20) for field, option in MB_OPTIONS.items()})


def _parent(url: str) -> str:
    return url.rstrip("/").rpartition("/")[0]


def _name(url: str) -> str:
    return url.rstrip("/").rpartition("/")[2]


def id_column(cfg: Config) -> str:
    """The id column: as set, or ``id`` in text tables and ``path`` otherwise."""
    if cfg.id_column:
        return cfg.id_column
    text_table = cfg.task_type == modality.TEXT_CLASSIFICATION and cfg.layout in ("csv", "parquet", "table")
    return "id" if text_table else "path"


def partition_name(cfg: Config, folder: str | None = None) -> str:
    """The partition as the stage's records name it, ``ds=YYYY-MM-DD``: ``--partition``; without it, the name of
    ``folder`` (default ``--raw``), as direct spark-submit users name their folders."""
    return f"ds={cfg.partition}" if cfg.partition else _name(folder or cfg.raw)


def table_input(cfg: Config, partition: str) -> layouts.TableInput:
    """The table layout's input: the table or query, filtered to the partition's date (``ds=`` taken off)."""
    return layouts.TableInput(table=cfg.table, query=cfg.query, partition_column=cfg.partition_column,
                              partition_value=partition.removeprefix("ds="), image_root=cfg.image_root)


def input_name(cfg: Config) -> str:
    """What the stage reads, for messages and the manifest's ``source``: the raw partition, or the table input."""
    return table_input(cfg, partition_name(cfg)).describe() if cfg.layout == "table" else cfg.raw


def input_column(cfg: Config) -> str:
    return cfg.text_column if cfg.task_type == modality.TEXT_CLASSIFICATION else cfg.image_column


def vocabulary_url(cfg: Config) -> str:
    return cfg.vocabulary or storage.join(_parent(cfg.output), run_folder.VOCABULARY)


def quarantine_url(cfg: Config) -> str:
    if cfg.quarantine:
        return cfg.quarantine
    root = _parent(_parent(cfg.output))
    if not root or root.endswith(":/") or root.endswith(":"):
        raise PrepError(f"--output {cfg.output} has no grandparent folder to put quarantine/ in; set --quarantine")
    return storage.join(root, "quarantine", partition_name(cfg, cfg.output))


def previous_stats_url(cfg: Config) -> tuple[str | None, str]:
    """The previous partition's ``stats.json`` URL (None if unknown) and a name for it in messages."""
    if cfg.previous_stats:
        return cfg.previous_stats, cfg.previous_stats
    m = re.fullmatch(r"ds=(\d{4}-\d{2}-\d{2})", partition_name(cfg, cfg.output))
    if not m:
        return None, "no --partition, the output is not named ds=YYYY-MM-DD and --previous-stats is not set"
    previous = f"ds={dt.date.fromisoformat(m.group(1)) - dt.timedelta(days=1)}"
    return storage.join(_parent(cfg.output), previous, STATS), previous


def num_shards(split_bytes: int, cfg: Config) -> int:
    """Enough shards of about ``target_shard_bytes``, at least ``min_shards``, a multiple of ``min_shards``."""
    wanted = max(1, math.ceil(split_bytes / cfg.target_shard_bytes))
    return cfg.min_shards * math.ceil(wanted / cfg.min_shards)


@dataclasses.dataclass
class Plan:
    """Every record's label id, split and shard, and the shard tasks."""

    vocabulary: vocabulary.Vocabulary
    new_labels: list[str]
    """Labels this partition adds to the vocabulary."""
    unknown_labels: list[str]
    """Labels new to the vocabulary whose records are quarantined (policy ``quarantine``)."""
    shards: dict[str, int]
    tasks: list[prep_tasks.ShardTask]
    task_of: list[int]
    """The task of each listed record, in listing order."""
    planned: list[prep_tasks.Planned]
    """Each listed record as planned, in listing order."""


def make_plan(raw: layouts.RawPartition, current: vocabulary.Vocabulary, cfg: Config, partition: str) -> Plan:
    """Checks labels, resolves the vocabulary, assigns every record to a split and a shard.

    Raises:
        PrepError: new labels under the ``fail`` policy.
    """
    declared = set(cfg.labels)
    problems = []
    for r in raw.records:
        problem = r.problem
        if problem is None:
            bad = image_check.label_problem(r.label)
            if bad is not None:
                problem = (bad.reason, bad.detail)
            elif declared and r.label not in declared:
                problem = ("unknown_label", f"label {r.label!r} is not one of the declared labels "
                                            f"({', '.join(sorted(declared))})")
        problems.append(problem)
    seen = Counter(r.label for r, problem in zip(raw.records, problems) if problem is None)
    try:
        vocab, new = vocabulary.resolve(current, dict(seen), cfg.new_label_policy, partition)
    except vocabulary.VocabularyError as e:
        raise PrepError(str(e)) from e
    unknown: list[str] = []
    if new and vocab.version == current.version:  # the quarantine policy: the vocabulary stays as it is
        unknown, new = new, []
        for i, r in enumerate(raw.records):
            if problems[i] is None and r.label in unknown:
                problems[i] = ("unknown_label", f"label {r.label!r} is not in vocabulary v{current.version} "
                                                "(--new-label-policy quarantine)")
    ids = vocab.ids()

    split_bytes = dict.fromkeys(schema.SPLITS, 0)
    splits = [schema.split_of(r.id, cfg.split_fractions) for r in raw.records]
    for r, split, problem in zip(raw.records, splits, problems):
        if problem is None:
            split_bytes[split] += r.size
    shards = {s: num_shards(split_bytes[s], cfg) for s in schema.SPLITS}
    keys = [(s, i) for s in schema.SPLITS for i in range(shards[s])]
    index_of = {k: n for n, k in enumerate(keys)}
    members: list[list[prep_tasks.Planned]] = [[] for _ in keys]
    planned, task_of = [], []
    for r, split, problem in zip(raw.records, splits, problems):
        p = prep_tasks.Planned(r.id, r.label, -1 if problem else ids[r.label], r.source, r.size, problem)
        n = index_of[(split, schema.shard_of(r.id, shards[split]))]
        planned.append(p)
        task_of.append(n)
        members[n].append(p)
    files_layout = raw.files
    tasks = [prep_tasks.ShardTask(n, s, schema.shard_name(s, i, shards[s]),
                                  tuple(sorted(members[n], key=lambda p: (p.id, p.source))) if files_layout else ())
             for n, (s, i) in enumerate(keys)]
    return Plan(vocab, new, unknown, shards, tasks, task_of, planned)


class _Progress:
    """Logs how many records the Spark job has checked, the rate and the time left, every ``every_s`` seconds.

    Tasks add their record count to an accumulator when they finish; a retried task may count twice, which only
    makes the progress line optimistic.
    """

    def __init__(self, sc, total: int, every_s: float = 15.0) -> None:
        self.done = sc.accumulator(0)
        self.total, self.every_s = total, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._log, name="prep-progress", daemon=True)

    def _log(self) -> None:
        t0 = time.time()
        while not self._stop.wait(self.every_s):
            done, elapsed = self.done.value, time.time() - t0
            rate = done / elapsed
            eta = f"{(self.total - done) / rate:.0f}s" if rate else "unknown"
            log.info("checked %d/%d records (%.0f%%), %.0f records/s, eta %s", done, self.total,
                     100 * done / max(1, self.total), rate, eta)

    def __enter__(self) -> _Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _counted(result: dict, done) -> dict:
    done.add(result["records"] + len(result["bad"]))
    return result


def execute(spark, raw: layouts.RawPartition, plan: Plan, ctx: prep_tasks.Context) -> list[dict]:
    """Runs the Spark job that checks and writes every record; returns each shard task's result, by index."""
    sc = spark.sparkContext
    tasks = plan.tasks
    with _Progress(sc, len(plan.planned)) as progress:
        done = progress.done
        if raw.files:
            # One Spark task per shard reads its own files: no shuffle, and the bytes are read once. Largest first,
            # so that the last tasks to finish are small ones.
            order = sorted(tasks, key=lambda t: (-t.bytes, t.index))
            results = (sc.parallelize(order, len(order))
                       .map(lambda t: _counted(prep_tasks.write_files_shard(t, ctx), done))
                       .collect())
        else:
            if raw.frame is not None:
                # A table's rows: the executors that run the query check them, finding each row's plan by its
                # (id, label, digest); then the same shuffle to one writer per shard as for Parquet.
                lookup = sc.broadcast({key: (plan.task_of[i], plan.planned[i])
                                       for i, key in enumerate(raw.row_keys)})
                checked = raw.frame.rdd.mapPartitions(
                    lambda rows: prep_tasks.check_table_rows(rows, lookup.value, ctx))
            else:
                # Parquet row groups hold records of every shard: check them where they are read, then shuffle the
                # checked records to one writer per shard.
                groups = [(g.file, g.index, [(plan.task_of[g.first + i], plan.planned[g.first + i])
                                             for i in range(g.rows)]) for g in raw.parquet_groups]
                in_groups = {g.first + i for g in raw.parquet_groups for i in range(g.rows)}
                others = [(plan.task_of[i], p) for i, p in enumerate(plan.planned) if i not in in_groups]
                checked = (sc.parallelize(groups, max(1, len(groups)))
                           .flatMap(lambda g: prep_tasks.check_row_group(*g, ctx)))
                if others:
                    checked = checked.union(sc.parallelize(others, 1).mapPartitions(
                        lambda items: prep_tasks.check_files(list(items), ctx)))
            results = (checked.partitionBy(len(tasks), lambda k: k)
                       .mapPartitionsWithIndex(lambda i, items: [_counted(prep_tasks.write_checked(
                           tasks[i], (v for _, v in items), ctx), done)])
                       .collect())
    return sorted(results, key=lambda r: r["index"])


def _first_bad(bad: list[tuple], n: int = 5) -> str:
    return "; ".join(f"{b[0]} ({b[2]}: {b[3]})" for b in bad[:n])


def write_quarantine(q_staging: str, cfg: Config, partition: str, results: list[dict], total: int) -> list[tuple]:
    """Writes the quarantine's index and summary into its staging folder; returns the bad records, sorted."""
    bad = sorted(((*b, r["quarantine_file"]) for r in results for b in r["bad"]), key=lambda b: (b[0], b[4]))
    lines = [json.dumps({"id": b[0], "label": b[1], "reason": b[2], "detail": b[3], "source": b[4], "bytes": b[5],
                         "file": b[6]}, sort_keys=True) for b in bad]
    storage.write_text_atomic(storage.join(q_staging, QUARANTINE_INDEX), "".join(line + "\n" for line in lines))
    summary = {"partition": partition, "source": input_name(cfg), "records": total, "bad": len(bad),
               "reasons": dict(sorted(Counter(b[2] for b in bad).items())),
               "files": sorted({b[6] for b in bad}), "reason_codes": image_check.REASONS}
    storage.write_text_atomic(storage.join(q_staging, QUARANTINE_SUMMARY), json.dumps(summary, indent=2,
                                                                                      sort_keys=True))
    storage.write_bytes_atomic(storage.join(q_staging, schema.SUCCESS), b"")
    return bad


def check_bad_fraction(cfg: Config, bad: list[tuple], total: int, quarantine: str) -> None:
    """Raises PrepError when no record is valid or too many are bad."""
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(Counter(b[2] for b in bad).items()))
    if len(bad) == total:
        raise PrepError(f"{input_name(cfg)}: no valid records: all {total} records are bad ({reasons}); first: "
                        f"{_first_bad(bad)}. They are in {quarantine}")
    if len(bad) > cfg.max_bad_fraction * total:
        raise PrepError(f"{input_name(cfg)}: {len(bad)} of {total} records are bad ({len(bad) / total:.1%} > "
                        f"max_bad_fraction {cfg.max_bad_fraction:.1%}): {reasons}; first: {_first_bad(bad)}. "
                        f"They are in {quarantine}; fix the producer's data, or raise --max-bad-fraction")


def build_stats(cfg: Config, partition: str, plan: Plan, results: list[dict], bad: list[tuple],
                label_totals: dict[str, int]) -> dict:
    previous_url, previous_name = previous_stats_url(cfg)
    previous, unreadable = None, None
    if previous_url is not None and storage.exists(previous_url):
        # A broken file of another day must not fail this one: stats.json and the log (a warning, from
        # prep_stats.log_summary) say that it is unreadable, and where.
        previous, unreadable = prep_stats.read_previous(storage.read_bytes(previous_url), previous_url)
    valid = sum(r["records"] for r in results)
    kind = modality.of(cfg.task_type)
    return {
        "partition": partition,
        "records": {"total": valid + len(bad), "valid": valid, "bad": len(bad),
                    "bad_fraction": round(len(bad) / (valid + len(bad)), 6)},
        "counts": {s: sum(r["records"] for r in results if r["split"] == s) for s in schema.SPLITS},
        "labels": label_totals,
        "bad_reasons": dict(sorted(Counter(b[2] for b in bad).items())),
        "formats": dict(sorted(sum((Counter(r["formats"]) for r in results), Counter()).items())),
        "task_type": cfg.task_type,
        kind.stats_key: {key: prep_stats.describe_sizes(prep_stats.merge_sizes(r["sizes"][key] for r in results))
                         for key in kind.measures},
        "vocabulary_version": plan.vocabulary.version,
        # From the vocabulary's history rather than from this run, so that a rerun writes the same statistics.
        "new_labels": sorted({name for h in plan.vocabulary.history if h["partition"] == partition
                              for name in h["added"]}),
        "unknown_labels": plan.unknown_labels,
        "label_drift": prep_stats.label_drift(label_totals, previous, previous_name if previous is None
                                              else previous.get("partition", previous_name), cfg.drift_threshold,
                                              unreadable=unreadable),
    }


class _VocabularyRace(Exception):
    """Another run saved a vocabulary version that gives this partition's labels other ids: plan again."""


def list_input(cfg: Config, spark=None) -> layouts.RawPartition:
    """Lists the stage's input, every record with its label and source, as ``run`` does before checking them.

    Args:
        cfg: the stage's settings.
        spark: the session for the table layout (created when None); the files layouts do not use it.

    Raises:
        PrepError: no ``_SUCCESS`` in the raw partition, an unusable manifest or layout, or no records.
    """
    kind = modality.of(cfg.task_type)
    partition = partition_name(cfg)
    if cfg.layout == "table":
        from pyspark.sql import SparkSession

        # No folder to read, and no _SUCCESS: the rows are the catalog's, and the query selects the partition.
        source = table_input(cfg, partition)
        if not (source.partition_column or ":ds" in source.query):
            log.warning("%s selects no partition (no --partition-column, no :ds in --query): every run reads all "
                        "of its rows", source.describe())
        spark = spark or SparkSession.builder.appName(f"prepare_examples {partition}").getOrCreate()
        raw = layouts.list_table(spark, source, id_column(cfg), cfg.label_column, input_column(cfg),
                                 kind.arrow_type, ids_optional=kind is modality.TEXT,
                                 webhdfs=storage.webhdfs_settings())
        if not raw.records:
            raise PrepError(f"{source.describe()} gives no rows for partition {partition}: check the table's "
                            "producer, the query, or --partition-column")
    else:
        if not storage.exists(storage.join(cfg.raw, schema.SUCCESS)):
            raise PrepError(f"raw partition {cfg.raw} has no {schema.SUCCESS} marker: the producer has not finished")
        raw = layouts.list_partition(cfg.layout, cfg.raw, cfg.labels_file, id_column(cfg), cfg.label_column,
                                     input_column(cfg), kind.arrow_type, ids_optional=kind is modality.TEXT)
        if not raw.records:
            raise PrepError(f"raw partition {cfg.raw} holds no records in the {cfg.layout} layout (only hidden "
                            "files, or nothing, besides its markers): check the producer, or --layout")
    return raw


def plan_partition(cfg: Config, spark=None) -> tuple[layouts.RawPartition, Plan]:
    """The input and its plan against the vocabulary as it is now (every record's label id, split and shard, and
    the shard tasks), without checking or writing anything: what a run would do, for tools that process the same
    records another way (``bench/bench_prep.py``).

    Raises:
        PrepError: as ``list_input``, or new labels under the ``fail`` policy.
    """
    raw = list_input(cfg, spark)
    return raw, make_plan(raw, vocabulary.load(vocabulary_url(cfg)), cfg, partition_name(cfg))


def run(cfg: Config, spark=None) -> dict:
    """Runs the stage and returns the manifest it wrote.

    Raises:
        PrepError: no ``_SUCCESS`` in the raw partition, an unusable manifest or layout, new labels under the
            ``fail`` policy, no valid record, or more bad records than ``max_bad_fraction`` (the quarantine is
            committed first).
    """
    from pyspark.sql import SparkSession

    t0 = time.time()
    kind = modality.of(cfg.task_type)
    if cfg.layout not in kind.layouts:
        raise PrepError(f"layout {cfg.layout!r} does not hold {cfg.task_type} data; use one of "
                        f"{', '.join(kind.layouts)}")
    partition = partition_name(cfg)
    raw = list_input(cfg, spark)
    listed_bad = sum(1 for r in raw.records if r.problem)
    log.info("%s (%s, %s layout): %d records listed, %d already bad (%.1fs)", input_name(cfg), cfg.task_type,
             cfg.layout, len(raw.records), listed_bad, time.time() - t0)
    quarantine = quarantine_url(cfg)
    vocab_url = vocabulary_url(cfg)
    spark = spark or SparkSession.builder.appName(f"prepare_examples {partition}").getOrCreate()
    storage.clean_stale(cfg.output)
    storage.clean_stale(quarantine)
    for attempt in range(1, 4):
        current = vocabulary.load(vocab_url)
        plan = make_plan(raw, current, cfg, partition)
        log.info("vocabulary v%d at %s: %d labels%s; shards per split %s", plan.vocabulary.version, vocab_url,
                 len(plan.vocabulary.labels), f", adding {plan.new_labels}" if plan.new_labels else "", plan.shards)
        try:
            return _write(cfg, spark, raw, plan, current, partition, quarantine, t0)
        except _VocabularyRace as race:
            log.warning("attempt %d: %s; planning again with the new version", attempt, race)
    raise PrepError(f"the label vocabulary {vocab_url} kept changing under this run (3 attempts); re-run the task")


def _write(cfg: Config, spark, raw: layouts.RawPartition, plan: Plan, current: vocabulary.Vocabulary,
           partition: str, quarantine: str, t0: float) -> dict:
    staging = storage.new_staging(cfg.output)
    q_staging = storage.new_staging(quarantine)
    try:
        bounds = (modality.TextBounds(cfg.min_text_chars, cfg.max_text_chars, cfg.max_text_bytes)
                  if cfg.task_type == modality.TEXT_CLASSIFICATION
                  else image_check.Bounds(cfg.min_image_side, cfg.max_image_side, cfg.max_image_bytes))
        ctx = prep_tasks.Context(raw=raw.root or cfg.raw, staging=staging, quarantine_staging=q_staging, bounds=bounds,
                                 webhdfs=storage.webhdfs_settings(), column=input_column(cfg),
                                 task_type=cfg.task_type)
        t1 = time.time()
        results = execute(spark, raw, plan, ctx)
        valid = sum(r["records"] for r in results)
        total = len(raw.records)
        wall = max(time.time() - t1, 1e-9)
        busy = sum(r["seconds"] for r in results)
        log.info("checked and wrote %d records in %d shard tasks: %.1fs, %.0f records/s; task time %.1fs in all "
                 "(CPU %.1fs), %.1fs the longest, %.1f tasks at a time on average", total, len(results), wall,
                 total / wall, busy, sum(r["cpu_seconds"] for r in results), max(r["seconds"] for r in results),
                 busy / wall)
        bad = write_quarantine(q_staging, cfg, partition, results, total)
        if valid + len(bad) != total:  # every listed record is either written or quarantined, exactly once
            raise RuntimeError(f"{input_name(cfg)}: {total} records listed but {valid} written and {len(bad)} "
                               "quarantined")
        storage.commit_staging(q_staging, quarantine)
        check_bad_fraction(cfg, bad, total, quarantine)

        vocab = plan.vocabulary
        if vocab.version != current.version and not vocabulary.save(vocab):
            latest = vocabulary.load(vocab.url)
            used = {r.label for r in plan.planned if r.label_id >= 0}
            if any(latest.ids().get(name) != vocab.ids()[name] for name in used):
                raise _VocabularyRace(f"vocabulary v{vocab.version} was saved by another run with other labels")
            vocab = latest
            log.info("vocabulary v%d saved by another run gives this partition's labels the same ids", vocab.version)
        elif vocab.version != current.version:
            log.info("saved vocabulary v%d: %s", vocab.version, ", ".join(vocab.labels))

        counts = {s: sum(r["records"] for r in results if r["split"] == s) for s in schema.SPLITS}
        label_counts = {s: dict.fromkeys(vocab.labels, 0) for s in schema.SPLITS}
        for r in results:
            for name, n in r["labels"].items():
                label_counts[r["split"]][name] += n
        label_totals = {name: sum(label_counts[s][name] for s in schema.SPLITS) for name in vocab.labels}
        kind = modality.of(cfg.task_type)
        manifest = {
            "partition": partition,
            "task_type": cfg.task_type,
            "source": input_name(cfg),
            "layout": cfg.layout,
            "labels": list(vocab.labels),
            "vocabulary": {"url": vocab.url, "version": vocab.version},
            "num_records": valid,
            "bad_records": len(bad),
            "quarantine": quarantine,
            "counts": counts,
            "label_counts": label_counts,
            "files": {s: [{"name": r["name"], "records": r["records"], "bytes": r["bytes"]}
                          for r in results if r["split"] == s] for s in schema.SPLITS},
            "features": {**({"image": schema.IMAGE, "format": schema.FORMAT} if kind is modality.IMAGE
                            else {"text": schema.TEXT}),
                         "label": schema.LABEL, "label_text": schema.LABEL_TEXT, "record_id": schema.RECORD_ID},
            "stats": STATS,
            "config": json.loads(runtime.config_json(cfg)),
        }
        stats = build_stats(cfg, partition, dataclasses.replace(plan, vocabulary=vocab), results, bad, label_totals)
        storage.write_text_atomic(storage.join(staging, STATS), json.dumps(stats, indent=2, sort_keys=True))
        storage.write_text_atomic(storage.join(staging, schema.MANIFEST), json.dumps(manifest, indent=2,
                                                                                     sort_keys=True))
        storage.write_bytes_atomic(storage.join(staging, schema.SUCCESS), b"")
        storage.commit_staging(staging, cfg.output)
    except BaseException:
        storage.remove(staging)
        storage.remove(q_staging)
        raise
    prep_stats.log_summary(stats, manifest, quarantine)
    log.info("wrote %d records to %s in %d files (%.1fs)", valid, cfg.output, len(results), time.time() - t0)
    return manifest


def main(argv: list[str] | None = None) -> None:
    # The fast CRC check first: the slow fallback would turn minutes into hours.
    runtime.run_application(parse_args, run, argv, log, checks=[tfrecord.require_fast_crc32c])


if __name__ == "__main__":
    main()
