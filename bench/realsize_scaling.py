"""The distributed part of ``bench_realsize.py``: the spark-submit scaling runs, the one-core split of the 2-worker
step, the model's FLOPs against a matmul's, and the figures (e)–(g) with their lines and goals.

It owns the settings of that part and the measurement of a training step on an in-memory batch (``step_times``,
which ``bench_realsize``'s ceiling uses too). ``bench_realsize`` makes the data (the scaling subset included), runs
the in-process part, calls ``measure`` then ``report``. ``one_core`` runs in a child process started on this file
(``--one-core <json>``).

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
    spark-submit to the end of the first training step, the quickest of the 2-worker runs (five runs here took 24
    to 31 s), split into the phases of ``prelude.startup_phases``.
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

Settings: ``BENCH_REALSIZE_SCALING_EPOCHS`` (default 2), ``BENCH_REALSIZE_REPEATS`` (default 2),
``BENCH_REALSIZE_COMPUTE_STEPS`` (default 3), ``BENCH_REALSIZE_MATMUL_N`` (default 2048); the size of the scaling
subset is ``bench_realsize``'s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import prelude  # noqa: F401  (first: the repository on sys.path, the environment)
from prelude import say

prelude.legacy_keras()

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


def scaling(work: Path, examples: Path, module: Path) -> dict:
    """2 barrier workers x 1 core against 1 process x 2 cores through spark-submit, ``REPEATS`` alternating runs of
    each under ``work``, the best of each kept."""
    twos, ones = [], []
    with tempfile.TemporaryDirectory() as tmp:
        py_files = prelude.tasks_zip(Path(tmp))
        for _ in range(REPEATS):
            twos.append(prelude.submit_finetune("realsize-2x1core", work, module, examples, py_files, workers=2,
                                                task_cpus=1, batch=prelude.BATCH, epochs=SCALING_EPOCHS))
            ones.append(prelude.submit_finetune("realsize-1x2core", work, module, examples, py_files,
                                                workers=1, task_cpus=2, batch=prelude.BATCH, epochs=SCALING_EPOCHS))
    say(f"scaling: 2x1core runs {[round(r[2], 2) for r in twos]} examples/s, 1x2core runs "
        f"{[round(r[2], 2) for r in ones]}; the best of each is compared")
    two, one = max(twos, key=lambda r: r[2]), max(ones, key=lambda r: r[2])
    startups = [prelude.startup_phases(history, submitted) for history, submitted, _ in twos]
    say(f"start-up of the 2x1core runs, submit to first step: {[round(p['total'], 2) for p in startups]} s; the "
        "quickest is reported")
    return {"startup": min(startups, key=lambda p: p["total"]), "two_rate": two[2], "one_rate": one[2]}


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
    trained = M.compile_for_training(model, request["learning_rate"])
    spent = step_times(trained, PER_WORKER, request["num_classes"], COMPUTE_STEPS)
    return {"pipeline_examples_per_sec": pipeline, "compute_step_s": min(spent), "compute_steps_s": spent,
            "matmul_flops_per_sec": matmul_flops_per_sec()}


def one_core_subprocess(examples: Path, module: Path, share: list[str], num_classes: int,
                        learning_rate: float) -> dict:
    """``one_core`` in a child process running this file: this one's TensorFlow already runs on every core."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "one_core.json"
        request = {"examples": str(examples), "module": str(module), "share": share, "num_classes": num_classes,
                   "learning_rate": learning_rate, "out": str(out)}
        rc = subprocess.run([sys.executable, __file__, "--one-core", json.dumps(request)]).returncode
        if rc:
            raise SystemExit(f"bench_realsize: the one-core measurement failed with exit code {rc}")
        return json.loads(out.read_text())


def measure(work: Path, examples: Path, module: Path, num_classes: int, learning_rate: float,
            started: float) -> dict:
    """(e)–(g) on the scaling subset ``examples``: the scaling runs (``scaling``), one core alone (``one_core``),
    the model's FLOPs and the matmul on every core of this process; ``started`` is when the distributed part began
    (its progress line says how long it took)."""
    from tasks.core import run_folder
    from tasks.training import preflight

    sc = scaling(work, examples, module)
    share = preflight.assign_files(prelude.read_json(examples, run_folder.MANIFEST)["files"]["train"], 2)[0]
    say(f"one core alone (fresh process, one thread): worker 0's pipeline ({share}, batch {PER_WORKER}), a training "
        f"step of {PER_WORKER} in-memory images, the {MATMUL_N}^2 matmul")
    one = one_core_subprocess(examples, module, share, num_classes, learning_rate)
    say(f"  one core: pipeline {one['pipeline_examples_per_sec']:.1f} examples/s; training steps of {PER_WORKER} "
        f"{[round(s, 2) for s in one['compute_steps_s']]} s; matmul {one['matmul_flops_per_sec'] / 1e9:.1f} GFLOP/s")
    forward, params = forward_flops(module, num_classes)
    matmul = matmul_flops_per_sec()
    say(f"model: {forward / 1e6:.0f} MFLOPs forward per example, {params} trainable parameters; matmul on every "
        f"core of this process: {matmul / 1e9:.1f} GFLOP/s; distributed part done in {time.time() - started:.0f}s")
    return {**sc, "one": one, "forward": forward, "params": params, "matmul": matmul}


def report(m: dict, in_process_rate: float, in_process_batch: int) -> None:
    """Prints the lines of (e)–(g) from ``measure``'s figures, the goals, and last the three headline figures;
    ``in_process_rate`` is the in-process fine-tuning's examples/s at ``in_process_batch`` (for
    ``realsize_mfu_in_process``)."""
    two_rate, one_rate, one = m["two_rate"], m["one_rate"], m["one"]
    compute, params = one["compute_step_s"], m["params"]
    two_step, one_step = prelude.BATCH / two_rate, prelude.BATCH / one_rate
    input_s = PER_WORKER / one["pipeline_examples_per_sec"]
    train_flops = TRAIN_FLOPS_PER_FORWARD * m["forward"]
    print(f"realsize_train_examples_per_sec_2_workers_1_core={two_rate:.2f} (global batch {prelude.BATCH}, "
          f"{PER_WORKER} per worker)")
    print(f"realsize_train_examples_per_sec_1_process_2_cores={one_rate:.2f} (global batch {prelude.BATCH})")
    print(f"realsize_step_s_1_process_2_cores={one_step:.2f}")
    print(f"realsize_step_s_2_workers_1_core={two_step:.2f} = compute {compute:.2f} (a step of {PER_WORKER} on one "
          f"core alone, in-memory batch) + input {input_s:.2f} (the pipeline's time for {PER_WORKER} images on one "
          f"thread alone) + all-reduce, synchronisation and the rest {two_step - compute - input_s:.2f} (remainder)")
    print(f"realsize_allreduce_bytes_per_step={4 * params} ({params} trainable float32 parameters, "
          f"{4 * params / 2**20:.1f} MiB, fine_tune=true)")
    phases = m["startup"]
    for name, seconds in phases.items():
        if name != "total":
            print(f"realsize_startup_{name}_s={seconds:.2f}")
    print(f"realsize_submit_to_first_step_s={phases['total']:.2f} (goal <= {STARTUP_GOAL_S:.0f}: "
          f"{'met' if phases['total'] <= STARTUP_GOAL_S else 'MISSED'})")
    print(f"realsize_input_pipeline_examples_per_sec={one['pipeline_examples_per_sec']:.1f} (one worker's files, "
          f"batch {PER_WORKER}, one thread)")
    print(f"realsize_train_consumption_examples_per_sec_per_worker={two_rate / 2:.2f}")
    print(f"realsize_forward_flops_per_example={m['forward']} (profiler, batch 1); training = "
          f"{TRAIN_FLOPS_PER_FORWARD}x = {train_flops}")
    print(f"realsize_achieved_flops_per_sec_1_process_2_cores={train_flops * one_rate / 1e9:.2f}e9")
    print(f"realsize_matmul_flops_per_sec_2_cores={m['matmul'] / 1e9:.2f}e9 ({MATMUL_N}x{MATMUL_N} float32, best "
          "of 8)")
    print(f"realsize_mfu_in_process={train_flops * in_process_rate / m['matmul']:.3f} (the in-process fine-tuning "
          f"of realsize_train_examples_per_sec, batch {in_process_batch}, against the same matmul)")
    print(f"realsize_mfu_compute_1_core={train_flops * PER_WORKER / compute / one['matmul_flops_per_sec']:.3f} "
          f"(a step of {PER_WORKER} in memory on one thread, against the matmul on one thread: "
          f"{one['matmul_flops_per_sec'] / 1e9:.2f}e9 FLOP/s)")
    values = {"realsize_train_scaling_efficiency": two_rate / one_rate,
              "realsize_input_headroom": one["pipeline_examples_per_sec"] / (two_rate / 2),
              "realsize_mfu": train_flops * one_rate / m["matmul"]}
    print("; ".join(f"target {name}>={goal:g}: {'met' if values[name] >= goal else 'MISSED'}"
                    for name, goal in GOALS.items()))
    print(f"realsize_train_scaling_efficiency={values['realsize_train_scaling_efficiency']:.3f}")
    print(f"realsize_input_headroom={values['realsize_input_headroom']:.2f}")
    print(f"realsize_mfu={values['realsize_mfu']:.3f}")


if __name__ == "__main__":
    if sys.argv[1:2] != ["--one-core"]:
        raise SystemExit("realsize_scaling is run by bench_realsize.py (python bench/bench_realsize.py); on its own "
                         "it only takes --one-core <json>")
    job = json.loads(sys.argv[2])
    Path(job["out"]).write_text(json.dumps(one_core(job)))
