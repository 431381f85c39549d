"""spark-submit application: scores the fine-tuned model, compares it with the served model, and blesses it or not.

Writes into ``<run_dir>/``:

* ``metrics.json``: accuracy, loss, top-k accuracy, per-class precision/recall/F1, confusion matrix (rows true
  labels, columns predictions), on the test split;
* ``blessing.json``: the decision and every reason for it: absolute thresholds (``min_accuracy``, optional
  ``min_class_recall``) and the comparison with the baseline, the model currently published (the highest
  numeric version under ``<serving_root>/<model_name>/``) re-scored on the same test split, within
  ``baseline_tolerance``. No baseline on the first run: absolute thresholds only, and the record says so;
* ``confusion_matrix.png`` and ``report.md``: what a reviewer opens to decide.

The ``gate`` task reads ``blessing.json``; an unblessed model is not exported.

Both scorings (the candidate on the split, the baseline on the same records) run on the Spark executors through
the scoring engine (``tasks.serving.scoring``), one Spark task per TFRecord shard (the shards of a small split share
one), the model loaded once per Python worker; the driver, a plain SparkContext (no Spark SQL), only merges the
probabilities and computes the metrics (``tasks.serving.evaluation``).

Usage::

    spark-submit tasks/evaluate.py --examples file:///.../examples/ds=... --run-dir file:///.../runs/ds=... \
        --serving-root file:///.../serving --model-name shapes --min-accuracy 0.9
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path

from tasks.core import plots, run_folder, runtime, schema
from tasks.io import commit, fencing, storage
from tasks.prep import modality
from tasks.serving import models, scoring
from tasks.serving.evaluation import bless, classification_metrics, score_split, write_report

log = logging.getLogger("evaluate")


@dataclasses.dataclass
class Config:
    examples: str
    """Storage URL of the prepared dataset."""
    run_dir: str
    """Storage URL of the run folder holding ``model/`` and ``history.json``."""
    split: str = "test"
    """Split to score."""
    batch_size: int = 64
    """Inference batch size."""
    serving_root: str = ""
    """Storage URL of the serving root, where the baseline is looked for; empty: no baseline."""
    model_name: str = ""
    """Model name under the serving root."""
    min_accuracy: float = 0.9
    """Least accuracy (on the split) to bless."""
    min_class_recall: float = 0.0
    """Least recall of every class to bless; 0 disables the check."""
    baseline_tolerance: float = 0.01
    """How much lower than the baseline's accuracy the candidate's may be and still be blessed."""


def parse_args(argv: list[str]) -> Config:
    p = runtime.build_parser(Config, __doc__.splitlines()[0], choices={"split": schema.SPLITS})
    a = p.parse_args(argv)
    for name in ("min_accuracy", "min_class_recall", "baseline_tolerance"):
        if not 0 <= getattr(a, name) <= 1:
            p.error(f"--{name.replace('_', '-')} must be within [0, 1], got {getattr(a, name)}")
    if bool(a.serving_root) != bool(a.model_name):
        p.error("--serving-root and --model-name go together")
    for problem in [a.model_name and storage.check_name(a.model_name, "--model-name")] + [
            storage.check_segments(getattr(a, k), f"--{k.replace('_', '-')}")
            for k in ("examples", "run_dir", "serving_root")]:
        if problem:
            p.error(problem)
    return Config(**vars(a))


def run(cfg: Config, spark=None) -> dict:
    """Scores, compares, blesses; returns the blessing record.

    The executors read the split's shards and the models where they are (``file://``) or download them
    (``hdfs://``); outputs are written to ``run_dir`` file by file, each atomically.
    """
    runtime.set_legacy_keras()
    spark = scoring.spark_context(spark, f"evaluate {cfg.run_dir}")
    with tempfile.TemporaryDirectory(prefix="evaluate-") as scratch:
        return _run(cfg, Path(scratch), spark)


def _run(cfg: Config, scratch: Path, spark) -> dict:
    t0 = time.time()
    manifest = json.loads(storage.read_text(storage.join(cfg.examples, schema.MANIFEST)))
    history = json.loads(storage.read_text(storage.join(cfg.run_dir, run_folder.HISTORY)))
    finetune_cfg_url = storage.join(cfg.run_dir, run_folder.FINETUNE_CONFIG)
    finetune_cfg = json.loads(storage.read_text(finetune_cfg_url)) if storage.exists(finetune_cfg_url) else {}
    names = [f["name"] for f in manifest["files"][cfg.split] if f["records"]]
    if not names:
        raise RuntimeError(f"split {cfg.split!r} of {cfg.examples} has no records to evaluate on")
    kind = modality.of_manifest(manifest)
    size = tuple(history["image_size"]) if history.get("image_size") else None
    candidate = models.ModelRef(storage.join(cfg.run_dir, run_folder.MODEL), models.KERAS, kind.task_type, size)
    _, _, y, probs = score_split(spark, cfg, manifest, candidate, tuple(manifest["labels"]))
    if len(y) != manifest["counts"][cfg.split]:
        raise RuntimeError(f"read {len(y)} {cfg.split} records but the manifest counts {manifest['counts'][cfg.split]}")
    metrics = classification_metrics(y, probs, manifest["labels"])
    metrics.update(split=cfg.split, partition=manifest["partition"])
    _log_metrics(cfg, metrics, manifest["labels"], t0)
    blessing = bless(metrics, cfg, _baseline(spark, cfg, manifest, kind))
    for reason in blessing["reasons"]:
        log.info("blessing: %s", reason)
    log.info("decision: %s", "BLESSED" if blessing["blessed"] else "NOT BLESSED")

    out = scratch / "out"
    out.mkdir()
    plots.confusion_matrix(metrics["confusion_matrix"], manifest["labels"], out / run_folder.CONFUSION_MATRIX,
                           title=f"{manifest['partition']} {cfg.split}: accuracy {metrics['accuracy']:.3f}")
    write_report(out / run_folder.REPORT, cfg, manifest, history, finetune_cfg, metrics, blessing)
    # Each file below is fenced again by storage; this names the whole evaluation when an older attempt is refused.
    fencing.check("the evaluation (report, metrics, blessing)", cfg.run_dir)
    for name in (run_folder.CONFUSION_MATRIX, run_folder.REPORT):
        commit.write_bytes_atomic(storage.join(cfg.run_dir, name), (out / name).read_bytes())
    commit.write_text_atomic(storage.join(cfg.run_dir, run_folder.METRICS), json.dumps(metrics, indent=2))
    commit.write_text_atomic(storage.join(cfg.run_dir, run_folder.BLESSING), json.dumps(blessing, indent=2))
    log.info("report: %s", storage.join(cfg.run_dir, run_folder.REPORT))
    return blessing


def _log_metrics(cfg: Config, metrics: dict, labels: list[str], t0: float) -> None:
    log.info("%s accuracy %.4f loss %.4f on %d examples (%.1fs)", cfg.split, metrics["accuracy"], metrics["loss"],
             metrics["num_examples"], time.time() - t0)
    width = max(len(n) for n in labels)
    log.info("%s  precision  recall      F1  support", "class".ljust(width))
    for name, m in metrics["per_class"].items():
        log.info("%s  %9.3f  %6.3f  %6.3f  %7d", name.ljust(width), m["precision"], m["recall"], m["f1"],
                 m["support"])
    log.info("confusion matrix (rows true, columns predicted, order %s):\n%s", labels,
             "\n".join(" ".join(f"{v:4d}" for v in row) for row in metrics["confusion_matrix"]))


def _baseline(spark, cfg: Config, manifest: dict, kind: modality.Modality) -> dict | None:
    """The published model (the highest version) re-scored on the same records; None when none is published."""
    versions = models.published_versions(cfg.serving_root, cfg.model_name) if cfg.serving_root else []
    if not versions:
        log.info("no baseline: no published version of %r under %s", cfg.model_name, cfg.serving_root or "(none)")
        return None
    served = models.resolve_served(cfg.serving_root, cfg.model_name, versions[-1])
    if served.task_type != kind.task_type:
        raise RuntimeError(f"the published model {served.url} is a {served.task_type} model, not "
                           f"{kind.task_type}: publish this one under another model_name")
    ref = models.ModelRef(served.url, models.SERVED, served.task_type)
    _, base_texts, _, base_probs = score_split(spark, cfg, manifest, ref, served.labels)
    # By class name: the baseline's vocabulary may be older than this dataset's.
    predicted = [served.labels[i] for i in base_probs.argmax(axis=1)]
    correct = sum(p == t for p, t in zip(predicted, base_texts))
    scored = {"accuracy": correct / len(base_texts) if base_texts else 0.0, "num_examples": len(base_texts)}
    log.info("baseline: published version %d re-scored on the same %d examples: accuracy %.4f", versions[-1],
             scored["num_examples"], scored["accuracy"])
    return {"version": versions[-1], "path": storage.local_path(served.url).as_posix()
            if storage.scheme(served.url) == "file" else served.url, **scored}


def main(argv: list[str] | None = None) -> None:
    runtime.run_application(parse_args, run, argv, log)


if __name__ == "__main__":
    main()
