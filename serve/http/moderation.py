"""The HTTP API's moderation route: ``POST /v1/moderations``, OpenAI's shape (``client.moderations.create``).

It hands its call to the Gateway's :class:`serve.serving.moderation.Moderation`;
its scope and body limit are :mod:`serve.routes`'.
"""

from fastapi import Request

from serve.access import caller
from serve.http.admission import AdmitBody
from serve.http.operations import answers
from serve.serving.moderation import Moderation


def moderation(http: Request) -> Moderation:
    """The serving class of the Gateway replica that answers ``http`` (as :func:`serve.http.admission.serving`)."""
    return http.app.state.gateway.moderation


@answers("POST", "/v1/moderations")
async def moderations(http: Request, admitted: AdmitBody) -> dict:
    """OpenAI's moderations: one result (``flagged``, ``categories``, ``category_scores``) per ``input`` item.

    Texts are checked by the stack's prompt blocklist (``easel up --prompt-blocklist``) and text classifier
    (``--text-moderator``), whatever its policy; images by its image checker (a 400 naming ``input`` when it serves
    none). Priced by its texts' characters and its images' pixels.
    """
    return await moderation(http).moderations(admitted.body, caller(http))
