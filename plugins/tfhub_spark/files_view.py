"""A read-only view of the run folders and published versions in the storage, mounted in the API server.

``GET /tfhub/files/<path under the storage root>`` serves what the jobs wrote under ``runs/`` (and
``<dataset>/runs/``) and ``serving/``, so the operator extra links open something a browser shows, whether the
storage is ``file://`` or ``hdfs://``: a folder as a listing, ``report.md`` rendered as HTML (its plots are
siblings, so they show inline), PNG plots as images, JSON and text as text. Nothing else under the storage root
(raw data, prepared examples, quarantine, hub modules) is served; hidden entries (staging folders, attempt
tokens) are not either, and a path that leaves the storage root (``..``, a symlink pointing out) is refused.

``GET /tfhub/runs/<dag_id>/<run_id>/evaluation`` is the run page's **Evaluation** tab (the plugin's external view
with ``destination`` ``dag_run``, whose URL template can only name the DAG and the run): it finds the run's folder
from the run itself (its partition key, else its ``partition`` param or data interval, and its ``dataset``, as the
DAG's templates do) and redirects to the report there, or says what is not written yet. A rendered ``report.md`` of a
run folder starts with the run's other links: the run folder, TensorBoard, the published version (or why nothing was
published, with the reviewer's decision and comment).

The caller must be a user of the API server allowed to read DAGs (the auth manager's JWT, from the UI's cookie or an
``Authorization: Bearer`` header), like the rest of the API.
"""

from __future__ import annotations

import html
import mimetypes
import re
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import HTMLResponse, Response

from tfhub_spark.params import FOLDER_NAME
from tfhub_spark.run_folder import BLESSING, PUBLISHED, REPORT, TENSORBOARD

SERVED = ("runs", "serving")
"""The folders under the storage root (``runs`` also under a dataset's folder) that the view serves."""
TEXT_TYPES = {".json": "application/json", ".txt": "text/plain", ".csv": "text/plain", ".jsonl": "text/plain",
              ".pbtxt": "text/plain", ".log": "text/plain"}
WEBHDFS_CONN_ID = "webhdfs_tfhub"
"""The WebHDFS connection the DAGs read ``hdfs://`` storage with."""
_FOLDER = re.compile(FOLDER_NAME)
EVALUATION_ROUTE = "/runs/{dag_id}/{run_id}/evaluation"
"""The Evaluation tab's route under the view's mount point (``/tfhub``)."""
EVALUATED_DAGS = ("tfhub_finetune",)
"""The DAGs whose runs write a run folder with an evaluation report; the tab of any other DAG's run says so."""
_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>
body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}}
img{{max-width:100%}}code{{background:#f4f4f4;padding:0 .2rem}}nav{{color:#666;margin-bottom:1rem}}
</style></head><body><nav>{crumbs}</nav>{body}</body></html>"""


def allowed(rel: str) -> bool:
    """Whether a path relative to the storage root is one the view serves: under ``runs/``, ``serving/`` or
    ``<dataset>/runs/``, with no empty, ``.``, ``..`` or hidden segment."""
    parts = rel.split("/")
    if rel.endswith("/"):
        parts = parts[:-1]
    if not parts or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        return False
    if parts[0] in SERVED:
        return True
    return len(parts) >= 2 and parts[1] == "runs" and bool(_FOLDER.fullmatch(parts[0]))


def pipeline_variable() -> dict:
    """The pipeline Variable (read through the API server's own Variable access: environment, secrets backends,
    then the metadata database)."""
    import json

    from airflow.models.variable import Variable

    from tfhub_spark.links import PIPELINE_VARIABLE

    return json.loads(Variable.get(PIPELINE_VARIABLE, default_var="{}") or "{}")


def storage_root(pipeline: dict | None = None) -> str:
    """The deployment's storage root, from the pipeline Variable."""
    from tfhub_spark.links import PIPELINE_VARIABLE

    pipeline = pipeline_variable() if pipeline is None else pipeline
    root = str(pipeline.get("storage_root") or "")
    if not root:
        raise HTTPException(503, f"the {PIPELINE_VARIABLE} Variable names no storage_root")
    return root.rstrip("/")


def _crumbs(rel: str) -> str:
    """The path as links to each folder above, relative to the page (the view may sit under a path prefix)."""
    parts = [p for p in rel.split("/") if p]
    folders = len(parts) if rel.endswith("/") else len(parts) - 1  # the page's own folder depth
    links = []
    for i, p in enumerate(parts):
        up = folders - (i + 1)
        if i < folders and up >= 0:
            links.append(f'<a href="{"../" * up or "./"}">{html.escape(p)}</a>')
        else:
            links.append(html.escape(p))
    return " / ".join(links)


def _href(name: str) -> str:
    return quote(name, safe="/=")


def _page(rel: str, title: str, body: str) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=html.escape(title), crumbs=_crumbs(rel), body=body))


def render_markdown(text: str) -> str:
    """Markdown to HTML (CommonMark and tables), raw HTML in the source escaped."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def run_folder(dataset: str | None, partition: str) -> str:
    """A run's folder relative to the storage root, as the DAG's ``RUN_DIR`` names it:
    ``[<dataset>/]runs/ds=<partition>``."""
    return f"{dataset}/runs/ds={partition}" if dataset else f"runs/ds={partition}"


def run_folder_of(dag_run, dag_params: dict) -> str:
    """The folder of a run of ``tfhub_finetune``, relative to the storage root: its partition (the partition key,
    else the ``partition`` param, else the data interval: ``tfhub_spark.partition.run_partition``, as every task
    renders it) under its ``dataset``'s folder.

    :param dag_run: the run (``partition_key``, ``conf``, ``data_interval_end``).
    :param dag_params: the DAG's param defaults (``dataset``, ``partition``), which the run's conf overrides.
    :raises ValueError: a run whose partition cannot be told, or whose dataset is not a folder name.
    """
    from tfhub_spark.partition import run_partition

    params = {**dag_params, **(dag_run.conf or {})}
    partition = run_partition(dag_run.partition_key, params.get("partition"), dag_run.data_interval_end)
    dataset = params.get("dataset") or None
    if dataset is not None and not _FOLDER.fullmatch(str(dataset)):
        raise ValueError(f"the run's dataset {dataset!r} is not a folder name")
    return run_folder(dataset, partition)


def _relative(from_rel: str, to_rel: str) -> str:
    """A link from the page at ``from_rel`` to ``to_rel`` (both relative to the storage root), relative to the
    page, so the view works under any path prefix."""
    depth = from_rel.count("/")
    return "../" * depth + _href(to_rel) if depth else _href(to_rel) or "./"


def run_links(store: "_Files", folder: str, pipeline: dict) -> str:
    """The links a run's report page starts with: the run folder, TensorBoard, the published version or why
    nothing was published (with the reviewer's decision and comment), as HTML.

    :param folder: the run folder, relative to the storage root.
    """
    import json

    page = f"{folder}/{REPORT}"
    links = ['<a href="./">Run folder</a>']
    logdir = f"{store.root}/{folder}/{TENSORBOARD}"
    if pipeline.get("tensorboard_url"):
        url = str(pipeline["tensorboard_url"]).format(logdir=logdir, run=folder.rpartition("/")[2])
        links.append(f'<a href="{html.escape(url)}">TensorBoard</a>')  # the tab's frame allows no new windows
    elif store.hook.exists(logdir):
        links.append(f'<a href="{TENSORBOARD}/">TensorBoard event files</a>')
    blessing = {}
    if store.hook.exists(f"{store.root}/{folder}/{BLESSING}"):
        blessing = json.loads(store.hook.read_text(f"{store.root}/{folder}/{BLESSING}"))
    approval = blessing.get("approval") or {}
    published_url = f"{store.root}/{folder}/{PUBLISHED}"
    if store.hook.exists(published_url):
        published = json.loads(store.hook.read_text(published_url))
        target = str(published.get("url", "")).rstrip("/")
        name = f"Published version {html.escape(str(published.get('version', '?')))} of " \
               f"{html.escape(str(published.get('model_name', '?')))}"
        root = store.root + "/"
        if target.startswith(root) and allowed(target[len(root):] + "/"):
            links.append(f'<a href="{_relative(page, target[len(root):] + "/")}">{name}</a>')
        else:
            links.append(html.escape(name))
    elif approval.get("decision") in ("rejected", "timed_out"):
        links.append("Not published: " + html.escape(str(approval.get("reason", approval["decision"]))))
    elif blessing and not blessing.get("blessed"):
        links.append("Not published: not blessed")
    else:
        links.append("Not published (yet)")
    out = f'<p class="run-links">{" · ".join(links)}</p>'
    if approval:
        who = f" by {html.escape(str(approval['by']))}" if approval.get("by") else ""
        out += f'<p class="approval">Reviewer: <strong>{html.escape(str(approval.get("decision")))}</strong>{who}'
        if approval.get("comment"):
            out += f': “{html.escape(str(approval["comment"]))}”'
        out += "</p>"
    return out


def _is_run_report(rel: str) -> bool:
    parts = rel.split("/")
    return parts[-1] == REPORT and len(parts) >= 3 and parts[-3] == "runs" and parts[-2].startswith("ds=")


class _Files:
    """``file://`` and ``hdfs://`` through the plugin's storage hook, confined to the storage root."""

    def __init__(self, root: str) -> None:
        from tfhub_spark.hooks.storage import StorageHook

        self.root = root
        self.hook = StorageHook(webhdfs_conn_id=WEBHDFS_CONN_ID)
        self.local = root.startswith("file://") or root.startswith("/")

    def is_dir(self, url: str) -> bool:
        if self.local:
            return Path(url.removeprefix("file://")).is_dir()
        status = self.hook._hdfs_status(self.hook._scheme_path(url)[1])
        return bool(status) and status["type"] == "DIRECTORY"

    def url(self, rel: str) -> str:
        url = f"{self.root}/{rel}".rstrip("/")
        if self.local:  # a symlink must not lead out of the storage root
            base = Path(self.root.removeprefix("file://")).resolve()
            real = Path(url.removeprefix("file://")).resolve()
            if real != base and base not in real.parents:
                raise HTTPException(404, f"{rel} is outside the storage root")
        return url


def evaluation_response(dag_id: str, run_id: str, dag_params) -> Response:
    """The run page's Evaluation tab: a redirect to the run's rendered report, or what is missing.

    :param dag_params: ``(dag_run, session) -> dict``, the run's DAG's ``dataset`` and ``partition`` Params.
    """
    from sqlalchemy import select

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        if run is None:
            raise HTTPException(404, f"no run {run_id!r} of {dag_id!r}")
        session.expunge(run)
        params = dag_params(run, session) if dag_id in EVALUATED_DAGS else {}
    title = f"Evaluation of {dag_id} / {run_id}"
    if dag_id not in EVALUATED_DAGS:
        return HTMLResponse(_PAGE.format(title=html.escape(title), crumbs="", body=(
            f"<h1>No evaluation</h1><p>Runs of <code>{html.escape(dag_id)}</code> have no evaluation report: "
            f"the Evaluation tab shows the report of {', '.join(EVALUATED_DAGS)} runs.</p>")))
    try:
        folder = run_folder_of(run, params)
    except ValueError as e:
        return HTMLResponse(_PAGE.format(title=html.escape(title), crumbs="", body=(
            f"<h1>No run folder</h1><p>{html.escape(str(e))}</p>")), status_code=404)
    store = _Files(storage_root())
    up = "../" * 3  # from /runs/<dag_id>/<run_id>/evaluation to the mount point
    report = f"{folder}/{REPORT}"
    if store.hook.exists(store.url(report)):
        return Response(status_code=307, headers={"Location": f"{up}files/{_href(report)}"})
    where = (f'<a href="{up}files/{_href(folder)}/">{html.escape(folder)}</a>'
             if store.hook.exists(store.url(folder)) else f"<code>{html.escape(folder)}</code> (not written yet)")
    return HTMLResponse(_PAGE.format(title=html.escape(title), crumbs="", body=(
        f"<h1>No evaluation report yet</h1><p>Run <code>{html.escape(run_id)}</code> "
        f"(state {html.escape(str(run.state))}) has no report yet: the <code>evaluate</code> task writes "
        f"<code>{REPORT}</code>, with the confusion matrix and the training curves, into its run folder "
        f"{where}.</p>")), status_code=404)


def file_response(rel: str) -> Response:
    """A file of the storage root (Markdown rendered, a run report with its links), or a folder's listing."""
    if not allowed(rel):
        raise HTTPException(404, f"{rel!r}: the file view serves runs/, <dataset>/runs/ and serving/ under "
                                 "the storage root, without hidden entries")
    store = _Files(storage_root())
    url = store.url(rel)
    if not store.hook.exists(url):
        raise HTTPException(404, f"{rel} does not exist (yet)")
    if store.is_dir(url):
        if not rel.endswith("/"):  # relative links inside the listing need the slash
            return Response(status_code=307, headers={"Location": _href(rel.rpartition("/")[2] + "/")})
        entries = store.hook.list(url)
        rows = "".join(
            f'<tr><td><a href="{_href(e.name + ("/" if e.is_dir else ""))}">'
            f'{html.escape(e.name)}{"/" if e.is_dir else ""}</a></td>'
            f'<td>{"" if e.is_dir else f"{e.size:,} bytes"}</td></tr>'
            for e in entries if not e.name.startswith("."))
        return _page(rel, rel, f"<h1>{html.escape(rel)}</h1><table>{rows}</table>")
    data = store.hook.read_bytes(url)
    suffix = PurePosixPath(rel).suffix.lower()
    if suffix == ".md":
        head = ""
        if _is_run_report(rel):
            pipeline = pipeline_variable()
            head = run_links(store, rel.rpartition("/")[0], pipeline)
        return _page(rel, rel, head + render_markdown(data.decode("utf-8", "replace")))
    if suffix in TEXT_TYPES:
        return Response(data, headers={"Content-Type": f"{TEXT_TYPES[suffix]}; charset=utf-8"})
    media = mimetypes.guess_type(rel)[0] or "application/octet-stream"
    headers = {} if media.startswith("image/") else {
        "Content-Disposition": f'attachment; filename="{PurePosixPath(rel).name}"'}
    return Response(data, media_type=media, headers=headers)


def create_app() -> FastAPI:
    """The file view's FastAPI application (mounted by the plugin at ``/tfhub``)."""
    from airflow.api_fastapi.core_api.security import DagAccessEntity, requires_access_dag

    app = FastAPI(title="TF Hub pipeline files", description=__doc__)
    dag_bag = []  # the API server's DAGs from the database, made on the first request

    def dag_params(dag_run, session) -> dict:
        if not dag_bag:
            from airflow.models.dagbag import DBDagBag

            dag_bag.append(DBDagBag())
        dag = dag_bag[0].get_dag_for_run(dag_run, session=session)
        return {k: dag.params[k] for k in ("dataset", "partition") if dag is not None and k in dag.params}

    @app.get(EVALUATION_ROUTE, dependencies=[Depends(requires_access_dag(method="GET",
                                                                         access_entity=DagAccessEntity.RUN))])
    def evaluation(dag_id: str, run_id: str) -> Response:
        """The run page's Evaluation tab: a redirect to the run's rendered report, or what is missing."""
        return evaluation_response(dag_id, run_id, dag_params)

    @app.get("/files/{rel:path}", dependencies=[Depends(requires_access_dag(method="GET"))])
    def files(rel: str) -> Response:
        return file_response(rel)

    return app
