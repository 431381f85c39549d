"""Batch-scoring benchmark: our Spark scoring on 2 executors of 1 core against one process, same records, same model.

The model: the hub module ``BENCH_SCORE_MODULE``, by default the real-size one: MobileNetV2 1.0 at 224×224
(``tasks.demo.make_mobilenet_module``; ``var/storage/hub/mobilenet_v2_100_224`` when ``make hub-module
NAME=mobilenet_v2_100_224`` has built it, otherwise an untrained copy built once into ``<BENCH_SCORE_DIR>``: the
weights change no timing), under a 4-class head, published in TF Serving layout by ``export_model``'s serving
module (decoding and resizing inside the graph). ``BENCH_SCORE_MODULE=var/storage/hub/shapes_fv_32`` measures the
demo's 32×32 module instead, where a model load (seconds) outweighs scoring thousands of records (about a
millisecond each), so the ratio says more about start-up than about scoring. The records: a generated demo
partition of ``BENCH_SCORE_IMAGES`` images (default 3000, JPEG and PNG of 56 to 112 pixels, a labels.csv),
generated once into ``<BENCH_SCORE_DIR>/score/`` and reused.

* ours: ``tasks.score_partition.run`` on ``BENCH_SCORE_MASTER`` (default ``local-cluster[2,1,2048]``: two executor
  JVMs of one core each), with a session already started (its start-up is printed apart); TensorFlow one thread
  per task, the model loaded once per Python worker;
* baseline: one Python process, one TensorFlow thread, running the same listing, reading, checks and scoring
  (``tasks.serving.scoring.score_unit`` on one unit holding every record) and writing one Parquet file.

Both predictions must agree within 1e-5, or the benchmark fails. Prints records/s of each, the model load time of
each Python worker, and ends with ``score_speedup=<ours/baseline>``.

Usage::

    python bench/bench_score.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import prelude  # noqa: F401  (first: the repository on sys.path, the environment)
from prelude import ROOT, say
from tasks.core import run_folder

prelude.spark_in_this_process()
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

NUM_IMAGES = int(os.environ.get("BENCH_SCORE_IMAGES", "3000"))
BENCH_DIR = prelude.work_dir("BENCH_SCORE_DIR") / "score"
REAL_SIZE = ROOT / "var" / "storage" / "hub" / "mobilenet_v2_100_224"
MODULE = Path(os.environ.get("BENCH_SCORE_MODULE") or (REAL_SIZE if (REAL_SIZE / "saved_model.pb").exists()
                                                        else BENCH_DIR / "mobilenet_v2_100_224_untrained"))
MASTER = os.environ.get("BENCH_SCORE_MASTER", "local-cluster[2,1,2048]")
DS = "2026-01-01"
LABELS = ("circle", "cross", "square", "triangle")



def ensure_module() -> Path:
    if (MODULE / "saved_model.pb").exists():
        return MODULE
    if MODULE.name.startswith("mobilenet_v2"):
        from tasks.demo import make_mobilenet_module as builder

        say(f"no module at {MODULE}: building MobileNetV2 1.0 224 untrained (about 30 s)")
        builder.run(builder.Config(output=f"file://{MODULE}", pretext_images=0))
    else:
        from tasks.demo import make_hub_module as builder

        say(f"no module at {MODULE}: building the demo module (about 90 s)")
        builder.run(builder.Config(output=f"file://{MODULE}"))
    return MODULE


def ensure_partition() -> Path:
    raw = BENCH_DIR / "raw" / f"ds={DS}"
    if (raw / run_folder.SUCCESS).exists() and len(list((raw / "images").iterdir())) == NUM_IMAGES:
        return raw
    from tasks.demo import make_dataset

    shutil.rmtree(raw, ignore_errors=True)
    t0 = time.time()
    make_dataset.run(make_dataset.Config(raw_root=f"file://{BENCH_DIR}/raw", ds=DS, num_images=NUM_IMAGES, seed=1))
    say(f"generated {NUM_IMAGES} images in {time.time() - t0:.0f}s")
    return raw


def publish(module: Path, version_dir: Path) -> None:
    from tasks.serving import export
    from tasks.training import model as M

    info = json.loads((module / "assets.extra" / "module_info.json").read_text())
    size = tuple(info.get("image_size") or (32, 32))
    M.tf.keras.utils.set_random_seed(0)
    keras_model = M.build_model(str(module), M.ModelConfig(num_classes=len(LABELS), image_size=size))
    shutil.rmtree(version_dir, ignore_errors=True)
    assets = version_dir.parent / ".assets"
    shutil.rmtree(assets, ignore_errors=True)
    assets.mkdir(parents=True)
    (assets / "labels.txt").write_text("".join(f"{n}\n" for n in LABELS))
    serving = export.build_serving_module(keras_model, str(assets / "labels.txt"), size, "image_classification")
    M.tf.saved_model.save(serving, str(version_dir), signatures={"serving_default": serving.serve})
    (version_dir / "assets.extra").mkdir(exist_ok=True)
    (version_dir / "assets.extra" / "provenance.json").write_text(json.dumps({"task_type": "image_classification"}))
    shutil.rmtree(assets)


def baseline(raw: Path, version_dir: Path, out: Path) -> tuple[float, float]:
    """One process, one TensorFlow thread: returns (seconds, model load seconds)."""
    from tasks.prep import image_check, layouts
    from tasks.serving import models, scoring

    t0 = time.perf_counter()
    listed = layouts.list_partition("manifest", f"file://{raw}", "labels.csv", "path", "label", "image")
    unit = scoring.raw_units(listed, 1, len(listed.records) + 1)
    assert len(unit) == 1
    job = scoring.Job(source=f"file://{raw}", labels=LABELS, output_staging=f"file://{out}",
                      model=models.ModelRef(f"file://{version_dir}", models.SERVED, "image_classification",
                                             threads=1),
                      bounds=image_check.Bounds(), model_name="bench", model_version=1, partition=DS)
    summary = scoring.score_unit(unit[0], job)
    return time.perf_counter() - t0, summary["load_seconds"]


def main() -> None:
    from tasks.core import runtime

    runtime.set_legacy_keras()
    module, raw = ensure_module(), ensure_partition()
    version_dir = BENCH_DIR / "serving" / "bench" / "1"
    publish(module, version_dir)
    n = len(list((raw / "images").iterdir()))
    say(f"{n} records, model {module} ({MASTER} against one process)")

    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        # Ours, in a fresh session (the baseline's TensorFlow threads are set in this process, not in Spark's).
        from pyspark.sql import SparkSession

        from tasks import score_partition as S

        t0 = time.time()
        spark = (SparkSession.builder.master(MASTER).appName("bench_score")
                 .config("spark.ui.enabled", "false").config("spark.python.worker.reuse", "true")
                 .config("spark.executor.memory", "1536m").config("spark.task.cpus", "1")
                 .config("spark.executorEnv.PYTHONPATH", os.environ["PYTHONPATH"])
                 .config("spark.executorEnv.TF_USE_LEGACY_KERAS", "1").getOrCreate())
        spark.sparkContext.parallelize(range(2), 2).count()  # executors registered
        say(f"Spark session and executors up in {time.time() - t0:.1f}s (paid once per job, not counted)")
        out = Path(tmp) / "predictions" / "bench" / f"ds={DS}"
        t1 = time.perf_counter()
        stats = S.run(S.Config(raw=f"file://{raw}", output=f"file://{out}", serving_root=f"file://{BENCH_DIR}/serving",
                               model_name="bench", partition=DS, quarantine=f"file://{tmp}/quarantine"), spark)
        ours = time.perf_counter() - t1
        spark.stop()
        load = stats["model_load"]
        say(f"ours: {n} records in {ours:.1f}s = {n / ours:.1f} records/s; {load['workers']} Python workers, "
            f"model loads {load['load_seconds']} s, {load['units_reusing_a_loaded_model']} of {load['units']} "
            "tasks reused a loaded model")

        base_out = Path(tmp) / "baseline"
        base_out.mkdir()
        # A fresh process, so that its one TensorFlow thread is set before TensorFlow starts (this one built the
        # model with every core).
        res = subprocess.run([sys.executable, __file__, "baseline", str(raw), str(version_dir), str(base_out)],
                             capture_output=True, text=True, check=True)
        base, base_load = json.loads(res.stdout.strip().splitlines()[-1])
        say(f"baseline: {n} records in {base:.1f}s = {n / base:.1f} records/s; model load {base_load:.2f}s")

        import numpy as np
        import pandas as pd

        a = pd.read_parquet(out).sort_values("record_id")
        b = pd.read_parquet(base_out).sort_values("record_id")
        assert list(a.record_id) == list(b.record_id), "ours and the baseline scored different records"
        diff = float(np.abs(np.stack(a.probabilities.to_numpy()) - np.stack(b.probabilities.to_numpy())).max())
        if diff > 1e-5:
            raise SystemExit(f"predictions differ by {diff:.2e}")
        say(f"predictions agree (max difference {diff:.1e})")
    print(f"score_speedup={base / ours:.2f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["baseline"]:
        print(json.dumps(baseline(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))))
    else:
        main()
