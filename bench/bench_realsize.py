"""Real-size benchmark: MobileNetV2 1.0 at 224×224 fine-tuned on the demo's shapes task, pre-trained against untrained.

On the same generated data (the demo's four target classes, drawn by ``tasks.demo.make_dataset`` as JPEG/PNG of
``BENCH_REALSIZE_MIN_PX``–``BENCH_REALSIZE_MAX_PX`` px, written as the project's TFRecords), in one run:

(a) transfer: the real-size module pre-trained on the pretext classes (``make hub-module
    NAME=mobilenet_v2_100_224``, built here with its defaults when missing), against the same architecture
    untrained (``--pretext-steps 0``, its batch norm calibrated the same way), each fine-tuned with the project's
    model code (``tasks.training.model``: ``build_model`` with ``fine_tune=True``, ``make_dataset`` decoding and resizing to
    224, ``compile_for_training`` at the DAG's learning rate) in one process on the machine's cores, as one
    worker of ``tasks/finetune.py`` trains. ``realsize_transfer_gain`` is the evaluation accuracy of the pre-trained
    one minus that of the untrained one, on the held-out images, with the modules in inference mode.
(b) speed against a ceiling: training examples/s of that fine-tuning (steps after the first two, input pipeline
    included), against the bare tf-keras MobileNetV2 under the same head trained on one in-memory batch of the
    same size (no hub layer, no input pipeline): the forward and backward pass alone, measured in the same run.
(c) evaluation: examples/s of ``evaluate`` over the held-out images (second pass: the first traces).
(d) export: saving the trained model as the training job's chief does, then ``tasks.export_model.run`` (the
    serving signatures, warm-up requests, the check against the trained model and the fresh-process
    verification).

Settings: ``BENCH_REALSIZE_IMAGES`` (default 320, a fifth held out), ``BENCH_REALSIZE_EPOCHS`` (default 2),
``BENCH_REALSIZE_BATCH`` (default 16), ``BENCH_REALSIZE_DIR`` (default ``<repo>/var/bench/realsize``; the data and
the untrained module are made there once and reused). A training step of this network costs about a quarter of a
second per image on this 2-core machine, so the run is short (about 10 minutes): a few dozen steps per model.
The last line is ``realsize_transfer_gain=<float>``.

Usage::

    make bench
    python bench/bench_realsize.py
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import prelude  # noqa: F401  (first: the repository on sys.path, the environment)
from prelude import DS, ROOT, say
from tasks.core import run_folder

prelude.legacy_keras()

NUM_IMAGES = int(os.environ.get("BENCH_REALSIZE_IMAGES", "320"))
EPOCHS = int(os.environ.get("BENCH_REALSIZE_EPOCHS", "2"))
BATCH = int(os.environ.get("BENCH_REALSIZE_BATCH", "16"))
MIN_PX = int(os.environ.get("BENCH_REALSIZE_MIN_PX", "320"))
MAX_PX = int(os.environ.get("BENCH_REALSIZE_MAX_PX", "640"))
BENCH_DIR = prelude.work_dir("BENCH_REALSIZE_DIR", "realsize")
PRETRAINED = ROOT / "var" / "storage" / "hub" / "mobilenet_v2_100_224"
LEARNING_RATE = 2e-3
"""The DAG's default learning rate (``tasks.finetune.Config.learning_rate``)."""
CEILING_STEPS = 4



def ensure_modules() -> tuple[Path, Path]:
    from tasks.demo import make_mobilenet_module as builder

    pretrained = PRETRAINED
    if not (pretrained / "saved_model.pb").exists():
        pretrained = BENCH_DIR / "mobilenet_v2_100_224"
        if not (pretrained / "saved_model.pb").exists():
            say(f"no module at {PRETRAINED}: pre-training one with the builder's defaults into {pretrained} "
                "(a few minutes)")
            builder.run(builder.Config(output=f"file://{pretrained}"))
    untrained = BENCH_DIR / "mobilenet_v2_100_224_untrained"
    if not (untrained / "saved_model.pb").exists():
        say("building the same architecture untrained (batch norm calibrated the same way)")
        builder.run(builder.Config(output=f"file://{untrained}", pretext_steps=0))
    return pretrained, untrained


def ensure_examples() -> tuple[Path, list[str]]:
    """The demo's generated partition as TFRecords (train and eval files) and a manifest ``export_model`` reads."""
    from tasks.core import schema
    from tasks.prep import modality, tfrecord
    from tasks.demo import make_dataset, shapes

    examples = BENCH_DIR / f"examples-{NUM_IMAGES}-{MIN_PX}-{MAX_PX}"
    labels = sorted(shapes.TARGET_CLASSES)
    if (examples / schema.MANIFEST).exists():
        return examples, labels
    raw = BENCH_DIR / "raw"
    shutil.rmtree(raw, ignore_errors=True)
    t0 = time.time()
    part = make_dataset.run(make_dataset.Config(raw_root=f"file://{raw}", ds=DS, num_images=NUM_IMAGES,
                                                min_size=MIN_PX, max_size=MAX_PX))
    part = Path(part.removeprefix("file://"))
    with open(part / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    n_eval = max(len(labels), len(rows) // 5)
    splits = {"train": rows[n_eval:], "eval": rows[:n_eval], "test": rows[:8]}
    staging = examples.with_name(examples.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    files: dict[str, list[dict]] = {}
    for split, chosen in splits.items():
        shards = 2 if split == "train" else 1
        files[split] = []
        for s in range(shards):
            name = schema.shard_name(split, s, shards)
            part_rows = chosen[s::shards]
            with open(staging / name, "wb") as f:
                tfrecord.write_records(f, (tfrecord.encode_example({
                    modality.IMAGE.feature: (part / r["path"]).read_bytes(),
                    schema.LABEL: labels.index(r["label"])}) for r in part_rows))
            files[split].append({"name": name, "records": len(part_rows)})
    manifest = {"partition": DS, "task_type": modality.IMAGE.task_type, "labels": labels, "files": files,
                "counts": {k: len(v) for k, v in splits.items()},
                "label_counts": {k: {lab: sum(r["label"] == lab for r in v) for lab in labels}
                                 for k, v in splits.items()}}
    (staging / schema.MANIFEST).write_text(json.dumps(manifest, indent=2))
    staging.rename(examples)
    say(f"generated {len(rows)} images of {MIN_PX}-{MAX_PX} px and wrote them as TFRecords in {time.time() - t0:.0f}s "
        f"({len(splits['train'])} train, {len(splits['eval'])} eval)")
    return examples, labels


class StepTimes:
    """Times of the ends of the training batches (validation excluded)."""

    def __new__(cls):
        from tasks.training import model as M

        class Times(M.tf.keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.ends: list[list[float]] = []

            def on_epoch_begin(self, epoch, logs=None):
                self.ends.append([time.perf_counter()])

            def on_train_batch_end(self, batch, logs=None):
                self.ends[-1].append(time.perf_counter())

        return Times()


def fine_tune(name: str, module: Path, examples: Path, labels: list[str]) -> dict:
    """Fine-tunes ``module`` on the examples with the project's model code; returns accuracy and timings."""
    from tasks.training import model as M

    tf = M.tf
    manifest = prelude.read_json(examples, run_folder.MANIFEST)
    train_files = [str(examples / f["name"]) for f in manifest["files"]["train"]]
    eval_files = [str(examples / f["name"]) for f in manifest["files"]["eval"]]
    steps = manifest["counts"]["train"] // BATCH
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(42)
    t0 = time.time()
    model = M.build_model(str(module), M.ModelConfig(num_classes=len(labels), image_size=(224, 224),
                                                     fine_tune=True))
    trained = M.compile_for_training(model, LEARNING_RATE)
    train_ds = M.make_dataset(train_files, (224, 224), BATCH, training=True, seed=42)
    times = StepTimes()
    say(f"{name}: fine-tuning {EPOCHS} epochs of {steps} steps of {BATCH} at 224x224 (built in {time.time() - t0:.0f}s)")
    hist = trained.fit(train_ds, epochs=EPOCHS, steps_per_epoch=steps, callbacks=[times], verbose=0)
    # Steady-state rate: the steps after the first two of each epoch (the first traces the graph).
    steady = [b - a for epoch in times.ends for a, b in zip(epoch[2:], epoch[3:])]
    step_s = statistics.median(steady)
    first_step_s = times.ends[0][1] - times.ends[0][0]
    out = {"train_examples_per_sec": BATCH / step_s, "step_s": step_s, "first_step_s": first_step_s,
           "train_accuracy": float(hist.history["accuracy"][-1]), "train_loss": float(hist.history["loss"][-1])}
    for attempt in ("first", "second"):
        t1 = time.perf_counter()
        loss, accuracy = trained.evaluate(M.make_dataset(eval_files, (224, 224), BATCH, training=False), verbose=0)
        out[f"eval_{attempt}_s"] = time.perf_counter() - t1
    out.update(eval_accuracy=float(accuracy), eval_loss=float(loss),
               eval_examples_per_sec=manifest["counts"]["eval"] / out["eval_second_s"])
    say(f"{name}: train accuracy {out['train_accuracy']:.3f} (batch statistics), eval accuracy "
        f"{out['eval_accuracy']:.3f} on {manifest['counts']['eval']} held-out images; {out['step_s']:.2f} s/step = "
        f"{out['train_examples_per_sec']:.1f} examples/s (first step {first_step_s:.0f}s); evaluation "
        f"{out['eval_second_s']:.1f}s ({out['eval_first_s']:.1f}s with tracing)")
    out["model"] = model
    return out


def bare_ceiling(num_classes: int) -> float:
    """Training examples/s of the bare tf-keras MobileNetV2 (same head, same batch) on one in-memory batch."""
    import numpy as np

    from tasks.training import model as M
    from tasks.demo import make_mobilenet_module as builder

    tf = M.tf
    tf.keras.backend.clear_session()
    net = builder.build_feature_extractor(builder.Config(output="unused"))
    bare = tf.keras.Sequential([net, tf.keras.layers.Dropout(0.2),
                                tf.keras.layers.Dense(num_classes, activation="softmax")])
    bare.compile(optimizer=tf.keras.optimizers.Adam(LEARNING_RATE), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((BATCH, 224, 224, 3), dtype=np.float32)
    y = rng.integers(0, num_classes, BATCH).astype(np.int32)
    bare.train_on_batch(x, y)  # traces
    bare.train_on_batch(x, y)
    spent = []
    for _ in range(CEILING_STEPS):
        t = time.perf_counter()
        bare.train_on_batch(x, y)
        spent.append(time.perf_counter() - t)
    step = min(spent)
    say(f"ceiling: bare MobileNetV2 + head, one in-memory batch of {BATCH}: {step:.2f} s/step (best of "
        f"{CEILING_STEPS}; all {[round(s, 2) for s in spent]}) = {BATCH / step:.1f} examples/s")
    return BATCH / step


def export(result: dict, module: Path, examples: Path, labels: list[str]) -> dict:
    """The chief's model save, then the project's export job; seconds of each."""
    from tasks import export_model

    run_dir = BENCH_DIR / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    result["model"].save(str(run_dir / run_folder.MODEL), include_optimizer=False)
    save_s = time.perf_counter() - t0
    (run_dir / run_folder.HISTORY).write_text(json.dumps({"labels": labels, "image_size": [224, 224],
                                                          "hub_module": str(module)}))
    serving = BENCH_DIR / "serving"
    shutil.rmtree(serving, ignore_errors=True)
    t1 = time.perf_counter()
    export_model.run(export_model.Config(run_dir=f"file://{run_dir}", examples=f"file://{examples}",
                                         serving_root=f"file://{serving}", model_name="shapes_realsize",
                                         version=1))
    export_s = time.perf_counter() - t1
    say(f"export: model save {save_s:.1f}s, export_model (serving module, warm-up, check, fresh-process "
        f"verification) {export_s:.1f}s")
    return {"save_s": save_s, "export_s": export_s}


def main() -> None:
    from tasks.core import runtime

    runtime.set_legacy_keras()
    t0 = time.time()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    pretrained, untrained = ensure_modules()
    info = json.loads((pretrained / "assets.extra" / "module_info.json").read_text())
    say(f"pre-trained module {pretrained}: {info.get('pretext_steps')} steps of {info.get('pretext_batch_size')} at "
        f"{info.get('pretext_size')} px in {info.get('pretext_train_seconds')}s, pretext validation accuracy "
        f"{info.get('pretext_val_accuracy')} at 224 px (chance 0.1)")
    examples, labels = ensure_examples()
    runs = {"untrained": fine_tune("untrained", untrained, examples, labels)}
    runs["pretrained"] = fine_tune("pretrained", pretrained, examples, labels)
    ceiling = bare_ceiling(len(labels))
    exported = export(runs["pretrained"], pretrained, examples, labels)
    p, u = runs["pretrained"], runs["untrained"]
    rate = max(p["train_examples_per_sec"], u["train_examples_per_sec"])
    say(f"done in {time.time() - t0:.0f}s")
    print(f"realsize_pretext_val_accuracy={info.get('pretext_val_accuracy')}")
    print(f"realsize_untrained_eval_accuracy={u['eval_accuracy']:.3f}")
    print(f"realsize_pretrained_eval_accuracy={p['eval_accuracy']:.3f}")
    print(f"realsize_untrained_train_accuracy={u['train_accuracy']:.3f}")
    print(f"realsize_pretrained_train_accuracy={p['train_accuracy']:.3f}")
    print(f"realsize_step_s={min(p['step_s'], u['step_s']):.3f}")
    print(f"realsize_train_examples_per_sec={rate:.2f}")
    print(f"realsize_bare_model_examples_per_sec={ceiling:.2f}")
    print(f"realsize_train_vs_bare={rate / ceiling:.3f}")
    print(f"realsize_eval_s={p['eval_second_s']:.2f}")
    print(f"realsize_eval_examples_per_sec={p['eval_examples_per_sec']:.2f}")
    print(f"realsize_model_save_s={exported['save_s']:.1f}")
    print(f"realsize_export_s={exported['export_s']:.1f}")
    print(f"realsize_transfer_gain={p['eval_accuracy'] - u['eval_accuracy']:.3f}")


if __name__ == "__main__":
    main()
