"""A crashed Airflow task never leaves two trainings on one run (issue 18), on the embedded default (local Spark).

``airflow dags test`` runs the DAG with Airflow's real task runner and operators, each task in the CLI's own
process: the test SIGKILLs that process while ``finetune`` trains (no ``on_kill``: what an out-of-memory kill or a
lost worker does), so its spark-submit, driver and TensorFlow workers live on as orphans. The scheduler would then
find the task's heartbeat gone and schedule its next try; the test does that step in the metadata database (the
task instance up for its next try number) and runs that try with ``airflow tasks test`` on the same DAG run: the
same task instance, its task state store, the next try number. That try must stop the orphans before it submits,
and from then on only it writes to the run folder; ``evaluate`` then scores its model against the accuracy bar of
the end-to-end test.

The same test runs on a Spark standalone cluster (a real Master and two 1-core Workers on 127.0.0.1, the Spark
connection pointed at the Master through ``AIRFLOW_CONN_SPARK_TFHUB``). There the driver is spark-submit's child
on this host, but the executors are JVMs the Worker started, with their Python and TensorFlow workers under them:
the test checks that the retry finds those by their environment too, that the Master's application of the first
try outlived the crash and is gone (the Master's ``/json/`` ``activeapps``) before the retry's workers start, and
that the Workers themselves are left alone.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import DEMO_DS as DS
from tests.conftest import DEMO_RUN_DATE, ROOT, copy_storage
from tests.support.spark_standalone import SparkStandalone

pytestmark = pytest.mark.e2e

HELLO = re.compile(r"worker (\d+) of attempt (\d+) started: pid (\d+)")
FENCED = re.compile(r"fenced (.+?): stopped (\d+) processes \[([\d, ]*)\]")
# Not run here: the sensor and prep (the copied run prepared the partition), the publication (not the point).
SKIP = "wait_for_raw_partition|prepare_examples|export_model"
# The run's epochs: the first try is killed at its first checkpoint (epoch 4 of the demo's 13 steps per epoch), and
# its orphans must still be training when the retry fences them, about a minute later (the retry's Airflow start).
# With the DAG's 15 they finished first once the job got faster (the orphans done at 01:34:16, the fence at
# 01:34:25); 30 leaves them about two minutes of training.
EPOCHS = 30
# The standalone cluster's share of each application: both 1-core Workers, one executor on each.
STANDALONE_CONF = {"spark.executor.cores": "1", "spark.cores.max": "2", "spark.executor.memory": "512m"}
MASTER_CHECK = re.compile(r"fenced on the Spark Master: application (\S+) .*gone|"
                          r"the Spark Master \(\S+\) runs no application of an older attempt")


@pytest.fixture(params=["local", "standalone"])
def cluster(request, tmp_path_factory):
    """None for the embedded default (``local[2]``); a running Spark standalone cluster for ``standalone``."""
    if request.param == "local":
        yield None
        return
    with SparkStandalone(tmp_path_factory.mktemp("standalone"), workers=2, cores=1, memory="2g") as c:
        yield c


def on_cluster(env: dict, cluster: SparkStandalone) -> None:
    """Points the copy's Spark connection at the cluster's Master (the environment's connection wins over the
    database's) and gives each application both Workers."""
    env["AIRFLOW_CONN_SPARK_TFHUB"] = json.dumps({
        "conn_type": "spark", "host": cluster.master_url,
        "extra": {"deploy-mode": "client", "master_webui_url": cluster.webui_url}})
    pipeline = json.loads(env["AIRFLOW_VAR_TFHUB_PIPELINE"])
    pipeline["spark_conf"] = {**pipeline.get("spark_conf", {}), **STANDALONE_CONF}
    env["AIRFLOW_VAR_TFHUB_PIPELINE"] = json.dumps(pipeline)


APP_ID = re.compile(r"Connected to Spark cluster with app ID (app-\d+-\d+)")


def app_ids(cluster: SparkStandalone, which: str = "activeapps") -> list[str]:
    """The ids of the Master's running (or completed) applications."""
    return [a["id"] for a in cluster.state().get(which, [])]


def airflow(env: dict, log: Path, args: str) -> subprocess.Popen:
    """``airflow <args>``, its output in ``log``; the returned process is the CLI, in which ``dags test`` and
    ``tasks test`` run the tasks."""
    return subprocess.Popen(["bash", "-c", f". {ROOT}/scripts/env.sh && exec airflow {args}"],
                            env=env, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if result := predicate():
            return result
        if proc.poll() is not None:
            raise AssertionError(f"airflow exited {proc.returncode} before {what}:\n"
                                 f"{log.read_text()[-5000:]}")
        time.sleep(1)
    raise TimeoutError(f"{what} not reached after {timeout}s:\n{log.read_text()[-5000:]}")


def attempt_processes(attempt_id: str) -> list[psutil.Process]:
    """Processes on this machine whose environment carries the attempt ``attempt_id`` (spark-submit, the driver,
    PySpark's daemon, the TensorFlow workers)."""
    found = []
    for p in psutil.process_iter():
        try:
            value = p.environ().get("TFHUB_ATTEMPT")
            if value and json.loads(value)["id"] == attempt_id and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.Error, ValueError, KeyError):
            pass
    return found


def progress_records(run: Path) -> dict[tuple, dict]:
    """The committed checkpoints' records now in the run folder, by (name, committing attempt)."""
    out = {}
    for p in (run / "checkpoints").glob("progress-*.json"):
        try:
            record = json.loads(p.read_text())
        except (OSError, ValueError):  # pruned between the listing and the read
            continue
        out[(p.name, record.get("airflow_attempt", {}).get("id"))] = record
    return out


WORKER_LINE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) INFO finetune\.worker: \[w\d ")


def keep_output_open(submit: psutil.Process, log: Path) -> threading.Thread:
    """Reads spark-submit's output pipe (its stdout and stderr: one pipe, read by the task process) into ``log``
    from now until the last writer exits, so that it outlives the task process. Without a reader, the orphaned
    driver dies on its own within minutes of the crash once it blocks on its dead output (its workers' log relay
    stalls): then whether the retry finds it depends on how long the retry takes to start. With one (a log
    shipper, a deployment where spark-submit's output survives the task), the orphan trains on until stopped."""
    pipe = open(f"/proc/{submit.pid}/fd/1", "rb", buffering=0)  # a second read end of the same pipe

    def drain() -> None:
        with pipe, open(log, "wb") as out:
            while chunk := pipe.read(65536):
                out.write(chunk)
                out.flush()

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    return thread


def worker_times(log: Path) -> list[float]:
    """The times of the TensorFlow workers' log lines (relayed by the driver) in ``log``."""
    return [time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
            for m in WORKER_LINE.finditer(log.read_text(errors="replace"))]


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def schedule_retry_as_the_scheduler_does(env: dict, run_id: str, task_id: str) -> None:
    """What the scheduler does when a running task's heartbeat stops and it has retries left: the task instance
    goes up for retry, then is scheduled with the next try number."""
    code = ("from airflow.utils.session import create_session\n"
            "from airflow.models.taskinstance import TaskInstance as TI\n"
            "with create_session() as s:\n"
            f"    n = s.query(TI).filter(TI.dag_id == 'tfhub_finetune', TI.run_id == {run_id!r}, "
            f"TI.task_id == {task_id!r}, TI.state == 'running').update("
            "{'state': 'scheduled', 'try_number': TI.try_number + 1}, synchronize_session=False)\n"
            "    assert n == 1, n\n")
    res = subprocess.run(["bash", "-c", f". {ROOT}/scripts/env.sh && exec python -c \"$CODE\""],
                         env={**env, "CODE": code}, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]


def test_sigkilled_training_task_is_fenced_by_its_retry(trained_demo_run, cluster, tmp_path):
    assert trained_demo_run.result.returncode == 0, "the session's demo run must have prepared the partition"
    storage, env = copy_storage(trained_demo_run, tmp_path)
    if cluster is not None:
        on_cluster(env, cluster)
        daemons = [proc.pid for _, proc, _ in cluster._procs]  # the Master's and the Workers' JVMs
    run = storage / "runs" / f"ds={DS}"
    token_file = run / "_attempts" / "finetune.json"
    procs: list[psutil.Process] = []
    first_log, retry_log = tmp_path / "first.log", tmp_path / "retry.log"
    seen: dict[tuple, dict] = {}  # every checkpoint commit the test saw, whoever made it
    first = airflow(env, first_log, f"dags test tfhub_finetune {DEMO_RUN_DATE} -c '{json.dumps({'epochs': EPOCHS})}' "
                                    f"--mark-success-pattern '{SKIP}'")
    retry = None
    try:
        # The first try trains: both workers started, and its chief committed a checkpoint to the run folder.
        def first_trains():
            if not token_file.exists():
                return None
            token = json.loads(token_file.read_text())
            seen.update(progress_records(run))
            committed = [r for r in seen.values() if r.get("airflow_attempt", {}).get("id") == token["id"]]
            workers = {int(m.group(1)): int(m.group(3)) for m in HELLO.finditer(first_log.read_text())}
            return (token, workers) if committed and sorted(workers) == [0, 1] else None

        token1, workers1 = wait_for(first_trains, 600, "the first try's first checkpoint", first, first_log)
        submit = next(p for p in attempt_processes(token1["id"]) if "SparkSubmit" in " ".join(p.cmdline()))
        task_process = submit.parent()
        assert task_process.pid == first.pid  # the task runs in the CLI's process: the one to crash
        if cluster is not None:
            # The executors are the Workers' children, not spark-submit's: one JVM on each Worker.
            executors = [p for p in attempt_processes(token1["id"])
                         if "CoarseGrainedExecutorBackend" in " ".join(p.cmdline())]
            assert sorted(p.ppid() for p in executors) == sorted(daemons[1:]), (executors, daemons)
            assert set(workers1.values()) <= {c.pid for e in executors for c in e.children(recursive=True)}
            app1 = APP_ID.search(first_log.read_text()).group(1)
        orphan_log = tmp_path / "orphan.log"  # what the first try's driver writes after the crash
        drain = keep_output_open(submit, orphan_log)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(30)

        # The crash left the attempt running: spark-submit, the driver and both TensorFlow workers (standalone:
        # and its executors, and its application on the Master).
        time.sleep(3)
        procs = attempt_processes(token1["id"])
        assert set(workers1.values()) <= {p.pid for p in procs}, (workers1, procs)
        assert all(p.ppid() != first.pid for p in procs)
        if cluster is not None:
            assert {e.pid for e in executors} <= {p.pid for p in procs}
            assert app_ids(cluster) == [app1], cluster.state()  # the orphaned driver keeps it running
        schedule_retry_as_the_scheduler_does(env, token1["run_id"], "finetune")

        retry = airflow(env, retry_log, f"tasks test tfhub_finetune finetune {token1['run_id']}")

        def retry_trains():
            # Until the retry's workers start: the commits seen so far; after: the orphans must be gone.
            seen.update(progress_records(run))
            workers = {int(m.group(1)): int(m.group(3)) for m in HELLO.finditer(retry_log.read_text())}
            return workers if sorted(workers) == [0, 1] else None

        workers2 = wait_for(retry_trains, 600, "the retry's workers", retry, retry_log)
        left = [p.pid for p in procs if alive(p)]
        assert left == [], f"the first try's processes {left} still run beside the retry's workers {workers2}"
        assert attempt_processes(token1["id"]) == []  # nor any the Master started for it meanwhile
        token2 = json.loads(token_file.read_text())
        assert token2["try_number"] == token1["try_number"] + 1 and token2["id"] != token1["id"]
        if cluster is not None:
            # One application on the Master: the retry's; the first try's has ended.
            app2 = APP_ID.search(retry_log.read_text()).group(1)
            assert app_ids(cluster) == [app2] and app1 in app_ids(cluster, "completedapps"), cluster.state()

        while retry.poll() is None:
            seen.update(progress_records(run))
            time.sleep(0.5)
        out = retry_log.read_text()
        assert retry.returncode == 0, out[-5000:]
    finally:
        for p in [*procs, *(attempt_processes(token1["id"]) if "token1" in locals() else [])]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        for proc in (first, retry):
            if proc is not None and proc.poll() is None:
                proc.kill()

    # The retry's log: it stopped what was left of the first try (the orphans may lose some processes on their
    # own meanwhile: the driver's output went to the dead task), before it took the run over and submitted.
    fenced = FENCED.search(out)
    assert fenced, out[-5000:]
    assert f"({token1['id']})" in fenced.group(1)
    stopped = {int(x) for x in fenced.group(3).split(",") if x.strip()}
    assert stopped & {p.pid for p in procs}, (stopped, procs)
    assert out.index(fenced.group(0)) < out.index("now names") < out.index(HELLO.search(out).group(0))
    if cluster is not None:
        # The executors and their Python workers, on this host, were stopped with the driver; then the retry
        # made sure the Master ran no application of the first try any more, before it took the run over.
        assert {e.pid for e in executors} <= stopped, (executors, stopped)
        master = MASTER_CHECK.search(out)
        assert master, out[-5000:]
        assert master.group(1) in (None, app1), master.group(0)
        assert out.index(fenced.group(0)) < out.index(master.group(0)) < out.index("now names")
        # The cluster itself is untouched: its Master and both Workers still run and are registered.
        assert all(psutil.pid_exists(pid) for pid in daemons)
        assert sum(w["state"] == "ALIVE" for w in cluster.state()["workers"]) == 2
    # From the workers' logs: the first try's workers trained after the crash, and logged nothing once the retry
    # had taken the run over (its driver's output ended when the retry stopped it).
    drain.join(30)
    assert not drain.is_alive(), "the first try's driver still writes"
    orphan_times = worker_times(orphan_log)
    assert orphan_times and max(orphan_times) < token2["claimed_at"], (orphan_times[-3:], token2["claimed_at"])
    assert min(worker_times(retry_log)) >= token2["claimed_at"]
    # The first try committed checkpoints before the retry took the run over, and none after; every commit after
    # it is the retry's.
    by = {r["airflow_attempt"]["id"]: [] for r in seen.values()}
    for r in seen.values():
        by[r["airflow_attempt"]["id"]].append(r["time"])
    assert set(by) == {token1["id"], token2["id"]}, seen
    assert max(by[token1["id"]]) < token2["claimed_at"] <= min(by[token2["id"]]), seen
    # One training's model: the retry's, from scratch, written after it took the run over.
    history = json.loads((run / "history.json").read_text())
    assert history["restarts"] == 0 and history["resumed_from"]["global_step"] == 0
    assert len(history["history"]) == json.loads((run / "finetune_config.json").read_text())["epochs"]
    assert json.loads(token_file.read_text())["id"] == token2["id"]
    assert (run / "model" / "saved_model.pb").stat().st_mtime >= token2["claimed_at"]
    # ...and a good one.
    evaluate_log = tmp_path / "evaluate.log"
    evaluate = airflow(env, evaluate_log, f"tasks test tfhub_finetune evaluate {token1['run_id']}")
    assert evaluate.wait(900) == 0, evaluate_log.read_text()[-5000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.9, metrics
