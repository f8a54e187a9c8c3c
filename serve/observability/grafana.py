"""Push the dashboards in ``deployments/grafana/`` to a Grafana server, thinly over ``grafana-client``.

Idempotent: the folder and the Prometheus datasource are created only when missing (looked up by uid), and each
dashboard is saved by its uid with ``overwrite``, so pushing again updates it in place (Grafana keeps the versions).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlparse

from serve.observability.dashboards import DATASOURCE_UID, load_dashboards

logger = logging.getLogger(__name__)

FOLDER_UID = "easel"
FOLDER_TITLE = "Easel"


class GrafanaPushError(RuntimeError):
    """Grafana could not be reached, refused the token, or refused a request; the message says which."""


@dataclass(frozen=True)
class PushResult:
    """What a push did."""

    folder_created: bool
    datasource_created: bool
    dashboards: list[str]


def datasource_body(prometheus_url: str) -> dict:
    """The Prometheus datasource the dashboards point at (by uid)."""
    return {
        "uid": DATASOURCE_UID,
        "name": "Easel Prometheus",
        "type": "prometheus",
        "access": "proxy",
        "url": prometheus_url,
        "jsonData": {"timeInterval": "5s"},
    }


def dashboard_body(dashboard: dict, folder_uid: str = FOLDER_UID) -> dict:
    """The ``POST /api/dashboards/db`` body that saves ``dashboard`` by its uid, replacing the stored one."""
    stored = {key: value for key, value in dashboard.items() if key not in ("id", "version")}
    return {"dashboard": stored, "folderUid": folder_uid, "overwrite": True, "message": "easel dashboards push"}


def push(url: str, token: str, prometheus_url: str, timeout_s: float = 10.0) -> PushResult:
    """Create the folder and the datasource if missing, then create or update every dashboard.

    Raises:
        GrafanaPushError: Grafana is unreachable, the token is refused, or a request is rejected.
    """
    import niquests
    from grafana_client import GrafanaApi
    from grafana_client.client import GrafanaException, GrafanaUnauthorizedError

    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise GrafanaPushError(f"--url must be an http(s) URL such as http://127.0.0.1:3000, got {url!r}")
    try:
        grafana = GrafanaApi.from_url(url, credential=token, timeout=timeout_s)
        folder = grafana.folder
        folder_created = _ensure(folder.get_folder, FOLDER_UID, folder.create_folder, FOLDER_TITLE, uid=FOLDER_UID)
        sources = grafana.datasource
        body = datasource_body(prometheus_url)
        datasource_created = _ensure(sources.get_datasource_by_uid, DATASOURCE_UID, sources.create_datasource, body)
        titles = []
        for dashboard in load_dashboards():
            grafana.dashboard.update_dashboard(dashboard_body(dashboard))
            titles.append(dashboard["title"])
            logger.info("saved dashboard %s (uid %s)", dashboard["title"], dashboard["uid"])
    except GrafanaUnauthorizedError as error:
        raise GrafanaPushError(f"Grafana at {url} refused the token (401): {_message(error)}") from error
    except GrafanaException as error:
        status = error.status_code or "an error"
        raise GrafanaPushError(f"Grafana at {url} answered {status}: {_message(error)}") from error
    except (niquests.exceptions.RequestException, ValueError) as error:
        raise GrafanaPushError(f"cannot talk to Grafana at {url}: {error}") from error
    return PushResult(folder_created, datasource_created, titles)


def _ensure(get, key: str, create, *args, **kwargs) -> bool:
    """``get(key)``, or ``create(*args, **kwargs)`` when Grafana answers 404; True when it created."""
    from grafana_client.client import GrafanaClientError

    try:
        get(key)
        return False
    except GrafanaClientError as error:
        if error.status_code != 404:
            raise
    create(*args, **kwargs)
    logger.info("created %s", key)
    return True


def _message(error) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, dict) and "message" in response:
        return str(response["message"])
    return str(getattr(error, "message", error))
