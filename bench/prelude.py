"""What every benchmark shares: the repository on ``sys.path``, the process environment, progress lines, and the
jobs run as Airflow runs them (``spark-submit`` of ``tasks/<job>.py`` with the ``tasks`` package zipped on
``--py-files``), the demo hub module, a fine-tuning run (``submit_finetune``) and its start-up timeline read from
the job's ``history.json``.

Benchmarks use the jobs' public interfaces only (their command lines, ``Config`` and ``run``, and the files they
write), so a refactor of the internals does not break them silently.

Import it first, before anything that reads the environment (TensorFlow, PySpark)::

    import prelude
    from prelude import ROOT, say
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tasks.core import run_folder  # noqa: E402  (after the repository is on sys.path)

DS = "2026-01-01"
"""The date of the partitions the benchmarks generate."""
BATCH = 32
"""The global batch of the fine-tuning benchmarks: the DAG's default."""
SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"
STARTUP_PHASES = [("jvm", "driver_process_start"), ("spark_session", "session_ready"),
                  ("barrier_launch", "task_start"), ("tf_import", "tf_imported"), ("inputs", "inputs_ready"),
                  ("strategy_setup", "model_built"), ("first_step", "first_step")]
"""The fine-tuning start-up phases, each ending at a mark of the job's timeline (``history.json``)."""


def setting(name: str, default: int) -> int:
    """A benchmark's size setting from the environment (``BENCH_...``)."""
    return int(os.environ.get(name, str(default)))


def work_dir(variable: str, *default: str) -> Path:
    """A benchmark's work folder, where its inputs are made once and reused: ``$variable``, else
    ``<repo>/var/bench/<default...>``."""
    return Path(os.environ.get(variable, ROOT.joinpath("var", "bench", *default)))


def legacy_keras() -> None:
    """hub.KerasLayer is a tf-keras layer: TensorFlow must load Keras 2 (before it is imported)."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"


def spark_in_this_process() -> None:
    """Environment for running a job's ``run`` with PySpark in this process: Python workers of this interpreter,
    with the repository importable."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)


def say(msg: str) -> None:
    """A progress line, tagged with the benchmark's name and the time."""
    print(f"[{Path(sys.argv[0]).stem} {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def job_env() -> dict[str, str]:
    env = dict(os.environ)
    # The jobs import the tasks package from --py-files, as under Airflow.
    env.pop("PYTHONPATH", None)
    env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    return env


def tasks_zip(dest: Path) -> Path:
    """The ``tasks`` package zipped for ``--py-files`` (the demo inputs left out, as the operator does)."""
    out = dest / "tasks.zip"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted((ROOT / "tasks").rglob("*.py")):
            rel = path.relative_to(ROOT / "tasks")
            if "__pycache__" not in path.parts and rel.parts[0] != "demo":
                zf.write(path, str(Path("tasks") / rel))
    return out


def spark_submit(app: str, args: list[str], conf: dict[str, str], py_files: Path, log: Path,
                 master: str = "local[2]") -> float:
    """Runs one application; returns the wall-clock time it was launched at. Fails with the log's tail."""
    cmd = [str(SPARK_SUBMIT), "--master", master, "--py-files", str(py_files)]
    for key, value in {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
                       "spark.driver.memory": "1g", **conf}.items():
        cmd += ["--conf", f"{key}={value}"]
    cmd += [str(ROOT / "tasks" / app), *args]
    started = time.time()
    with open(log, "w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=job_env(), cwd=log.parent).returncode
    if rc:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise SystemExit(f"{Path(sys.argv[0]).stem}: {app} failed with exit code {rc}; log {log}:\n{tail}")
    return started


def demo_hub_module(work: Path) -> Path:
    """The demo's hub module (``make hub-module``), or one of its architecture built under ``work`` once:
    throughput does not depend on how well it was pre-trained."""
    from tasks.demo import make_hub_module

    hub = ROOT / "var" / "storage" / "hub" / "shapes_fv_32"
    if not (hub / "saved_model.pb").exists():
        hub = work / "hub" / "shapes_fv_32"
        if not (hub / "saved_model.pb").exists():
            say("building a hub module (demo architecture, short pre-training)")
            make_hub_module.run(make_hub_module.Config(output=f"file://{hub}", pretext_images=600, epochs=1))
    return hub


def prepared_examples(work: Path, examples: Path, ds: str, num_images: int, py_files: Path, **images) -> Path:
    """Demo images generated under ``work`` and prepared by ``prepare_examples`` into ``examples``, once."""
    from tasks.demo import make_dataset

    if not (examples / run_folder.SUCCESS).exists():
        raw = work / f"raw-{num_images}"
        shutil.rmtree(raw, ignore_errors=True)
        say(f"generating {num_images} images and preparing them with Spark")
        make_dataset.run(make_dataset.Config(raw_root=f"file://{raw}", ds=ds, num_images=num_images, **images))
        spark_submit("prepare_examples.py", ["--raw", f"file://{raw}/ds={ds}", "--output", f"file://{examples}",
                                             "--partition", ds, "--min-shards", "4"], {}, py_files,
                     work / "prepare.log")
    return examples


def read_json(folder: Path, name: str) -> dict:
    """A JSON file a job wrote (``run_folder.HISTORY``, ``run_folder.MANIFEST``...)."""
    return json.loads((folder / name).read_text())


def submit_finetune(name: str, work: Path, hub: Path, examples: Path, py_files: Path, workers: int, task_cpus: int,
                    batch: int, epochs: int) -> tuple[dict, float, float]:
    """One ``tasks/finetune.py`` run through spark-submit on ``local[2]`` (``fine_tune=true``, ``workers`` barrier
    tasks of ``task_cpus`` cores, global ``batch``); returns its history, when it was submitted, and the median
    global training examples/s of the epochs after the first (which traces the model)."""
    run_dir = work / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    args = ["--examples", f"file://{examples}", "--run-dir", f"file://{run_dir}", "--storage-root", f"file://{work}",
            "--hub-module", str(hub), "--num-workers", str(workers), "--epochs", str(epochs), "--batch-size",
            str(batch), "--fine-tune", "true", "--checkpoint-every-steps", "1000", "--max-restarts", "0"]
    conf = {"spark.task.cpus": str(task_cpus), "spark.executorEnv.TF_USE_LEGACY_KERAS": "1",
            "spark.dynamicAllocation.enabled": "false", "spark.python.worker.reuse": "false",
            "spark.barrier.sync.timeout": "900"}
    say(f"training: {name} ({workers} barrier workers x {task_cpus} cores, global batch {batch}, {epochs} epochs)")
    submitted = spark_submit("finetune.py", args, conf, py_files, work / f"train-{name}.log")
    history = read_json(run_dir, run_folder.HISTORY)
    rates = [h["examples_per_sec"] for h in history["history"][1:]]
    say(f"  {name}: examples/s per epoch {[h['examples_per_sec'] for h in history['history']]}")
    return history, submitted, statistics.median(rates)


def startup_phases(history: dict, submitted: float) -> dict[str, float]:
    """Seconds of each start-up phase, from spark-submit to the end of the first step."""
    timeline = history["timeline"]
    marks = {"driver_process_start": timeline["driver_process_start"], "session_ready": timeline["session_ready"]}
    for key in ("task_start", "tf_imported", "inputs_ready", "model_built", "first_step"):
        marks[key] = max(w[key] for w in timeline["workers"].values())
    out, previous = {}, submitted
    for name, key in STARTUP_PHASES:
        out[name] = marks[key] - previous
        previous = marks[key]
    out["total"] = marks["first_step"] - submitted
    return out
