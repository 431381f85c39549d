"""A real Spark standalone cluster on 127.0.0.1 for tests: one master and N workers started with ``spark-class``.

The daemons run the JVMs of the installed PySpark, each in its own process group, so that stopping the cluster
also ends the executors (children of the workers) and their Python workers. Each worker may advertise fake GPUs
(a discovery script that prints addresses) to test how tasks are given their GPU.

Example::

    with SparkStandalone(tmp_path, workers=2, cores=1) as cluster:
        subprocess.run(["spark-submit", "--master", cluster.master_url, ...])
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

import pyspark

SPARK_HOME = Path(pyspark.__file__).resolve().parent
SPARK_CLASS = SPARK_HOME / "bin" / "spark-class"
SPARK_SUBMIT = SPARK_HOME / "bin" / "spark-submit"


class ClusterError(RuntimeError):
    """The cluster did not come up; the message carries the tail of the daemons' logs."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def daemon_env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment of the daemons and of spark-submit: the caller's, without ``PYTHONPATH``.

    Dropping ``PYTHONPATH`` makes jobs import the ``tasks`` package from ``--py-files``, as they do on a real
    cluster, not from the checkout the tests run in.
    """
    env = dict(os.environ if base is None else base)
    env.pop("PYTHONPATH", None)
    env["SPARK_HOME"] = str(SPARK_HOME)
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    env.update(extra)
    return env


class SparkStandalone:
    """A master and ``workers`` workers of ``cores`` cores each, on 127.0.0.1.

    Args:
        work_dir: folder for the daemons' logs, the workers' application folders and the GPU scripts.
        workers: number of workers.
        cores: cores each worker offers.
        memory: memory each worker offers to executors (Spark size string).
        gpus_per_worker: fake GPUs each worker advertises (0: none). Worker ``i``'s GPUs have the addresses
            ``i*gpus_per_worker ...``, so no two tasks get the same address.
        env: extra environment of the daemons (executors inherit it).
        start_timeout_s: how long to wait for the master and every worker to register.
    """

    def __init__(self, work_dir: os.PathLike[str] | str, *, workers: int = 2, cores: int = 1, memory: str = "2g",
                 gpus_per_worker: int = 0, env: dict[str, str] | None = None, start_timeout_s: float = 120) -> None:
        self.work_dir = Path(work_dir)
        self.workers = workers
        self.cores = cores
        self.memory = memory
        self.gpus_per_worker = gpus_per_worker
        self.extra_env = env or {}
        self.start_timeout_s = start_timeout_s
        self.master_url = ""
        self.webui_url = ""
        self._procs: list[tuple[str, subprocess.Popen, Path]] = []

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log = self.work_dir / "logs" / f"{name}.out"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(SPARK_CLASS), *args], stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        self._procs.append((name, proc, log))

    def _env(self, **extra: str) -> dict[str, str]:
        conf_dir = self.work_dir / "conf"
        conf_dir.mkdir(parents=True, exist_ok=True)
        return daemon_env(None, SPARK_CONF_DIR=str(conf_dir), SPARK_LOG_DIR=str(self.work_dir / "logs"),
                          SPARK_DAEMON_MEMORY="256m", SPARK_DAEMON_JAVA_OPTS="-XX:TieredStopAtLevel=1",
                          **self.extra_env, **extra)

    def state(self) -> dict:
        """The master's JSON status (workers, applications), from its web UI."""
        with urllib.request.urlopen(self.webui_url + "/json/", timeout=5) as resp:
            return json.load(resp)

    def _tails(self) -> str:
        parts = []
        for name, proc, log in self._procs:
            text = log.read_text(errors="replace") if log.exists() else ""
            parts.append(f"--- {name} (exit {proc.poll()}) {log}:\n" + "\n".join(text.splitlines()[-15:]))
        return "\n".join(parts)

    def _await(self, what: str, ready) -> dict:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            dead = [name for name, proc, _ in self._procs if proc.poll() is not None]
            if dead:
                raise ClusterError(f"Spark daemons {dead} exited while waiting for {what}\n{self._tails()}")
            try:
                state = self.state()
                if ready(state):
                    return state
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError, TimeoutError):
                pass  # the web UI is not up yet
            if time.monotonic() > deadline:
                raise ClusterError(f"no {what} after {self.start_timeout_s:.0f}s\n{self._tails()}")
            time.sleep(0.5)

    def _gpu_script(self, index: int) -> Path:
        first = index * self.gpus_per_worker
        addresses = [str(a) for a in range(first, first + self.gpus_per_worker)]
        script = self.work_dir / f"gpus-worker{index}.sh"
        script.write_text("#!/bin/sh\necho '" + json.dumps({"name": "gpu", "addresses": addresses}) + "'\n")
        script.chmod(0o755)
        return script

    def start(self) -> SparkStandalone:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        webui_port = free_port()
        self.webui_url = f"http://127.0.0.1:{webui_port}"
        self._spawn("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", "0",
                               "--webui-port", str(webui_port)], self._env())
        state = self._await("master", lambda s: s.get("status") == "ALIVE")
        self.master_url = state["url"]
        for i in range(self.workers):
            opts = ""
            if self.gpus_per_worker:
                opts = (f"-Dspark.worker.resource.gpu.amount={self.gpus_per_worker} "
                        f"-Dspark.worker.resource.gpu.discoveryScript={self._gpu_script(i)}")
            self._spawn(f"worker{i}", ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                                       "--cores", str(self.cores), "--memory", self.memory, "--webui-port", "0",
                                       "--work-dir", str(self.work_dir / f"worker{i}"), self.master_url],
                        self._env(SPARK_WORKER_OPTS=opts))
        self._await(f"{self.workers} workers",
                    lambda s: sum(w.get("state") == "ALIVE" for w in s.get("workers", [])) >= self.workers)
        return self

    def stop(self) -> None:
        """Ends every daemon's process group (executors and Python workers included); SIGKILL after 20 s."""
        for _, proc, _ in reversed(self._procs):
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for _, proc, _ in self._procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for _, proc, _ in self._procs:
            _signal_group(proc, signal.SIGKILL)  # leftovers of the group, even when the leader has exited
            proc.wait()
        self._procs = []

    def __enter__(self) -> SparkStandalone:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
