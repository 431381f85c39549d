"""A real HDFS and a real YARN on localhost for tests: ``hadoop/MiniHadoop.java`` (MiniDFSCluster + MiniYARNCluster
of Hadoop 3.5.0, the Hadoop of pyspark 4.2.0) in one JVM.

``ensure_jars()`` fetches the jars with Maven into ``var/hadoop/lib`` (once; ``hadoop/pom.xml`` names them). The
cluster runs in its own process group, with its stdin a pipe from this process: when the tests end, however they
end, the JVM sees EOF and stops its daemons (YARN kills its containers first). ``stop()`` sends SIGTERM, then
kills the process group if it has not exited.

Example::

    with MiniHadoop(tmp_path / "hadoop") as hadoop:
        requests.get(f"{hadoop.webhdfs_url}/webhdfs/v1/?op=LISTSTATUS&user.name=me")
        subprocess.run([..., "spark-submit", "--master", "yarn", ...], env=hadoop.client_env())
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[2]
POM = ROOT / "hadoop" / "pom.xml"
LAUNCHER = ROOT / "hadoop" / "MiniHadoop.java"
LOG4J = ROOT / "hadoop" / "log4j.properties"
LIB = ROOT / "var" / "hadoop" / "lib"


class MiniHadoopError(RuntimeError):
    """The local Hadoop could not be fetched or did not come up; the message says what to look at."""


def java_home() -> str:
    """The JDK that runs the cluster and that YARN containers inherit (Spark 4 needs Java 17 or later)."""
    if os.environ.get("JAVA_HOME"):
        return os.environ["JAVA_HOME"]
    java = shutil.which("java")
    if not java:
        raise MiniHadoopError("no `java` on PATH: the local Hadoop needs a JDK 17 (scripts/system_deps.sh)")
    return str(Path(java).resolve().parents[1])


def ensure_jars(lib: Path = LIB) -> Path:
    """Copy the jars of ``hadoop/pom.xml`` into ``lib`` with Maven, unless done already for this pom.

    ``lib/.pom.xml``, a copy of the pom written after the copy succeeded, says the jars are complete and current.
    """
    stamp = lib / ".pom.xml"
    pom_digest = POM.read_text()
    if stamp.exists() and stamp.read_text() == pom_digest:
        return lib
    mvn = shutil.which("mvn")
    if not mvn:
        raise MiniHadoopError("no `mvn` on PATH: the local Hadoop's jars come from Maven Central "
                              "(Debian: apt-get install maven)")
    if lib.exists():
        shutil.rmtree(lib)
    proc = subprocess.run([mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
                           f"-DoutputDirectory={lib}"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise MiniHadoopError(f"mvn could not fetch the Hadoop jars (exit {proc.returncode}):\n"
                              f"{(proc.stdout + proc.stderr)[-3000:]}")
    stamp.write_text(pom_digest)
    return lib


class MiniHadoop:
    """HDFS (``datanodes`` DataNodes; two NameNodes of nameservice ``minihdfs`` with ``ha``) and YARN (one
    NodeManager of ``nm_memory_mb`` and ``nm_vcores``) until ``stop()``.

    Attributes once started: ``conf_dir`` (``core-site.xml``, ``hdfs-site.xml``, ``yarn-site.xml``),
    ``fs_default_fs`` (``hdfs://localhost:PORT``), ``webhdfs_urls`` (one per NameNode), ``webhdfs_url`` (the
    first), ``rm_webapp`` (the ResourceManager's REST API base, ``http://localhost:PORT``), ``start_s``.
    """

    def __init__(self, work_dir: os.PathLike[str] | str, *, datanodes: int = 1, ha: bool = False, yarn: bool = True,
                 nm_memory_mb: int = 12288, nm_vcores: int = 8, start_timeout_s: float = 300,
                 detach: bool = False) -> None:
        self.work_dir = Path(work_dir).resolve()
        self.datanodes = datanodes
        self.ha = ha
        self.yarn = yarn
        self.nm_memory_mb = nm_memory_mb
        self.nm_vcores = nm_vcores
        self.start_timeout_s = start_timeout_s
        self.detach = detach  # `make hadoop-up`: outlives this process, stopped by `make hadoop-down`
        self.conf_dir = self.work_dir / "conf"
        self.log_path = self.work_dir / "minihadoop.log"
        self.info: dict = {}
        self.start_s = 0.0
        self._proc: subprocess.Popen | None = None
        self._log = None

    @classmethod
    def attach(cls, work_dir: os.PathLike[str] | str) -> MiniHadoop:
        """A handle on a cluster already running in ``work_dir`` (``make hadoop-up``), which ``stop()`` leaves be."""
        cluster = cls(work_dir)
        ready = cluster.conf_dir / "minihadoop.json"
        if not ready.exists():
            raise MiniHadoopError(f"no running local Hadoop in {cluster.work_dir} ({ready} is missing): "
                                  "make hadoop-up")
        cluster.info = json.loads(ready.read_text())
        cluster.ha = len(cluster.info["webhdfs"]) > 1
        return cluster

    # -- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> MiniHadoop:
        lib = ensure_jars()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        ready = self.conf_dir / "minihadoop.json"
        ready.unlink(missing_ok=True)
        cmd = ["java", f"-Dlog4j.configuration=file:{LOG4J}", "-cp", f"{lib}/*", str(LAUNCHER),
               "--dir", str(self.work_dir), "--datanodes", str(self.datanodes),
               "--nm-memory-mb", str(self.nm_memory_mb), "--nm-vcores", str(self.nm_vcores),
               "--capacity-scheduler", str(ROOT / "docker" / "hadoop" / "conf" / "capacity-scheduler.xml")]
        if not self.detach:
            cmd.append("--exit-on-stdin-eof")
        if self.ha:
            cmd.append("--ha")
        if not self.yarn:
            cmd.append("--no-yarn")
        env = dict(os.environ, JAVA_HOME=java_home())
        env.pop("HADOOP_CONF_DIR", None)
        env.pop("YARN_CONF_DIR", None)
        t0 = time.monotonic()
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(cmd, cwd=ROOT, env=env,
                                      stdin=subprocess.DEVNULL if self.detach else subprocess.PIPE, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        deadline = t0 + self.start_timeout_s
        while not ready.exists():
            if self._proc.poll() is not None:
                raise MiniHadoopError(f"MiniHadoop exited with {self._proc.returncode} before it was ready; "
                                      f"{self.log_path} ends with:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise MiniHadoopError(f"MiniHadoop not ready after {self.start_timeout_s:.0f} s; "
                                      f"{self.log_path} ends with:\n{self.log_tail()}")
            time.sleep(0.5)
        self.info = json.loads(ready.read_text())
        self.start_s = time.monotonic() - t0
        return self

    def stop(self, timeout_s: float = 60) -> None:
        """SIGTERM, wait for the daemons to stop, then SIGKILL the process group if anything is left."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # containers the NodeManager launched share the group
        except ProcessLookupError:
            pass
        proc.wait()
        if proc.stdin:
            proc.stdin.close()
        if self._log:
            self._log.close()
            self._log = None

    def fail_over(self, to: int, timeout_s: float = 60) -> None:
        """Make NameNode ``to`` (0 or 1) the active one and the other the standby (``ha=True`` only)."""
        if not self.ha or self._proc is None or self._proc.stdin is None:
            raise MiniHadoopError("fail_over needs a running MiniHadoop(ha=True) started by this process")
        self._proc.stdin.write(f"failover {to}\n".encode())
        self._proc.stdin.flush()
        ready = self.conf_dir / "minihadoop.json"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                info = json.loads(ready.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                info = {}
            if info.get("active_namenode") == to:
                self.info = info
                return
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise MiniHadoopError(f"failover to nn{to + 1} did not complete; {self.log_path} ends with:\n"
                                      f"{self.log_tail()}")
            time.sleep(0.2)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def __enter__(self) -> MiniHadoop:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-chars:].decode(errors="replace")
        except FileNotFoundError:
            return "(no log)"

    # -- addresses --------------------------------------------------------------------------------------------

    @property
    def fs_default_fs(self) -> str:
        return self.info["fs_default_fs"]

    @property
    def webhdfs_urls(self) -> list[str]:
        return list(self.info["webhdfs"])

    @property
    def webhdfs_url(self) -> str:
        return self.info["webhdfs"][0]

    @property
    def rm_webapp(self) -> str:
        return self.info["rm_webapp"]

    def airflow_config(self, out_dir: os.PathLike[str] | str, *, storage_root: str | None = None) -> Path:
        """``config/local-hadoop/`` with this cluster's addresses filled in, written to ``out_dir``: the folder to
        give ``scripts/setup_airflow.sh`` as ``TFHUB_CONFIG_DIR``. With ``storage_root`` the placeholders that
        script fills (``@STORAGE_ROOT@``, ``@PROJECT_ROOT@``) are filled too.
        """
        import sys

        import pyspark

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        values = {"@RM_WEBAPP@": self.rm_webapp, "@WEBHDFS_PORT@": self.webhdfs_url.rsplit(":", 1)[1],
                  "@PYTHON@": sys.executable, "@SPARK_HOME@": str(Path(pyspark.__file__).resolve().parent)}
        if storage_root is not None:
            values.update({"@STORAGE_ROOT@": storage_root, "@PROJECT_ROOT@": str(ROOT)})
        for src in sorted((ROOT / "config" / "local-hadoop").glob("*.json")):
            text = src.read_text()
            for key, value in values.items():
                text = text.replace(key, value)
            (out / src.name).write_text(text)
        return out

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment for ``spark-submit --master yarn`` and Hadoop clients against this cluster."""
        env = dict(os.environ if base is None else base)
        env.update(HADOOP_CONF_DIR=str(self.conf_dir), YARN_CONF_DIR=str(self.conf_dir), JAVA_HOME=java_home())
        return env


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.support.minihadoop up|down|jars [DIR]``: what ``make hadoop-up``/``hadoop-down`` run."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.support.minihadoop")
    parser.add_argument("action", choices=["up", "down", "jars"])
    parser.add_argument("--dir", default=str(ROOT / "var" / "hadoop" / "cluster"))
    parser.add_argument("--ha", action="store_true", help="two NameNodes (nameservice minihdfs), nn1 active")
    parser.add_argument("--datanodes", type=int, default=1)
    args = parser.parse_args(argv)
    work = Path(args.dir).resolve()
    pid_file = work / "minihadoop.pid"
    if args.action == "jars":
        print(ensure_jars())
        return 0
    if args.action == "up":
        if pid_file.exists() and _pid_alive(int(pid_file.read_text())):
            print(f"already running (pid {pid_file.read_text().strip()}); make hadoop-down first")
            return 1
        cluster = MiniHadoop(work, ha=args.ha, datanodes=args.datanodes, detach=True).start()
        pid_file.write_text(str(cluster.pid))
        print(f"local Hadoop up in {cluster.start_s:.0f} s (pid {cluster.pid}, log {cluster.log_path})")
        print(f"  fs.defaultFS      {cluster.fs_default_fs}")
        print(f"  WebHDFS           {' '.join(cluster.webhdfs_urls)}")
        print(f"  ResourceManager   {cluster.rm_webapp}")
        config = cluster.airflow_config(work / "airflow-config")
        print(f"  export HADOOP_CONF_DIR={cluster.conf_dir} YARN_CONF_DIR={cluster.conf_dir}")
        print(f"  Airflow: TFHUB_CONFIG_DIR={config} TFHUB_STORAGE_ROOT={cluster.fs_default_fs}/tfhub "
              "bash scripts/setup_airflow.sh")
        return 0
    if not pid_file.exists():
        print("not running (no pid file)")
        return 0
    pid = int(pid_file.read_text())
    t0 = time.monotonic()
    if _pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        while _pid_alive(pid) and time.monotonic() - t0 < 60:
            time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink()
    print(f"local Hadoop stopped in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
