"""A read-only view of the run folders and published versions in the storage, mounted in the API server.

``GET /tfhub/files/<path under the storage root>`` serves what the jobs wrote under ``runs/`` (and
``<dataset>/runs/``) and ``serving/``, so the operator extra links open something a browser shows, whether the
storage is ``file://`` or ``hdfs://``: a folder as a listing, ``report.md`` rendered as HTML (its plots are
siblings, so they show inline), PNG plots as images, JSON and text as text. Nothing else under the storage root
(raw data, prepared examples, quarantine, hub modules) is served; hidden entries (staging folders, attempt
tokens) are not either, and a path that leaves the storage root (``..``, a symlink pointing out) is refused.

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

SERVED = ("runs", "serving")
"""The folders under the storage root (``runs`` also under a dataset's folder) that the view serves."""
TEXT_TYPES = {".json": "application/json", ".txt": "text/plain", ".csv": "text/plain", ".jsonl": "text/plain",
              ".pbtxt": "text/plain", ".log": "text/plain"}
WEBHDFS_CONN_ID = "webhdfs_tfhub"
"""The WebHDFS connection the DAGs read ``hdfs://`` storage with."""
_FOLDER = re.compile(FOLDER_NAME)
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


def storage_root() -> str:
    """The deployment's storage root, from the pipeline Variable (read through the API server's own Variable
    access: environment, secrets backends, then the metadata database)."""
    import json

    from airflow.models.variable import Variable

    from tfhub_spark.links import PIPELINE_VARIABLE

    pipeline = json.loads(Variable.get(PIPELINE_VARIABLE, default_var="{}") or "{}")
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


def create_app() -> FastAPI:
    """The file view's FastAPI application (mounted by the plugin at ``/tfhub``)."""
    from airflow.api_fastapi.core_api.security import requires_access_dag

    app = FastAPI(title="TF Hub pipeline files", description=__doc__)

    @app.get("/files/{rel:path}", dependencies=[Depends(requires_access_dag(method="GET"))])
    def files(rel: str) -> Response:
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
            return _page(rel, rel, render_markdown(data.decode("utf-8", "replace")))
        if suffix in TEXT_TYPES:
            return Response(data, headers={"Content-Type": f"{TEXT_TYPES[suffix]}; charset=utf-8"})
        media = mimetypes.guess_type(rel)[0] or "application/octet-stream"
        headers = {} if media.startswith("image/") else {
            "Content-Disposition": f'attachment; filename="{PurePosixPath(rel).name}"'}
        return Response(data, media_type=media, headers=headers)

    return app
