"""spark-submit application: scores the fine-tuned model on the test split into ``metrics.json``.

Writes ``<run_dir>/metrics.json``: accuracy, loss, per-class precision and recall, confusion matrix (rows are
true labels, columns predictions), counts. The ``gate`` task reads it.

Usage::

    spark-submit tasks/evaluate.py --examples file:///.../examples/ds=... --run-dir file:///.../runs/ds=...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time

import numpy as np

from tasks import runtime, schema, storage

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


def parse_args(argv: list[str]) -> Config:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--split", default=Config.split, choices=schema.SPLITS)
    p.add_argument("--batch-size", type=int, default=Config.batch_size)
    a = p.parse_args(argv)
    return Config(examples=a.examples, run_dir=a.run_dir, split=a.split, batch_size=a.batch_size)


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, mean cross-entropy, per-class precision/recall and the confusion matrix."""
    n = len(labels)
    y_pred = probs.argmax(axis=1)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    eps = 1e-7
    loss = float(-np.log(np.clip(probs[np.arange(len(y_true)), y_true], eps, 1.0)).mean()) if len(y_true) else 0.0
    per_class = {}
    for i, name in enumerate(labels):
        tp, predicted, actual = int(cm[i, i]), int(cm[:, i].sum()), int(cm[i, :].sum())
        per_class[name] = {
            "precision": tp / predicted if predicted else 0.0,
            "recall": tp / actual if actual else 0.0,
            "support": actual,
        }
    return {
        "num_examples": int(len(y_true)),
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "loss": loss,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "labels": labels,
    }


def predict_split(model, files: list[str], image_size, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    from tasks import model as M

    ds = M.make_dataset(files, image_size, batch_size, training=False)
    ys, ps = [], []
    for x, y in ds:
        ps.append(model(x, training=False).numpy())
        ys.append(y.numpy())
    return np.concatenate(ys), np.concatenate(ps)


def run(cfg: Config) -> dict:
    runtime.set_legacy_keras()
    from tasks import model as M

    t0 = time.time()
    examples = storage.local_path(cfg.examples)
    manifest = json.loads((examples / schema.MANIFEST).read_text())
    history = json.loads(storage.read_text(storage.join(cfg.run_dir, "history.json")))
    files = [str(examples / f["name"]) for f in manifest["files"][cfg.split] if f["records"]]
    if not files:
        raise RuntimeError(f"split {cfg.split!r} of {cfg.examples} has no records to evaluate on")
    model = M.load_trained(str(storage.local_path(storage.join(cfg.run_dir, "model"))))
    y, probs = predict_split(model, files, tuple(history["image_size"]), cfg.batch_size)
    if len(y) != manifest["counts"][cfg.split]:
        raise RuntimeError(f"read {len(y)} {cfg.split} records but the manifest counts {manifest['counts'][cfg.split]}")
    metrics = classification_metrics(y, probs, manifest["labels"])
    metrics.update(split=cfg.split, partition=manifest["partition"])
    storage.write_text_atomic(storage.join(cfg.run_dir, "metrics.json"), json.dumps(metrics, indent=2))
    log.info("%s accuracy %.4f loss %.4f on %d examples (%.1fs)", cfg.split, metrics["accuracy"], metrics["loss"],
             metrics["num_examples"], time.time() - t0)
    width = max(len(n) for n in manifest["labels"])
    log.info("%s  precision  recall  support", "class".ljust(width))
    for name, m in metrics["per_class"].items():
        log.info("%s  %9.3f  %6.3f  %7d", name.ljust(width), m["precision"], m["recall"], m["support"])
    log.info("confusion matrix (rows true, columns predicted, order %s):\n%s", manifest["labels"],
             "\n".join(" ".join(f"{v:4d}" for v in row) for row in metrics["confusion_matrix"]))
    return metrics


def main(argv: list[str] | None = None) -> None:
    runtime.setup_logging()
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    log.info("config:\n%s", runtime.config_json(cfg))
    run(cfg)


if __name__ == "__main__":
    main()
