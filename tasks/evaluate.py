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
the scoring engine (``tasks.scoring``), one Spark task per TFRecord shard, the model loaded once per Python
worker; the driver only merges the probabilities and computes the metrics. ``predict_split`` is the same
computation in one process, the reference the engine is tested against.

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

import numpy as np

from tasks import fencing, modality, plots, run_folder, runtime, schema, scoring, storage
from tasks.scoring import published_versions  # noqa: F401  (where it was before the scoring engine)

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


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, top-k accuracy, mean cross-entropy, per-class precision/recall/F1 and the confusion matrix."""
    n = len(labels)
    y_pred = probs.argmax(axis=1)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    eps = 1e-7
    loss = float(-np.log(np.clip(probs[np.arange(len(y_true)), y_true], eps, 1.0)).mean()) if len(y_true) else 0.0
    per_class = {}
    for i, name in enumerate(labels):
        tp, predicted, actual = int(cm[i, i]), int(cm[:, i].sum()), int(cm[i, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "support": actual,
        }
    top_k = {}
    ranked = np.argsort(-probs, axis=1)
    for k in (2, 3):
        if k < n and len(y_true):
            top_k[f"top_{k}_accuracy"] = float((ranked[:, :k] == y_true[:, None]).any(axis=1).mean())
    return {
        "num_examples": int(len(y_true)),
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "loss": loss,
        **top_k,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "labels": labels,
    }


def predict_split(model, files: list[str], image_size, batch_size: int,
                  task_type: str = modality.IMAGE_CLASSIFICATION) -> tuple[np.ndarray, np.ndarray]:
    """Label ids and probabilities of a split scored in this process (the reference of ``score_split``)."""
    from tasks import model as M

    ds = M.make_dataset(files, image_size, batch_size, training=False, task_type=task_type)
    ys, ps = [], []
    for x, y in ds:
        ps.append(model(x, training=False).numpy())
        ys.append(y.numpy())
    return np.concatenate(ys), np.concatenate(ps)


def score_split(spark, cfg: Config, manifest: dict, model: scoring.ModelRef, labels: tuple[str, ...]):
    """Scores the split on the executors; returns the record ids, label texts, label ids and probabilities, in
    record id order."""
    job = scoring.Job(source=cfg.examples, model=model, labels=labels, batch_size=cfg.batch_size, collect=True,
                      webhdfs=storage.webhdfs_settings())
    results = scoring.execute(spark, scoring.split_units(manifest, cfg.split), job)
    bad = [b for r in results for b in r["bad"]]
    if bad:  # prepared records were checked by prep: a refusal here is a broken model or dataset, not data
        raise RuntimeError(f"{len(bad)} {cfg.split} records of {cfg.examples} could not be scored with {model.url}; "
                           f"first: {bad[0][0]} ({bad[0][2]}: {bad[0][3]})")
    log.info("scored %s with %s on the executors: %s", cfg.split, model.url, scoring.load_report(results))
    return scoring.collected(results)


def bless(metrics: dict, cfg: Config, baseline: dict | None) -> dict:
    """The blessing decision and its reasons."""
    reasons, blessed = [], True
    acc = metrics["accuracy"]
    if acc >= cfg.min_accuracy:
        reasons.append(f"accuracy {acc:.4f} >= min_accuracy {cfg.min_accuracy:.4f}")
    else:
        blessed = False
        reasons.append(f"accuracy {acc:.4f} < min_accuracy {cfg.min_accuracy:.4f}")
    if cfg.min_class_recall > 0:
        low = {n: m["recall"] for n, m in metrics["per_class"].items() if m["recall"] < cfg.min_class_recall}
        if low:
            blessed = False
            reasons.append("recall below min_class_recall %.4f for %s" % (
                cfg.min_class_recall, ", ".join(f"{n} ({r:.4f})" for n, r in sorted(low.items()))))
        else:
            reasons.append(f"every class has recall >= min_class_recall {cfg.min_class_recall:.4f}")
    if baseline is None:
        reasons.append("no baseline: nothing is published for this model yet, so only absolute thresholds apply")
    elif acc >= baseline["accuracy"] - cfg.baseline_tolerance:
        reasons.append(f"accuracy {acc:.4f} >= baseline version {baseline['version']} accuracy "
                       f"{baseline['accuracy']:.4f} - tolerance {cfg.baseline_tolerance:.4f}")
    else:
        blessed = False
        reasons.append(f"accuracy {acc:.4f} < baseline version {baseline['version']} accuracy "
                       f"{baseline['accuracy']:.4f} - tolerance {cfg.baseline_tolerance:.4f}")
    return {
        "blessed": blessed,
        "reasons": reasons,
        "candidate": {"accuracy": acc, "loss": metrics["loss"], "num_examples": metrics["num_examples"]},
        "baseline": baseline,
        "thresholds": {"min_accuracy": cfg.min_accuracy, "min_class_recall": cfg.min_class_recall,
                       "baseline_tolerance": cfg.baseline_tolerance},
    }


def write_report(path: Path, cfg: Config, manifest: dict, history: dict, finetune_cfg: dict, metrics: dict,
                 blessing: dict) -> None:
    """A Markdown report with everything a reviewer needs to decide."""
    lines = [f"# Evaluation of partition {manifest['partition']}", ""]
    lines += [f"**Decision: {'BLESSED' if blessing['blessed'] else 'NOT BLESSED'}**", ""]
    lines += [f"- {r}" for r in blessing["reasons"]] + [""]
    lines += ["## Run", "", "| setting | value |", "| --- | --- |"]
    for key in ("hub_module", "num_workers", "epochs", "batch_size", "learning_rate", "fine_tune"):
        if key in finetune_cfg:
            lines.append(f"| {key} | `{finetune_cfg[key]}` |")
    size = history.get("image_size")
    lines += [f"| task type | {history.get('task_type', modality.IMAGE_CLASSIFICATION)} |",
              f"| input | {f'{size[0]}x{size[1]} images' if size else 'text'} |",
              f"| training time | {history['train_seconds']:.1f} s |", ""]
    lines += ["## Data", "", f"Source `{manifest['source']}`, {manifest['num_records']} records.", "",
              "| label | " + " | ".join(schema.SPLITS) + " |", "| --- |" + " --- |" * len(schema.SPLITS)]
    for label in manifest["labels"]:
        lines.append(f"| {label} | " + " | ".join(str(manifest["label_counts"][s][label]) for s in schema.SPLITS)
                     + " |")
    lines.append("| **all** | " + " | ".join(str(manifest["counts"][s]) for s in schema.SPLITS) + " |")
    lines += ["", f"## Metrics on the {cfg.split} split ({metrics['num_examples']} examples)", "",
              f"- accuracy **{metrics['accuracy']:.4f}**, loss {metrics['loss']:.4f}"]
    lines += [f"- {k.replace('_', ' ')} {v:.4f}" for k, v in metrics.items() if k.startswith("top_")]
    base = blessing["baseline"]
    lines.append(f"- baseline (published version {base['version']}, re-scored on the same examples): accuracy "
                 f"{base['accuracy']:.4f}" if base else "- baseline: none; this is the first model published "
                 "under this name, so only absolute thresholds apply")
    lines += ["", "| class | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |"]
    for name, m in metrics["per_class"].items():
        lines.append(f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |")
    lines += ["", "![confusion matrix](confusion_matrix.png)", "", "![training curves](training_curves.png)", ""]
    path.write_text("\n".join(lines))


def run(cfg: Config, spark=None) -> dict:
    """Scores, compares, blesses; returns the blessing record.

    The executors read the split's shards and the models where they are (``file://``) or download them
    (``hdfs://``); outputs are written to ``run_dir`` file by file, each atomically.
    """
    runtime.set_legacy_keras()
    if spark is None:
        from pyspark.sql import SparkSession

        spark = SparkSession.builder.appName(f"evaluate {cfg.run_dir}").getOrCreate()
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
    candidate = scoring.ModelRef(storage.join(cfg.run_dir, run_folder.MODEL), scoring.KERAS, kind.task_type, size)
    _, _, y, probs = score_split(spark, cfg, manifest, candidate, tuple(manifest["labels"]))
    if len(y) != manifest["counts"][cfg.split]:
        raise RuntimeError(f"read {len(y)} {cfg.split} records but the manifest counts {manifest['counts'][cfg.split]}")
    metrics = classification_metrics(y, probs, manifest["labels"])
    metrics.update(split=cfg.split, partition=manifest["partition"])
    log.info("%s accuracy %.4f loss %.4f on %d examples (%.1fs)", cfg.split, metrics["accuracy"], metrics["loss"],
             metrics["num_examples"], time.time() - t0)
    width = max(len(n) for n in manifest["labels"])
    log.info("%s  precision  recall      F1  support", "class".ljust(width))
    for name, m in metrics["per_class"].items():
        log.info("%s  %9.3f  %6.3f  %6.3f  %7d", name.ljust(width), m["precision"], m["recall"], m["f1"],
                 m["support"])
    log.info("confusion matrix (rows true, columns predicted, order %s):\n%s", manifest["labels"],
             "\n".join(" ".join(f"{v:4d}" for v in row) for row in metrics["confusion_matrix"]))

    baseline = None
    versions = published_versions(cfg.serving_root, cfg.model_name) if cfg.serving_root else []
    if versions:
        served = scoring.resolve_served(cfg.serving_root, cfg.model_name, versions[-1])
        if served.task_type != kind.task_type:
            raise RuntimeError(f"the published model {served.url} is a {served.task_type} model, not "
                               f"{kind.task_type}: publish this one under another model_name")
        ref = scoring.ModelRef(served.url, scoring.SERVED, served.task_type)
        _, base_texts, _, base_probs = score_split(spark, cfg, manifest, ref, served.labels)
        # By class name: the baseline's vocabulary may be older than this dataset's.
        predicted = [served.labels[i] for i in base_probs.argmax(axis=1)]
        correct = sum(p == t for p, t in zip(predicted, base_texts))
        scored = {"accuracy": correct / len(base_texts) if base_texts else 0.0, "num_examples": len(base_texts)}
        baseline = {"version": versions[-1], "path": storage.local_path(served.url).as_posix()
                    if storage.scheme(served.url) == "file" else served.url, **scored}
        log.info("baseline: published version %d re-scored on the same %d examples: accuracy %.4f", versions[-1],
                 scored["num_examples"], scored["accuracy"])
    else:
        log.info("no baseline: no published version of %r under %s", cfg.model_name, cfg.serving_root or "(none)")
    blessing = bless(metrics, cfg, baseline)
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
        storage.write_bytes_atomic(storage.join(cfg.run_dir, name), (out / name).read_bytes())
    storage.write_text_atomic(storage.join(cfg.run_dir, run_folder.METRICS), json.dumps(metrics, indent=2))
    storage.write_text_atomic(storage.join(cfg.run_dir, run_folder.BLESSING), json.dumps(blessing, indent=2))
    log.info("report: %s", storage.join(cfg.run_dir, run_folder.REPORT))
    return blessing


def main(argv: list[str] | None = None) -> None:
    runtime.run_application(parse_args, run, argv, log)


if __name__ == "__main__":
    main()
