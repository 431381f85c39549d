"""Real-size benchmark: MobileNetV2 1.0 at 224×224 fine-tuned on the demo's shapes task: transfer, speed, scaling.

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
(c) evaluation: ``realsize_eval_examples_per_sec`` of ``evaluate`` over the held-out images (second pass: the first
    traces).
(d) export: saving the trained model as the training job's chief does, then ``tasks.export_model.run`` (the
    serving signatures, warm-up requests, the check against the trained model and the fresh-process
    verification): ``realsize_export_s``.
(e) scaling, ``realsize_train_scaling_efficiency`` (goal >= 0.9): ``tasks/finetune.py`` through spark-submit on
    ``local[2]`` with the pre-trained module, ``--fine-tune true``, global batch 32 (the DAG's default), on the first
    ``BENCH_REALSIZE_SCALING_IMAGES`` training images of (a) (and ``BENCH_REALSIZE_SCALING_EVAL`` held out for its
    per-epoch validation, timed apart): 2 barrier workers x 1 core (``spark.task.cpus=1``, 16 images per worker
    per step) against 1 process x 2 cores, global training examples/s of the epochs after the first (which traces),
    the best of ``BENCH_REALSIZE_REPEATS`` alternating runs of each, as ``bench_train.py``. The job records no
    compute/all-reduce split, so the 2-worker step time is split by measurement in a fresh process limited to one
    thread (a worker's core alone): compute = a training step of 16 in-memory images with the project's model
    (best of ``BENCH_REALSIZE_COMPUTE_STEPS``), input = 16 / that thread's pipeline rate (f), and all-reduce,
    synchronisation and the rest = the remainder. Bytes all-reduced per step = 4 x the model's trainable parameters
    (float32 gradients, ``fine_tune=true``). ``realsize_submit_to_first_step_s`` (goal <= 30) is launching
    spark-submit to the end of the first training step of the best 2-worker run, split into the phases of
    ``prelude.startup_phases``.
(f) ``realsize_input_headroom`` (goal >= 3): worker 0's ``tf.data`` pipeline alone (its share of the files of (e),
    decoding the 320–640 px images and resizing them to 224, batches of 16, one thread, after a warm-up:
    ``bench_train.input_pipeline_rate``), in examples/s, against what one worker of the 2-worker run consumed.
(g) ``realsize_mfu`` (goal >= 0.25): model FLOPs per training example x training examples/s of the 1 process x 2
    cores run of (e), over the FLOP/s TensorFlow reaches on a ``BENCH_REALSIZE_MATMUL_N`` square float32 matmul
    (2 n^3 FLOPs, best of 8) in this process on the same 2 cores. FLOPs per example: the forward pass of the
    project's model counted by TensorFlow's profiler on its frozen graph at batch 1 (about 0.6 GFLOPs: 0.3 G
    multiply-adds), times 3 for forward and backward (``TRAIN_FLOPS_PER_FORWARD``; the optimizer update and the
    input decoding are not counted). Also printed: ``realsize_mfu_in_process``, the same with the examples/s of
    the in-process fine-tuning of (b), and ``realsize_mfu_compute_1_core``, the compute step of (e) on one thread
    against the matmul on one thread; the three together show whether the job or the model's own arithmetic
    falls short.

The benchmark prints whether each goal is met and fails only when a run fails.

Settings: ``BENCH_REALSIZE_IMAGES`` (default 320, a fifth held out), ``BENCH_REALSIZE_EPOCHS`` (default 2),
``BENCH_REALSIZE_BATCH`` (default 16), ``BENCH_REALSIZE_DIR`` (default ``<repo>/var/bench/realsize``; the data and
the untrained module are made there once and reused); for (e)–(g) ``BENCH_REALSIZE_SCALING_IMAGES`` (default 96:
3 global steps per epoch), ``BENCH_REALSIZE_SCALING_EVAL`` (default 32), ``BENCH_REALSIZE_SCALING_EPOCHS``
(default 2), ``BENCH_REALSIZE_REPEATS`` (default 2), ``BENCH_REALSIZE_COMPUTE_STEPS`` (default 3),
``BENCH_REALSIZE_MATMUL_N`` (default 2048). A training step of this network costs 0.1–0.25 s per image on this
2-core machine in one process, about 0.27 s in the spark-submit runs of (e). Measured at small scale with the
machine shared (load 2–4) and scaled to the defaults: (a)–(d) take about 6–7 minutes, (e) about 10 (four
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
import subprocess
import sys
import tempfile
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
SCALING_IMAGES = prelude.setting("BENCH_REALSIZE_SCALING_IMAGES", 96)
"""Training records of the scaling runs (the first ones of the examples above): 3 global steps of 32 per epoch."""
SCALING_EVAL = prelude.setting("BENCH_REALSIZE_SCALING_EVAL", 32)
"""Held-out records the scaling runs validate on after each epoch (timed apart from training)."""
SCALING_EPOCHS = prelude.setting("BENCH_REALSIZE_SCALING_EPOCHS", 2)
"""Epochs of each scaling run; the first traces the model and is not counted."""
REPEATS = prelude.setting("BENCH_REALSIZE_REPEATS", 2)
"""Runs of each scaling configuration, the two alternating, the best of each kept (as ``bench_train.py``)."""
COMPUTE_STEPS = prelude.setting("BENCH_REALSIZE_COMPUTE_STEPS", 3)
"""Timed steps of the one-core compute measurement (after two untimed ones), the best kept."""
MATMUL_N = prelude.setting("BENCH_REALSIZE_MATMUL_N", 2048)
"""Side of the square float32 matmul whose FLOP/s is the denominator of ``realsize_mfu``."""
PER_WORKER = prelude.BATCH // 2
"""Per-worker batch of the 2-worker run at the global batch ``prelude.BATCH``."""
TRAIN_FLOPS_PER_FORWARD = 3
"""Training FLOPs per example = this x forward FLOPs: the backward pass costs about twice the forward (gradients
with respect to activations and to weights), the usual convention; the optimizer update (a few FLOPs per
parameter per step) and input decoding are left out."""
GOALS = {"realsize_train_scaling_efficiency": 0.9, "realsize_input_headroom": 3.0, "realsize_mfu": 0.25}
STARTUP_GOAL_S = 30.0



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


def step_times(model, batch: int, num_classes: int, steps: int) -> list[float]:
    """Seconds of each of ``steps`` training steps of a compiled ``model`` on one in-memory batch of random
    224x224 images, after two steps that trace and warm up."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((batch, 224, 224, 3), dtype=np.float32)
    y = rng.integers(0, num_classes, batch).astype(np.int32)
    model.train_on_batch(x, y)  # traces
    model.train_on_batch(x, y)
    spent = []
    for _ in range(steps):
        t = time.perf_counter()
        model.train_on_batch(x, y)
        spent.append(time.perf_counter() - t)
    return spent


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
    spent = step_times(bare, BATCH, num_classes, CEILING_STEPS)
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


def scaling_examples(examples: Path) -> Path:
    """The first ``SCALING_IMAGES`` training and ``SCALING_EVAL`` held-out records of ``examples`` (the same
    320–640 px images), as a prepared dataset ``tasks/finetune.py`` accepts: two training shards (one per worker),
    file sizes in the manifest, ``_SUCCESS``. Made once."""
    from tasks.core import schema
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
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    files: dict[str, list[dict]] = {"train": [], "eval": [], "test": []}
    for split, shards in (("train", [train[0::2], train[1::2]]), ("eval", [held_out])):
        for s, records in enumerate(shards):
            name = schema.shard_name(split, s, len(shards))
            with open(staging / name, "wb") as f:
                tfrecord.write_records(f, records)
            files[split].append({"name": name, "records": len(records), "bytes": (staging / name).stat().st_size})
    (staging / schema.MANIFEST).write_text(json.dumps({
        **{k: manifest[k] for k in ("partition", "task_type", "labels")}, "files": files,
        "counts": {"train": len(train), "eval": len(held_out), "test": 0}}, indent=2))
    (staging / schema.SUCCESS).write_text("")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def scaling(examples: Path, module: Path) -> dict:
    """2 barrier workers x 1 core against 1 process x 2 cores through spark-submit, ``REPEATS`` alternating runs of
    each, the best of each kept."""
    twos, ones = [], []
    with tempfile.TemporaryDirectory() as tmp:
        py_files = prelude.tasks_zip(Path(tmp))
        for _ in range(REPEATS):
            twos.append(prelude.submit_finetune("realsize-2x1core", BENCH_DIR, module, examples, py_files, workers=2,
                                                task_cpus=1, batch=prelude.BATCH, epochs=SCALING_EPOCHS))
            ones.append(prelude.submit_finetune("realsize-1x2core", BENCH_DIR, module, examples, py_files,
                                                workers=1, task_cpus=2, batch=prelude.BATCH, epochs=SCALING_EPOCHS))
    say(f"scaling: 2x1core runs {[round(r[2], 2) for r in twos]} examples/s, 1x2core runs "
        f"{[round(r[2], 2) for r in ones]}; the best of each is compared")
    two, one = max(twos, key=lambda r: r[2]), max(ones, key=lambda r: r[2])
    return {"two_history": two[0], "submitted": two[1], "two_rate": two[2], "one_rate": one[2]}


def forward_flops(module: Path, num_classes: int) -> tuple[int, int]:
    """Forward FLOPs of one example through the project's model (counted by TensorFlow's profiler on the frozen
    graph at batch 1, the hub module's functions inlined), and its trainable parameters with ``fine_tune=True``."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from tasks.training import model as M

    tf = M.tf
    tf.keras.backend.clear_session()
    model = M.build_model(str(module), M.ModelConfig(num_classes=num_classes, image_size=(224, 224), fine_tune=True))
    params = sum(int(tf.size(v)) for v in model.trainable_variables)
    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, 224, 224, 3], tf.float32))
    graph_def = convert_variables_to_constants_v2(fn).graph.as_graph_def()
    if graph_def.library.function:
        raise SystemExit("bench_realsize: the frozen graph still calls functions, whose FLOPs the profiler would "
                         "not count")
    profiler = tf.compat.v1.profiler
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
        options = profiler.ProfileOptionBuilder(profiler.ProfileOptionBuilder.float_operation()).with_empty_output()
        flops = profiler.profile(graph=graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op",
                                 options=options.build()).total_float_ops
    if not flops:
        raise SystemExit("bench_realsize: the profiler counted no FLOPs in the model's graph")
    return int(flops), params


def matmul_flops_per_sec() -> float:
    """FLOP/s of TensorFlow on a ``MATMUL_N`` square float32 matmul (2 n^3 per product), best of 8, with this
    process's thread settings."""
    from tasks.training import model as M

    tf = M.tf
    a = tf.random.stateless_uniform((MATMUL_N, MATMUL_N), seed=(1, 2))
    b = tf.random.stateless_uniform((MATMUL_N, MATMUL_N), seed=(3, 4))
    float(tf.linalg.matmul(a, b)[0, 0])  # warm-up
    best = float("inf")
    for _ in range(8):
        t = time.perf_counter()
        float(tf.linalg.matmul(a, b)[0, 0])  # reading one element waits for the product
        best = min(best, time.perf_counter() - t)
    return 2 * MATMUL_N ** 3 / best


def one_core(request: dict) -> dict:
    """In a fresh process limited to one thread, as a worker of the 2-worker run is to one core: its input pipeline
    alone, a training step of its batch alone (compute, no input pipeline, no all-reduce), the matmul FLOP/s."""
    from bench_train import input_pipeline_rate  # sets TensorFlow's threads to one before it starts

    examples, module = Path(request["examples"]), Path(request["module"])
    pipeline = input_pipeline_rate(examples, module, request["share"], PER_WORKER)
    from tasks.training import model as M

    tf = M.tf
    tf.keras.utils.set_random_seed(42)
    model = M.build_model(str(module), M.ModelConfig(num_classes=request["num_classes"], image_size=(224, 224),
                                                     fine_tune=True))
    trained = M.compile_for_training(model, LEARNING_RATE)
    spent = step_times(trained, PER_WORKER, request["num_classes"], COMPUTE_STEPS)
    return {"pipeline_examples_per_sec": pipeline, "compute_step_s": min(spent), "compute_steps_s": spent,
            "matmul_flops_per_sec": matmul_flops_per_sec()}


def one_core_subprocess(examples: Path, module: Path, share: list[str], num_classes: int) -> dict:
    """``one_core`` in a child process: this one's TensorFlow already runs on every core."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "one_core.json"
        request = {"examples": str(examples), "module": str(module), "share": share, "num_classes": num_classes,
                   "out": str(out)}
        rc = subprocess.run([sys.executable, __file__, "--one-core", json.dumps(request)]).returncode
        if rc:
            raise SystemExit(f"bench_realsize: the one-core measurement failed with exit code {rc}")
        return json.loads(out.read_text())


def main() -> None:
    from tasks.core import runtime
    from tasks.training import preflight

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
    say(f"in-process part done in {time.time() - t0:.0f}s")

    t1 = time.time()
    scaled = scaling_examples(examples)
    sc = scaling(scaled, pretrained)
    share = preflight.assign_files(prelude.read_json(scaled, run_folder.MANIFEST)["files"]["train"], 2)[0]
    say(f"one core alone (fresh process, one thread): worker 0's pipeline ({share}, batch {PER_WORKER}), a training "
        f"step of {PER_WORKER} in-memory images, the {MATMUL_N}^2 matmul")
    one = one_core_subprocess(scaled, pretrained, share, len(labels))
    say(f"  one core: pipeline {one['pipeline_examples_per_sec']:.1f} examples/s; training steps of {PER_WORKER} "
        f"{[round(s, 2) for s in one['compute_steps_s']]} s; matmul {one['matmul_flops_per_sec'] / 1e9:.1f} GFLOP/s")
    forward, params = forward_flops(pretrained, len(labels))
    matmul = matmul_flops_per_sec()
    say(f"model: {forward / 1e6:.0f} MFLOPs forward per example, {params} trainable parameters; matmul on every "
        f"core of this process: {matmul / 1e9:.1f} GFLOP/s; distributed part done in {time.time() - t1:.0f}s")

    p, u = runs["pretrained"], runs["untrained"]
    rate = max(p["train_examples_per_sec"], u["train_examples_per_sec"])
    two_rate, one_rate = sc["two_rate"], sc["one_rate"]
    two_step, one_step = prelude.BATCH / two_rate, prelude.BATCH / one_rate
    compute = one["compute_step_s"]
    input_s = PER_WORKER / one["pipeline_examples_per_sec"]
    sync = two_step - compute - input_s
    train_flops = TRAIN_FLOPS_PER_FORWARD * forward
    efficiency = two_rate / one_rate
    headroom = one["pipeline_examples_per_sec"] / (two_rate / 2)
    mfu = train_flops * one_rate / matmul
    phases = prelude.startup_phases(sc["two_history"], sc["submitted"])
    say(f"done in {time.time() - t0:.0f}s")
    print(f"load_average_1min={os.getloadavg()[0]:.2f}")
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
    print(f"realsize_train_examples_per_sec_2_workers_1_core={two_rate:.2f} (global batch {prelude.BATCH}, "
          f"{PER_WORKER} per worker)")
    print(f"realsize_train_examples_per_sec_1_process_2_cores={one_rate:.2f} (global batch {prelude.BATCH})")
    print(f"realsize_step_s_1_process_2_cores={one_step:.2f}")
    print(f"realsize_step_s_2_workers_1_core={two_step:.2f} = compute {compute:.2f} (a step of {PER_WORKER} on one "
          f"core alone, in-memory batch) + input {input_s:.2f} (the pipeline's time for {PER_WORKER} images on one "
          f"thread alone) + all-reduce, synchronisation and the rest {sync:.2f} (remainder)")
    print(f"realsize_allreduce_bytes_per_step={4 * params} ({params} trainable float32 parameters, "
          f"{4 * params / 2**20:.1f} MiB, fine_tune=true)")
    for name, seconds in phases.items():
        if name != "total":
            print(f"realsize_startup_{name}_s={seconds:.2f}")
    print(f"realsize_submit_to_first_step_s={phases['total']:.2f} (goal <= {STARTUP_GOAL_S:.0f}: "
          f"{'met' if phases['total'] <= STARTUP_GOAL_S else 'MISSED'})")
    print(f"realsize_input_pipeline_examples_per_sec={one['pipeline_examples_per_sec']:.1f} (one worker's files, "
          f"batch {PER_WORKER}, one thread)")
    print(f"realsize_train_consumption_examples_per_sec_per_worker={two_rate / 2:.2f}")
    print(f"realsize_forward_flops_per_example={forward} (profiler, batch 1); training = {TRAIN_FLOPS_PER_FORWARD}x "
          f"= {train_flops}")
    print(f"realsize_achieved_flops_per_sec_1_process_2_cores={train_flops * one_rate / 1e9:.2f}e9")
    print(f"realsize_matmul_flops_per_sec_2_cores={matmul / 1e9:.2f}e9 ({MATMUL_N}x{MATMUL_N} float32, best of 8)")
    print(f"realsize_mfu_in_process={train_flops * rate / matmul:.3f} (the in-process fine-tuning of "
          f"realsize_train_examples_per_sec, batch {BATCH}, against the same matmul)")
    print(f"realsize_mfu_compute_1_core={train_flops * PER_WORKER / compute / one['matmul_flops_per_sec']:.3f} "
          f"(a step of {PER_WORKER} in memory on one thread, against the matmul on one thread: "
          f"{one['matmul_flops_per_sec'] / 1e9:.2f}e9 FLOP/s)")
    values = {"realsize_train_scaling_efficiency": efficiency, "realsize_input_headroom": headroom,
              "realsize_mfu": mfu}
    print("; ".join(f"target {name}>={goal:g}: {'met' if values[name] >= goal else 'MISSED'}"
                    for name, goal in GOALS.items()))
    print(f"realsize_train_scaling_efficiency={efficiency:.3f}")
    print(f"realsize_input_headroom={headroom:.2f}")
    print(f"realsize_mfu={mfu:.3f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one-core"]:
        job = json.loads(sys.argv[2])
        Path(job["out"]).write_text(json.dumps(one_core(job)))
    else:
        main()
