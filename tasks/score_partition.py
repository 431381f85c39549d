"""Spark application: scores one partition with a published model and writes its predictions as Parquet.

Input: a raw partition (``--raw``, in any layout data prep reads, with the same readers and checks; labels are
not needed, and kept in the output when given) or a split of a prepared dataset (``--examples`` and ``--split``).
The model: the highest published version of ``--model-name`` under ``--serving-root``, or ``--version``. The task
type is the model's (its ``provenance.json``). Scored on the executors by ``tasks.serving.scoring``, the model loaded
once per Python worker.

Output ``<output>/`` (``predictions/<model>/ds=…/``), committed whole by renaming a staging folder into place,
``_SUCCESS`` last, so a rerun replaces this partition's predictions and nothing else::

    part-NNNNN.parquet   record_id, label (as given, or null), predicted_label, top_probability, probabilities
                         (list<float>, in the order of _manifest.json's labels), model_name, model_version, partition
    _manifest.json       model, version, labels, source, counts, the resolved config
    _stats.json          counts, predicted class distribution, mean top probability, the distance from the
                         training label distribution and whether it is a warning, model load time per worker
    _SUCCESS

Names starting with ``_`` are skipped by Parquet readers (pandas, pyarrow, Spark), so the folder reads as one
table. Bad records (failing prep's checks, or refused by the model's decoder) go to ``<quarantine>/`` (default
``<storage root>/quarantine/predictions/<model>/ds=…``), committed the same way, in prep's quarantine format. The
job fails, after committing the quarantine, when more than ``max_bad_fraction`` of the records are bad.

Usage::

    spark-submit tasks/score_partition.py --raw file:///.../raw/ds=2026-11-20 \\
        --serving-root file:///.../serving --model-name shapes \\
        --output file:///.../predictions/shapes/ds=2026-11-20
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter

from tasks.core import run_folder, runtime, schema
from tasks.core.partition import date_problem
from tasks.io import commit, storage
from tasks.prep import image_check, inputs, layouts, modality, outputs, prep_stats
from tasks.serving import models, scoring

log = logging.getLogger("score_partition")

STATS = run_folder.PREDICTIONS_STATS
MANIFEST = run_folder.PREDICTIONS_MANIFEST


@dataclasses.dataclass
class Config:
    output: str
    """Storage URL of the predictions folder of this partition (``predictions/<model>/ds=…``)."""
    serving_root: str
    """Storage URL of the serving root."""
    model_name: str
    """Model folder under the serving root."""
    partition: str
    """The partition's date, ``YYYY-MM-DD``, written in every row (the DAG passes its run's partition key; never
    read back from folder names)."""
    raw: str = ""
    """Storage URL of a raw partition to score (or ``examples``)."""
    examples: str = ""
    """Storage URL of a prepared dataset whose ``split`` to score (or ``raw``)."""
    split: str = "test"
    """Split of ``examples`` to score."""
    version: int = 0
    """Published version to score with; 0: the highest published."""
    layout: str = "manifest"
    """Layout of ``raw`` (``tasks.prep.layouts.LAYOUTS``)."""
    labels_file: str = "labels.csv"
    """The labels manifest of the manifest layout."""
    id_column: str = ""
    """Column of the record id in table layouts; empty: as data prep chooses it."""
    label_column: str = "label"
    """Column of the label in table layouts (kept in the output when present)."""
    image_column: str = "image"
    """Column of the encoded image bytes (parquet layout)."""
    text_column: str = "text"
    """Column of the text (text tables)."""
    quarantine: str = ""
    """Storage URL for the bad records; empty:
    ``<output's great-grandparent>/quarantine/predictions/<model>/ds=…``."""
    max_bad_fraction: float = 0.05
    """Fail when a larger fraction of the records is bad (they are in quarantine first)."""
    drift_threshold: float = 0.25
    """Warn when the total variation distance between the predicted and the training label distribution is larger."""
    batch_size: int = 64
    """Records per model call."""
    unit_records: int = 512
    """Records per Spark task for file layouts (tables go by row group)."""
    threads: int = 0
    """TensorFlow threads per Python worker; 0: ``spark.task.cpus``."""
    task_type: str = ""
    """Not an option: the task type of the model, set by ``run`` from its ``provenance.json`` (prep's column rules
    read it)."""


def parse_args(argv: list[str]) -> Config:
    p = runtime.build_parser(Config, __doc__.splitlines()[0], skip=("task_type",), group=("raw", "examples"),
                             choices={"split": schema.SPLITS, "layout": sorted(layouts.LAYOUTS)})
    a = p.parse_args(argv)
    for name in ("max_bad_fraction", "drift_threshold"):
        if not 0 <= getattr(a, name) <= 1:
            p.error(f"--{name.replace('_', '-')} must be within [0, 1], got {getattr(a, name)}")
    for name in ("batch_size", "unit_records"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}")
    if problem := date_problem(a.partition):
        p.error(problem)
    if a.version < 0 or a.threads < 0:
        p.error("--version and --threads must not be negative (0: the highest version, the task's CPUs)")
    for problem in [storage.check_name(a.model_name, "--model-name")] + [
            storage.check_segments(getattr(a, k), f"--{k.replace('_', '-')}")
            for k in ("output", "serving_root", "raw", "examples", "quarantine") if getattr(a, k)]:
        if problem:
            p.error(problem)
    return Config(**vars(a))


def _name(url: str) -> str:
    return url.rstrip("/").rpartition("/")[2]


def quarantine_url(cfg: Config) -> str:
    if cfg.quarantine:
        return cfg.quarantine
    # <root>/predictions/<model>/ds=… -> <root>/quarantine/predictions/<model>/ds=…
    model_dir = cfg.output.rstrip("/").rpartition("/")[0]
    root = model_dir.rpartition("/")[0].rpartition("/")[0]
    if not root or root.endswith(":/") or root.endswith(":"):
        raise models.ScoringError(f"--output {cfg.output} is not <root>/predictions/<model>/ds=…: set --quarantine")
    return storage.join(root, "quarantine", "predictions", _name(model_dir), _name(cfg.output))


def training_distribution(served: models.Served) -> tuple[dict[str, int] | None, str]:
    """The training label counts recorded at export, or the prepared dataset's manifest the model came from."""
    counts = served.provenance.get("train_label_counts")
    if counts:
        return counts, f"{served.url}/{models.PROVENANCE}"
    examples = served.provenance.get("examples")
    if examples and storage.exists(storage.join(examples, schema.MANIFEST)):
        manifest = json.loads(storage.read_text(storage.join(examples, schema.MANIFEST)))
        return manifest["label_counts"]["train"], storage.join(examples, schema.MANIFEST)
    return None, "the model records no training label distribution"


def build_stats(cfg: Config, served: models.Served, partition: str, results: list[dict], total: int,
                wall: float) -> dict:
    scored = sum(s["records"] for s in results)
    bad = [b for s in results for b in s["bad"]]
    predicted = dict.fromkeys(served.labels, 0)
    for s in results:
        for name, n in s["predicted"].items():
            predicted[name] += n
    train, train_source = training_distribution(served)
    drift: dict = {"training_source": train_source, "threshold": cfg.drift_threshold}
    if train and scored:
        tv = prep_stats.total_variation(predicted, train)
        drift.update(training_labels=train, total_variation=round(tv, 4), warning=tv > cfg.drift_threshold)
    else:
        drift.update(warning=False, note="nothing to compare: " + (train_source if not train else "no record scored"))
    return {
        "partition": partition,
        "model_name": cfg.model_name, "model_version": served.version,
        "records": {"total": total, "scored": scored, "bad": len(bad),
                    "bad_fraction": round(len(bad) / total, 6) if total else 0.0},
        "bad_reasons": dict(sorted(Counter(b[2] for b in bad).items())),
        "predicted": predicted,
        "predicted_fraction": {k: round(v / scored, 6) if scored else 0.0 for k, v in predicted.items()},
        "mean_top_probability": round(sum(s["top_sum"] for s in results) / scored, 6) if scored else None,
        "drift_from_training": drift,
        "model_load": scoring.load_report(results),
        "seconds": round(wall, 3),
        "records_per_second": round(total / wall, 2) if wall else None,
    }


def plan(cfg: Config, served: models.Served, parallelism: int) -> tuple[str, list[scoring.Unit], int]:
    """The source folder, its units and its record count."""
    kind = modality.of(served.task_type)
    if cfg.raw:
        if cfg.layout not in kind.layouts:
            raise models.ScoringError(f"layout {cfg.layout!r} does not hold {served.task_type} data (the task type "
                                       f"of {served.url}); use one of {', '.join(kind.layouts)}")
        if not storage.exists(storage.join(cfg.raw, schema.SUCCESS)):
            raise models.ScoringError(f"raw partition {cfg.raw} has no {schema.SUCCESS} marker: the producer has "
                                       "not finished")
        raw = layouts.list_partition(cfg.layout, cfg.raw, cfg.labels_file, inputs.id_column(cfg),
                                     cfg.label_column, inputs.input_column(cfg), kind.arrow_type,
                                     ids_optional=kind is modality.TEXT)
        if not raw.records:
            raise models.ScoringError(f"raw partition {cfg.raw} holds no records in the {cfg.layout} layout: check "
                                       "the producer, or --layout")
        return cfg.raw, scoring.raw_units(raw, parallelism, cfg.unit_records), len(raw.records)
    manifest = json.loads(storage.read_text(storage.join(cfg.examples, schema.MANIFEST)))
    if modality.of_manifest(manifest).task_type != served.task_type:
        raise models.ScoringError(f"{cfg.examples} holds {modality.of_manifest(manifest).task_type} records but "
                                   f"{served.url} is a {served.task_type} model")
    return cfg.examples, scoring.split_units(manifest, cfg.split), manifest["counts"][cfg.split]


def run(cfg: Config, spark=None) -> dict:
    """Scores the partition and commits its predictions; returns the statistics.

    Raises:
        ScoringError: no published model, a pinned version that is not published, an input that is not ready or
            not of the model's task type, or more bad records than ``max_bad_fraction``.
    """
    t0 = time.time()
    served = models.resolve_served(cfg.serving_root, cfg.model_name, cfg.version)
    cfg = dataclasses.replace(cfg, task_type=served.task_type)
    partition = cfg.partition
    sc = scoring.spark_context(spark, f"score_partition {cfg.model_name} {partition}")
    source, units, total = plan(cfg, served, sc.defaultParallelism)
    log.info("scoring %s (%d records, %d units in %d Spark tasks) with %s version %d (%s, %d labels)", source, total,
             len(units), len(scoring.task_groups(units)), cfg.model_name, served.version, served.task_type,
             len(served.labels))
    kind = modality.of(served.task_type)
    quarantine = quarantine_url(cfg)
    commit.clean_stale(cfg.output)
    commit.clean_stale(quarantine)
    staging, q_staging = commit.new_staging(cfg.output), commit.new_staging(quarantine)
    try:
        bounds = (modality.TextBounds() if kind is modality.TEXT else image_check.Bounds())
        job = scoring.Job(source=source, model=models.ModelRef(served.url, models.SERVED, served.task_type,
                                                                threads=cfg.threads),
                          labels=served.labels, batch_size=cfg.batch_size, output_staging=staging,
                          quarantine_staging=q_staging, bounds=bounds, webhdfs=storage.webhdfs_settings(),
                          column=inputs.input_column(cfg), model_name=cfg.model_name,
                          model_version=served.version, partition=partition)
        t1 = time.time()
        results = scoring.execute(sc, units, job)
        wall = max(time.time() - t1, 1e-9)
        scored = sum(s["records"] for s in results)
        bad = outputs.write_quarantine(q_staging, cfg, partition, results, total)
        if scored + len(bad) != total:  # every record is scored or quarantined, exactly once
            raise RuntimeError(f"{source}: {total} records but {scored} scored and {len(bad)} quarantined")
        commit.publish_dir(q_staging, quarantine)
        outputs.check_bad_fraction(cfg, bad, total, quarantine)
        stats = build_stats(cfg, served, partition, results, total, wall)
        manifest = {"partition": partition, "model_name": cfg.model_name, "model_version": served.version,
                    "model_url": served.url, "task_type": served.task_type, "labels": list(served.labels),
                    "source": source, "split": None if cfg.raw else cfg.split,
                    "columns": list(scoring.PREDICTION_COLUMNS), "files": [scoring.part_name(u.index) for u in units],
                    "quarantine": quarantine, "config": json.loads(runtime.config_json(cfg))}
        commit.publish_with_success(staging, cfg.output, {STATS: stats, MANIFEST: manifest})
    except BaseException:
        storage.remove(staging)
        storage.remove(q_staging)
        raise
    log.info("scored %d of %d records in %.1fs (%.0f records/s on the executors); %d bad, in %s", scored, total,
             time.time() - t0, total / wall, len(bad), quarantine)
    log.info("model loads: %s", stats["model_load"])
    log.info("predicted distribution %s, mean top probability %s", stats["predicted"], stats["mean_top_probability"])
    drift = stats["drift_from_training"]
    if drift["warning"]:
        log.warning("the predicted class distribution is far from the training label distribution: total variation "
                    "%.3f > %.3f (predicted %s, training %s)", drift["total_variation"], cfg.drift_threshold,
                    stats["predicted"], drift["training_labels"])
    log.info("predictions: %s", cfg.output)
    return stats


def main(argv: list[str] | None = None) -> None:
    runtime.run_application(parse_args, run, argv, log)


if __name__ == "__main__":
    main()
