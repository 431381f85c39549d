"""Crash-safe submissions, the Airflow side: which task attempt a Spark application belongs to, the attempt token
that fences the run folder, and stopping what an older attempt left running.

A task attempt that dies without ``on_kill`` (SIGKILL, out of memory, a lost node, a zombie) leaves its
``spark-submit``, driver and TensorFlow workers running. The next attempt of the same task instance must not train
beside them. Three pieces, from the operators (``operators/spark_job.py``):

* every application carries its :class:`Attempt` (DAG, run, task, map index, try number and a random id of this
  execution) in its name, its YARN tags, and the environment of its driver and executors (``TFHUB_ATTEMPT``);
* the operator records where the application runs (``spark-submit``'s host, pid and start time, the YARN
  application id) in Airflow's task state store (``SUBMISSION_KEY``), which survives retries; without one (Airflow
  before 3.3) the token file below names the attempt, and processes are found by their environment;
* before submitting, the operator writes the attempt token ``<run_dir>/_attempts/<task_id>.json``; the jobs
  (``tasks/io/fencing.py``) read it before each commit and refuse when it names another attempt.

The token's file name and fields are the jobs' contract too: ``tasks/io/fencing.py`` reads what :func:`write_token`
writes (tests/plugins/test_fencing.py checks both sides agree).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psutil

ATTEMPT_ENV = "TFHUB_ATTEMPT"
"""Environment variable of the driver and executors: the :class:`Attempt` that submitted them, as JSON."""
TOKEN_ENV = "TFHUB_ATTEMPT_TOKEN"
"""Environment variable of the driver and executors: the URL of the attempt token the jobs check before a commit."""
TOKEN_DIR = "_attempts"
"""Folder of the attempt tokens in a run folder (hidden from listings of outputs: it starts with ``_``)."""
SUBMISSION_KEY = "tfhub_spark_submission"
"""Task state store key of the submission record (where the attempt's application runs)."""


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One execution of one task instance.

    :param dag_id: the DAG.
    :param run_id: the DAG run.
    :param task_id: the task.
    :param map_index: the map index (-1 when not mapped).
    :param try_number: Airflow's try number.
    :param id: random, per execution: two executions with one try number (``airflow tasks test`` twice, a try
        whose first process Airflow lost) still differ.
    """

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int
    id: str

    @classmethod
    def from_context(cls, context) -> Attempt:
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        return cls(dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id,
                   map_index=-1 if map_index is None else int(map_index), try_number=int(ti.try_number),
                   id=uuid.uuid4().hex[:16])

    @classmethod
    def from_json(cls, text: str) -> Attempt:
        return cls(**{f.name: json.loads(text)[f.name] for f in dataclasses.fields(cls)})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    def same_task_instance(self, other: Attempt) -> bool:
        return (self.dag_id, self.run_id, self.task_id, self.map_index) == \
            (other.dag_id, other.run_id, other.task_id, other.map_index)

    def instance_label(self) -> str:
        """The task instance, as :meth:`label` (and so the application's name) starts."""
        mapped = f"[{self.map_index}]" if self.map_index >= 0 else ""
        return f"{self.dag_id}.{self.task_id}{mapped} run {self.run_id}"

    def label(self) -> str:
        return f"{self.instance_label()} try {self.try_number} ({self.id})"

    def yarn_tags(self) -> str:
        """``spark.yarn.tags``: YARN lower-cases tags and splits them on commas."""
        return ",".join(f"airflow_{k}={str(v).replace(',', '_').lower()[:80]}" for k, v in
                        (("dag_id", self.dag_id), ("run_id", self.run_id), ("task_id", self.task_id),
                         ("map_index", self.map_index), ("try_number", self.try_number), ("attempt", self.id)))


def token_url(run_dir: str, attempt: Attempt) -> str:
    """The attempt token of ``attempt``'s task instance in ``run_dir``: one per task, so that ``finetune`` and
    ``evaluate`` of one run fence their own attempts."""
    mapped = f".{attempt.map_index}" if attempt.map_index >= 0 else ""
    return f"{run_dir.rstrip('/')}/{TOKEN_DIR}/{attempt.task_id}{mapped}.json"


def token_record(attempt: Attempt) -> dict[str, Any]:
    """What the token file holds: the attempt's fields, and who wrote it when (for people reading it)."""
    return {**dataclasses.asdict(attempt), "host": socket.getfqdn(), "pid": os.getpid(), "claimed_at": time.time()}


def write_token(storage, url: str, attempt: Attempt) -> None:
    """Makes ``attempt`` the owner of its task's outputs in the run folder: from now on only its application may
    commit there. ``file://``: written aside, then renamed over the old token. ``hdfs://`` (no rename over a file):
    the old token is deleted, then the new one renamed in; in between a job finds no token and refuses too.

    :param storage: a ``StorageHook`` (for its WebHDFS client).
    :param url: the token's URL (:func:`token_url`).
    :param attempt: the attempt that takes over.
    """
    data = json.dumps(token_record(attempt), indent=2)
    scheme, path = storage._scheme_path(url)
    if scheme == "file":
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{attempt.id}")
        tmp.write_text(data)
        os.replace(tmp, target)
        return
    client = storage._webhdfs()
    tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{attempt.id}"
    client.write(tmp, data=data, encoding="utf-8", overwrite=True)
    client.delete(path)
    client.rename(tmp, path)


def read_token(storage, url: str) -> dict | None:
    """The token at ``url``; None when there is none."""
    if not storage.exists(url):
        return None
    return json.loads(storage.read_text(url))


# --- processes on this host -----------------------------------------------------------------------------------

def attempt_of(proc: psutil.Process) -> tuple[Attempt | None, str | None]:
    """The attempt and the attempt token in a process's environment; ``(None, None)`` for other processes (and
    those we may not read)."""
    try:
        env = proc.environ()
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
        return None, None
    value = env.get(ATTEMPT_ENV)
    if not value:
        return None, None
    try:
        return Attempt.from_json(value), env.get(TOKEN_ENV) or None
    except (ValueError, TypeError, KeyError):
        return None, None


def other_attempts_processes(attempt: Attempt, token: str | None = None) -> list[psutil.Process]:
    """Processes on this host that another attempt started, either of ``attempt``'s task instance or of the same
    task on the same run folder (the same attempt ``token``: a rerun of the date while a crashed run's application
    still runs). Its spark-submit, the driver, PySpark's daemon and the TensorFlow workers all inherit
    ``TFHUB_ATTEMPT``, whatever their parent became after their attempt's task process died."""
    me = os.getpid()
    found = []
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        other, other_token = attempt_of(proc)
        if other is None or other.id == attempt.id:
            continue
        if other.same_task_instance(attempt) or (token is not None and other_token == token):
            found.append(proc)
    return found


def recorded_process(record: dict) -> psutil.Process | None:
    """The recorded spark-submit, if it still runs on this host (same pid and start time: not a reused pid)."""
    if record.get("host") != socket.getfqdn() or not record.get("submit_pid"):
        return None
    try:
        proc = psutil.Process(int(record["submit_pid"]))
        if abs(proc.create_time() - float(record.get("submit_started", 0))) > 1.0:
            return None
        return proc
    except psutil.NoSuchProcess:
        return None


def stop_processes(procs: list[psutil.Process], grace_seconds: float) -> tuple[list[int], list[int]]:
    """Terminates ``procs`` and their descendants (collected first: a child outlives its killed parent),
    SIGKILLs what is left after ``grace_seconds``, and waits until every one is gone.

    :return: the pids stopped, and those of them that needed SIGKILL.
    """
    tree: dict[int, psutil.Process] = {}
    for proc in procs:
        try:
            for p in [proc, *proc.children(recursive=True)]:
                tree[p.pid] = p
        except psutil.NoSuchProcess:
            continue
    for p in tree.values():
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    alive = _wait_gone(list(tree.values()), grace_seconds)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    if still := _wait_gone(alive, 30):
        raise RuntimeError(f"processes {[p.pid for p in still]} of an older attempt survived SIGKILL for 30 s")
    return sorted(tree), sorted(p.pid for p in alive)


def _gone(proc: psutil.Process) -> bool:
    try:
        # An orphan's zombie waits for whoever adopted it to reap it: it runs nothing any more.
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Waits up to ``timeout`` for ``procs`` to exit (they need not be our children); returns those still alive."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if not _gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if not _gone(p)]
    return alive


# --- Spark standalone: the Master's view of an older attempt's application -----------------------------------

STANDALONE_WEBUI_EXTRA = "master_webui_url"
"""Spark connection extra: the standalone Master's web UI (``http://host:port``), whose ``/json/`` lists the
running applications. Without it: ``http://<master host>:8080``, the Master's default."""


def standalone_webui_url(master: str, extra: dict[str, Any] | None) -> str | None:
    """The web UI of the standalone Master ``master`` (``spark://host:port``, or several ``host:port`` separated by
    commas with standby Masters: the first); None when ``master`` is not a standalone Master."""
    if not master.startswith("spark://"):
        return None
    if url := str((extra or {}).get(STANDALONE_WEBUI_EXTRA) or "").strip():
        return url.rstrip("/")
    host = master[len("spark://"):].split(",")[0].rsplit(":", 1)[0]
    return f"http://{host}:8080"


def standalone_apps(webui_url: str, attempt: Attempt, other_ids: set[str] = frozenset(),
                    app_ids: set[str] = frozenset()) -> list[dict[str, Any]]:
    """The Master's running applications (``activeapps`` of ``<webui>/json/``) of another attempt: those with an
    id in ``app_ids`` (what an older attempt recorded), and those whose name names another attempt of
    ``attempt``'s task instance (the operator puts :meth:`Attempt.label` in the name given to spark-submit) or one
    of the attempts ``other_ids``."""
    with urllib.request.urlopen(f"{webui_url}/json/", timeout=10) as resp:
        state = json.load(resp)
    mine = f"({attempt.id})]"
    instance = f"[{attempt.instance_label()} try "
    found = []
    for app in state.get("activeapps", []):
        name = str(app.get("name", ""))
        if app.get("id") in app_ids or (not name.endswith(mine) and (
                instance in name or any(name.endswith(f"({i})]") for i in other_ids))):
            found.append(app)
    return found


def wait_standalone_apps_gone(webui_url: str, attempt: Attempt, other_ids: set[str], timeout_s: float,
                              poll_s: float = 1.0, app_ids: set[str] = frozenset()
                              ) -> tuple[list[dict[str, Any]], float]:
    """Waits until the Master lists no running application of another attempt (:func:`standalone_apps`): once its
    driver is gone the Master ends the application and has its Workers kill its executors (and their Python
    workers), wherever they run.

    :return: the applications that were running at the first look (empty: none), and the seconds waited.
    :raises RuntimeError: one still runs after ``timeout_s``.
    :raises OSError: the Master's web UI did not answer.
    """
    t0 = time.monotonic()
    first = apps = standalone_apps(webui_url, attempt, other_ids, app_ids)
    while apps:
        if time.monotonic() - t0 > timeout_s:
            running = [(a.get("id"), a.get("name")) for a in apps]
            raise RuntimeError(f"the Spark Master ({webui_url}) still runs {running} {timeout_s:.0f}s after their "
                               f"attempt was stopped; not starting a second one")
        time.sleep(poll_s)
        apps = standalone_apps(webui_url, attempt, other_ids, app_ids)
    return first, time.monotonic() - t0
