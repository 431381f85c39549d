"""Evaluating a candidate model: its scores on a split, computed on the Spark executors by the scoring engine
(``score_split``; ``predict_split`` is the same in one process, the reference the engine is tested against), the
metrics (``classification_metrics``), the blessing decision against absolute thresholds and the baseline
(``bless``), and the report a reviewer reads (``write_report``).

``cfg`` below is the evaluate application's config (``tasks.evaluate.Config``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tasks.core import run_folder, schema
from tasks.io import storage
from tasks.prep import modality
from tasks.serving import models, scoring

log = logging.getLogger("evaluate")


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
    from tasks.training import model as M

    ds = M.make_dataset(files, image_size, batch_size, training=False, task_type=task_type)
    ys, ps = [], []
    for x, y in ds:
        ps.append(model(x, training=False).numpy())
        ys.append(y.numpy())
    return np.concatenate(ys), np.concatenate(ps)


def score_split(spark, cfg, manifest: dict, model: models.ModelRef, labels: tuple[str, ...]):
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


def bless(metrics: dict, cfg, baseline: dict | None) -> dict:
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


def write_report(path: Path, cfg, manifest: dict, history: dict, finetune_cfg: dict, metrics: dict,
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
    lines += ["", f"![confusion matrix]({run_folder.CONFUSION_MATRIX})", "",
              f"![training curves]({run_folder.TRAINING_CURVES})", ""]
    path.write_text("\n".join(lines))

