"""The whole DAG ``tfhub_finetune`` in cluster mode through ``airflow dags test``, on the session's real HDFS and YARN.

The Airflow home is set up by ``scripts/setup_airflow.sh`` from ``config/local-hadoop/`` (filled with the cluster's
ports by ``MiniHadoop.airflow_config``) and an ``hdfs://`` storage root: only the connections, the Variable and the
pool differ from the embedded default, plus ``HADOOP_CONF_DIR``/``YARN_CONF_DIR``, which any YARN client needs.
So the sensor reads the real WebHDFS, every Spark job is a YARN application (client deploy mode, queue ``tfhub``,
the venv's Python on the NodeManager), ``finetune`` is a barrier stage on 2 executor containers, and the model is
published on HDFS.

The run is also the killed-container test: once the chief has committed a checkpoint, the Python process of
training worker 1 (inside its YARN executor container) is SIGKILLed. ``finetune``'s restart logic must relaunch the
barrier stage, resume from the committed checkpoint and finish; the rest of the DAG runs on that model.

Kept small: 120 images, the small hub module, 3 epochs of 42 steps (global batch 2, so that the default
``checkpoint_every_steps=50`` commits a checkpoint during epoch 2), ``min_accuracy`` 0 so the gate lets the
export run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from tasks.io.webhdfs import WebHdfsClient
from tests.conftest import ROOT, airflow_env, airflow_sh, make_partition
from tests.support.minihadoop import MiniHadoop

DS = "2026-11-20"
RUN_DATE = "2026-11-21"  # the daily run after DS: the partition comes from the data interval
NUM_IMAGES = 120
CONF = {"hub_module": "hub/small_fv", "epochs": 3, "batch_size": 2, "learning_rate": 0.002, "min_accuracy": 0.0,
        "max_restarts": 1}
CHECKPOINT = re.compile(r"\[w0 [^\]]*\] worker 0 checkpoint at epoch (\d+) step (\d+)")
WORKER1 = re.compile(r"\[w1 [^\]]*:(\d+)\]")


@dataclasses.dataclass
class YarnDagRun:
    """The finished ``airflow dags test`` and what the test did during it."""

    root: str
    output: str
    returncode: int
    wall_s: float
    setup_s: float
    killed: dict


def kill_worker_1_after_first_checkpoint(log: Path, proc: subprocess.Popen, killed: dict) -> None:
    """Follows the run's log; once worker 0 has committed a checkpoint, SIGKILLs worker 1's Python process, which
    must be a process of a YARN container (its working folder is the container's)."""
    text, pid = "", None
    with open(log, errors="replace") as f:
        while proc.poll() is None:
            chunk = f.read()
            if not chunk:
                time.sleep(0.5)
                continue
            text = text[-1000:] + chunk  # a line split between two reads is matched whole on the next
            pid = int(WORKER1.findall(text)[-1]) if WORKER1.search(text) else pid
            ckpt = CHECKPOINT.search(text)
            if ckpt and pid:
                break
        else:
            return
    try:
        victim = psutil.Process(pid)
        killed.update(pid=pid, cwd=victim.cwd(), cmdline=victim.cmdline(), after_checkpoint=ckpt.groups())
    except psutil.NoSuchProcess:
        killed.update(error=f"worker 1 (pid {pid}) was gone before the kill")
        return
    os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def yarn_dag_run(minihadoop: MiniHadoop, small_hub_module: Path, tmp_path_factory) -> YarnDagRun:
    t0 = time.monotonic()
    base = tmp_path_factory.mktemp("yarn-dag")
    root = f"{minihadoop.fs_default_fs}/tfhub-dag-{uuid.uuid4().hex[:8]}"
    env = minihadoop.client_env(airflow_env(base / "airflow", base / "unused"))
    env.update(TFHUB_STORAGE_ROOT=root, TFHUB_CONFIG_DIR=str(minihadoop.airflow_config(base / "config")))
    setup = airflow_sh("bash scripts/setup_airflow.sh", env, timeout=300)
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    raw = make_partition(base / "raw", DS, NUM_IMAGES, seed=7)
    with WebHdfsClient(minihadoop.webhdfs_url, user="airflow") as c:
        c.upload_dir(small_hub_module, f"{root}/hub/small_fv")
        c.upload_dir(raw, f"{root}/raw/ds={DS}")  # _SUCCESS last
    setup_s = time.monotonic() - t0

    log = base / "dags-test.log"
    killed: dict = {}
    t1 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["bash", "-c", f". {ROOT}/scripts/env.sh && airflow dags test tfhub_finetune {RUN_DATE} "
                           f"-c '{json.dumps(CONF)}'"],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        killer = threading.Thread(target=kill_worker_1_after_first_checkpoint, args=(log, proc, killed), daemon=True)
        killer.start()
        try:
            proc.wait(timeout=1500)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        killer.join(10)
    run = YarnDagRun(root, log.read_text(errors="replace"), proc.returncode, time.monotonic() - t1, setup_s, killed)
    (base / "run.json").write_text(json.dumps({**dataclasses.asdict(run), "output": str(log)}, indent=2))
    print(f"\ncluster-mode DAG run: {run.wall_s:.0f} s (setup {setup_s:.0f} s); {base / 'run.json'}")
    return run


def test_whole_dag_runs_in_cluster_mode_on_hdfs_and_yarn(minihadoop: MiniHadoop, yarn_dag_run: YarnDagRun):
    import requests

    run = yarn_dag_run
    out = run.output
    assert run.returncode == 0 and "state=success" in out, out[-8000:]
    # The sensor read the partition over the real WebHDFS.
    assert f"ready: {run.root}/raw/ds={DS} is complete: _SUCCESS" in out, out[-8000:]
    # Each Spark job was a YARN application of queue tfhub, and the last of each job succeeded (an earlier one is an
    # attempt Airflow retried). export_model starts no SparkContext: in client deploy mode it runs in spark-submit's
    # driver on this host, and YARN never sees it.
    apps = requests.get(f"{minihadoop.rm_webapp}/ws/v1/cluster/apps", timeout=30).json()["apps"]["app"]
    by_job: dict[str, list[dict]] = {}
    for app in sorted((a for a in apps if a["id"] in out), key=lambda a: a["id"]):
        by_job.setdefault(app["name"].split()[0], []).append(app)
    assert sorted(by_job) == ["evaluate", "finetune", "prepare_examples"], by_job
    for job, attempts in by_job.items():
        assert {a["queue"] for a in attempts} == {"root.tfhub"}, attempts
        assert (attempts[-1]["state"], attempts[-1]["finalStatus"]) == ("FINISHED", "SUCCEEDED"), (job, attempts)
    retried = {job: len(a) - 1 for job, a in by_job.items() if len(a) > 1}
    if retried:
        print(f"YARN applications retried by Airflow: {retried}")
    assert re.search(r"Spark-Submit cmd: spark-submit --master yarn .* \S+/tasks/export_model\.py ", out)
    # The barrier stage ran on 2 executor containers.
    assert re.search(r"pre-flight passed in [\d.]+s: 2 task slots for 2 workers", out)
    # Everything the DAG writes is on HDFS.
    with WebHdfsClient(minihadoop.webhdfs_url, user="airflow") as c:
        run_dir = f"{run.root}/runs/ds={DS}"
        examples = json.loads(c.read_bytes(f"{run.root}/examples/ds={DS}/manifest.json"))
        metrics = json.loads(c.read_bytes(f"{run_dir}/metrics.json"))
        blessing = json.loads(c.read_bytes(f"{run_dir}/blessing.json"))
        published = json.loads(c.read_bytes(f"{run_dir}/published.json"))
        versions = [e["pathSuffix"] for e in c.list(f"{run.root}/serving/shapes")]
        served = {e["pathSuffix"] for e in c.list(f"{run.root}/serving/shapes/20261120")}
    assert sum(examples["counts"].values()) == NUM_IMAGES
    assert 0 <= metrics["accuracy"] <= 1
    assert blessing["blessed"] is True and blessing["baseline"] is None
    assert published["version"] == 20261120 and published["verified"] is True
    assert versions == ["20261120"] and "saved_model.pb" in served


def test_a_killed_training_worker_in_a_yarn_container_is_relaunched_from_the_checkpoint(minihadoop: MiniHadoop,
                                                                                          yarn_dag_run: YarnDagRun):
    run = yarn_dag_run
    killed = run.killed
    assert killed.get("pid"), f"worker 1 was never killed: {killed}\n{run.output[-6000:]}"
    # The process killed was a training worker inside a YARN executor container.
    assert re.search(r"/container_\d+_\d+_\d+_\d+$", killed["cwd"]), killed
    assert "python" in Path(killed["cmdline"][0]).name, killed
    out = run.output
    assert "barrier stage attempt 1 failed" in out, out[-8000:]
    m = re.search(r"restart 1 of 1: relaunching the barrier stage; it resumes from the checkpoint at epoch (\d+) "
                  r"step (\d+) \(global step (\d+)\)", out)
    assert m, out[-8000:]
    for rank in (0, 1):  # both workers of the relaunched stage started from that checkpoint, not from scratch
        assert re.search(rf"\[w{rank} [^\]]*\] \(attempt 1\) worker {rank} resumed from the checkpoint at epoch "
                         rf"{m.group(1)} step {m.group(2)} ", out), rank
    with WebHdfsClient(minihadoop.webhdfs_url, user="airflow") as c:
        history = json.loads(c.read_bytes(f"{run.root}/runs/ds={DS}/history.json"))
    assert history["restarts"] == 1
    assert [a["outcome"] for a in history["attempts"]] == ["failed", "succeeded"]
    assert history["resumed_from"]["global_step"] == int(m.group(3)) > 0, history["resumed_from"]
    assert len(history["history"]) == CONF["epochs"]
    assert run.returncode == 0
