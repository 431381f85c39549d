"""Real-size benchmark: MobileNetV2 1.0 at 224×224 fine-tuned on the demo's shapes task: transfer, speed, scaling.

On the same generated data (the demo's four target classes, drawn by ``tasks.demo.make_dataset`` as JPEG/PNG of
``BENCH_REALSIZE_MIN_PX``–``BENCH_REALSIZE_MAX_PX`` px, written as the project's TFRecords), in one run:

(a) transfer: the real-size module pre-trained on the pretext classes (``make hub-module
    NAME=mobilenet_v2_100_224``, built here with its defaults when missing), against the same architecture
    untrained (``--pretext-steps 0``, its batch norm calibrated the same way), each fine-tuned with the project's
    model code (``tasks.training.model``: ``build_model`` with ``fine_tune=True``, ``make_dataset`` decoding and
    resizing to 224, ``compile_for_training`` at the DAG's learning rate, the module at ``MODULE_LR_SCALE`` of it)
    in one process on the machine's cores, as one worker of ``tasks/finetune.py`` trains. ``realsize_transfer_gain``
    is the evaluation accuracy of the pre-trained one minus that of the untrained one, on the held-out images, with
    the modules in inference mode.
(b) speed against a ceiling: training examples/s of that fine-tuning (steps after the first two, input pipeline
    included), against the bare tf-keras MobileNetV2 under the same head trained on one in-memory batch of the
    same size (no hub layer, no input pipeline): the forward and backward pass alone, measured in the same run.
(c) evaluation: ``realsize_eval_examples_per_sec`` of ``evaluate`` over the held-out images (second pass: the first
    traces).
(d) export: saving the trained model as the training job's chief does, then ``tasks.export_model.run`` (the
    serving signatures, warm-up requests, the check against the trained model and the fresh-process
    verification): ``realsize_export_s``.
(e)–(g) the distributed part, measured by ``realsize_scaling.py`` (its docstring says how): (e) the scaling of
    ``tasks/finetune.py`` through spark-submit from 1 process x 2 cores to 2 barrier workers x 1 core
    (``realsize_train_scaling_efficiency``, goal >= 0.9), the split of the 2-worker step, and the start-up phases
    (``realsize_submit_to_first_step_s``, goal <= 30); (f) one worker's input pipeline against what it consumes
    (``realsize_input_headroom``, goal >= 3); (g) the model's FLOP/s against a matmul's (``realsize_mfu``, goal
    >= 0.25). They run on the first ``BENCH_REALSIZE_SCALING_IMAGES`` training and ``BENCH_REALSIZE_SCALING_EVAL``
    held-out images of (a), written here as a prepared dataset of their own (``scaling_examples``).

This module owns the data (both prepared datasets, written by one helper, ``write_prepared``), the in-process part
(a)–(d), and the run and its report; ``realsize_scaling`` owns (e)–(g) and prints their lines.

The benchmark prints whether each goal is met and fails only when a run fails.

Settings: ``BENCH_REALSIZE_IMAGES`` (default 320, a fifth held out), ``BENCH_REALSIZE_EPOCHS`` (default 2),
``BENCH_REALSIZE_BATCH`` (default 16), ``BENCH_REALSIZE_DIR`` (default ``<repo>/var/bench/realsize``; the data and
the untrained module are made there once and reused); for (e)–(g) ``BENCH_REALSIZE_SCALING_IMAGES`` (default 96:
3 global steps per epoch), ``BENCH_REALSIZE_SCALING_EVAL`` (default 32), and ``realsize_scaling.py``'s
(``BENCH_REALSIZE_SCALING_EPOCHS``, ``BENCH_REALSIZE_REPEATS``, ``BENCH_REALSIZE_COMPUTE_STEPS``,
``BENCH_REALSIZE_MATMUL_N``). A training step of this network costs 0.1–0.25 s per image on this 2-core machine in
one process, about 0.27 s in the spark-submit runs of (e). Measured at small scale with the machine shared (load
2–4) and scaled to the defaults: (a)–(d) take about 6–7 minutes, (e) about 10 (four
spark-submit runs of 2–3 minutes, mostly start-up, the first step's tracing and the chief's model save), (f) and
(g) about 1.5: about 18 minutes in all (``BENCH_REALSIZE_EPOCHS=1`` saves about a minute). For a quick check of the
code paths: ``BENCH_REALSIZE_IMAGES=100 BENCH_REALSIZE_EPOCHS=1 BENCH_REALSIZE_SCALING_IMAGES=64
BENCH_REALSIZE_SCALING_EVAL=8 BENCH_REALSIZE_REPEATS=1 BENCH_REALSIZE_COMPUTE_STEPS=1``.

The last lines are ``realsize_train_scaling_efficiency=<float>``, ``realsize_input_headroom=<float>``,
``realsize_mfu=<float>``.

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
import realsize_scaling
from prelude import DS, ROOT, say
from tasks.core import run_folder, schema

prelude.legacy_keras()

NUM_IMAGES = prelude.setting("BENCH_REALSIZE_IMAGES", 320)
EPOCHS = prelude.setting("BENCH_REALSIZE_EPOCHS", 2)
BATCH = prelude.setting("BENCH_REALSIZE_BATCH", 16)
MIN_PX = prelude.setting("BENCH_REALSIZE_MIN_PX", 320)
MAX_PX = prelude.setting("BENCH_REALSIZE_MAX_PX", 640)
BENCH_DIR = prelude.work_dir("BENCH_REALSIZE_DIR", "realsize")
PRETRAINED = ROOT / "var" / "storage" / "hub" / "mobilenet_v2_100_224"
LEARNING_RATE = 2e-3
"""The DAG's default learning rate (``tasks.finetune.Config.learning_rate``)."""
MODULE_LR_SCALE = 0.1
"""The module's learning rate relative to the head's in (a), as ``make demo SIZE=real`` sets ``module_lr_scale``:
at the same rate the weights move faster than the batch-norm moving averages follow, and the held-out accuracy in
inference mode falls behind the training accuracy (0.62 against 0.996 after 8 epochs of the demo's images)."""
CEILING_STEPS = 4
SCALING_IMAGES = prelude.setting("BENCH_REALSIZE_SCALING_IMAGES", 96)
"""Training records of the scaling runs (the first ones of the examples above): 3 global steps of 32 per epoch."""
SCALING_EVAL = prelude.setting("BENCH_REALSIZE_SCALING_EVAL", 32)
"""Held-out records the scaling runs validate on after each epoch (timed apart from training)."""


def ensure_modules() -> tuple[Path, Path]:
    """The pre-trained module (``PRETRAINED``, else one built under ``BENCH_DIR`` once) and the same architecture
    untrained, built under ``BENCH_DIR`` once."""
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


def write_prepared(out: Path, shards: dict[str, list[list[bytes]]], meta: dict) -> Path:
    """Serialised examples as a prepared dataset ``tasks/finetune.py`` and ``export_model`` accept, at ``out``: the
    shards of each split (``shards[split][i]`` the records of its i-th file), a manifest of ``meta`` with each
    file's name, records and bytes and each split's count, then ``schema.SUCCESS`` last; all written in a staging
    sibling and renamed into place in one step, replacing what was there."""
    from tasks.prep import tfrecord

    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    files: dict[str, list[dict]] = {}
    for split, parts in shards.items():
        files[split] = []
        for s, records in enumerate(parts):
            name = schema.shard_name(split, s, len(parts))
            with open(staging / name, "wb") as f:
                tfrecord.write_records(f, records)
            files[split].append({"name": name, "records": len(records), "bytes": (staging / name).stat().st_size})
    counts = {split: sum(map(len, parts)) for split, parts in shards.items()}
    (staging / schema.MANIFEST).write_text(json.dumps({**meta, "files": files, "counts": counts}, indent=2))
    (staging / schema.SUCCESS).write_text("")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def ensure_examples() -> tuple[Path, list[str]]:
    """The demo's generated partition as a prepared dataset (``write_prepared``: two train files, one eval, one
    test), made once: a folder without ``schema.SUCCESS`` (an interrupted or older run) is made again."""
    from tasks.prep import modality, tfrecord
    from tasks.demo import make_dataset, shapes

    examples = BENCH_DIR / f"examples-{NUM_IMAGES}-{MIN_PX}-{MAX_PX}"
    labels = sorted(shapes.TARGET_CLASSES)
    if (examples / schema.SUCCESS).exists():
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

    def encoded(chosen: list[dict]) -> list[bytes]:
        return [tfrecord.encode_example({modality.IMAGE.feature: (part / r["path"]).read_bytes(),
                                         schema.LABEL: labels.index(r["label"])}) for r in chosen]

    files_of = {"train": 2, "eval": 1, "test": 1}
    shards = {split: [encoded(chosen[s::files_of[split]]) for s in range(files_of[split])]
              for split, chosen in splits.items()}
    write_prepared(examples, shards, {
        "partition": DS, "task_type": modality.IMAGE.task_type, "labels": labels,
        "label_counts": {k: {lab: sum(r["label"] == lab for r in v) for lab in labels} for k, v in splits.items()}})
    say(f"generated {len(rows)} images of {MIN_PX}-{MAX_PX} px and wrote them as TFRecords in {time.time() - t0:.0f}s "
        f"({len(splits['train'])} train, {len(splits['eval'])} eval)")
    return examples, labels


def scaling_examples(examples: Path) -> Path:
    """The first ``SCALING_IMAGES`` training and ``SCALING_EVAL`` held-out records of ``examples`` (the same
    320–640 px images), as a prepared dataset (``write_prepared``) with two training files (one per worker) and
    no test split. Made once."""
    from tasks.prep import tfrecord

    out = BENCH_DIR / f"scaling-{SCALING_IMAGES}-{SCALING_EVAL}-{NUM_IMAGES}-{MIN_PX}-{MAX_PX}" / f"ds={DS}"
    if (out / schema.SUCCESS).exists():
        return out
    manifest = prelude.read_json(examples, schema.MANIFEST)

    def first(split: str, n: int) -> list[bytes]:
        got: list[bytes] = []
        for f in manifest["files"][split]:
            with open(examples / f["name"], "rb") as fh:
                got += list(tfrecord.read_records(fh))[:n - len(got)]
        if len(got) < n:
            raise SystemExit(f"bench_realsize: BENCH_REALSIZE_SCALING_{'IMAGES' if split == 'train' else 'EVAL'}="
                             f"{n} but {examples} has {len(got)} {split} records; raise BENCH_REALSIZE_IMAGES")
        return got

    train, held_out = first("train", SCALING_IMAGES), first("eval", SCALING_EVAL)
    return write_prepared(out, {"train": [train[0::2], train[1::2]], "eval": [held_out], "test": []},
                          {k: manifest[k] for k in ("partition", "task_type", "labels")})


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
    trained = M.compile_for_training(model, LEARNING_RATE, MODULE_LR_SCALE)
    train_ds = M.make_dataset(train_files, (224, 224), BATCH, training=True, seed=42)
    times = StepTimes()
    say(f"{name}: fine-tuning {EPOCHS} epochs of {steps} steps of {BATCH} at 224x224 (built in "
        f"{time.time() - t0:.0f}s)")
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
    from tasks.training import model as M
    from tasks.demo import make_mobilenet_module as builder

    tf = M.tf
    tf.keras.backend.clear_session()
    net = builder.build_feature_extractor(builder.Config(output="unused"))
    bare = tf.keras.Sequential([net, tf.keras.layers.Dropout(0.2),
                                tf.keras.layers.Dense(num_classes, activation="softmax")])
    bare.compile(optimizer=tf.keras.optimizers.Adam(LEARNING_RATE), loss="sparse_categorical_crossentropy")
    spent = realsize_scaling.step_times(bare, BATCH, num_classes, CEILING_STEPS)
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


def in_process() -> dict:
    """(a)–(d): the modules, the examples, both fine-tunings, the ceiling and the export, in this process."""
    t0 = time.time()
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
    say(f"in-process part done in {time.time() - t0:.0f}s")
    return {"pretrained": pretrained, "info": info, "examples": examples, "labels": labels, "runs": runs,
            "ceiling": ceiling, "exported": exported}


def distributed(done: dict) -> dict:
    """(e)–(g) (``realsize_scaling.measure``) with the pre-trained module, on the scaling subset of the examples."""
    started = time.time()
    scaled = scaling_examples(done["examples"])
    return realsize_scaling.measure(BENCH_DIR, scaled, done["pretrained"], len(done["labels"]), LEARNING_RATE,
                                    started)


def in_process_rate(done: dict) -> float:
    """The in-process fine-tuning's training examples/s: the faster of the two modules'."""
    return max(r["train_examples_per_sec"] for r in done["runs"].values())


def report_in_process(done: dict) -> None:
    """The lines of (a)–(d)."""
    p, u = done["runs"]["pretrained"], done["runs"]["untrained"]
    rate, ceiling, exported = in_process_rate(done), done["ceiling"], done["exported"]
    print(f"realsize_pretext_val_accuracy={done['info'].get('pretext_val_accuracy')}")
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


def main() -> None:
    from tasks.core import runtime

    runtime.set_legacy_keras()
    t0 = time.time()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    done = in_process()
    measured = distributed(done)
    say(f"done in {time.time() - t0:.0f}s")
    print(f"load_average_1min={os.getloadavg()[0]:.2f}")
    report_in_process(done)
    realsize_scaling.report(measured, in_process_rate(done), BATCH)


if __name__ == "__main__":
    main()
