"""Operators that run the pipeline's spark-submit applications from ``tasks/``."""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import re

import psutil
from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Variable

from tfhub_spark.links import SparkApplicationLink, TensorBoardLink

PIPELINE_VARIABLE = "tfhub_pipeline"
"""The Airflow Variable (JSON) holding the storage root, model name and Spark conf of the deployment."""

DEFAULT_TASKS_DIR = Path(__file__).resolve().parents[3] / "tasks"


def build_tasks_zip(tasks_dir: Path, dest_dir: str) -> str:
    """Zips the ``tasks`` package for ``--py-files`` so drivers and executors import the same code.

    Entries are sorted and carry a fixed timestamp, so the same sources give the same archive.

    :param tasks_dir: the ``tasks`` package folder.
    :param dest_dir: where to write ``tasks.zip``.
    :return: the archive's path.
    """
    if not (tasks_dir / "__init__.py").exists():
        raise FileNotFoundError(f"{tasks_dir} is not the tasks package (no __init__.py); set tasks_dir")
    out = os.path.join(dest_dir, "tasks.zip")
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(tasks_dir.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            info = zipfile.ZipInfo(str(Path("tasks") / path.relative_to(tasks_dir)), date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return out


_SPARK_UI = re.compile(r"Bound SparkUI to .*, and started at (https?://\S+)")
_YARN_APP = re.compile(r"(application_\d+_\d+)")


class ProcessTreeSparkSubmitHook(SparkSubmitHook):
    """``SparkSubmitHook`` that reports what spark-submit prints, and whose ``on_kill`` leaves no process behind.

    The provider's ``on_kill`` SIGKILLs the spark-submit JVM. In client and local mode the JVM's children live on:
    PySpark's daemon puts itself and its Python workers (our TensorFlow workers) in a process group of their own,
    so they survive their parent and keep training. This hook records the whole process tree first, then lets
    the provider kill spark-submit (and the YARN or standalone driver), then terminates every remaining
    descendant, SIGKILLing what has not exited after ``grace_seconds``.
    """

    grace_seconds = 10.0
    on_line = None  # callable(line) set by the operator

    def _process_spark_submit_log(self, itr) -> None:
        def tapped():
            for line in itr:
                if self.on_line is not None:
                    self.on_line(line)
                yield line

        super()._process_spark_submit_log(tapped())

    def on_kill(self) -> None:
        tree: list[psutil.Process] = []
        if self._submit_sp is not None and self._submit_sp.poll() is None:
            try:
                tree = psutil.Process(self._submit_sp.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        super().on_kill()
        for proc in tree:
            try:
                proc.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(tree, timeout=self.grace_seconds)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        self.log.info("stopped spark-submit and %d descendant processes (%d needed SIGKILL)", len(tree), len(alive))


class PipelineSparkSubmitOperator(SparkSubmitOperator):
    """Runs ``tasks/<job>.py`` with ``spark-submit``, the ``tasks`` package on ``--py-files``.

    The deployment's Spark settings come from the ``spark_conf`` of the pipeline Variable, read when the task
    runs (never when the DAG is parsed), under the operator's own ``conf``, which wins. When the storage root is on
    ``hdfs://``, the jobs' WebHDFS settings (``TFHUB_WEBHDFS_URL``: every namenode of the connection, separated by
    commas; ``TFHUB_WEBHDFS_USER``: its login) come from the WebHDFS connection, the one Airflow itself reads
    HDFS with: they go into the driver's environment (``env_vars``, which the Spark provider turns into
    ``spark.yarn.appMasterEnv.*`` on YARN) and the executors' (``spark.executorEnv.*``).

    :param job: the application's module name in ``tasks/`` (``prepare_examples``, ``evaluate``...).
    :param job_args: the application's options, ``{"--flag": value}`` (templated); None values are left out.
    :param pipeline_variable: name of the pipeline Variable.
    :param tasks_dir: the ``tasks`` package folder; defaults to the Variable's ``tasks_dir``, then to the one
        beside ``plugins/``.
    :param webhdfs_conn_id: the HDFS provider's WebHDFS connection the jobs' ``hdfs://`` settings come from.
    """

    template_fields: Sequence[str] = (*SparkSubmitOperator.template_fields, "job_args")
    template_fields_renderers = {"job_args": "json", "conf": "json"}
    operator_extra_links = (SparkApplicationLink(),)

    def __init__(self, *, job: str, job_args: dict[str, Any] | None = None,
                 pipeline_variable: str = PIPELINE_VARIABLE, tasks_dir: str | None = None,
                 conn_id: str = "spark_tfhub", webhdfs_conn_id: str = "webhdfs_default", **kwargs: Any) -> None:
        kwargs.setdefault("name", f"tfhub-{job}")
        super().__init__(conn_id=conn_id, **kwargs)
        self.job = job
        self.job_args = job_args
        self.pipeline_variable = pipeline_variable
        self.tasks_dir = tasks_dir
        self.webhdfs_conn_id = webhdfs_conn_id

    def job_conf(self, context) -> dict[str, Any]:
        """Spark properties the job itself needs, over the deployment's; subclasses add theirs."""
        return {
            # The jobs import tensorflow_hub; hub.KerasLayer needs tf-keras, not Keras 3.
            "spark.executorEnv.TF_USE_LEGACY_KERAS": "1",
            "spark.yarn.appMasterEnv.TF_USE_LEGACY_KERAS": "1",
        }

    def build_application_args(self) -> list[str]:
        args: list[str] = []
        for flag, value in (self.job_args or {}).items():
            if value is None or value == "":
                continue
            if not flag.startswith("--"):
                raise ValueError(f"{self.task_id}: job_args key {flag!r} must start with --")
            args += [flag, str(value).lower() if isinstance(value, bool) else str(value)]
        return args

    #: Variable ``submit_options`` keys and the SparkSubmitOperator attributes they set, so that a deployment can
    #: choose how spark-submit is tracked (YARN cluster mode needs ``yarn_track_via_rm_api`` when ``durable``).
    SUBMIT_OPTIONS = {"yarn_track_via_rm_api": "_yarn_track_via_rm_api", "durable": "durable",
                      "status_poll_interval": "_status_poll_interval", "verbose": "_verbose"}

    def apply_submit_options(self, options: dict[str, Any]) -> None:
        unknown = sorted(set(options) - set(self.SUBMIT_OPTIONS))
        if unknown:
            raise ValueError(f"{self.pipeline_variable}.submit_options has unknown keys {unknown}; "
                             f"allowed: {sorted(self.SUBMIT_OPTIONS)}")
        for key, value in options.items():
            setattr(self, self.SUBMIT_OPTIONS[key], value)
        self._hook = None  # built from the attributes above

    #: The jobs' settings derived from the WebHDFS connection (see ``tasks/webhdfs.py``).
    WEBHDFS_ENV = ("TFHUB_WEBHDFS_URL", "TFHUB_WEBHDFS_USER")

    def webhdfs_env(self, pipeline: dict[str, Any]) -> dict[str, str]:
        """The jobs' WebHDFS settings from the WebHDFS connection; none when the storage root is not on hdfs://.

        :param pipeline: the pipeline Variable.
        """
        root = str(pipeline.get("storage_root") or "")
        if urlparse(root).scheme != "hdfs":
            return {}
        from airflow.sdk.bases.hook import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException

        from tfhub_spark.hooks.storage import webhdfs_urls

        try:
            conn = BaseHook.get_connection(self.webhdfs_conn_id)
        except AirflowNotFoundException as e:
            raise ValueError(f"{self.task_id}: the storage root {root} is on hdfs://, and the jobs reach it over "
                             f"WebHDFS at the namenodes of connection {self.webhdfs_conn_id!r}, which is not "
                             f"defined; create it (conn_type webhdfs, host: the namenodes separated by commas, "
                             f"port: their HTTP port, login: the HDFS user)") from e
        env = {"TFHUB_WEBHDFS_URL": ",".join(webhdfs_urls(conn))}
        if conn.login:
            env["TFHUB_WEBHDFS_USER"] = conn.login
        return env

    def apply_webhdfs_env(self, pipeline: dict[str, Any]) -> None:
        """Puts the jobs' WebHDFS settings into the driver's environment and the executors'; refuses a second,
        hand-written copy of them in the Variable's ``spark_conf`` or a different one in ``conf``/``env_vars``."""
        env = self.webhdfs_env(pipeline)
        spark_conf = pipeline.get("spark_conf", {})
        for name, value in env.items():
            for key in (f"spark.executorEnv.{name}", f"spark.yarn.appMasterEnv.{name}"):
                if key in spark_conf:
                    raise ValueError(f"{self.pipeline_variable}.spark_conf sets {key}, which the operators derive "
                                     f"from the WebHDFS connection {self.webhdfs_conn_id!r} ({value!r}): remove it "
                                     f"from the Variable and configure the namenodes in the connection only")
                if key in self.conf and self.conf[key] != value:
                    raise ValueError(f"{self.task_id}: conf sets {key}={self.conf[key]!r}, but the WebHDFS "
                                     f"connection {self.webhdfs_conn_id!r} gives {value!r}")
            if (self.env_vars or {}).get(name, value) != value:
                raise ValueError(f"{self.task_id}: env_vars sets {name}={self.env_vars[name]!r}, but the WebHDFS "
                                 f"connection {self.webhdfs_conn_id!r} gives {value!r}")
            self.conf[f"spark.executorEnv.{name}"] = value
        if env:
            self.env_vars = {**(self.env_vars or {}), **env}
            self.log.info("jobs' WebHDFS settings from connection %s: %s", self.webhdfs_conn_id, env)

    def prepare_submit(self, context, zip_dir: str) -> None:
        """Resolves the application, its arguments, the Spark conf, and zips the ``tasks`` package into
        ``zip_dir`` for ``--py-files``.
        """
        pipeline = Variable.get(self.pipeline_variable, default=None, deserialize_json=True) or {}
        self.apply_submit_options(pipeline.get("submit_options", {}))
        self.resolved_tasks_dir = Path(self.tasks_dir or pipeline.get("tasks_dir") or DEFAULT_TASKS_DIR)
        self.conf = {**pipeline.get("spark_conf", {}), **self.job_conf(context), **(self.conf or {})}
        self.apply_webhdfs_env(pipeline)
        self.application = str(self.resolved_tasks_dir / f"{self.job}.py")
        if not os.path.exists(self.application):
            raise FileNotFoundError(f"{self.task_id}: application {self.application} does not exist")
        self.application_args = [*self.build_application_args(), *(self.application_args or [])]
        archive = build_tasks_zip(self.resolved_tasks_dir, zip_dir)
        self.py_files = ",".join(p for p in (archive, self.py_files) if p)

    def _get_hook(self) -> SparkSubmitHook:
        hook = super()._get_hook()
        # Same hook, same state: only on_kill and the log tap differ (see ProcessTreeSparkSubmitHook).
        hook.__class__ = ProcessTreeSparkSubmitHook
        hook.on_line = self._watch_line
        return hook

    def _watch_line(self, line: str) -> None:
        """Records the Spark application's URL as soon as spark-submit prints it and publishes the link."""
        url = None
        if m := _SPARK_UI.search(line):
            url = m.group(1)
        elif (m := _YARN_APP.search(line)) and not getattr(self, "spark_app_url", "") and self._hook is not None:
            try:
                url = f"{self._hook._get_yarn_rm_base_url()}/cluster/app/{m.group(1)}"
            except ValueError:  # the connection does not name the ResourceManager's web address
                url = None
        if url and url != getattr(self, "spark_app_url", ""):
            self.spark_app_url = url
            self.log.info("Spark application: %s", url)
            if self._context is not None:
                self._context["ti"].xcom_push(key=SparkApplicationLink().xcom_key, value=url)

    def execute(self, context) -> None:
        self._context = context
        with tempfile.TemporaryDirectory(prefix=f"{self.job}-") as tmp:
            self.prepare_submit(context, tmp)
            self.log.info("running %s with the tasks package from %s", self.application, self.resolved_tasks_dir)
            return super().execute(context)

    _context = None


class TfHubFinetuneOperator(PipelineSparkSubmitOperator):
    """Fine-tunes a TF Hub module on prepared TFRecords in one Spark barrier stage of ``num_workers`` tasks.

    Each barrier task is one ``MultiWorkerMirroredStrategy`` worker (``tasks/finetune.py``). The operator sets
    what a barrier job needs: no dynamic allocation, a bounded barrier sync timeout, a fresh Python worker per
    task.

    :param examples: storage URL of the prepared dataset (templated).
    :param run_dir: storage URL of the run folder (templated).
    :param storage_root: storage root, for relative hub module paths and the hub cache (templated).
    :param hub_module: hub URL, Kaggle handle or path (templated).
    :param num_workers: barrier tasks (templated).
    :param epochs: training epochs (templated).
    :param batch_size: global batch size (templated).
    :param learning_rate: learning rate (templated).
    :param fine_tune: also train the hub module's weights (templated).
    :param max_restarts: relaunches of a failed barrier stage, each resuming from the last checkpoint (templated).
    :param checkpoint_every_steps: steps between two checkpoints (templated).
    :param stall_timeout_s: seconds without progress from a worker before the stage is failed (templated).
    :param slots_wait_s: seconds pre-flight waits for executors to register before failing on slots (templated).
    :param module_lr_scale: with ``fine_tune``, the hub module's learning rate relative to the head's (templated).
    :param barrier_sync_timeout: seconds a worker waits for the others at a barrier before the stage fails.
    """

    template_fields: Sequence[str] = (
        *PipelineSparkSubmitOperator.template_fields, "examples", "run_dir", "storage_root", "hub_module",
        "num_workers", "epochs", "batch_size", "learning_rate", "fine_tune", "max_restarts",
        "checkpoint_every_steps", "stall_timeout_s", "slots_wait_s", "module_lr_scale",
    )
    ui_color = "#fff3e0"
    operator_extra_links = (SparkApplicationLink(), TensorBoardLink())

    def __init__(self, *, examples: str, run_dir: str, storage_root: str, hub_module: str,
                 num_workers: int | str = 2, epochs: int | str = 5, batch_size: int | str = 32,
                 learning_rate: float | str = 1e-3, fine_tune: bool | str = False,
                 max_restarts: int | str = 2, checkpoint_every_steps: int | str = 50,
                 stall_timeout_s: int | str = 300, slots_wait_s: int | str = 30,
                 module_lr_scale: float | str = 1.0, barrier_sync_timeout: int = 900, **kwargs: Any) -> None:
        super().__init__(job="finetune", **kwargs)
        self.examples = examples
        self.run_dir = run_dir
        self.storage_root = storage_root
        self.hub_module = hub_module
        self.num_workers = num_workers
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.fine_tune = fine_tune
        self.max_restarts = max_restarts
        self.checkpoint_every_steps = checkpoint_every_steps
        self.stall_timeout_s = stall_timeout_s
        self.slots_wait_s = slots_wait_s
        self.module_lr_scale = module_lr_scale
        self.barrier_sync_timeout = barrier_sync_timeout

    def execute(self, context) -> None:
        pipeline = Variable.get(self.pipeline_variable, default=None, deserialize_json=True) or {}
        logdir = self.run_dir.rstrip("/") + "/tensorboard"
        template = pipeline.get("tensorboard_url")
        self.tensorboard_url = template.format(logdir=logdir) if template else logdir
        context["ti"].xcom_push(key=TensorBoardLink().xcom_key, value=self.tensorboard_url)
        return super().execute(context)

    def job_conf(self, context) -> dict[str, Any]:
        return {
            **super().job_conf(context),
            "spark.dynamicAllocation.enabled": "false",
            "spark.barrier.sync.timeout": str(self.barrier_sync_timeout),
            # A TensorFlow worker must not inherit a previous task's TF runtime in a reused Python worker.
            "spark.python.worker.reuse": "false",
            # Spark re-checks a barrier stage's slots 40 times every 15 s by default: 10 minutes before it gives up.
            "spark.scheduler.barrier.maxConcurrentTasksCheck.interval": "5s",
            "spark.scheduler.barrier.maxConcurrentTasksCheck.maxFailures": "6",
        }

    def build_application_args(self) -> list[str]:
        self.job_args = {
            "--examples": self.examples,
            "--run-dir": self.run_dir,
            "--storage-root": self.storage_root,
            "--hub-module": self.hub_module,
            "--num-workers": self.num_workers,
            "--epochs": self.epochs,
            "--batch-size": self.batch_size,
            "--learning-rate": self.learning_rate,
            "--fine-tune": self.fine_tune,
            "--module-lr-scale": self.module_lr_scale,
            "--max-restarts": self.max_restarts,
            "--checkpoint-every-steps": self.checkpoint_every_steps,
            "--stall-timeout-s": self.stall_timeout_s,
            "--slots-wait-s": self.slots_wait_s,
            **(self.job_args or {}),
        }
        return super().build_application_args()


class ModelExportOperator(PipelineSparkSubmitOperator):
    """Exports the blessed model for TF Serving, publishes it atomically and verifies it (``tasks/export_model.py``).

    Returns (to XCom) the published model's path, version and headline metrics, and attaches them to the
    events of its outlet assets, so a downstream DAG scheduled on the asset knows what was published.

    :param run_dir: storage URL of the run folder (templated).
    :param examples: storage URL of the prepared dataset (templated).
    :param serving_root: storage URL of the serving root (templated).
    :param model_name: model folder under the serving root (templated).
    :param version: numeric version (templated).
    :param webhdfs_conn_id: WebHDFS connection for reading the result on ``hdfs://``.
    """

    template_fields: Sequence[str] = (
        *PipelineSparkSubmitOperator.template_fields, "run_dir", "examples", "serving_root", "model_name", "version",
    )
    ui_color = "#e8f5e9"

    def __init__(self, *, run_dir: str, examples: str, serving_root: str, model_name: str, version: str | int,
                 **kwargs: Any) -> None:
        super().__init__(job="export_model", **kwargs)
        self.run_dir = run_dir
        self.examples = examples
        self.serving_root = serving_root
        self.model_name = model_name
        self.version = version

    def build_application_args(self) -> list[str]:
        self.job_args = {"--run-dir": self.run_dir, "--examples": self.examples, "--serving-root": self.serving_root,
                         "--model-name": self.model_name, "--version": self.version, **(self.job_args or {})}
        return super().build_application_args()

    def execute(self, context) -> dict[str, Any]:
        super().execute(context)
        from tfhub_spark.hooks.storage import StorageHook

        url = self.run_dir.rstrip("/") + "/published.json"
        published = json.loads(StorageHook(webhdfs_conn_id=self.webhdfs_conn_id).read_text(url))
        self.log.info("published %s version %s: %s (accuracy %s)", published["model_name"], published["version"],
                      published["url"], published.get("accuracy"))
        for outlet in self.outlets or []:
            context["outlet_events"][outlet].extra = dict(published)
        return published
