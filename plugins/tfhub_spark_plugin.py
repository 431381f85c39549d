"""Registers the pipeline's operator extra links with Airflow, so the UI can show them, and mounts the read-only file
view of run folders and published versions (``/tfhub/files/...``) in the API server, which the links open."""

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


def _fastapi_apps() -> list[dict]:
    return [{"app": _FilesApp(), "url_prefix": "/tfhub", "name": "TF Hub pipeline files"}]


class TfHubSparkPlugin(AirflowPlugin):
    name = "tfhub_spark"
    operator_extra_links = list(ALL_LINKS)
    fastapi_apps = _fastapi_apps()
