"""The Spark jobs on the session's real YARN, reading and writing hdfs:// on its real NameNode, submitted with the
exact command lines the operators build from ``config/local-hadoop/`` (client deploy mode, queue ``tfhub``, the
venv's Python on the NodeManager: on one machine the containers can run it in place).

A raw partition and a small hub module are uploaded over WebHDFS; ``prepare_examples`` turns the partition into
TFRecords on HDFS; ``finetune`` trains on them as a barrier stage of 2 tasks in 2 YARN containers.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest
import requests

from tasks.io.webhdfs import WebHdfsClient
from tests.support.minihadoop import MiniHadoop
from tests.support.spark_standalone import daemon_env

PARTITION = "2026-11-20"
NUM_IMAGES = 120


def deploy(monkeypatch: pytest.MonkeyPatch, config_dir: Path) -> dict:
    """The local cluster's connections and Variable where Airflow looks first (AIRFLOW_CONN_*, AIRFLOW_VAR_*)."""
    connections = json.loads((config_dir / "connections.json").read_text())
    variables = json.loads((config_dir / "variables.json").read_text())
    for conn_id, conn in connections.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    monkeypatch.setenv("AIRFLOW_VAR_TFHUB_PIPELINE", json.dumps(variables["tfhub_pipeline"]))
    return variables["tfhub_pipeline"]


def submit(op, cluster: MiniHadoop, work: Path, timeout_s: float = 900) -> tuple[int, str, list[str]]:
    """Builds the operator's spark-submit command line and runs it against the local YARN."""
    work.mkdir(parents=True, exist_ok=True)
    op.prepare_submit({}, str(work))
    hook = op._get_hook()
    cmd = hook._build_spark_submit_command(op.application)
    # The hook runs spark-submit with its env_vars on top of the worker's environment (on YARN it also turns them
    # into spark.yarn.appMasterEnv.*, for a cluster-mode driver): the client-mode driver reads them from there.
    env = daemon_env(cluster.client_env(), **(hook._env or {}))
    proc = subprocess.run(cmd, cwd=work, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout_s)
    (work / "spark-submit.log").write_text(proc.stdout)
    return proc.returncode, proc.stdout, cmd


def yarn_app(cluster: MiniHadoop, log: str) -> dict:
    """The ResourceManager's record of the (last) application a spark-submit log names."""
    app_id = re.findall(r"application_\d+_\d+", log)[-1]
    return requests.get(f"{cluster.rm_webapp}/ws/v1/cluster/apps/{app_id}", timeout=30).json()["app"]


@pytest.fixture(scope="module")
def local_config(minihadoop: MiniHadoop, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = f"{minihadoop.fs_default_fs}/tfhub-yarn-{uuid.uuid4().hex[:8]}"
    return minihadoop.airflow_config(tmp_path_factory.mktemp("local-hadoop-config"), storage_root=root), root


@pytest.fixture(scope="module")
def prepared_on_hdfs(minihadoop: MiniHadoop, local_config, small_hub_module: Path,
                     tmp_path_factory: pytest.TempPathFactory):
    """A raw partition and the small hub module uploaded, then ``prepare_examples`` run on YARN."""
    from tests.conftest import make_partition
    from tfhub_spark.operators.spark_job import PipelineSparkSubmitOperator

    config_dir, root = local_config
    work = tmp_path_factory.mktemp("yarn-prepare")
    raw = make_partition(work / "raw", PARTITION, NUM_IMAGES, seed=7)
    with WebHdfsClient(minihadoop.webhdfs_url, user="airflow") as c:
        c.upload_dir(raw, f"{root}/raw/ds={PARTITION}")
        c.upload_dir(small_hub_module, f"{root}/hub/small_fv")
    with pytest.MonkeyPatch.context() as mp:
        deploy(mp, config_dir)
        op = PipelineSparkSubmitOperator(task_id="prepare_examples", job="prepare_examples",
                                         conn_id="spark_tfhub", webhdfs_conn_id="webhdfs_tfhub",
                                         job_args={"--raw": f"{root}/raw/ds={PARTITION}",
                                                   "--output": f"{root}/examples/ds={PARTITION}",
                                                   "--partition": PARTITION, "--min-shards": 2})
        rc, log, cmd = submit(op, minihadoop, work)
    assert rc == 0, log[-6000:]
    return root, log, cmd


def test_prepare_examples_on_yarn_writes_tfrecords_to_hdfs(minihadoop: MiniHadoop, prepared_on_hdfs):
    root, log, cmd = prepared_on_hdfs
    assert cmd[:3] == ["spark-submit", "--master", "yarn"] and "--deploy-mode" in cmd
    app = yarn_app(minihadoop, log)
    assert (app["state"], app["finalStatus"], app["queue"]) == ("FINISHED", "SUCCEEDED", "root.tfhub")
    assert "prepare_examples" in app["name"]
    with WebHdfsClient(minihadoop.webhdfs_url, user="airflow") as c:
        examples = f"{root}/examples/ds={PARTITION}"
        names = {e["pathSuffix"] for e in c.list(examples)}
        assert {"manifest.json", "_SUCCESS"} <= names
        manifest = json.loads(c.read_bytes(f"{examples}/manifest.json"))
    assert sum(manifest["counts"].values()) == NUM_IMAGES
    assert any(n.startswith("train-") and n.endswith(".tfrecord") for n in names)


def test_barrier_finetune_runs_on_two_yarn_containers(minihadoop: MiniHadoop, local_config, prepared_on_hdfs,
                                                      monkeypatch, tmp_path):
    from tfhub_spark.operators.spark_job import TfHubFinetuneOperator

    config_dir, _ = local_config
    root = prepared_on_hdfs[0]
    deploy(monkeypatch, config_dir)
    run_dir = f"{root}/runs/ds={PARTITION}"
    op = TfHubFinetuneOperator(task_id="finetune", conn_id="spark_tfhub", webhdfs_conn_id="webhdfs_tfhub",
                               pool="tfhub_training", examples=f"{root}/examples/ds={PARTITION}", run_dir=run_dir,
                               storage_root=root, hub_module="hub/small_fv", num_workers="2", epochs="2",
                               batch_size="16", learning_rate="0.002", fine_tune=True)
    rc, log, _ = submit(op, minihadoop, tmp_path)
    assert rc == 0, log[-8000:]
    app = yarn_app(minihadoop, log)
    assert (app["state"], app["finalStatus"], app["queue"]) == ("FINISHED", "SUCCEEDED", "root.tfhub")
    # Both barrier tasks ran, each in its own executor container.
    executors = set(re.findall(r"Registered executor .* with ID (\d+)", log))
    assert len(executors) == 2, log[-8000:]
    with WebHdfsClient(minihadoop.webhdfs_url, user="airflow") as c:
        names = {e["pathSuffix"] for e in c.list(run_dir)}
        assert {"model", "history.json", "finetune_config.json"} <= names, names
        history = json.loads(c.read_bytes(f"{run_dir}/history.json"))
    assert history["restarts"] == 0 and len(history["history"]) == 2
    assert sorted(history["worker_files"]) == ["0", "1"]


def test_killing_the_task_ends_its_yarn_application(minihadoop: MiniHadoop, local_config, prepared_on_hdfs,
                                                    monkeypatch, tmp_path):
    """What Airflow does when a running finetune task is cancelled: the operator's ``on_kill``. In client deploy mode
    the driver is spark-submit's child; once it is gone YARN must end the application and its containers."""
    import threading
    import time

    import psutil

    from tfhub_spark.operators.spark_job import TfHubFinetuneOperator

    config_dir, _ = local_config
    root = prepared_on_hdfs[0]
    deploy(monkeypatch, config_dir)
    op = TfHubFinetuneOperator(task_id="finetune", conn_id="spark_tfhub", webhdfs_conn_id="webhdfs_tfhub",
                               pool="tfhub_training", examples=f"{root}/examples/ds={PARTITION}",
                               run_dir=f"{root}/runs-cancelled/ds={PARTITION}", storage_root=root,
                               hub_module="hub/small_fv", num_workers="2", epochs="50", batch_size="16",
                               learning_rate="0.002", fine_tune=True)
    op.prepare_submit({}, str(tmp_path))
    hook = op._get_hook()
    op._hook = hook
    lines: list[str] = []
    hook.on_line = lines.append
    monkeypatch.setenv("HADOOP_CONF_DIR", str(minihadoop.conf_dir))
    monkeypatch.setenv("YARN_CONF_DIR", str(minihadoop.conf_dir))
    monkeypatch.delenv("PYTHONPATH", raising=False)  # tasks come from --py-files, as on a cluster
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            hook.submit(op.application)
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - reported by the assertions below
            outcome.append(e)

    submitter = threading.Thread(target=run, daemon=True)
    submitter.start()
    deadline = time.monotonic() + 600
    app_id = None
    while time.monotonic() < deadline and not outcome:
        text = "\n".join(lines)
        ids = re.findall(r"application_\d+_\d+", text)
        if ids and re.search(r"worker [01] epoch \d+/50", text):
            app_id = ids[-1]
            break
        time.sleep(1)
    assert app_id, "training never started on YARN:\n" + "\n".join(lines[-80:])
    app_url = f"{minihadoop.rm_webapp}/ws/v1/cluster/apps/{app_id}"
    assert requests.get(app_url, timeout=30).json()["app"]["state"] == "RUNNING"

    op.on_kill()
    submitter.join(120)
    assert outcome and outcome[0] is not None, "spark-submit ended normally although it was killed"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        app = requests.get(app_url, timeout=30).json()["app"]
        if app["state"] in ("FINISHED", "FAILED", "KILLED") and app["runningContainers"] <= 0:
            break
        time.sleep(2)
    assert app["state"] in ("FINISHED", "FAILED", "KILLED") and app["runningContainers"] <= 0, app
    running = requests.get(f"{minihadoop.rm_webapp}/ws/v1/cluster/apps?states=RUNNING", timeout=30).json()["apps"]
    assert not running, running
    # No process of the application is left on this machine: executors, their Python workers, the AM.
    def of_the_app(p: psutil.Process) -> bool:
        try:  # a container's processes name it in their command line or run in its folder
            return app_id in " ".join(p.cmdline()) or app_id in p.cwd()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return False

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        left = [p.pid for p in psutil.process_iter() if of_the_app(p)]
        if not left:
            break
        time.sleep(2)
    assert not left, f"processes of {app_id} still alive: {left}"
