"""Crash safety on the Airflow side: the application carries its task attempt (name, YARN tags, the driver's and
executors' environment), the attempt token it writes is the one the jobs check, and a new attempt stops what an
older attempt of the same task instance left running (and nothing else) before it claims the run."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import types

import psutil
import pytest

from tasks.io import fencing as job_fencing
from tfhub_spark import fencing
from tfhub_spark.operators.spark_job import PipelineSparkSubmitOperator

RUN = "manual__2026-11-21T00:00:00+00:00"


@pytest.fixture
def deployment(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_VAR_TFHUB_PIPELINE", json.dumps({"storage_root": f"file://{tmp_path}"}))
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_TFHUB", json.dumps({"conn_type": "spark", "host": "local[2]"}))
    return tmp_path


def context(try_number: int, run_id: str = RUN, task_id: str = "evaluate") -> dict:
    # What the task runner gives an operator; no task_state_store: the Airflow < 3.3 path (the token is the marker).
    return {"ti": types.SimpleNamespace(dag_id="tfhub_finetune", run_id=run_id, task_id=task_id, map_index=-1,
                                        try_number=try_number, xcom_push=lambda **kw: None)}


def operator(storage, tmp_path, ctx) -> PipelineSparkSubmitOperator:
    op = PipelineSparkSubmitOperator(task_id=ctx["ti"].task_id, job="evaluate",
                                     job_args={"--run-dir": f"file://{storage}/runs/ds=2026-11-20"})
    op._context = ctx
    tmp_path.mkdir()
    op.prepare_submit(ctx, str(tmp_path))
    op.apply_attempt(ctx)
    op._hook = op._get_hook()
    return op


def test_application_carries_its_attempt_and_the_jobs_accept_only_its_token(deployment, tmp_path, monkeypatch):
    assert (job_fencing.ATTEMPT_ENV, job_fencing.TOKEN_ENV, job_fencing.TOKEN_DIR) == \
        (fencing.ATTEMPT_ENV, fencing.TOKEN_ENV, fencing.TOKEN_DIR)
    op = operator(deployment, tmp_path / "zip", context(3))
    attempt = op.attempt
    assert (attempt.dag_id, attempt.run_id, attempt.task_id, attempt.try_number) == \
        ("tfhub_finetune", RUN, "evaluate", 3)
    cmd = op._hook._build_spark_submit_command(op.application)
    assert cmd[cmd.index("--name") + 1] == f"tfhub-evaluate [tfhub_finetune.evaluate run {RUN} try 3 ({attempt.id})]"
    confs = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--conf"]
    assert f"spark.executorEnv.TFHUB_ATTEMPT={attempt.to_json()}" in confs
    token = f"file://{deployment}/runs/ds=2026-11-20/_attempts/evaluate.json"
    assert f"spark.executorEnv.TFHUB_ATTEMPT_TOKEN={token}" in confs
    tags = next(c for c in confs if c.startswith("spark.yarn.tags=")).split("=", 1)[1].split(",")
    assert "airflow_task_id=evaluate" in tags and "airflow_try_number=3" in tags and \
        f"airflow_attempt={attempt.id}" in tags
    # The driver's environment (spark-submit's, in local and client mode).
    assert op._hook._env == {"TFHUB_ATTEMPT": attempt.to_json(), "TFHUB_ATTEMPT_TOKEN": token}

    op.claim_run(op._context)
    assert json.loads((deployment / "runs/ds=2026-11-20/_attempts/evaluate.json").read_text())["id"] == attempt.id
    # A driver started with this environment may commit; one of another attempt may not.
    for key, value in op._hook._env.items():
        monkeypatch.setenv(key, value)
    job_fencing.check("metrics", f"file://{deployment}/runs/ds=2026-11-20/metrics.json")
    monkeypatch.setenv("TFHUB_ATTEMPT", fencing.Attempt(**{**json.loads(attempt.to_json()), "id": "x"}).to_json())
    with pytest.raises(job_fencing.StaleAttemptError, match=f"try 3 \\({attempt.id}\\) owns"):
        job_fencing.check("metrics", f"file://{deployment}/runs/ds=2026-11-20/metrics.json")


def orphan_tree(env_attempt: fencing.Attempt, marker: str, token: str = "") -> list[psutil.Process]:
    """Like what a SIGKILLed task leaves: spark-submit, a daemon in its own process group and its workers, all
    orphans (their parent exited), all with the attempt in their environment."""
    env = {**os.environ, "TFHUB_ATTEMPT": env_attempt.to_json(), "TFHUB_ATTEMPT_TOKEN": token,
           "ORPHAN_MARKER": marker}
    subprocess.run(["bash", "-c", "(setsid bash -c 'sleep 301 & sleep 302 & wait' & sleep 303 & wait) &"], env=env,
                   check=True)
    deadline = time.time() + 10
    while time.time() < deadline:
        procs = []
        for p in psutil.process_iter(["name"]):
            try:
                if p.info["name"] == "sleep" and p.environ().get("ORPHAN_MARKER") == marker:
                    procs.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        if len(procs) == 3:
            return procs
        time.sleep(0.05)
    raise AssertionError(f"the orphan tree {marker} did not start")


def test_retry_stops_what_an_older_attempt_left_running_and_nothing_else(deployment, tmp_path):
    first = operator(deployment, tmp_path / "zip1", context(1))
    first.claim_run(first._context)  # the token is the marker where no task state store exists
    orphans = orphan_tree(first.attempt, "orphan-of-try-1", first.token_url)
    assert all(p.parent().pid != os.getpid() for p in orphans)  # nobody of ours: a crash's orphans
    # A crashed earlier run of the same date: another task instance, but it writes the same run folder.
    orphans += orphan_tree(fencing.Attempt("tfhub_finetune", "manual__earlier", "evaluate", -1, 1, "earlier"),
                           "earlier-run-same-folder", first.token_url)
    # Another run's evaluation of another date is not this task's to stop.
    other = orphan_tree(fencing.Attempt("tfhub_finetune", "scheduled__2026-11-20", "evaluate", -1, 1, "other"),
                        "another-run", "file:///elsewhere/runs/ds=2026-11-19/_attempts/evaluate.json")
    try:
        retry = operator(deployment, tmp_path / "zip2", context(2))
        retry.fence_grace_seconds = 5
        retry.claim_run(retry._context)
        gone = [not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in orphans]
        assert gone == [True] * 6
        assert all(p.is_running() for p in other)
        token = json.loads((deployment / "runs/ds=2026-11-20/_attempts/evaluate.json").read_text())
        assert (token["try_number"], token["id"]) == (2, retry.attempt.id)
    finally:
        for p in orphans + other:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


class FakeMaster:
    """A Spark standalone Master's web UI: ``/json/`` lists ``apps`` as running; each look counts."""

    def __init__(self, apps: list[dict]) -> None:
        import http.server

        self.apps, self.looks = apps, 0
        master = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                master.looks += 1
                body = json.dumps({"status": "ALIVE", "activeapps": master.apps, "completedapps": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_retry_waits_until_the_standalone_master_ends_the_older_attempts_application(deployment, tmp_path,
                                                                                      monkeypatch):
    previous = fencing.Attempt("tfhub_finetune", RUN, "evaluate", -1, 1, "older")
    older = {"id": "app-1", "name": f"tfhub-evaluate [{previous.label()}]"}
    unrelated = {"id": "app-2", "name": "tfhub-evaluate [tfhub_finetune.evaluate run another-run try 1 (x)]"}
    master = FakeMaster([older, unrelated])
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_TFHUB", json.dumps(
        {"conn_type": "spark", "host": "spark://127.0.0.1", "port": 7077,
         "extra": {"deploy-mode": "client", fencing.STANDALONE_WEBUI_EXTRA: master.url}}))
    retry = operator(deployment, tmp_path / "zip", context(2))
    assert fencing.standalone_apps(master.url, retry.attempt) == [older]
    # Another run's application is not this task's; this attempt's own never counts.
    mine = {"id": "app-3", "name": f"tfhub-evaluate [{retry.attempt.label()}]"}
    assert fencing.standalone_apps(master.url, fencing.Attempt(**{**json.loads(retry.attempt.to_json()),
                                                                  "run_id": "another-run"})) == [unrelated]
    # An application the older attempt recorded counts whatever its name (the jobs name their own session).
    assert fencing.standalone_apps(master.url, retry.attempt, app_ids={"app-2"}) == [older, unrelated]
    master.apps.append(mine)
    threading.Timer(1.5, lambda: master.apps.remove(older)).start()  # the Master ends it after 1.5 s
    t0 = time.monotonic()
    retry.claim_run(retry._context)
    assert time.monotonic() - t0 >= 1.4 and master.looks >= 2  # it waited for the Master, then claimed the run
    assert json.loads((deployment / "runs/ds=2026-11-20/_attempts/evaluate.json").read_text())["id"] == \
        retry.attempt.id
    # An application that never ends: the retry refuses to start a second one.
    master.apps.append(older)
    again = operator(deployment, tmp_path / "zip2", context(3))
    again.fence_standalone_timeout_s = 1
    with pytest.raises(RuntimeError, match="still runs .*app-1.*not starting a second one"):
        again.claim_run(again._context)
    master.server.shutdown()


def test_token_on_hdfs_replaces_the_older_one_and_the_jobs_read_it(tmp_path, monkeypatch):
    from tasks.io import commit as job_commit
    from tasks.io import storage as job_storage
    from tests.support.webhdfs_server import WebHdfsTestServer
    from tfhub_spark.hooks.storage import StorageHook

    with WebHdfsTestServer(tmp_path / "hdfs") as srv:
        monkeypatch.setenv("AIRFLOW_CONN_WEBHDFS_TFHUB", json.dumps(
            {"conn_type": "webhdfs", "host": "127.0.0.1", "port": srv.port, "login": "tester"}))
        monkeypatch.setenv("TFHUB_WEBHDFS_URL", srv.url)
        monkeypatch.setattr(job_storage, "_client", None)
        hook = StorageHook(webhdfs_conn_id="webhdfs_tfhub")
        run_dir = "hdfs://namenode:8020/runs/ds=2026-11-20"
        old = fencing.Attempt("tfhub_finetune", RUN, "finetune", -1, 1, "a" * 16)
        new = fencing.Attempt("tfhub_finetune", RUN, "finetune", -1, 2, "b" * 16)
        url = fencing.token_url(run_dir, old)
        fencing.write_token(hook, url, old)
        fencing.write_token(hook, url, new)
        assert fencing.read_token(hook, url)["id"] == new.id
        assert sorted(p.name for p in (srv.root / "runs/ds=2026-11-20/_attempts").iterdir()) == ["finetune.json"]
        monkeypatch.setenv("TFHUB_ATTEMPT", old.to_json())
        monkeypatch.setenv("TFHUB_ATTEMPT_TOKEN", url)
        with pytest.raises(job_fencing.StaleAttemptError, match=f"try 2 \\({new.id}\\) owns {run_dir}"):
            job_commit.write_text_atomic(f"{run_dir}/history.json", "[]")
        monkeypatch.setenv("TFHUB_ATTEMPT", new.to_json())
        job_commit.write_text_atomic(f"{run_dir}/history.json", "[]")
    job_storage._client = None
