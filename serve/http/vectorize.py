"""The HTTP API's vectorize routes: ``/v1/vectorize``, its analysis, and its model versions (``/v1/vectorize/models``).

Each hands its call to the Gateway's :class:`serve.serving.vectorize.Vectorizing`; a route's docstring is its
description in the OpenAPI document. A vectorize request and its analysis name their admission
(:data:`serve.http.admission.AdmitVectorize`).
"""

from fastapi import Request
from fastapi.responses import Response

from serve.access import caller
from serve.http.admission import AdmitVectorize
from serve.http.operations import answers
from serve.serving.vectorize import Vectorizing
from serve.vectorize.versions import NewVersion, VersionChange


def vectorizing(http: Request) -> Vectorizing:
    """The serving class of the Gateway replica that answers ``http`` (as :func:`serve.http.admission.serving`)."""
    return http.app.state.gateway.vectorizing


@answers("POST", "/v1/vectorize")
async def vectorize(http: Request, admitted: AdmitVectorize) -> Response:
    """Raster logo/icon -> SVG. Multipart (``file``), JSON (base64 ``image``) or a raw ``image/*`` body.

    Priced by its image's pixels and the passes its tier may run (read and charged by its admission, before it runs).
    """
    key = caller(http)
    return await vectorizing(http).answer(admitted, key and key.id, http.headers.get("accept", ""))


@answers("GET", "/v1/vectorize/models")
async def vectorize_versions(http: Request) -> dict:
    """The vectorize model versions installed (Triton ensembles ``vectorize.vN``), the current one marked."""
    return await vectorizing(http).versions()


@answers("POST", "/v1/vectorize/models")
async def vectorize_version_added(http: Request, body: NewVersion) -> dict:
    """Install a trained folder as a new vectorize version beside the current one (admin; 400 if malformed)."""
    return await vectorizing(http).change("POST", body)


@answers("PUT", "/v1/vectorize/models")
async def vectorize_version_replaced(http: Request, body: VersionChange) -> dict:
    """Make a new version of a trained folder, or an installed ``version``, current (admin: replace, rollback)."""
    return await vectorizing(http).change("PUT", body)


@answers("DELETE", "/v1/vectorize/models/{version}")
async def vectorize_version_removed(http: Request, version: int) -> dict:
    """Stop serving a vectorize version (admin; 409 for the current one), unloaded once its requests ended."""
    return await vectorizing(http).change("DELETE", version=version)


@answers("POST", "/v1/vectorize/analyze")
async def analyze(http: Request, admitted: AdmitVectorize) -> Response:
    """An image's features, class (with a confidence), the tier chosen, each tier's predicted quality; no SVG.

    Priced by its image's pixels: decoded, and the models' one pass.
    """
    return await vectorizing(http).analyze(admitted)
