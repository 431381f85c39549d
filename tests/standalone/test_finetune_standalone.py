"""Fine-tuning on a real Spark standalone cluster (a master and two 1-core workers on 127.0.0.1), submitted with
spark-submit the way the Airflow operator does: a normal run, a run on skewed shards read from hdfs:// (the WebHDFS
test server), a run in which one worker's process is killed mid-training, and a run asking for more workers than
the cluster has slots.

Each run trains the demo hub module on a generated shapes partition and must reach the end-to-end test's bar:
test accuracy >= 0.9. The killed run must also be within ``KILLED_TOLERANCE`` of the normal run's accuracy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tasks.core import schema
from tasks.prep import tfrecord
from tests.conftest import SPARK_DRIVER_JAVA_OPTIONS, PreparedDataset
from tests.support.spark_standalone import SPARK_SUBMIT, SparkStandalone, daemon_env
from tests.support.webhdfs_server import WebHdfsTestServer

ROOT = Path(__file__).resolve().parents[2]
PARTITION = "2026-11-20"
NUM_IMAGES = 600
"""As in the end-to-end test: enough for a test split on which 0.9 is a stable bar."""
ACCURACY_BAR = 0.9
"""The end-to-end test's bar on the held-out test split."""
KILLED_TOLERANCE = 0.05
"""A run that lost a worker and resumed may be this much less accurate than an uninterrupted one, no more."""
TRAIN_ARGS = ["--num-workers", "2", "--epochs", "15", "--batch-size", "32", "--learning-rate", "0.002",
              "--fine-tune", "true", "--checkpoint-every-steps", "10", "--max-restarts", "2",
              "--stall-timeout-s", "120"]
BASE_CONF = {
    "spark.pyspark.python": sys.executable,
    "spark.pyspark.driver.python": sys.executable,
    "spark.executor.cores": "1",
    "spark.cores.max": "2",
    "spark.executor.memory": "512m",
    "spark.driver.memory": "1g",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    # As config/embedded sets them (see tests/conftest.py).
    "spark.driver.extraJavaOptions": SPARK_DRIVER_JAVA_OPTIONS,
    "spark.executor.extraJavaOptions": "-XX:TieredStopAtLevel=1",
    # What the job sets on a session it creates (SESSION_CONF, SESSION_DEFAULTS of tasks.training.preflight), given
    # explicitly here.
    "spark.executorEnv.TF_USE_LEGACY_KERAS": "1",
    "spark.dynamicAllocation.enabled": "false",
    "spark.barrier.sync.timeout": "900",
    "spark.python.worker.reuse": "false",
}
HELLO = re.compile(r"worker (\d+) of attempt (\d+) started: pid (\d+)")
CHECKPOINT = re.compile(r"worker 0 checkpoint at epoch (\d+) step (\d+) \(global step (\d+)\) saved")
TASK = re.compile(r"worker (\d+): task attempt \d+ of stage attempt (\d+), \d+ cpus, GPUs \[([^\]]*)\]")

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # Each worker advertises one fake GPU (addresses 0 and 1), so a job can ask for GPUs per task.
    with SparkStandalone(tmp_path_factory.mktemp("standalone"), workers=2, cores=1, memory="3g",
                         gpus_per_worker=1) as c:
        yield c


@pytest.fixture(scope="module")
def tasks_zip(tmp_path_factory) -> Path:
    from tfhub_spark.operators.spark_job import build_tasks_zip

    return Path(build_tasks_zip(ROOT / "tasks", str(tmp_path_factory.mktemp("pyfiles"))))


def prepare(prepared: PreparedDataset, root: Path, demo_hub_module: Path) -> Path:
    """The session's prepared demo partition copied to ``<root>/examples/ds=...`` (and ``raw/``), and the demo
    module at ``<root>/hub/``."""
    assert (prepared.ds, prepared.num_images, prepared.min_shards) == (PARTITION, NUM_IMAGES, 4)
    examples = prepared.copy_to(root)
    shutil.copytree(demo_hub_module, root / "hub" / "shapes_fv_32")
    return examples


@pytest.fixture(scope="module")
def storage_root(prepared_demo_dataset, demo_hub_module, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("storage")
    prepare(prepared_demo_dataset, root, demo_hub_module)
    return root


class Submission:
    """One spark-submit of tasks/finetune.py against the cluster, its output read line by line as it comes."""

    def __init__(self, cluster: SparkStandalone, tasks_zip: Path, args: list[str], log_file: Path, *,
                 conf: dict[str, str] | None = None, env: dict[str, str] | None = None) -> None:
        self.cmd = [str(SPARK_SUBMIT), "--master", cluster.master_url, "--deploy-mode", "client",
                    "--name", "tfhub-finetune"]
        for key, value in {**BASE_CONF, **(conf or {})}.items():
            self.cmd += ["--conf", f"{key}={value}"]
        self.cmd += ["--py-files", str(tasks_zip), str(ROOT / "tasks" / "finetune.py"), *args]
        self.env = daemon_env(None, **(env or {}))
        self.log_file = log_file
        self.lines: list[tuple[float, str]] = []

    def run(self, on_line=None, timeout: float = 900) -> int:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
                                cwd=self.log_file.parent, start_new_session=True)
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            with open(self.log_file, "w") as out:
                for line in proc.stdout:
                    out.write(line)
                    self.lines.append((time.monotonic(), line.rstrip("\n")))
                    if on_line is not None:
                        on_line(line)
            rc = proc.wait()
        finally:
            timer.cancel()
        self.seconds = time.monotonic() - self.started
        assert not timed_out.is_set(), f"spark-submit killed after {timeout}s:\n{self.tail()}"
        return rc

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def tail(self, n: int = 60) -> str:
        return "\n".join(line for _, line in self.lines[-n:])


def app_args(root: str, examples: str, run_dir: str, extra: list[str] | None = None) -> list[str]:
    return ["--examples", examples, "--run-dir", run_dir, "--storage-root", root,
            "--hub-module", "hub/shapes_fv_32", *TRAIN_ARGS, *(extra or [])]


def accuracy_of(model_dir: Path, examples: Path) -> float:
    """Accuracy of a saved model on the test split."""
    from tasks.training import model as M

    manifest = json.loads((examples / schema.MANIFEST).read_text())
    files = [str(examples / f["name"]) for f in manifest["files"]["test"] if f["records"]]
    model = M.load_trained(str(model_dir))
    size = tuple(model.input_shape[1:3])
    correct = total = 0
    for x, y in M.make_dataset(files, size, 64, training=False):
        correct += int((model(x, training=False).numpy().argmax(axis=1) == y.numpy()).sum())
        total += int(y.shape[0])
    assert total == manifest["counts"]["test"]
    return correct / total


def worker_lines(text: str, rank: int, pattern: str) -> list[str]:
    return [ln for ln in text.splitlines() if f"[w{rank} " in ln and re.search(pattern, ln)]


@pytest.fixture(scope="module")
def normal_run(cluster, tasks_zip, storage_root):
    run_dir = storage_root / "runs" / f"ds={PARTITION}"
    sub = Submission(cluster, tasks_zip, app_args(f"file://{storage_root}", f"file://{storage_root}/examples/"
                                                  f"ds={PARTITION}", f"file://{run_dir}"),
                     storage_root / "logs" / "normal.log",
                     # Ask Spark for one GPU per task: each worker must see only its own.
                     conf={"spark.executor.resource.gpu.amount": "1", "spark.task.resource.gpu.amount": "1"})
    rc = sub.run()
    assert rc == 0, sub.tail()
    return sub, run_dir, accuracy_of(run_dir / "model", storage_root / "examples" / f"ds={PARTITION}")


def test_normal_run_reaches_the_bar_and_reports_every_worker(normal_run):
    sub, run_dir, accuracy = normal_run
    assert accuracy >= ACCURACY_BAR, sub.tail()
    history = json.loads((run_dir / "history.json").read_text())
    assert history["restarts"] == 0 and len(history["history"]) == 15
    assert sorted(p.name for p in run_dir.iterdir()) == ["finetune_config.json", "history.json", "model",
                                                         "tensorboard", "training_curves.png"]
    assert (run_dir / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((run_dir / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert list((run_dir / "tensorboard" / "validation").glob("events.out.tfevents.*"))
    # Both workers' progress reached the driver's log (the Airflow task log), with loss and examples/s.
    for rank in (0, 1):
        assert worker_lines(sub.text, rank, rf"worker {rank} epoch \d+/15 step \d+/\d+ loss \d+\.\d+ .* "
                                            r"\d+\.\d examples/s")
        assert worker_lines(sub.text, rank, rf"worker {rank} epoch 15/15 done: loss")
    # Each worker saw only the GPU Spark assigned to its task.
    gpus = {m.group(1): m.group(3) for m in TASK.finditer(sub.text)}
    assert sorted(gpus) == ["0", "1"] and sorted(gpus.values()) == ["0", "1"], gpus
    phases = history["timeline"]["workers"]["0"]
    assert list(phases)[:7] == ["task_start", "tf_imported", "inputs_ready", "rendezvous", "strategy_ready",
                                "model_built", "first_step"]


def skew(examples: Path, fraction: float = 0.85) -> list[int]:
    """Rewrites the training split as two files holding ``fraction`` and ``1 - fraction`` of its records."""
    manifest = json.loads((examples / schema.MANIFEST).read_text())
    records = []
    for f in manifest["files"]["train"]:
        with open(examples / f["name"], "rb") as fh:
            records += list(tfrecord.read_records(fh))
        (examples / f["name"]).unlink()
    cut = int(len(records) * fraction)
    files = []
    for i, part in enumerate((records[:cut], records[cut:])):
        name = schema.shard_name("train", i, 2)
        with open(examples / name, "wb") as fh:
            tfrecord.write_records(fh, part)
        files.append({"name": name, "records": len(part), "bytes": (examples / name).stat().st_size})  # as prep
    manifest["files"]["train"] = files
    (examples / schema.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return [f["records"] for f in files]


def test_skewed_shards_on_hdfs_finish_with_equal_steps(cluster, tasks_zip, prepared_demo_dataset, demo_hub_module,
                                                       tmp_path):
    with WebHdfsTestServer(tmp_path / "hdfs") as srv:
        root = srv.root / "tfhub"
        examples = prepare(prepared_demo_dataset, root, demo_hub_module)
        counts = skew(examples)
        assert counts[0] >= 5 * counts[1] > 0
        hdfs_root = "hdfs://namenode:8020/tfhub"
        # Only the driver is told where WebHDFS is: it hands the setting to the workers with their tasks.
        sub = Submission(cluster, tasks_zip, app_args(hdfs_root, f"{hdfs_root}/examples/ds={PARTITION}",
                                                      f"{hdfs_root}/runs/ds={PARTITION}"),
                         tmp_path / "skewed.log", env={"TFHUB_WEBHDFS_URL": srv.url})
        rc = sub.run()
        assert rc == 0, sub.tail()
        opened = {path.rsplit("/", 1)[1] for _, op, path in srv.calls("datanode") if op == "OPEN"}
    run_dir = root / "runs" / f"ds={PARTITION}"
    history = json.loads((run_dir / "history.json").read_text())
    assert history["worker_files"] == {"0": ["train-00000-of-00002.tfrecord"],
                                       "1": ["train-00001-of-00002.tfrecord"]}
    assert {"train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord", "saved_model.pb"} <= opened
    # Every worker ran every step of every epoch, whatever its share of the records.
    steps = history["steps_per_epoch"]
    for rank in (0, 1):
        done = worker_lines(sub.text, rank, rf"worker {rank} epoch \d+/15 done")
        assert len(done) == 15, sub.tail()
    assert f"{steps} steps per epoch" in sub.text
    assert list((run_dir / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert (run_dir / "training_curves.png").exists() and not (run_dir / "checkpoints").exists()
    assert accuracy_of(run_dir / "model", examples) >= ACCURACY_BAR, sub.tail()


def test_a_killed_worker_is_survived_and_training_resumes_from_the_checkpoint(cluster, tasks_zip, storage_root,
                                                                              normal_run):
    run_dir = storage_root / "runs-killed" / f"ds={PARTITION}"
    sub = Submission(cluster, tasks_zip, app_args(f"file://{storage_root}", f"file://{storage_root}/examples/"
                                                  f"ds={PARTITION}", f"file://{run_dir}"),
                     storage_root / "logs" / "killed.log")
    pids: dict[tuple[int, int], int] = {}
    killed: dict = {}

    def on_line(line: str) -> None:
        if m := HELLO.search(line):
            pids[(int(m.group(2)), int(m.group(1)))] = int(m.group(3))
        m = CHECKPOINT.search(line)
        if m and not killed and int(m.group(3)) >= 30:
            pid = pids[(0, 1)]
            # Only a process of this cluster: a Python worker of the venv, child of an executor.
            assert psutil.Process(pid).exe() == psutil.Process().exe()
            os.kill(pid, signal.SIGKILL)
            killed.update(pid=pid, at=time.monotonic(), checkpoint=tuple(int(g) for g in m.groups()))

    rc = sub.run(on_line)
    assert rc == 0, sub.tail()
    assert killed, "no checkpoint at global step 30 was logged before training ended"
    text = sub.text
    failed_at = next(t for t, line in sub.lines if "barrier stage attempt 1 failed" in line)
    assert failed_at - killed["at"] < 30, "the loss of the worker took too long to reach the driver"
    assert "Python worker exited unexpectedly" in text
    m = re.search(r"restart 1 of 2: relaunching the barrier stage; it resumes from the checkpoint at epoch (\d+) "
                  r"step (\d+) \(global step (\d+)\)", text)
    assert m, sub.tail()
    epoch, step, global_step = (int(g) for g in m.groups())
    assert global_step >= killed["checkpoint"][2]
    for rank in (0, 1):
        assert worker_lines(text, rank, f"worker {rank} resumed from the checkpoint at epoch {epoch} step {step} "
                                        rf"\(global step {global_step}\)"), sub.tail()
    history = json.loads((run_dir / "history.json").read_text())
    assert history["restarts"] == 1 and [a["outcome"] for a in history["attempts"]] == ["failed", "succeeded"]
    assert [h["epoch"] for h in history["history"]] == list(range(1, 16))
    accuracy = accuracy_of(run_dir / "model", storage_root / "examples" / f"ds={PARTITION}")
    normal_accuracy = normal_run[2]
    assert accuracy >= ACCURACY_BAR and accuracy >= normal_accuracy - KILLED_TOLERANCE, (accuracy, normal_accuracy)


def test_more_workers_than_slots_fail_within_a_minute(cluster, tasks_zip, storage_root):
    run_dir = storage_root / "runs-too-many" / f"ds={PARTITION}"
    args = app_args(f"file://{storage_root}", f"file://{storage_root}/examples/ds={PARTITION}", f"file://{run_dir}",
                    ["--num-workers", "3", "--batch-size", "30"])
    sub = Submission(cluster, tasks_zip, args, storage_root / "logs" / "too-many.log")
    rc = sub.run(timeout=120)
    assert rc != 0
    assert sub.seconds < 60, f"took {sub.seconds:.0f}s"
    assert "num_workers=3 barrier tasks wanted but 2 task slots available" in sub.text, sub.tail()
    assert not run_dir.exists()
