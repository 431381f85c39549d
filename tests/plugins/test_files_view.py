"""The read-only file view the run-folder links open (``/tfhub/files/...``), mounted by the plugin in the real API
server application (``airflow.api_fastapi.app.create_app``) on a migrated metadata database: the report rendered
with its plots and the run's other links, PNGs as images, folder listings, and refusals (no login, folders outside
runs/ and serving/, ``..``, hidden entries, a symlink leading out of the storage root); and the run page's
Evaluation tab (``/tfhub/runs/<dag_id>/<run_id>/evaluation``), which finds a run's folder from the run in the
database and redirects to its report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from urllib.parse import quote, urljoin

import pytest

from tfhub_spark.files_view import allowed

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
REPORT = """# Evaluation of partition ds=2026-11-20

**Decision: BLESSED**

- accuracy **0.9500**, loss 0.1234

| class | recall |
| --- | --- |
| circle | 0.970 |

<script>alert('x')</script>

![confusion matrix](confusion_matrix.png)
"""


@pytest.mark.parametrize("rel, ok", [
    ("runs/ds=2026-11-20/report.md", True),
    ("runs/ds=2026-11-20/", True),
    ("runs/", True),
    ("serving/shapes/20261120/assets.extra/provenance.json", True),
    ("topics/runs/ds=2026-11-20/report.md", True),  # a dataset's run folder
    ("raw/ds=2026-11-20/labels.csv", False),
    ("examples/ds=2026-11-20/manifest.json", False),
    ("hub/shapes_fv_32/saved_model.pb", False),
    ("topics/raw/ds=2026-11-20/texts.csv", False),
    ("runs/../raw/ds=2026-11-20/labels.csv", False),
    ("runs/ds=2026-11-20/../../raw", False),
    ("runs/./ds=2026-11-20", False),
    ("runs//ds=2026-11-20", False),
    ("runs/.ds=2026-11-20.staging-1/report.md", False),
    ("runs/ds=2026-11-20/_attempts/../.blessing.json.tmp-1", False),
    ("..", False),
    ("", False),
])
def test_only_run_folders_and_published_versions_are_served(rel, ok):
    assert allowed(rel) is ok


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("files-view") / "storage"
    run = root / "runs" / "ds=2026-11-20"
    run.mkdir(parents=True)
    (run / "report.md").write_text(REPORT)
    (run / "confusion_matrix.png").write_bytes(PNG)
    (run / "metrics.json").write_text('{"accuracy": 0.95}')
    (run / ".report.md.tmp-0123").write_text("half written")
    (run / "tensorboard").mkdir()
    (run / "published.json").write_text(
        f'{{"url": "file://{root}/serving/shapes/20261120", "model_name": "shapes", "version": 20261120}}')
    (run / "blessing.json").write_text('{"blessed": true, "reasons": [], "approval": {"decision": "approved", '
                                       '"by": "reviewer", "comment": "curves look <fine>"}}')
    (root / "raw" / "ds=2026-11-20").mkdir(parents=True)
    (root / "raw" / "ds=2026-11-20" / "labels.csv").write_text("path,label\n")
    (root / "serving" / "shapes" / "20261120").mkdir(parents=True)
    (root / "serving" / "shapes" / "20261120" / "saved_model.pb").write_bytes(b"model")
    secret = root.parent / "secret"
    secret.mkdir()
    (secret / "key.txt").write_text("not for the browser")
    (root / "runs" / "ds=2026-11-21").symlink_to(secret)
    return root


@pytest.fixture(scope="module")
def client(storage):
    """The API server's application as ``airflow api-server`` builds it, with the plugins folder's plugins, on
    this session's Airflow home, migrated here; the pipeline Variable names ``storage``."""
    env = {**os.environ, "AIRFLOW__CORE__AUTH_MANAGER":
           "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"}
    migrate = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, capture_output=True, text=True, timeout=600,
                             cwd=ROOT)
    assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-2000:]
    saved = {k: os.environ.get(k) for k in ("AIRFLOW_VAR_TFHUB_PIPELINE", "AIRFLOW__CORE__AUTH_MANAGER")}
    os.environ["AIRFLOW_VAR_TFHUB_PIPELINE"] = f'{{"storage_root": "file://{storage}"}}'
    os.environ["AIRFLOW__CORE__AUTH_MANAGER"] = env["AIRFLOW__CORE__AUTH_MANAGER"]
    from fastapi.testclient import TestClient

    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    app = create_app(apps="core")
    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="reviewer", role="viewer"))
    yield TestClient(app, headers={"Authorization": f"Bearer {token}"}, follow_redirects=False)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_the_report_is_rendered_with_its_plots_beside_it(client):
    r = client.get("/tfhub/files/runs/ds=2026-11-20/report.md")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert "<strong>0.9500</strong>" in r.text
    assert "<td>circle</td>" in r.text and "<td>0.970</td>" in r.text
    # the plot is a sibling, so the browser finds it relative to the report's address
    assert '<img src="confusion_matrix.png" alt="confusion matrix"' in r.text
    assert "<script>" not in r.text  # HTML in the Markdown is shown, never run
    png = client.get("/tfhub/files/runs/ds=2026-11-20/confusion_matrix.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content == PNG
    metrics = client.get("/tfhub/files/runs/ds=2026-11-20/metrics.json")
    assert metrics.json() == {"accuracy": 0.95}


def test_folders_are_listed_without_hidden_entries(client):
    r = client.get("/tfhub/files/runs/ds=2026-11-20")
    assert r.status_code == 307 and r.headers["location"] == "ds=2026-11-20/"
    r = client.get("/tfhub/files/runs/ds=2026-11-20/")
    assert r.status_code == 200
    assert 'href="report.md"' in r.text and 'href="tensorboard/"' in r.text
    assert ".report.md.tmp" not in r.text
    served = client.get("/tfhub/files/serving/shapes/20261120/")
    assert served.status_code == 200 and 'href="saved_model.pb"' in served.text
    # a model file downloads rather than showing as text
    assert "attachment" in client.get("/tfhub/files/serving/shapes/20261120/saved_model.pb").headers[
        "content-disposition"]


@pytest.mark.parametrize("path", [
    "/tfhub/files/raw/ds=2026-11-20/labels.csv",
    "/tfhub/files/runs/%2E%2E/raw/ds=2026-11-20/labels.csv",
    "/tfhub/files/runs/ds=2026-11-20/%2E%2E/%2E%2E/raw/ds=2026-11-20/labels.csv",
    "/tfhub/files/runs/ds=2026-11-20/.report.md.tmp-0123",
    "/tfhub/files/runs/ds=2026-11-21/key.txt",  # a symlink out of the storage root
    "/tfhub/files/runs/ds=2026-11-19/report.md",  # not written
])
def test_what_is_not_served_is_not_found(client, path):
    r = client.get(path)
    assert r.status_code == 404, (path, r.status_code, r.text)
    assert "not for the browser" not in r.text and "path,label" not in r.text


def test_a_request_without_a_login_is_refused(client):
    r = client.get("/tfhub/files/runs/ds=2026-11-20/report.md", headers={"Authorization": ""})
    assert r.status_code == 401, r.text
    assert "0.9500" not in r.text


def test_a_run_report_starts_with_the_runs_other_links(client):
    r = client.get("/tfhub/files/runs/ds=2026-11-20/report.md")
    assert r.status_code == 200, r.text
    head = r.text.split("<h1>")[0]
    assert '<a href="./">Run folder</a>' in head
    assert '<a href="tensorboard/">TensorBoard event files</a>' in head
    # the published version, relative to the report, so the view works under any path prefix
    assert '<a href="../../serving/shapes/20261120/">Published version 20261120 of shapes</a>' in head
    assert "approved</strong> by reviewer: “curves look &lt;fine&gt;”" in head


EVALUATION = "/tfhub/runs/{dag_id}/{run_id}/evaluation"


@pytest.fixture(scope="module")
def runs(client):
    """Runs of the pipeline's DAG (and of another DAG) in the API server's database, as the scheduler makes them:
    with a partition key; without one, with the partition param (airflow dags test); of a dataset whose run
    has written nothing yet."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    made = {"keyed": ("tfhub_finetune", {}, "2026-11-20"),
            "param": ("tfhub_finetune", {"partition": "2026-11-20"}, None),
            "pending": ("tfhub_finetune", {"dataset": "topics"}, "2026-11-22"),
            "other": ("tfhub_batch_score", {}, "2026-11-20")}
    ids = {}
    with create_session() as session:
        for name, (dag_id, conf, key) in made.items():
            run_id = f"manual__files_view_{name}+00:00"
            session.query(DagRun).filter(DagRun.run_id == run_id).delete()
            session.add(DagRun(dag_id=dag_id, run_id=run_id, run_type="manual", conf=conf, partition_key=key,
                               state="running"))
            ids[name] = (dag_id, run_id)
    return {name: EVALUATION.format(dag_id=d, run_id=quote(r, safe="")) for name, (d, r) in ids.items()}


@pytest.mark.parametrize("run", ["keyed", "param"])
def test_the_evaluation_tab_redirects_to_the_runs_report(client, runs, run):
    r = client.get(runs[run])
    assert r.status_code == 307, r.text
    target = urljoin(f"http://testserver{runs[run]}", r.headers["location"])
    assert target == "http://testserver/tfhub/files/runs/ds=2026-11-20/report.md"
    page = client.get(target)
    assert page.status_code == 200 and "<strong>0.9500</strong>" in page.text
    assert '<img src="confusion_matrix.png"' in page.text


def test_the_evaluation_tab_says_what_is_not_written_yet(client, runs):
    r = client.get(runs["pending"])
    assert r.status_code == 404 and "No evaluation report yet" in r.text
    assert "<code>topics/runs/ds=2026-11-22</code> (not written yet)" in r.text
    other = client.get(runs["other"])
    assert other.status_code == 200 and "Runs of <code>tfhub_batch_score</code> have no evaluation report" in other.text
    assert client.get(EVALUATION.format(dag_id="tfhub_finetune", run_id="no_such_run")).status_code == 404
    assert client.get(runs["keyed"], headers={"Authorization": ""}).status_code == 401


def test_the_plugin_adds_the_evaluation_tab_to_the_run_page(client):
    plugins = client.get("/api/v2/plugins")
    assert plugins.status_code == 200, plugins.text
    views = [v for p in plugins.json()["plugins"] if p["name"] == "tfhub_spark" for v in p["external_views"]]
    assert views == [{"name": "Evaluation", "href": "/tfhub/runs/{DAG_ID}/{RUN_ID}/evaluation",
                      "destination": "dag_run", "url_route": "tfhub_evaluation", "icon": None,
                      "icon_dark_mode": None, "category": None, "nav_top_level": False}]
