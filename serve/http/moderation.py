"""The HTTP API's moderation route: ``POST /v1/moderations``, OpenAI's shape (``client.moderations.create``).

:data:`ROUTES`: the routes :mod:`serve.http.app` adds where they stand in the OpenAPI document (as
:mod:`serve.http.vectorize`'). Each hands its call to the Gateway's :class:`serve.serving.moderation.Moderation`;
its scope and body limit are :mod:`serve.routes`'.
"""

from collections.abc import Callable

from fastapi import Request

from serve.access import caller
from serve.http.admission import AdmitBody
from serve.serving.moderation import Moderation


def moderation(http: Request) -> Moderation:
    """The serving class of the Gateway replica that answers ``http`` (as :func:`serve.http.admission.serving`)."""
    return http.app.state.gateway.moderation


async def moderations(http: Request, admitted: AdmitBody) -> dict:
    """OpenAI's moderations: one result (``flagged``, ``categories``, ``category_scores``) per ``input`` item.

    Texts are checked by the stack's prompt blocklist (``easel up --prompt-blocklist``) and text classifier
    (``--text-moderator``), whatever its policy; images by its image checker (a 400 naming ``input`` when it serves
    none). Priced by its texts' characters and its images' pixels.
    """
    return await moderation(http).moderations(admitted.body, caller(http))


ROUTES: tuple[tuple[str, str, Callable], ...] = (("POST", "/v1/moderations", moderations),)
"""Method, path and handler of each route, in the OpenAPI document's order."""
