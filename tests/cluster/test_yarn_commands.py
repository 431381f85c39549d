"""With the cluster mode's connections and Variable (config/cluster/), the operators build the exact spark-submit
command lines for YARN: the same DAG, other settings. The embedded default's equivalent is
tests/plugins/test_operators.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from tfhub_spark.operators.spark_job import PipelineSparkSubmitOperator, TfHubFinetuneOperator

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_CONFIG = ROOT / "config" / "cluster"
GPU_KEYS = {
    "spark.executor.resource.gpu.amount": "1",
    "spark.task.resource.gpu.amount": "1",
    "spark.executor.resource.gpu.discoveryScript": "/opt/tfhub/bin/getGpusResources.sh",
}


def storage_root() -> str:
    """The storage root docker-compose.yaml hands to scripts/setup_airflow.sh."""
    services = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["services"]
    return services["airflow-init"]["environment"]["TFHUB_STORAGE_ROOT"]


def load(name: str) -> dict:
    """A config/cluster file with its placeholders filled as scripts/setup_airflow.sh fills them."""
    text = (CLUSTER_CONFIG / name).read_text()
    return json.loads(text.replace("@PROJECT_ROOT@", str(ROOT)).replace("@STORAGE_ROOT@", storage_root()))


ROOT_URL = storage_root()
RAW = f"{ROOT_URL}/raw/ds=2026-11-20"
EXAMPLES = f"{ROOT_URL}/examples/ds=2026-11-20"
RUN_DIR = f"{ROOT_URL}/runs/ds=2026-11-20"


def deploy(monkeypatch, variables_file: str = "variables.json", **overrides) -> dict:
    """Puts the cluster's connections and Variable where Airflow looks first (AIRFLOW_CONN_*, AIRFLOW_VAR_*)."""
    connections = load("connections.json")
    pipeline = {**load(variables_file)["tfhub_pipeline"], **overrides}
    for conn_id, conn in connections.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    monkeypatch.setenv("AIRFLOW_VAR_TFHUB_PIPELINE", json.dumps(pipeline))
    return pipeline


def command(op, tmp_path) -> list[str]:
    op.prepare_submit({}, str(tmp_path))
    return op._get_hook()._build_spark_submit_command(op.application)


def confs(cmd: list[str]) -> dict[str, str]:
    return dict(cmd[i + 1].split("=", 1) for i, arg in enumerate(cmd) if arg == "--conf")


def conf_args(conf: dict) -> list[str]:
    return [a for k, v in conf.items() for a in ("--conf", f"{k}={v}")]


def cluster_mode_tail(job: str, tmp_path) -> list[str]:
    """What follows the Spark conf on a YARN cluster-mode command line, up to the application's own options."""
    return [
        # yarn_track_via_rm_api: spark-submit returns once YARN accepted the application; Airflow polls the RM.
        "--conf", "spark.yarn.submit.waitAppCompletion=false",
        # The driver's WebHDFS settings (the ApplicationMaster's environment), from the webhdfs connection.
        "--conf", "spark.yarn.appMasterEnv.TFHUB_WEBHDFS_URL=http://namenode:9870",
        "--conf", "spark.yarn.appMasterEnv.TFHUB_WEBHDFS_USER=airflow",
        "--py-files", str(tmp_path / "tasks.zip"),
        "--name", f"tfhub-{job}",
        "--queue", "tfhub",
        "--deploy-mode", "cluster",
        str(ROOT / "tasks" / f"{job}.py"),
    ]


def test_prepare_examples_submits_to_yarn_in_cluster_mode(monkeypatch, tmp_path):
    pipeline = deploy(monkeypatch)
    op = PipelineSparkSubmitOperator(task_id="prepare_examples", job="prepare_examples", conn_id="spark_tfhub",
                                     webhdfs_conn_id="webhdfs_tfhub",
                                     job_args={"--raw": RAW, "--output": EXAMPLES, "--min-shards": 4})
    cmd = command(op, tmp_path)
    assert cmd == [
        "spark-submit", "--master", "yarn",
        *conf_args(pipeline["spark_conf"]),
        "--conf", "spark.executorEnv.TF_USE_LEGACY_KERAS=1",
        "--conf", "spark.yarn.appMasterEnv.TF_USE_LEGACY_KERAS=1",
        # The jobs' WebHDFS settings, from the webhdfs connection: the executors' here, the driver's in the tail.
        "--conf", "spark.executorEnv.TFHUB_WEBHDFS_URL=http://namenode:9870",
        "--conf", "spark.executorEnv.TFHUB_WEBHDFS_USER=airflow",
        *cluster_mode_tail("prepare_examples", tmp_path),
        "--raw", "hdfs://namenode:8020/tfhub/raw/ds=2026-11-20",
        "--output", "hdfs://namenode:8020/tfhub/examples/ds=2026-11-20",
        "--min-shards", "4",
    ]
    c = confs(cmd)
    # The executors' (and the cluster-mode driver's) Python, with TensorFlow, on the NodeManagers.
    assert c["spark.pyspark.python"] == "/opt/tfhub-env/bin/python"
    assert c["spark.pyspark.driver.python"] == "/opt/tfhub-env/bin/python"
    assert c["spark.yarn.archive"] == "hdfs://namenode:8020/apps/spark/spark-jars-4.2.0.zip"
    # What the job code needs in its environment, in the driver (ApplicationMaster) and the executors.
    assert c["spark.executorEnv.TFHUB_WEBHDFS_URL"] == "http://namenode:9870"
    assert c["spark.yarn.appMasterEnv.TFHUB_WEBHDFS_URL"] == "http://namenode:9870"
    assert c["spark.executorEnv.TF_USE_LEGACY_KERAS"] == "1"
    assert c["spark.yarn.appMasterEnv.TF_USE_LEGACY_KERAS"] == "1"
    assert c["spark.eventLog.dir"] == "hdfs://namenode:8020/spark-history"
    assert "--archives" not in cmd


def test_finetune_command_line_on_yarn(monkeypatch, tmp_path):
    pipeline = deploy(monkeypatch)
    op = TfHubFinetuneOperator(task_id="finetune", conn_id="spark_tfhub", webhdfs_conn_id="webhdfs_tfhub",
                               pool="tfhub_training", examples=EXAMPLES, run_dir=RUN_DIR, storage_root=ROOT_URL,
                               hub_module="hub/shapes_fv_32", num_workers="2", epochs="15", batch_size="32",
                               learning_rate="0.002", fine_tune=True)
    cmd = command(op, tmp_path)
    conf = {**pipeline["spark_conf"],
            "spark.executorEnv.TF_USE_LEGACY_KERAS": "1", "spark.yarn.appMasterEnv.TF_USE_LEGACY_KERAS": "1",
            "spark.executorEnv.TFHUB_WEBHDFS_URL": "http://namenode:9870",
            "spark.executorEnv.TFHUB_WEBHDFS_USER": "airflow"}
    assert cmd == [
        "spark-submit", "--master", "yarn",
        *conf_args(conf),
        *cluster_mode_tail("finetune", tmp_path),
        "--examples", EXAMPLES, "--run-dir", RUN_DIR, "--storage-root", "hdfs://namenode:8020/tfhub",
        "--hub-module", "hub/shapes_fv_32", "--num-workers", "2", "--epochs", "15", "--batch-size", "32",
        "--learning-rate", "0.002", "--fine-tune", "true",
    ]
    c = confs(cmd)
    # A barrier stage needs all its tasks at once: fixed executors, every one registered before it starts. (The
    # job itself sets no dynamic allocation, no worker reuse and the barrier timeouts:
    # tasks.training.preflight.SESSION_CONF.)
    assert c["spark.dynamicAllocation.enabled"] == "false"
    assert int(c["spark.executor.instances"]) * int(c["spark.executor.cores"]) >= 2  # the DAG's num_workers
    assert c["spark.scheduler.minRegisteredResourcesRatio"] == "1.0"


def test_yarn_application_is_tracked_through_the_resourcemanager(monkeypatch, tmp_path):
    deploy(monkeypatch)
    op = PipelineSparkSubmitOperator(task_id="evaluate", job="evaluate", conn_id="spark_tfhub",
                                     webhdfs_conn_id="webhdfs_tfhub",
                                     job_args={"--examples": EXAMPLES, "--run-dir": RUN_DIR})
    op.prepare_submit({}, str(tmp_path))
    hook = op._get_hook()
    assert hook._is_yarn_cluster_mode
    assert hook._should_track_yarn_application_via_rm_api()
    hook._validate_yarn_track_via_rm_api_config()
    assert hook._get_yarn_rm_base_url() == "http://resourcemanager:8088"
    assert hook._status_poll_interval == 15


def test_without_rm_tracking_the_provider_refuses_durable_yarn_cluster_mode(monkeypatch, tmp_path):
    """Why the Variable sets submit_options.yarn_track_via_rm_api: without it, the operator fails before submitting."""
    deploy(monkeypatch, submit_options={})
    op = PipelineSparkSubmitOperator(task_id="evaluate", job="evaluate", conn_id="spark_tfhub",
                                     webhdfs_conn_id="webhdfs_tfhub",
                                     job_args={"--examples": EXAMPLES, "--run-dir": RUN_DIR})
    assert op.durable
    with pytest.raises(ValueError, match="requires yarn_track_via_rm_api=True"):
        op.execute({})


def test_every_spark_task_of_the_dag_submits_to_yarn(monkeypatch, tmp_path):
    """The DAG's own tasks (templates unrendered) with the cluster settings: every Spark stage goes to YARN in
    cluster mode, on the tfhub queue, with the executors' Python and the tasks package."""
    from airflow.dag_processing.dagbag import DagBag

    deploy(monkeypatch)
    connections = load("connections.json")
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    seen = []
    for dag in bag.dags.values():
        for task in dag.tasks:
            if not isinstance(task, PipelineSparkSubmitOperator):
                continue
            assert task._conn_id in connections, f"{task.task_id} uses connection {task._conn_id}"
            op = copy.deepcopy(task)
            folder = tmp_path / task.task_id
            folder.mkdir()
            cmd = command(op, folder)
            pairs = list(zip(cmd, cmd[1:]))
            assert ("--master", "yarn") in pairs and ("--deploy-mode", "cluster") in pairs, task.task_id
            assert ("--queue", "tfhub") in pairs and ("--py-files", str(folder / "tasks.zip")) in pairs
            c = confs(cmd)
            assert c["spark.pyspark.python"] == "/opt/tfhub-env/bin/python", task.task_id
            assert c["spark.executorEnv.TFHUB_WEBHDFS_URL"] == "http://namenode:9870", task.task_id
            assert c["spark.yarn.appMasterEnv.TFHUB_WEBHDFS_URL"] == "http://namenode:9870", task.task_id
            assert c["spark.yarn.submit.waitAppCompletion"] == "false", task.task_id
            app = cmd.index(str(ROOT / "tasks" / f"{op.job}.py"))
            assert cmd[app - 2:app] == ["--deploy-mode", "cluster"], task.task_id
            seen.append(task.task_id)
    assert {"prepare_examples", "finetune", "evaluate", "export_model"} <= set(seen)


def test_gpu_variables_add_the_resource_confs(monkeypatch, tmp_path):
    deploy(monkeypatch, "variables.gpu.json")
    op = TfHubFinetuneOperator(task_id="finetune", conn_id="spark_tfhub", webhdfs_conn_id="webhdfs_tfhub",
                               examples=EXAMPLES, run_dir=RUN_DIR, storage_root=ROOT_URL,
                               hub_module="hub/shapes_fv_32", num_workers="2")
    cmd = command(op, tmp_path)
    c = confs(cmd)
    for key, value in GPU_KEYS.items():
        assert c[key] == value
        assert cmd[cmd.index(f"{key}={value}") - 1] == "--conf"
    # One task per executor: each TensorFlow worker gets the executor's GPU.
    assert c["spark.executor.cores"] == "1"
    assert c["spark.task.resource.gpu.amount"] == c["spark.executor.resource.gpu.amount"]


def test_gpu_variables_are_the_cpu_variables_plus_the_gpu_settings():
    cpu = load("variables.json")["tfhub_pipeline"]
    gpu = load("variables.gpu.json")["tfhub_pipeline"]
    assert {k: v for k, v in gpu.items() if k != "spark_conf"} == {k: v for k, v in cpu.items() if k != "spark_conf"}
    assert gpu["spark_conf"] == {**cpu["spark_conf"], **GPU_KEYS}
    assert not set(GPU_KEYS) & set(cpu["spark_conf"])
