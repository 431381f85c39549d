"""The DAG through the real scheduler, triggerer and API server (`airflow standalone`), driven over the REST API
the UI uses: trigger forms and their validation, a scheduled run whose partition arrives late, a backfill over
partition dates and the rerun of one partition key, and killing a running training task.

The tests of this module share the session's Airflow (``scheduler_airflow`` in tests/conftest.py) and run in file
order. Whole-DAG runs use small partitions, one epoch and one worker where the test is about the scheduler, not
the model: every task still runs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from pathlib import Path

import psutil
import pytest
import requests

from tasks.demo import make_dataset

pytestmark = pytest.mark.e2e

DAG = "tfhub_finetune"
# Quick runs where the model's quality is not the point: one epoch, one worker, and every model is blessed.
QUICK = {"epochs": 1, "num_workers": 1, "min_accuracy": 0.0, "baseline_tolerance": 1.0}
SMALL = 64
"""Images of a partition whose model's quality is not the point: enough for records in every split."""
LATE_PARTITION_IMAGES = 96
"""The late partition, trained with the DAG's defaults (two workers, 15 epochs): small, records in every split."""


@pytest.fixture(scope="module")
def af(scheduler_airflow):
    return scheduler_airflow


def make_partition(af, ds: str, n: int = SMALL) -> None:
    make_dataset.run(make_dataset.Config(raw_root=f"file://{af.storage}/raw", ds=ds, num_images=n))


def trigger(af, conf: dict, partition_key: str | None = None) -> str:
    """A manual run, as the trigger form makes it: the form's Partition Key is ``partition_key`` here."""
    r = af.post(f"/dags/{DAG}/dagRuns", {"logical_date": None, "conf": conf, "partition_key": partition_key})
    assert r.status_code == 200, r.text
    assert r.json()["partition_key"] == partition_key
    return r.json()["dag_run_id"]


def task_log(af, run_id: str, task_id: str) -> str:
    ti = af.get(f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/{task_id}")
    body = af.get(f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{ti['try_number']}", full_content=True)
    content = body.get("content", body)
    return json.dumps(content) if not isinstance(content, str) else content


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def test_invalid_param_is_refused_and_no_run_is_created(af):
    before = af.runs(DAG)
    r = af.post(f"/dags/{DAG}/dagRuns", {"logical_date": None, "conf": {"epochs": 0}})
    assert r.status_code in (400, 422), r.text
    assert "epochs" in r.text
    r = af.post(f"/dags/{DAG}/dagRuns", {"logical_date": None, "conf": {"partition": "2026-13-45"}})
    assert r.status_code in (400, 422), r.text
    # The timetable's key format is YYYY-MM-DD: a key that is not such a date is refused.
    for key in ("2026-13-45", "20261105"):
        r = af.post(f"/dags/{DAG}/dagRuns", {"logical_date": None, "conf": {}, "partition_key": key})
        assert r.status_code in (400, 422) and "key_format" in r.text, r.text
    # Folder names that would step out of the storage root (issue 16, item 10).
    for param in ("dataset", "model_name"):
        r = af.post(f"/dags/{DAG}/dagRuns", {"logical_date": None, "conf": {param: ".."}})
        assert r.status_code == 400 and f"Invalid input for param {param}" in r.text, r.text
    assert af.runs(DAG) == before


def utc_yesterday(at: dt.datetime) -> str:
    return (at - dt.timedelta(days=1)).strftime("%Y-%m-%d")


def test_scheduled_run_waits_for_late_partition_while_a_manual_run_uses_its_params(af):
    known = {x["dag_run_id"] for x in af.runs(DAG)}
    unpaused_at = dt.datetime.now(dt.timezone.utc)
    r = af.patch(f"/dags/{DAG}", {"is_paused": False})
    assert r.status_code == 200, r.text
    # Unpaused with catchup off, the scheduler creates the run of the latest midnight, for the day that ended.
    new_scheduled = af.wait_for(lambda: sorted((x for x in af.runs(DAG) if x["run_type"] == "scheduled"
                                                and x["dag_run_id"] not in known), key=lambda x: x["run_after"]),
                                120, "a scheduled run")
    seen_at = dt.datetime.now(dt.timezone.utc)
    scheduled = new_scheduled[0]
    ds = scheduled["partition_key"]
    # The day that ended last at the moment the scheduler created the run: the day before that moment's UTC date.
    # The moment lies between the unpause and the answer; only across midnight do the two differ.
    assert ds in {utc_yesterday(unpaused_at), utc_yesterday(seen_at)}, (ds, unpaused_at, seen_at)
    af.wait_for(lambda: af.task_states(DAG, scheduled["dag_run_id"]).get("wait_for_raw_partition") == "deferred",
                180, "the sensor deferred to the triggerer", interval=1)

    # Meanwhile a user triggers a run for another day, named by its partition key, with their own params.
    make_partition(af, "2026-11-10")
    manual = trigger(af, {"epochs": 2, "num_workers": 1, "batch_size": 16, "min_accuracy": 0.0},
                     partition_key="2026-11-10")
    assert af.wait_run(DAG, manual)["state"] == "success", af.task_states(DAG, manual)
    history = json.loads((af.storage / "runs/ds=2026-11-10/history.json").read_text())
    assert len(history["history"]) == 2 and history["num_workers"] == 1
    finetune_cfg = json.loads((af.storage / "runs/ds=2026-11-10/finetune_config.json").read_text())
    assert finetune_cfg["batch_size"] == 16 and finetune_cfg["epochs"] == 2
    assert "raw/ds=2026-11-10" in task_log(af, manual, "wait_for_raw_partition")
    assert (af.storage / "serving/shapes/20261110/saved_model.pb").exists()

    # The scheduled run is still waiting; the partition arrives; the run finishes (with the DAG's defaults).
    assert af.task_states(DAG, scheduled["dag_run_id"])["wait_for_raw_partition"] == "deferred"
    make_partition(af, ds, n=LATE_PARTITION_IMAGES)
    assert af.wait_run(DAG, scheduled["dag_run_id"])["state"] == "success", \
        af.task_states(DAG, scheduled["dag_run_id"])
    assert json.loads((af.storage / f"examples/ds={ds}/manifest.json").read_text())["num_records"] == \
        LATE_PARTITION_IMAGES
    af.patch(f"/dags/{DAG}", {"is_paused": True})
    # Had the test crossed UTC midnight, the scheduler made the next day's run too: it must not wait on.
    for extra in af.runs(DAG):
        if extra["run_type"] == "scheduled" and extra["dag_run_id"] not in known | {scheduled["dag_run_id"]} \
                and extra["state"] in ("queued", "running"):
            af.patch(f"/dags/{DAG}/dagRuns/{extra['dag_run_id']}", {"state": "failed"})


def published_events(af, run_ids) -> list[tuple[str, int, str]]:
    """(partition key, version, partition) of each served-model event the given runs published."""
    events = af.get("/assets/events", source_dag_id=DAG, limit=100)["asset_events"]
    return sorted((e["partition_key"], e["extra"]["version"], e["extra"]["partition"]) for e in events
                  if e["source_run_id"] in run_ids and e["name"] == "tfhub_served_model")


def test_backfill_runs_one_partition_per_date_and_clearing_a_key_reruns_only_it(af):
    dates = ["2026-11-05", "2026-11-06", "2026-11-07"]
    for ds in dates:
        make_partition(af, ds)
    known = {x["dag_run_id"] for x in af.runs(DAG)}
    af.patch(f"/dags/{DAG}", {"is_paused": False})
    # A partitioned DAG's backfill range is a range of partition dates, both ends included.
    backfill = af.create_backfill({"dag_id": DAG, "from_date": "2026-11-05T00:00:00Z",
                                   "to_date": "2026-11-07T00:00:00Z", "dag_run_conf": QUICK, "max_active_runs": 2})
    done = af.wait_for(lambda: af.get(f"/backfills/{backfill['id']}")["completed_at"], 1500, "backfill completed",
                       interval=2)
    assert done
    runs = {x["partition_key"]: x for x in af.runs(DAG) if x["run_type"] == "backfill"
            and x["dag_run_id"] not in known}
    assert sorted(runs) == dates
    assert all(x["state"] == "success" for x in runs.values()), [(x["dag_run_id"], x["state"]) for x in runs.values()]
    for ds in dates:
        assert json.loads((af.storage / f"examples/ds={ds}/manifest.json").read_text())["partition"] == f"ds={ds}"
        assert (af.storage / f"serving/shapes/{ds.replace('-', '')}/saved_model.pb").exists()
    # Each publication's Asset event carries its partition key and version (what tfhub_batch_score is scheduled on).
    run_ids = {x["dag_run_id"] for x in runs.values()}
    assert published_events(af, run_ids) == [(ds, int(ds.replace("-", "")), ds) for ds in dates]

    def digests(ds):
        return {kind: tree_digest(af.storage / path) for kind, path in
                (("examples", f"examples/ds={ds}"), ("runs", f"runs/ds={ds}"),
                 ("served", f"serving/shapes/{ds.replace('-', '')}"))}

    before = {ds: digests(ds) for ds in dates}
    served_before = (af.storage / "serving/shapes/20261106/saved_model.pb").stat().st_mtime_ns
    rerun = runs["2026-11-06"]
    # Clearing by partition key (the REST call behind `airflow dags clear --partition-key`) reruns that run only.
    r = af.post(f"/dags/{DAG}/clearDagRuns", {"partition_key": "2026-11-06", "dry_run": False})
    assert r.status_code == 200, r.text
    assert [x["dag_run_id"] for x in r.json()["dag_runs"]] == [rerun["dag_run_id"]]

    def rerun_done():
        run = af.get(f"/dags/{DAG}/dagRuns/{rerun['dag_run_id']}")
        return run if run["state"] in ("success", "failed") and run["end_date"] != rerun["end_date"] else None

    again = af.wait_for(rerun_done, 900, "the cleared partition's run finished again", interval=2)
    af.patch(f"/dags/{DAG}", {"is_paused": True})
    assert again["state"] == "success", af.task_states(DAG, rerun["dag_run_id"])
    for ds in ("2026-11-05", "2026-11-07"):
        assert digests(ds) == before[ds], ds
        assert af.get(f"/dags/{DAG}/dagRuns/{runs[ds]['dag_run_id']}")["end_date"] == runs[ds]["end_date"], ds
    assert (af.storage / "serving/shapes/20261106/saved_model.pb").stat().st_mtime_ns != served_before
    assert published_events(af, run_ids) == sorted([(ds, int(ds.replace("-", "")), ds) for ds in dates]
                                                   + [("2026-11-06", 20261106, "2026-11-06")])
    names = [p.name for p in (af.storage / "serving/shapes").iterdir()]
    assert {"20261105", "20261106", "20261107"} <= set(names)
    assert all(n.isdigit() for n in names), names  # no staging or aside folder left behind


HELLO = re.compile(r"worker (\d+) of attempt (\d+) started: pid (\d+)")
# Spark's own line (the driver's UI serves the application's REST API): "Successfully started service 'SparkUI' on
# port 4040."
SPARK_UI_PORT = re.compile(r"Successfully started service 'SparkUI' on port (\d+)")


def test_killing_a_running_training_task_leaves_no_spark_or_tf_process(af):
    make_partition(af, "2026-11-12", n=96)
    af.patch(f"/dags/{DAG}", {"is_paused": False})
    # Small batches, many epochs: 200 epochs of 8 steps, a training that lasts while the test looks at it.
    run_id = trigger(af, {**QUICK, "epochs": 200, "num_workers": 2, "batch_size": 8}, partition_key="2026-11-12")

    def spark_submit() -> psutil.Process | None:
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if "finetune.py" in cmd and "runs/ds=2026-11-12" in cmd and "SparkSubmit" in cmd:
                return p
        return None

    def training():
        """The running training as the process tree and the Spark application show it, once both workers train:
        ``(spark-submit's tree, the workers' pids, the application's REST API)``."""
        if af.task_states(DAG, run_id).get("finetune") != "running" or (submit := spark_submit()) is None:
            return None
        log = task_log(af, run_id, "finetune")
        workers = {int(m.group(1)): int(m.group(3)) for m in HELLO.finditer(log)}
        training_ranks = {r for r in (0, 1) if re.search(rf"worker {r} epoch \d+/200 ", log)}
        if not (ui := SPARK_UI_PORT.search(log)) or sorted(workers) != [0, 1] or training_ranks != {0, 1}:
            return None
        try:
            tree = [submit] + submit.children(recursive=True)
        except psutil.NoSuchProcess:
            return None
        # The workers the job reports are TensorFlow processes of this spark-submit's tree...
        if not set(workers.values()) <= {p.pid for p in tree}:
            return None
        # ...and Spark runs the barrier stage of the application: two tasks active.
        api = f"http://127.0.0.1:{ui.group(1)}/api/v1/applications"
        try:
            apps = [a for a in requests.get(api, timeout=5).json() if "ds=2026-11-12" in a["name"]]
            if not apps:
                return None
            app_id = apps[0]["id"]
            stages = requests.get(f"{api}/{app_id}/stages", params={"status": "active"}, timeout=5).json()
        except requests.RequestException:
            return None
        if not any(st["numActiveTasks"] == 2 for st in stages):
            return None
        return tree, workers, api, app_id

    tree, workers, api, app_id = af.wait_for(training, 600, "both TensorFlow workers training in the Spark application",
                                     interval=1)
    # Whatever the tree holds at the moment of the kill, by process identity (pid and start time).
    tree = set(tree)
    if submit := spark_submit():
        try:
            tree |= {submit, *submit.children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
    r = af.patch(f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/finetune", {"new_state": "failed"})
    assert r.status_code == 200, r.text

    def alive(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def application_gone() -> bool:
        try:
            listed = requests.get(api, timeout=5).json()
        except requests.ConnectionError:
            return True  # nothing serves the application's UI port any more
        return app_id not in {a["id"] for a in listed}  # the port went to another Spark application

    def all_gone():
        left = [p.pid for p in tree if alive(p)]
        return (not left and spark_submit() is None and application_gone()) or None

    af.wait_for(all_gone, 120, f"spark-submit's tree {sorted(p.pid for p in tree)} (workers {workers}) and the "
                               f"Spark application {app_id} at {api} gone", interval=1)
    af.patch(f"/dags/{DAG}", {"is_paused": True})
    assert af.task_states(DAG, run_id)["finetune"] == "failed"
