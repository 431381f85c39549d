"""The Spark provider's ``SparkSubmitHook`` as the operators use it: what spark-submit prints, a kill that leaves no
process behind, and the one place that touches the provider's private members.

``ProcessTreeSparkSubmitHook`` owns:

* the log tap (each line spark-submit prints, and its process once started, handed to the operator);
* ``on_kill`` over the whole process tree;
* the adapter: public names (``master``, ``conn_id``, ``tracks_driver_status``...) over the provider's private
  members, for what the provider offers no public way to ask or do. ``PROVIDER_PRIVATE_MEMBERS`` lists them;
  ``tests/plugins/test_spark_submit_hook.py`` fails when a provider release renames or drops one.
"""

from __future__ import annotations

from typing import Any

import psutil
from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

PROVIDER_VERSION_CHECKED = "6.3.4"
"""The ``apache-airflow-providers-apache-spark`` release the private members below were read in
(``airflow/providers/apache/spark/hooks/spark_submit.py``)."""

PROVIDER_PRIVATE_MEMBERS = (
    # set in SparkSubmitHook.__init__
    "_conn_id", "_connection", "_is_yarn_cluster_mode", "_should_track_driver_status", "_yarn_track_via_rm_api",
    # set in SparkSubmitHook.submit
    "_submit_sp",
    # methods
    "_process_spark_submit_log", "_should_track_driver_via_k8s_api", "_kill_yarn_application",
    "_get_yarn_rm_base_url",
)
"""Every private member of ``SparkSubmitHook`` this package uses, all of them in this module."""

PROVIDER_OPERATOR_PRIVATE_MEMBERS = ("_hook", "_get_hook", "_yarn_track_via_rm_api", "_status_poll_interval",
                                     "_verbose")
"""The private members of ``SparkSubmitOperator`` that ``PipelineSparkSubmitOperator`` (its subclass) uses: the
hook it builds and holds, and the tracking settings a deployment chooses (``SUBMIT_OPTIONS``), which the provider
offers only as constructor arguments."""


class ProcessTreeSparkSubmitHook(SparkSubmitHook):
    """``SparkSubmitHook`` that reports what spark-submit prints, and whose ``on_kill`` leaves no process behind.

    The provider's ``on_kill`` SIGKILLs the spark-submit JVM. In client and local mode the JVM's children live on:
    PySpark's daemon puts itself and its Python workers (our TensorFlow workers) in a process group of their own,
    so they survive their parent and keep training. This hook records the whole process tree first, then lets
    the provider kill spark-submit (and the YARN or standalone driver), then terminates every remaining
    descendant, SIGKILLing what has not exited after ``grace_seconds``.

    The properties and methods after ``on_kill`` are the adapter over the provider's private members (checked
    against the provider release ``PROVIDER_VERSION_CHECKED``); the operators use these, never the members.
    """

    grace_seconds = 10.0
    on_line = None  # callable(line) set by the operator
    on_submit = None  # callable(psutil.Process of spark-submit) set by the operator

    def _process_spark_submit_log(self, itr) -> None:
        if self.on_submit is not None and self._submit_sp is not None:
            try:
                self.on_submit(psutil.Process(self._submit_sp.pid))
            except psutil.NoSuchProcess:
                pass

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

    # --- the adapter over the provider's private members ------------------------------------------------------

    @property
    def conn_id(self) -> str:
        """The Spark connection's id."""
        return self._conn_id

    @property
    def master(self) -> str:
        """The resolved Spark master (``local[*]``, ``spark://...``, ``yarn``...)."""
        return str(self._connection.get("master") or "")

    def connection_extra(self) -> dict[str, Any]:
        """The Spark connection's extra fields."""
        return self.get_connection(self._conn_id).extra_dejson

    @property
    def tracks_driver_status(self) -> bool:
        """Spark standalone cluster mode: the provider follows the driver through the Master."""
        return self._should_track_driver_status

    @property
    def is_yarn_cluster_mode(self) -> bool:
        return self._is_yarn_cluster_mode

    @property
    def tracks_yarn_via_rm_api(self) -> bool:
        """spark-submit returns once YARN accepted the application; the provider polls the ResourceManager."""
        return self._yarn_track_via_rm_api

    def reattaches(self) -> bool:
        """Whether the provider's ``ResumableJobMixin`` reconnects to a running application recorded by an older
        attempt rather than submitting: YARN cluster mode tracked through the ResourceManager, Spark standalone
        cluster mode, Kubernetes."""
        return bool(self._should_track_driver_status or self._should_track_driver_via_k8s_api()
                    or (self._is_yarn_cluster_mode and self._yarn_track_via_rm_api))

    def kill_yarn_application(self, app_id: str) -> None:
        """Kills a YARN application through the ResourceManager's REST API."""
        self._kill_yarn_application(app_id)

    def yarn_rm_base_url(self) -> str:
        """The ResourceManager's web address; ``ValueError`` when the connection does not name it."""
        return self._get_yarn_rm_base_url()
