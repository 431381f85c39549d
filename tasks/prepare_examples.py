"""Spark application: one raw partition to training-ready, sharded TFRecords of ``tf.train.Example``.

Input ``<raw>/`` in one of these layouts (``--layout``, see ``tasks.prep.layouts``): files and a labels manifest
(``labels.csv`` or a Parquet file: path, label), the default; one folder per class; Parquet files with the input
(image bytes or text) in a column; for text, CSV files (text, label, optional id). ``_SUCCESS`` must be there: the
producer has finished. Or ``--layout table``: the rows of a Spark SQL table or query (``--table``/``--query``,
filtered to the partition by ``:ds`` in the query or ``--partition-column``), with no folder and no marker.

``--partition YYYY-MM-DD`` (required) is the partition's date: the DAG passes its run's partition key, and every
partition-keyed name (the quarantine folder, the day before's statistics, a table's filter) is built from it,
never read back from folder names.

``--task-type`` (``tasks.prep.modality``) says what a record is. Every record is checked: an image decodes and its size
is within bounds (``tasks.prep.image_check``), a text is UTF-8, not blank and not too long; its label is known.
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
are bad or none is valid. Label ids come from a vocabulary kept beside the dataset (``tasks.prep.vocabulary``): ids are
given once; a label new to the vocabulary follows ``--new-label-policy``.

A record's split and shard are hashes of its id; its bytes depend on the record and its label id alone; so a
rerun on the same input writes byte-identical files, and a retried or speculative Spark attempt writes the same
file again (``tasks.prep.prep_tasks``).

Storage: ``file://`` and ``hdfs://``. The driver lists the partition and the Spark tasks read the bytes and write
their shards through ``tasks.io.storage``: directly for ``file://``, through WebHDFS for ``hdfs://`` (a task writes
its shard to a local file, uploads it into the HDFS staging folder and renames it into place). Spark's own
``hdfs://`` reader is not used: it needs Hadoop RPC, and the ``webhdfs://`` file system of the Hadoop client that
Spark 4.2 bundles fails (its shaded Jersey runtime is missing), so WebHDFS through our client is the one path that
works, and is tested, for both reads and writes.

The work is in ``tasks.prep``: ``inputs`` (what it reads), ``plan`` (label ids, splits, shards), ``shard_job``
(the Spark job), ``prep_tasks`` (a shard's checks and encoding) and ``outputs`` (quarantine, statistics, manifest).

Usage (spark-submit with the ``tasks`` package on ``--py-files``)::

    spark-submit tasks/prepare_examples.py --partition 2026-11-20 --raw file:///.../raw/ds=2026-11-20 \\
        --output file:///.../examples/ds=2026-11-20 --min-shards 4
"""

from __future__ import annotations

import dataclasses
import logging
import time

from tasks.core import run_folder, runtime, schema
from tasks.core.partition import date_problem
from tasks.io import commit, storage
from tasks.prep import image_check, layouts, modality, outputs, prep_stats, prep_tasks, tfrecord, vocabulary
from tasks.prep.inputs import input_column, input_name, list_input, partition_name, quarantine_url, vocabulary_url
from tasks.prep.layouts import PrepError
from tasks.prep.plan import Plan, make_plan
from tasks.prep.shard_job import execute

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
    partition: str
    """The partition's date, ``YYYY-MM-DD`` (the DAG passes its run's partition key): the table layout's filter
    value and ``:ds``, the day before's stats for label drift, the quarantine folder ``quarantine/ds=<date>`` and the
    partition recorded in the manifest."""
    task_type: str = modality.IMAGE_CLASSIFICATION
    """``image_classification`` or ``text_classification`` (``tasks.prep.modality``); written into the manifest, where
    the later stages read it."""
    layout: str = "manifest"
    """Input layout: ``manifest``, ``folders``, ``parquet``, or for text ``csv`` (see
    ``tasks.prep.layouts.LAYOUTS``)."""
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
    ``tasks.prep.vocabulary.POLICIES``)."""
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
    if problem := date_problem(a.partition):
        p.error(problem)
    for k in ("raw", "output", "vocabulary", "quarantine", "previous_stats", "image_root"):
        problem = storage.check_segments(getattr(a, k), f"--{k.replace('_', '-')}")
        if problem:
            p.error(problem)
    declared = tuple(x.strip() for x in a.labels.split(",") if x.strip())
    options = {k: v for k, v in vars(a).items() if k not in {*MB_OPTIONS.values(), "split_fractions", "labels"}}
    return Config(**options, split_fractions=fractions, labels=declared,
                  **{field: int(getattr(a, option) * 2**20) for field, option in MB_OPTIONS.items()})


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
    commit.clean_stale(cfg.output)
    commit.clean_stale(quarantine)
    for attempt in range(1, 4):
        current = vocabulary.load(vocab_url)
        plan = make_plan(raw, current, cfg, partition)
        log.info("vocabulary v%d at %s: %d labels%s; shards per split %s", plan.vocabulary.version, vocab_url,
                 len(plan.vocabulary.labels), f", adding {plan.new_labels}" if plan.new_labels else "", plan.shards)
        try:
            return _write(cfg, spark, raw, plan, current, partition, quarantine, t0)
        except outputs.VocabularyRace as race:
            log.warning("attempt %d: %s; planning again with the new version", attempt, race)
    raise PrepError(f"the label vocabulary {vocab_url} kept changing under this run (3 attempts); re-run the task")


def _write(cfg: Config, spark, raw: layouts.RawPartition, plan: Plan, current: vocabulary.Vocabulary,
           partition: str, quarantine: str, t0: float) -> dict:
    """Checks and writes every record into staging folders, then commits the quarantine, the vocabulary and the
    dataset, in that order; the staging folders are removed on any failure."""
    staging = commit.new_staging(cfg.output)
    q_staging = commit.new_staging(quarantine)
    try:
        results = execute(spark, raw, plan, _context(cfg, raw, staging, q_staging))
        valid, total = sum(r["records"] for r in results), len(raw.records)
        bad = outputs.write_quarantine(q_staging, cfg, partition, results, total)
        if valid + len(bad) != total:  # every listed record is either written or quarantined, exactly once
            raise RuntimeError(f"{input_name(cfg)}: {total} records listed but {valid} written and {len(bad)} "
                               "quarantined")
        commit.publish_dir(q_staging, quarantine)
        outputs.check_bad_fraction(cfg, bad, total, quarantine)
        vocab = outputs.save_vocabulary(plan, current)
        manifest = outputs.build_manifest(cfg, partition, vocab, results, bad, quarantine)
        stats = outputs.build_stats(cfg, partition, dataclasses.replace(plan, vocabulary=vocab), results, bad,
                                    outputs.label_totals(manifest))
        # The statistics, then the manifest, then _SUCCESS last.
        commit.publish_with_success(staging, cfg.output, {STATS: stats, schema.MANIFEST: manifest})
    except BaseException:
        storage.remove(staging)
        storage.remove(q_staging)
        raise
    prep_stats.log_summary(stats, manifest, quarantine)
    log.info("wrote %d records to %s in %d files (%.1fs)", valid, cfg.output, len(results), time.time() - t0)
    return manifest


def _context(cfg: Config, raw: layouts.RawPartition, staging: str, q_staging: str) -> prep_tasks.Context:
    """What every shard task needs: where to read and write, the bounds of a valid record."""
    bounds = (modality.TextBounds(cfg.min_text_chars, cfg.max_text_chars, cfg.max_text_bytes)
              if cfg.task_type == modality.TEXT_CLASSIFICATION
              else image_check.Bounds(cfg.min_image_side, cfg.max_image_side, cfg.max_image_bytes))
    return prep_tasks.Context(raw=raw.root or cfg.raw, staging=staging, quarantine_staging=q_staging, bounds=bounds,
                              webhdfs=storage.webhdfs_settings(), column=input_column(cfg), task_type=cfg.task_type)


def main(argv: list[str] | None = None) -> None:
    # The fast CRC check first: the slow fallback would turn minutes into hours.
    runtime.run_application(parse_args, run, argv, log, checks=[tfrecord.require_fast_crc32c])


if __name__ == "__main__":
    main()
