"""Crash safety of the spark-submit operators: the attempt's identity, fencing an older attempt, the attempt token.

``AttemptFencingMixin`` owns what ``PipelineSparkSubmitOperator`` does before it submits (its docstring tells the
protocol): marking the application with its attempt (name, YARN tags, environment), recording where it runs in
the task state store, stopping what an older attempt left running (processes on this host, a YARN application,
an application on a Spark standalone Master) and writing the attempt token of the run folder. The mechanics
(processes, tokens, the Master's web UI) are in ``tfhub_spark/fencing.py``; the provider's hook is reached through
``tfhub_spark/hooks/spark_submit.py``.
"""

from __future__ import annotations

import json
import re
import socket
import time
from typing import Any

import psutil

from tfhub_spark import fencing


class AttemptFencingMixin:
    """Fencing for a ``SparkSubmitOperator`` whose hook is a ``ProcessTreeSparkSubmitHook``: see the module
    docstring. The operator calls ``apply_attempt`` once its conf is resolved, then ``claim_run`` right before it
    submits; the hook calls ``_submitted`` with spark-submit's process."""

    #: seconds an older attempt's processes get to exit after SIGTERM, before SIGKILL.
    fence_grace_seconds = 10.0
    #: seconds to wait for a killed YARN application to reach a final state.
    fence_yarn_timeout_s = 120.0
    #: seconds to wait for the Spark standalone Master to end an older attempt's application.
    fence_standalone_timeout_s = 120.0
    attempt: fencing.Attempt | None = None
    _submission: dict[str, Any] | None = None

    def fenced_run_dir(self) -> str | None:
        """The run folder this job commits to (its ``--run-dir``), which the attempt token fences; None for jobs
        without one (``prepare_examples``: its older attempts' processes are still stopped)."""
        run_dir = (self.job_args or {}).get("--run-dir")
        return str(run_dir) if run_dir else None

    def apply_attempt(self, context) -> None:
        """Marks the application with this attempt: its name, its YARN tags, the environment of its driver and
        executors (``TFHUB_ATTEMPT``, and ``TFHUB_ATTEMPT_TOKEN`` when there is a run folder)."""
        self.attempt = attempt = fencing.Attempt.from_context(context)
        run_dir = self.fenced_run_dir()
        self.token_url = fencing.token_url(run_dir, attempt) if run_dir else None
        base_name = re.sub(r" \[.*\]$", "", self.name)  # an earlier execution's attempt goes
        self.name = f"{base_name} [{attempt.label()}]"
        env = {fencing.ATTEMPT_ENV: attempt.to_json()}
        if self.token_url:
            env[fencing.TOKEN_ENV] = self.token_url
        for key, value in env.items():
            self.conf[f"spark.executorEnv.{key}"] = value
        # The deployment's own tags stay; an earlier execution's attempt tags (an operator object reused) go.
        tags = [t for t in str(self.conf.get("spark.yarn.tags") or "").split(",")
                if t and not t.startswith("airflow_")]
        self.conf["spark.yarn.tags"] = ",".join([*tags, attempt.yarn_tags()])
        if self._get_hook().tracks_driver_status:
            # Standalone cluster mode (JVM applications only) takes no driver environment (the provider refuses
            # env_vars there): the executors carry the attempt.
            self.log.info("standalone cluster mode: the attempt goes to the executors' environment only")
        else:
            self.env_vars = {**(self.env_vars or {}), **env}
        self.log.info("attempt %s; attempt token %s", attempt.label(), self.token_url or "none (no run folder)")

    def _task_state_store(self):
        return self._context.get("task_state_store") if self._context is not None else None

    def _record(self, **fields: Any) -> None:
        """Adds ``fields`` to this attempt's submission record in the task state store, where the next attempt
        looks for what this one started."""
        self._submission = {**(self._submission or {}), **fields}
        store = self._task_state_store()
        if store is not None:
            from airflow.sdk.execution_time.context import NEVER_EXPIRE

            store.set(fencing.SUBMISSION_KEY, self._submission, retention=NEVER_EXPIRE)

    def _submitted(self, proc: psutil.Process) -> None:
        self._record(host=socket.getfqdn(), submit_pid=proc.pid, submit_started=proc.create_time())
        self.log.info("spark-submit of %s: pid %d on %s", self.attempt.label() if self.attempt else "?", proc.pid,
                      socket.getfqdn())

    def _storage_hook(self):
        from tfhub_spark.hooks.storage import StorageHook

        return StorageHook(webhdfs_conn_id=self.webhdfs_conn_id)

    def fence_previous(self, context) -> None:
        """Stops what an older attempt of this task instance left running, and waits until it is gone.

        On this host: the recorded spark-submit and its process tree, and every process whose ``TFHUB_ATTEMPT``
        names another attempt of this task instance, or of this task on the same run folder (a rerun of the date
        while a crashed run's application still runs: it would write the same folder); the driver's and
        PySpark's children survive their spark-submit. On YARN: the recorded application, killed through the
        ResourceManager. A spark-submit recorded on another host is out of reach: the log says so, and the attempt
        token fences it.
        """
        store = context.get("task_state_store")
        record = store.get(fencing.SUBMISSION_KEY) if store is not None else None
        previous = (fencing.Attempt.from_json(json.dumps(record["attempt"]))
                    if record and record.get("attempt") else None)
        if previous is None and self.token_url:  # no task state store: the token names the last attempt
            token = fencing.read_token(self._storage_hook(), self.token_url)
            if token:
                previous = fencing.Attempt.from_json(json.dumps(token))
                record = {"host": token.get("host"), "attempt": token}
        procs = fencing.other_attempts_processes(self.attempt, self.token_url)
        if record and (recorded := fencing.recorded_process(record)) is not None \
                and recorded.pid not in {p.pid for p in procs}:
            procs.append(recorded)
        # The attempts these processes belong to: their application on a standalone Master is waited for below.
        other_ids = {a.id for a in (fencing.attempt_of(p)[0] for p in procs) if a is not None}
        if previous is not None:
            other_ids.add(previous.id)
        if procs:
            who = previous.label() if previous else "an older attempt"
            self.log.warning("%s left %d processes running (%s); stopping them before this attempt starts",
                             who, len(procs), ", ".join(f"{p.pid}" for p in procs))
            t0 = time.monotonic()
            stopped, killed = fencing.stop_processes(procs, self.fence_grace_seconds)
            self.log.warning("fenced %s: stopped %d processes %s (%d needed SIGKILL) in %.1fs; none is left",
                             who, len(stopped), stopped, len(killed), time.monotonic() - t0)
        elif record and record.get("submit_pid") and record.get("host") != socket.getfqdn():
            self.log.warning("%s ran spark-submit on %s (pid %s), out of reach from %s: if it still runs, the "
                             "attempt token refuses its commits", previous.label() if previous else "an older attempt",
                             record.get("host"), record.get("submit_pid"), socket.getfqdn())
        if record and (app_id := record.get("yarn_application_id")):
            self._fence_yarn_application(app_id, previous)
        self._fence_standalone_application(previous, other_ids, (record or {}).get("standalone_app_id"))
        if previous is not None and not procs:
            self.log.info("older attempt %s: nothing of it runs on this host", previous.label())

    def _fence_yarn_application(self, app_id: str, previous: fencing.Attempt | None) -> None:
        hook = self._hook or self._get_hook()
        who = previous.label() if previous else "an older attempt"
        try:
            status = hook.query_yarn_application_status(app_id)
        except (RuntimeError, ValueError) as e:
            raise RuntimeError(f"{self.task_id}: cannot tell whether YARN application {app_id} of {who} still runs "
                               f"({e}); set yarn_resourcemanager_webapp_address in connection {hook.conn_id!r}, or "
                               f"kill the application by hand (yarn application -kill {app_id}) and clear the "
                               f"task") from e
        if status.upper() not in {"NEW", "NEW_SAVING", "SUBMITTED", "ACCEPTED", "RUNNING"}:
            self.log.info("YARN application %s of %s has ended (%s)", app_id, who, status)
            return
        self.log.warning("YARN application %s of %s is %s: killing it through the ResourceManager", app_id, who,
                         status)
        hook.kill_yarn_application(app_id)
        deadline = time.monotonic() + self.fence_yarn_timeout_s
        while time.monotonic() < deadline:
            status = hook.query_yarn_application_status(app_id)
            if status.upper() not in {"NEW", "NEW_SAVING", "SUBMITTED", "ACCEPTED", "RUNNING"}:
                self.log.warning("fenced %s: YARN application %s is %s", who, app_id, status)
                return
            time.sleep(2)
        raise RuntimeError(f"{self.task_id}: YARN application {app_id} of {who} still {status} "
                           f"{self.fence_yarn_timeout_s:.0f}s after it was killed; not starting a second one")

    def _fence_standalone_application(self, previous: fencing.Attempt | None, other_ids: set[str],
                                      app_id: str | None) -> None:
        """On a Spark standalone Master: waits until the Master runs no application of an older attempt (its
        ``activeapps``: the application id the older attempt recorded, or the attempt in an application's name).
        Stopping the driver above ends it: the Master then has its Workers kill the executors, on every host. An
        executor the Master started on this host while the driver was being stopped is stopped afterwards."""
        hook = self._hook or self._get_hook()
        master = hook.master
        if not master.startswith("spark://"):
            return
        webui = fencing.standalone_webui_url(master, hook.connection_extra())
        try:
            apps, waited = fencing.wait_standalone_apps_gone(webui, self.attempt, other_ids,
                                                             self.fence_standalone_timeout_s,
                                                             app_ids={app_id} if app_id else set())
        except OSError as e:
            self.log.warning("cannot ask the Spark Master's web UI %s whether an older attempt's application still "
                             "runs (%s): set %s in connection %r; the attempt token refuses its commits", webui, e,
                             fencing.STANDALONE_WEBUI_EXTRA, hook.conn_id)
            return
        if not apps:
            self.log.info("the Spark Master (%s) runs no application of an older attempt", webui)
            return
        self.log.warning("fenced on the Spark Master: application %s gone from %s/json/ activeapps after %.1fs",
                         ", ".join(f"{a.get('id')} ({a.get('name')})" for a in apps), webui, waited)
        if left := fencing.other_attempts_processes(self.attempt, self.token_url):
            stopped, killed = fencing.stop_processes(left, self.fence_grace_seconds)
            self.log.warning("fenced processes the Master started for an older attempt meanwhile: stopped %s (%d "
                             "needed SIGKILL)", stopped, len(killed))

    def claim_run(self, context) -> None:
        """Fences an older attempt, then makes this attempt the owner of the run folder (the attempt token) and
        records it in the task state store; called right before this attempt submits its own application."""
        self.fence_previous(context)
        if self.token_url:
            fencing.write_token(self._storage_hook(), self.token_url, self.attempt)
            self.log.info("attempt token %s now names %s", self.token_url, self.attempt.label())
        self._record(attempt=json.loads(self.attempt.to_json()), token=self.token_url, host=socket.getfqdn(),
                     submit_pid=None, submit_started=None, yarn_application_id=None, standalone_app_id=None)

    def reattaches(self) -> bool:
        """Whether this mode goes through the provider's ``ResumableJobMixin`` (which reconnects to a running
        application recorded by an older attempt rather than submitting): YARN cluster mode tracked through the
        ResourceManager, Spark standalone cluster mode, Kubernetes."""
        return self._hook.reattaches()
