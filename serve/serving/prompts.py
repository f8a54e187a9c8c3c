"""``POST /v1/prompts/analyze``: a prompt as a model's text encoders would read it, before anything is generated.

For each encoder of the model's family (:meth:`serve.text_to_image.families.Family.prompt_encoders`): its tokens,
chunks and what would be cut (:mod:`serve.text_to_image.prompt_chunks`); the weights parsed
(:mod:`serve.protocol.prompt_weights`); what ``Easel-Prompt-Truncated`` would say; and the moderation verdict
under the key's policy. The tokenizers are read from the model's engine folder once per folder. The request was
admitted first (:func:`analyzed_model`, :func:`serve.serving.prices.analysis_cost`): its model checked and its tokens
and verdict priced before anything here runs.
"""

from __future__ import annotations

import asyncio
import functools

from serve.access.keys import ApiKey
from serve.errors import InvalidInput
from serve.models.served import ServedModel
from serve.moderation import Policy, policy_of
from serve.protocol.prompt_weights import parse_weighted
from serve.protocol.quality_requests import PromptAnalysisRequest
from serve.remote.models import RemoteModel
from serve.serving.current_models import CurrentModels
from serve.serving.moderation import Moderation
from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.prompt_chunks import PromptChunks, truncated


def analyzed_model(models: CurrentModels, body: PromptAnalysisRequest) -> ServedModel:
    """The served model whose encoders read ``body``'s prompt (a 400 naming ``model``: unknown, or a remote one)."""
    served = models.named(body.model)
    if isinstance(served, RemoteModel):
        why = f"model: {body.model!r} is a remote model: its service reads its prompts, so analyze them there"
        raise InvalidInput(why, "model")
    return served


@functools.lru_cache(maxsize=16)
def _tokenizers(path: str, key: str) -> dict:
    """The tokenizers of the engine folder at ``path`` (``key``: its content, so a rebuilt folder is read again)."""
    return EngineFolder(path).tokenizers()


def _text(text: str, prompts: dict[str, PromptChunks], row: int) -> dict:
    """One text's weights and, per encoder, its tokens, chunks and the tokens cut."""
    encoders = {}
    for engine, chunks in prompts.items():
        read = chunks.rows[row]
        encoders[engine] = {"tokens": read.tokens, "chunks": read.count, "truncated": read.dropped}
    weights = [{"text": f.text, "weight": round(f.weight, 6)} for f in parse_weighted(text)]
    return {"weights": weights, "encoders": encoders}


class PromptAnalysis:
    """What the Gateway answers ``POST /v1/prompts/analyze`` with, from the models served now and its moderation."""

    def __init__(self, models: CurrentModels, moderation: Moderation) -> None:
        self.models = models
        self.moderation = moderation

    async def analyze(self, body: PromptAnalysisRequest, key: ApiKey | None) -> dict:
        """The prompt read by each of the model's encoders, what a generation would cut, the moderation verdict."""
        served = analyzed_model(self.models, body)
        folder, family = served.folder, served.folder.family
        tokenizers = await asyncio.to_thread(_tokenizers, str(folder.path), folder.key)
        prompts = await asyncio.to_thread(family.prompts, tokenizers, [body.negative_prompt, body.prompt])
        [verdict] = await self.moderation.texts_checked(body.moderated.items())  # as /v1/moderations checks it
        policy = policy_of(self.moderation.policy, key and key.limits.moderation)
        limits = {
            engine: {"chunk_tokens": chunks.chunk_tokens, "max_chunks": chunks.max_chunks}
            for engine, chunks in prompts.items()
        }
        return {
            "model": served.name,
            "family": family.name,
            "encoders": limits,
            "prompt": _text(body.prompt, prompts, 1),
            "negative_prompt": _text(body.negative_prompt, prompts, 0),
            "truncated": truncated(prompts),
            "moderation": verdict.to_api() | {"policy": policy, "refused": policy is Policy.BLOCK and verdict.flagged},
        }
