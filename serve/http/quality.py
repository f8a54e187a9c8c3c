"""The HTTP API's routes for knowing what is good: ``POST /v1/prompts/analyze`` and ``POST /v1/images/score``.

Each names its admission (:data:`serve.http.admission.AdmitBody`: its body read once,
every check that can refuse it made and its price taken, :mod:`serve.serving.prices`), then hands its call to
:class:`serve.serving.prompts.PromptAnalysis` (over the Gateway's models and moderation) or
:class:`serve.serving.scores.ImageScores` (over its ``TextToImage`` handle); their scopes and body limits are
:mod:`serve.routes`'.
"""

from fastapi import Request

from serve.access import caller
from serve.http.admission import AdmitBody, serving
from serve.http.operations import answers
from serve.serving.prompts import PromptAnalysis
from serve.serving.scores import ImageScores


@answers("POST", "/v1/prompts/analyze")
async def analyze(http: Request, admitted: AdmitBody) -> dict:
    """A prompt as the model's text encoders would read it: per encoder its tokens, chunks and what would be cut.

    Also the weights parsed (AUTOMATIC1111's syntax), what a generation's ``Easel-Prompt-Truncated`` would say, and
    the moderation verdict under the key's policy. Nothing is generated. Priced by its tokens for each of the model's
    encoders, and its verdict as ``POST /v1/moderations`` prices the prompt.
    """
    gateway = serving(http)
    return await PromptAnalysis(gateway.generations.models, gateway.moderation).analyze(admitted.body, caller(http))


@answers("POST", "/v1/images/score")
async def score(http: Request, admitted: AdmitBody) -> dict:
    """Each image's scores by the stack's scorer (``easel up --scorer``): ``clip_score`` with a prompt, ``aesthetic``.

    A 400 naming ``images`` when the stack serves no scorer, ``images.N`` when an image does not decode; a 413 naming
    it over 4,194,304 pixels. Priced by each image's pixels (from its header, before any is decoded).
    """
    return await ImageScores(serving(http).generations.text_to_image).scored(admitted.body)
