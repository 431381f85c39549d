"""Registers the pipeline's operator extra links with Airflow, so the UI can show them, mounts the read-only file
view of run folders and published versions (``/tfhub/files/...``) in the API server, which the links open, and adds
the **Evaluation** tab to every run's page (an external view with ``destination`` ``dag_run``): the run's evaluation
report, with the confusion matrix and the training curves in it and links to TensorBoard and the published version,
one click from the run."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from tfhub_spark.links import ALL_LINKS


class _FilesApp:
    """The file view as an ASGI application built on its first request: every Airflow process loads plugins, and
    only the API server serves requests (building the view imports the API server's security modules)."""

    def __init__(self) -> None:
        self._app = None

    async def __call__(self, scope, receive, send) -> None:
        if self._app is None:
            from tfhub_spark.files_view import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


URL_PREFIX = "/tfhub"
"""Where the file view is mounted in the API server."""


def _fastapi_apps() -> list[dict]:
    return [{"app": _FilesApp(), "url_prefix": URL_PREFIX, "name": "TF Hub pipeline files"}]


def _external_views() -> list[dict]:
    """The run page's Evaluation tab. The UI shows ``href`` in a frame of the run's page, ``{DAG_ID}`` and
    ``{RUN_ID}`` filled in; the file view's route finds the run's folder and redirects to its report. The path
    part of ``[api] base_url`` goes in front, for an API server under a path prefix."""
    from urllib.parse import urlsplit

    from airflow.configuration import conf

    prefix = urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
    return [{"name": "Evaluation", "href": prefix + URL_PREFIX + "/runs/{DAG_ID}/{RUN_ID}/evaluation",
             "destination": "dag_run", "url_route": "tfhub_evaluation"}]


class TfHubSparkPlugin(AirflowPlugin):
    name = "tfhub_spark"
    operator_extra_links = list(ALL_LINKS)
    fastapi_apps = _fastapi_apps()
    external_views = _external_views()
