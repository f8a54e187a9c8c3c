"""The HTTP API's image routes: an image by its id (with a key) or its signed URL (none), a key's history, deletion.

Each hands its call to the Gateway's :class:`serve.serving.results.Results`; their
scopes are :mod:`serve.routes`'.
"""

from typing import Annotated

from fastapi import Query, Request
from fastapi.responses import Response

from serve.access import caller
from serve.http.admission import AdmitRerun
from serve.http.operations import answers
from serve.serving.results import MAX_HISTORY_PAGE, Results


def results(http: Request) -> Results:
    """The serving class of the Gateway replica that answers ``http`` (as :func:`serve.http.app.serving`)."""
    return http.app.state.gateway.generations.results


@answers("GET", "/v1/images")
async def history(
    http: Request, after: str | None = None, limit: Annotated[int, Query(ge=1, le=MAX_HISTORY_PAGE)] = 20
) -> dict:
    """The caller's kept images (every key's for an admin key), newest first, each with its record and a fresh URL.

    ``after``: the previous page's last id.
    """
    return await results(http).history(caller(http), after, limit)


@answers("POST", "/v1/images/rerun")
async def rerun(http: Request, admitted: AdmitRerun) -> dict:
    """Make a kept image (``image_id``) again from its record, priced and admitted as the generation it reruns.

    The same picture, bit for bit, where the engines are unchanged; ``changed`` names what differs (the model's or
    a LoRA's content hash, Easel's version).
    """
    generations, key, generation = http.app.state.gateway.generations, caller(http), admitted.generation
    body, _ = await generations.served_answer(generation, key and key.id)
    return await generations.results.rerun_answer(admitted.rerun, key, generation.model, body)


@answers("GET", "/v1/images/{image_id}")
async def image(http: Request, image_id: str) -> Response:
    """A kept image, as it was answered (a PNG carries its record); another key's is a 404, as an unknown id is."""
    return await results(http).image(caller(http), image_id)


@answers("DELETE", "/v1/images/{image_id}")
async def image_deleted(http: Request, image_id: str) -> dict:
    """Drop a kept image now (404 as GET's)."""
    return await results(http).delete(caller(http), image_id)


@answers("GET", "/v1/images/{image_id}/content")
async def signed_image(http: Request, image_id: str, expires: int, signature: str) -> Response:
    """A kept image by its signed URL (``response_format: url``): no key; 403 when expired or not its signature."""
    return await results(http).signed(image_id, expires, signature)
