"""The HTTP API's routes for knowing what is good: ``POST /v1/prompts/analyze`` and ``POST /v1/images/score``.

:data:`ROUTES`: the routes :mod:`serve.http.app` adds where they stand in the OpenAPI document (as
:mod:`serve.http.moderation`'). The first hands its call to :class:`serve.serving.prompts.PromptAnalysis` (over
the Gateway's models and moderation), the second to :class:`serve.serving.scores.ImageScores` (over its
``TextToImage`` handle); their scopes and body limits are :mod:`serve.routes`'.
"""

from collections.abc import Callable

from fastapi import Request

from serve.access import caller
from serve.serving.prompts import PromptAnalysis, PromptAnalysisRequest
from serve.serving.scores import ImageScores, ScoreRequest


async def analyze(http: Request, body: PromptAnalysisRequest) -> dict:
    """A prompt as the model's text encoders would read it: per encoder its tokens, chunks and what would be cut.

    Also the weights parsed (AUTOMATIC1111's syntax), what a generation's ``Easel-Prompt-Truncated`` would say, and
    the moderation verdict under the key's policy. Nothing is generated.
    """
    gateway = http.app.state.gateway
    return await PromptAnalysis(gateway.generations.models, gateway.moderation).analyze(body, caller(http))


async def score(http: Request, body: ScoreRequest) -> dict:
    """Each image's scores by the stack's scorer (``easel up --scorer``): ``clip_score`` with a prompt, ``aesthetic``.

    A 400 naming ``images`` when the stack serves no scorer, or an image does not decode.
    """
    return await ImageScores(http.app.state.gateway.generations.text_to_image).scored(body)


ROUTES: tuple[tuple[str, str, Callable], ...] = (
    ("POST", "/v1/prompts/analyze", analyze),
    ("POST", "/v1/images/score", score),
)
"""Method, path and handler of each route, in the OpenAPI document's order."""
