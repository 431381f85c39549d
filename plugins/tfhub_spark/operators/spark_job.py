"""Operators that run the pipeline's spark-submit applications from ``tasks/``.

``PipelineSparkSubmitOperator`` owns the submission: the deployment's Spark conf and submit options, the jobs'
WebHDFS settings, the command line, the Spark application's link; ``TfHubFinetuneOperator`` and
``ModelExportOperator`` add what only their job needs. Crash safety (fencing an older attempt) is in
``attempt_fencing.py``, the provider hook's adapter in ``hooks/spark_submit.py``, the ``tasks`` archive in
``tasks_package.py``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Variable

from tfhub_spark.hooks.spark_submit import ProcessTreeSparkSubmitHook
from tfhub_spark.links import (REVIEW_LINKS, PublishedVersionLink, SparkApplicationLink, TensorBoardLink,
                               TrainingCurvesLink, api_base_url, files_url)
from tfhub_spark.operators.attempt_fencing import AttemptFencingMixin
from tfhub_spark.run_folder import PUBLISHED, TENSORBOARD
from tfhub_spark.tasks_package import DEFAULT_TASKS_DIR, build_tasks_zip

PIPELINE_VARIABLE = "tfhub_pipeline"
"""The Airflow Variable (JSON) holding the storage root, model name and Spark conf of the deployment."""

_SPARK_UI = re.compile(r"Bound SparkUI to .*, and started at (https?://\S+)")
_YARN_APP = re.compile(r"(application_\d+_\d+)")
# A standalone Master's application id, as the driver logs it when it registers (before the job may lower the log
# level; the jobs name their session themselves, so the Master's application name does not carry the attempt).
_STANDALONE_APP = re.compile(r"Connected to Spark cluster with app ID (app-\d+-\d+)")


class PipelineSparkSubmitOperator(AttemptFencingMixin, SparkSubmitOperator):
    """Runs ``tasks/<job>.py`` with ``spark-submit``, the ``tasks`` package on ``--py-files``.

    The deployment's Spark settings come from the ``spark_conf`` of the pipeline Variable, read when the task
    runs (never when the DAG is parsed), under the operator's own ``conf``, which wins. When the storage root is on
    ``hdfs://``, the jobs' WebHDFS settings (``TFHUB_WEBHDFS_URL``: every namenode of the connection, separated by
    commas; ``TFHUB_WEBHDFS_USER``: its login) come from the WebHDFS connection, the one Airflow itself reads
    HDFS with: they go into the driver's environment (``env_vars``, which the Spark provider turns into
    ``spark.yarn.appMasterEnv.*`` on YARN) and the executors' (``spark.executorEnv.*``).

    **After a crash of the Airflow task** (SIGKILL, out of memory, a lost worker: no ``on_kill``), the application
    of the dead attempt may still run. Every application carries its attempt (``fencing.Attempt``: DAG, run, task,
    map index, try number, a random id) in its name, its YARN tags and the environment of its driver and
    executors; the operator records where it runs (spark-submit's host, pid and start time, the YARN application
    id) in the task state store. A new attempt, before it submits:

    * **local and client modes** (``local[*]``, Spark standalone, YARN client): *fence*. It stops the older
      attempt's spark-submit, driver and TensorFlow workers on this host (found by the recorded pid and by their
      ``TFHUB_ATTEMPT`` environment), waits until every one is gone, and kills a recorded YARN application
      through the ResourceManager. Reattaching is not sound there: the driver ran inside the dead attempt's
      spark-submit, whose output (the job's log) and exit status died with it, so the result could not be
      followed to its end or trusted;
    * **YARN cluster mode tracked through the ResourceManager** (``yarn_track_via_rm_api``, ``durable``) and
      Spark standalone cluster mode: *reattach*. The provider's ``ResumableJobMixin`` finds the application id in
      the task state store and follows the running application to its final status, which YARN reports; the
      new attempt neither submits nor takes the run over from it. When the old application has ended, a new one
      is submitted as below;
    * then it writes the attempt token ``<run_dir>/_attempts/<task_id>.json``: from then on the jobs
      (``tasks/io/fencing.py``) refuse to commit anything to the run folder for another attempt, so an application
      that survived out of reach (another host, a partitioned network) fails at its next commit instead of
      writing over the new attempt's output.

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
        if job == "evaluate":  # what a reviewer opens: the report, the confusion matrix, the training curves
            self.operator_extra_links = (SparkApplicationLink(), *REVIEW_LINKS)

    def job_conf(self, context) -> dict[str, Any]:
        """Spark properties the job itself needs, over the deployment's; subclasses add theirs."""
        return {
            # The jobs import tensorflow_hub; hub.KerasLayer needs tf-keras, not Keras 3.
            "spark.executorEnv.TF_USE_LEGACY_KERAS": "1",
            "spark.yarn.appMasterEnv.TF_USE_LEGACY_KERAS": "1",
        }

    #: The job's options that are the operator's own (typed, templated) arguments, in command-line order; a
    #: subclass names them. ``job_args`` comes after them and wins.
    JOB_OPTIONS: tuple[str, ...] = ()

    def build_application_args(self) -> list[str]:
        if self.JOB_OPTIONS:
            self.job_args = {**{"--" + name.replace("_", "-"): getattr(self, name) for name in self.JOB_OPTIONS},
                             **(self.job_args or {})}
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

    #: The jobs' settings derived from the WebHDFS connection (see ``tasks/io/webhdfs.py``).
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

    def _get_hook(self) -> ProcessTreeSparkSubmitHook:
        hook = super()._get_hook()
        # Same hook, same state: only on_kill and the log tap differ (see ProcessTreeSparkSubmitHook).
        hook.__class__ = ProcessTreeSparkSubmitHook
        hook.on_line = self._watch_line
        hook.on_submit = self._submitted
        return hook

    def submit_job(self, context):
        # The provider's resumable path calls this only when it submits a new application (none to reattach to).
        self.claim_run(context)
        return super().submit_job(context)

    def _watch_line(self, line: str) -> None:
        """Records the Spark application's URL as soon as spark-submit prints it and publishes the link; records
        a YARN application id for a later attempt to fence."""
        url = None
        if (m := _YARN_APP.search(line)) and (self._submission or {}).get("yarn_application_id") != m.group(1) \
                and self.attempt is not None:
            self._record(yarn_application_id=m.group(1))
        if (m := _STANDALONE_APP.search(line)) and self.attempt is not None \
                and (self._submission or {}).get("standalone_app_id") != m.group(1):
            self._record(standalone_app_id=m.group(1))
        if m := _SPARK_UI.search(line):
            url = m.group(1)
        elif (m := _YARN_APP.search(line)) and not getattr(self, "spark_app_url", "") and self._hook is not None:
            try:
                url = f"{self._hook.yarn_rm_base_url()}/cluster/app/{m.group(1)}"
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
            self._hook = self._get_hook()
            # The provider refuses this only when it submits; refuse it before the attempt claims the run folder.
            if self._hook.is_yarn_cluster_mode and self.durable and not self._hook.tracks_yarn_via_rm_api:
                raise ValueError(f"{self.task_id}: YARN cluster mode with durable=True requires "
                                 f"yarn_track_via_rm_api=True (set {self.pipeline_variable}.submit_options); the "
                                 "ResourceManager's REST API is how a retry finds the application")
            self.apply_attempt(context)
            self._hook = self._get_hook()
            self.log.info("running %s with the tasks package from %s", self.application, self.resolved_tasks_dir)
            if not self.reattaches():
                self.claim_run(context)
            return super().execute(context)

    _context = None


class TfHubFinetuneOperator(PipelineSparkSubmitOperator):
    """Runs ``tasks/finetune.py``: fine-tunes a TF Hub module on prepared TFRecords in one Spark barrier stage of
    ``num_workers`` tasks, each one ``MultiWorkerMirroredStrategy`` worker.

    The generic job operator plus what only the barrier job needs: the TensorBoard link and the barrier sync
    timeout. The job's options are typed arguments; one left at None is not passed, so the job's own default
    (``finetune.Config``) applies: this operator declares no default of its own. The Spark settings a barrier stage
    needs (no dynamic allocation, no Python worker reuse, a bounded barrier sync, a quick slot check) are set by
    the job when it creates its session, however it is launched (``tasks.training.preflight.SESSION_CONF``).

    :param examples: storage URL of the prepared dataset (templated).
    :param run_dir: storage URL of the run folder (templated).
    :param storage_root: storage root, for relative hub module paths and the hub cache (templated).
    :param hub_module: hub URL, Kaggle handle or path (templated).
    :param num_workers: barrier tasks (templated).
    :param epochs: training epochs (templated).
    :param batch_size: global batch size (templated).
    :param learning_rate: learning rate (templated).
    :param fine_tune: also train the hub module's weights (templated).
    :param module_lr_scale: with ``fine_tune``, the hub module's learning rate relative to the head's (templated).
    :param image_size: input height and width of an image module whose signature leaves it open (templated).
    :param seed: seed of the initialisation and shuffling (templated).
    :param max_restarts: relaunches of a failed barrier stage, each resuming from the last checkpoint (templated).
    :param checkpoint_every_steps: steps between two checkpoints (templated).
    :param stall_timeout_s: seconds without progress from a worker before the stage is failed (templated).
    :param slots_wait_s: seconds pre-flight waits for executors to register before failing on slots (templated).
    :param barrier_sync_timeout: seconds a worker waits for the others at a barrier before the stage fails
        (``spark.barrier.sync.timeout``); None: the job's.
    """

    #: The job's options that are this operator's arguments, in command-line order (``--run-dir`` for run_dir).
    JOB_OPTIONS = ("examples", "run_dir", "storage_root", "hub_module", "num_workers", "epochs", "batch_size",
                   "learning_rate", "fine_tune", "module_lr_scale", "image_size", "seed", "max_restarts",
                   "checkpoint_every_steps", "stall_timeout_s", "slots_wait_s")
    template_fields: Sequence[str] = (*PipelineSparkSubmitOperator.template_fields, *JOB_OPTIONS)
    ui_color = "#fff3e0"
    operator_extra_links = (SparkApplicationLink(), TensorBoardLink(), TrainingCurvesLink())

    def __init__(self, *, examples: str, run_dir: str, storage_root: str, hub_module: str,
                 num_workers: int | str | None = None, epochs: int | str | None = None,
                 batch_size: int | str | None = None, learning_rate: float | str | None = None,
                 fine_tune: bool | str | None = None, module_lr_scale: float | str | None = None,
                 image_size: int | str | None = None, seed: int | str | None = None,
                 max_restarts: int | str | None = None, checkpoint_every_steps: int | str | None = None,
                 stall_timeout_s: float | str | None = None, slots_wait_s: float | str | None = None,
                 barrier_sync_timeout: int | None = None, **kwargs: Any) -> None:
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
        self.module_lr_scale = module_lr_scale
        self.image_size = image_size
        self.seed = seed
        self.max_restarts = max_restarts
        self.checkpoint_every_steps = checkpoint_every_steps
        self.stall_timeout_s = stall_timeout_s
        self.slots_wait_s = slots_wait_s
        self.barrier_sync_timeout = barrier_sync_timeout

    def tensorboard_link(self, pipeline: dict[str, Any]) -> str:
        """The TensorBoard link of this run: the deployment's TensorBoard server (the Variable's
        ``tensorboard_url``, ``{run}`` and ``{logdir}`` filled in; ``make tensorboard`` serves the runs folder),
        else the event files in the API server's file view."""
        logdir = self.run_dir.rstrip("/") + "/" + TENSORBOARD
        template = pipeline.get("tensorboard_url")
        if template:
            return template.format(logdir=logdir, run=self.run_dir.rstrip("/").rpartition("/")[2])
        return files_url(logdir + "/", str(pipeline.get("storage_root") or ""), api_base_url()) or logdir

    def execute(self, context) -> None:
        pipeline = Variable.get(self.pipeline_variable, default=None, deserialize_json=True) or {}
        self.tensorboard_url = self.tensorboard_link(pipeline)
        context["ti"].xcom_push(key=TensorBoardLink().xcom_key, value=self.tensorboard_url)
        return super().execute(context)

    def job_conf(self, context) -> dict[str, Any]:
        conf = super().job_conf(context)
        if self.barrier_sync_timeout is not None:
            conf["spark.barrier.sync.timeout"] = str(self.barrier_sync_timeout)
        return conf


class ModelExportOperator(PipelineSparkSubmitOperator):
    """Exports the blessed model for TF Serving, publishes it atomically and verifies it (``tasks/export_model.py``).

    Returns (to XCom) the published model's path, version and headline metrics, and attaches them to the
    events of its outlet assets, so a downstream DAG scheduled on the asset knows what was published.

    :param run_dir: storage URL of the run folder (templated).
    :param examples: storage URL of the prepared dataset (templated).
    :param serving_root: storage URL of the serving root (templated).
    :param model_name: model folder under the serving root (templated).
    :param version: numeric version (templated).
    :param warmup_records: test records for the warm-up requests (templated); None: the job's default.
    :param partition: the date partition the model was trained on, ``YYYY-MM-DD`` (templated): the partition key
        of the outlet events (a run without a partition key would otherwise publish an event without one) and
        ``partition`` in their extra.
    :param webhdfs_conn_id: WebHDFS connection for reading the result on ``hdfs://``.
    """

    #: The job's options that are this operator's arguments, in command-line order.
    JOB_OPTIONS = ("run_dir", "examples", "serving_root", "model_name", "version", "warmup_records")
    template_fields: Sequence[str] = (*PipelineSparkSubmitOperator.template_fields, *JOB_OPTIONS, "partition")
    ui_color = "#e8f5e9"
    operator_extra_links = (SparkApplicationLink(), PublishedVersionLink())

    def __init__(self, *, run_dir: str, examples: str, serving_root: str, model_name: str, version: str | int,
                 warmup_records: int | str | None = None, partition: str | None = None, **kwargs: Any) -> None:
        super().__init__(job="export_model", **kwargs)
        self.partition = partition
        self.run_dir = run_dir
        self.examples = examples
        self.serving_root = serving_root
        self.model_name = model_name
        self.version = version
        self.warmup_records = warmup_records

    def execute(self, context) -> dict[str, Any]:
        super().execute(context)
        from tfhub_spark.hooks.storage import StorageHook

        url = self.run_dir.rstrip("/") + "/" + PUBLISHED
        published = json.loads(StorageHook(webhdfs_conn_id=self.webhdfs_conn_id).read_text(url))
        self.published_url = published["url"]
        self.log.info("published %s version %s: %s (accuracy %s)", published["model_name"], published["version"],
                      published["url"], published.get("accuracy"))
        if self.partition:
            published = {**published, "partition": self.partition}
        for outlet in self.outlets or []:
            event = context["outlet_events"][outlet]
            event.extra = dict(published)
            if self.partition:
                event.add_partitions(self.partition)
        return published
