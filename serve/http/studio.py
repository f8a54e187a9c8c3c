"""Easel Studio: the web page at ``/studio`` (``/`` sends a browser there), made only of calls to the public API.

Its files are this package's ``static/`` folder (plain JavaScript modules, no build step, nothing fetched from
elsewhere). Every answer carries :data:`POLICY`: scripts and calls only from this origin, no inline script or style,
so a prompt or a file name shown on the page can never run. The paths are declared in :data:`serve.routes.PAGES`
(open: no key); they are not operations of the API, so the OpenAPI document leaves them out.
"""

from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import RedirectResponse, Response

from serve.errors import RouteError
from serve.routes import PAGES

STATIC = files("serve.http") / "static"
"""The page's files."""
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
"""The media type of each kind of file the page has; any other name is a 404."""
POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
"""The Content-Security-Policy of every answer here: nothing from another origin, nothing inline."""
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(name: str) -> Response:
    """One of the page's files with :data:`HEADERS` (404 for a name the folder does not hold)."""
    kind = "." + name.rpartition(".")[2]
    path = STATIC / name
    if "/" in name or name.startswith(".") or kind not in TYPES or not path.is_file():
        raise RouteError("no such route", 404)
    return Response(path.read_bytes(), media_type=TYPES[kind], headers=HEADERS)


async def front_door() -> RedirectResponse:
    """``/``: a browser is sent to the Studio."""
    return RedirectResponse("/studio", status_code=307)


async def page() -> Response:
    """The Studio's page."""
    return _file("index.html")


async def asset(asset: str) -> Response:
    """One of the page's scripts or style sheets."""
    return _file(asset)


def add_to(app: FastAPI) -> None:
    """Add the Studio's routes (:data:`serve.routes.PAGES`: the front door, the page, its files), undocumented."""
    for path, handler in zip(PAGES, (front_door, page, asset), strict=True):
        app.add_api_route(path, handler, methods=["GET"], include_in_schema=False)
