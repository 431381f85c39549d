"""A real Airflow for tests: `airflow standalone` (scheduler, DAG processor, triggerer, API server) on its own
Airflow home, driven over the REST API that the UI uses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import requests

ROOT = Path(__file__).resolve().parents[2]


def patient(predicate):
    """A wait's predicate that takes an API request timing out for "not yet": on a busy 2-core machine the API
    server of ``airflow standalone`` sometimes answers after the client's 30 s."""
    def check():
        try:
            return predicate()
        except requests.RequestException:
            return None
    return check


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AirflowStandalone:
    """Sets up an Airflow home with the project's setup script and runs ``airflow standalone`` on it.

    Authentication is the simple auth manager with every user an admin, so tests (and a headless browser) use
    the API and the UI without logging in.
    """

    def __init__(self, base: Path, storage_url: str, extra_env: dict[str, str] | None = None) -> None:
        self.home = base / "airflow"
        self.storage_url = storage_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = f"{self.url}/api/v2"
        self.env = dict(os.environ)
        self.env.update({
            "AIRFLOW_HOME": str(self.home),
            "TFHUB_STORAGE_ROOT": storage_url,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            # New files are parsed when the refresh finds them; the DAG files do not change during a test
            # session, and parsing them every few seconds takes CPU from the runs on a 2-core machine.
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "120",
            # The sensor checks a late partition every 5 s, not every minute: tests wait for the event.
            "TFHUB_PARTITION_POKE_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__CORE__PARALLELISM": "8",
            **(extra_env or {}),
        })
        self.proc: subprocess.Popen | None = None
        self.log_path = base / "standalone.log"

    def sh(self, cmd: str, timeout: int = 300) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", f". {ROOT}/scripts/env.sh && {cmd}"], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)

    def start(self, timeout: float = 420) -> None:
        setup = self.sh("bash scripts/setup_airflow.sh")
        if setup.returncode:
            raise RuntimeError(f"setup failed:\n{setup.stdout[-3000:]}\n{setup.stderr[-3000:]}")
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(["bash", "-c", f". {ROOT}/scripts/env.sh && exec airflow standalone"],
                                     env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            self._wait_ready(timeout)
        except BaseException:  # not ready, or the session was interrupted: no fixture teardown will stop it
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"airflow standalone exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                health = requests.get(f"{self.api}/monitor/health", timeout=5).json()
                components = ("metadatabase", "scheduler", "triggerer", "dag_processor")
                if all(health.get(c, {}).get("status") == "healthy" for c in components):
                    dags = requests.get(f"{self.api}/dags", timeout=10)
                    if dags.ok and any(d["dag_id"] == "tfhub_finetune" for d in dags.json()["dags"]):
                        return
            except requests.RequestException:
                pass
            time.sleep(2)
        raise TimeoutError(f"airflow standalone not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 6000) -> str:
        return self.log_path.read_text()[-n:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            procs = psutil.Process(self.proc.pid).children(recursive=True) + [psutil.Process(self.proc.pid)]
        except psutil.NoSuchProcess:
            procs = []
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        _, alive = psutil.wait_procs(procs, timeout=30)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        try:  # what a dead scheduler left behind (its executor's workers) is no child of anyone here any more
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None

    # REST API, as the UI calls it.
    def get(self, path: str, **params: Any) -> Any:
        r = requests.get(f"{self.api}{path}", params=params, timeout=30)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: dict) -> requests.Response:
        return requests.post(f"{self.api}{path}", json=body, timeout=60)

    def patch(self, path: str, body: dict, **params: Any) -> requests.Response:
        return requests.patch(f"{self.api}{path}", json=body, params=params, timeout=60)

    def create_backfill(self, body: dict, attempts: int = 12) -> dict:
        """POST /backfills as the UI does, trying again while SQLite reports the database locked.

        On SQLite the scheduler's writes can hold the database lock when the request comes; Airflow then answers
        503 ("Backfill creation is not supported on SQLite under concurrent access") and a user clicks again.
        """
        for attempt in range(attempts):
            r = self.post("/backfills", body)
            if r.status_code != 503 or "locked" not in r.text:
                break
            time.sleep(2 + attempt)
        assert r.status_code == 200, r.text
        return r.json()

    def runs(self, dag_id: str) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns", limit=100)["dag_runs"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        tis = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {ti["task_id"]: ti["state"] for ti in tis}

    def scheduler_alive(self) -> bool:
        """False when the scheduler's heartbeat is stale. On SQLite, Airflow 3.3's scheduler can die of an
        ``ObjectDeletedError`` when a backfill's runs are rolled back under it (the 503 "database is locked" of
        ``POST /backfills``); ``airflow standalone`` does not start it again."""
        try:
            health = requests.get(f"{self.api}/monitor/health", timeout=5).json()
        except requests.RequestException:
            return True  # the API server is busy: no verdict
        return health.get("scheduler", {}).get("status") != "unhealthy"

    def restart(self) -> None:
        """Stops every process of ``airflow standalone`` and starts it again on the same home and database."""
        self.log_path.with_suffix(f".{int(time.time())}.log").write_text(self.log_tail(200_000))
        self.stop()
        self.start()

    def wait_for(self, predicate, timeout: float, what: str, interval: float = 3):
        deadline = time.time() + timeout
        last = None
        stale = 0
        while time.time() < deadline:
            last = predicate()
            if last:
                return last
            stale = 0 if self.scheduler_alive() else stale + 1
            if stale >= 3:  # a dead scheduler, as a user would see it in the UI's health: start it again
                print(f"airflow scheduler is dead while waiting for {what}; restarting airflow standalone")
                self.restart()
                stale = 0
            time.sleep(interval)
        raise TimeoutError(f"{what} not reached after {timeout}s (last: {last!r})\n{self.log_tail(3000)}")

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 900) -> dict:
        def finished():
            run = self.get(f"/dags/{dag_id}/dagRuns/{run_id}")
            return run if run["state"] in ("success", "failed") else None

        return self.wait_for(finished, timeout, f"end of run {run_id}")
