"""The HTTP API's vectorize routes: ``/v1/vectorize``, its analysis, and its model versions (``/v1/vectorize/models``).

:data:`ROUTES`: the routes :mod:`serve.http.app` adds where they stand in the OpenAPI document (as
:mod:`serve.http.adapters`': one by one, not as an included router, whose lock Ray Serve could not pickle with the
Gateway). Each hands its call to the Gateway's :class:`serve.serving.vectorize.Vectorizing`; a route's docstring is
its description in the document. Their scopes and body limits are :mod:`serve.routes`'; a vectorize request and its
analysis name their admission (:data:`serve.http.admission.AdmitVectorize`).
"""

from collections.abc import Callable

from fastapi import Request
from fastapi.responses import Response

from serve.access import caller
from serve.http.admission import AdmitVectorize
from serve.serving.vectorize import Vectorizing
from serve.vectorize.versions import NewVersion, VersionChange


def vectorizing(http: Request) -> Vectorizing:
    """The serving class of the Gateway replica that answers ``http`` (as :func:`serve.http.admission.serving`)."""
    return http.app.state.gateway.vectorizing


async def vectorize(http: Request, admitted: AdmitVectorize) -> Response:
    """Raster logo/icon -> SVG. Multipart (``file``), JSON (base64 ``image``) or a raw ``image/*`` body.

    Priced by its image's pixels and the passes its tier may run (read and charged by its admission, before it runs).
    """
    key = caller(http)
    return await vectorizing(http).answer(admitted, key and key.id, http.headers.get("accept", ""))


async def vectorize_versions(http: Request) -> dict:
    """The vectorize model versions installed (Triton ensembles ``vectorize.vN``), the current one marked."""
    return await vectorizing(http).versions()


async def vectorize_version_added(http: Request, body: NewVersion) -> dict:
    """Install a trained folder as a new vectorize version beside the current one (admin; 400 if malformed)."""
    return await vectorizing(http).change("POST", body)


async def vectorize_version_replaced(http: Request, body: VersionChange) -> dict:
    """Make a new version of a trained folder, or an installed ``version``, current (admin: replace, rollback)."""
    return await vectorizing(http).change("PUT", body)


async def vectorize_version_removed(http: Request, version: int) -> dict:
    """Stop serving a vectorize version (admin; 409 for the current one), unloaded once its requests ended."""
    return await vectorizing(http).change("DELETE", version=version)


async def analyze(http: Request, admitted: AdmitVectorize) -> Response:
    """An image's features, class (with a confidence), the tier chosen, each tier's predicted quality; no SVG.

    Priced by its image's pixels: decoded, and the models' one pass.
    """
    return await vectorizing(http).analyze(admitted)


ROUTES: tuple[tuple[str, str, Callable], ...] = (
    ("POST", "/v1/vectorize", vectorize),
    ("GET", "/v1/vectorize/models", vectorize_versions),
    ("POST", "/v1/vectorize/models", vectorize_version_added),
    ("PUT", "/v1/vectorize/models", vectorize_version_replaced),
    ("DELETE", "/v1/vectorize/models/{version}", vectorize_version_removed),
    ("POST", "/v1/vectorize/analyze", analyze),
)
"""Method, path and handler of each route, in the OpenAPI document's order."""
