"""gRPC's ``Generate``: a generation streamed, a :class:`Progress` per step, then its :class:`StreamedImages`.

:class:`Streaming` is the part of :class:`serve.serving.generations.Generations` that streams: the same admission,
fallback chain, finishing, moderation and delivery as the HTTP answer, step by step.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

from serve.access.keys import ApiKey
from serve.cache import cache_scope
from serve.jobs.model import Progress
from serve.models.served import ServedModel
from serve.remote.models import RemoteModel
from serve.serving.admitted import Admitted
from serve.serving.answer_items import traced
from serve.serving.fallbacks import Fallback
from serve.serving.variants import variant_measured
from serve.text_to_image.generation import EncodedImages
from serve.vectorize.schema import Tier


@dataclass(frozen=True)
class StreamedImages:
    """A streamed generation's last item (:meth:`Streaming.events`): its images, its seed, what served them.

    Each image: ``data``, ``id``; an SVG's ``tier`` and ``ssim``; its ``moderation`` mark under a policy.
    """

    seed: int
    images: list[dict]
    model: str
    experiment: str | None = None
    steps_skipped: int | None = None
    prompt_tokens_dropped: int | None = None
    fallback: Fallback | None = None  # drawn by a link of its model's chain: the model asked and why


class Streaming:
    """Streamed generations; mixed into :class:`~serve.serving.generations.Generations`, whose parts it uses."""

    async def events(self, admitted: Admitted, key: ApiKey | None) -> AsyncIterator[Progress | StreamedImages]:
        """A generation streamed for ``key`` (gRPC's ``Generate``): one :class:`Progress` per step, then the images.

        No result cache: a cached answer has no steps to report. A model that cannot serve before its first step
        hands it down its fallback chain (the images name the model that drew them, and carry the fallback).
        """
        owner = key and key.id
        scope = cache_scope(owner, self.share_caches)  # whose kept latents the approximate cache may start it from
        async with AsyncExitStack() as stack:
            opened = functools.partial(self._streamed, scope=scope, stack=stack)
            (admitted, served, items), fallback = await self.fallbacks.served(admitted, opened)
            request, assignment, answer = admitted.request, admitted.assignment, admitted.drawing.answer
            async for item in items:
                if isinstance(item, Progress):
                    yield item
                    continue
                item = await self._finished(served, admitted, item, scope)
                item, moderated = await self.moderation.checked(item, admitted.screening)  # blacked out under block
                if answer.output_format == "svg":
                    svgs = await traced(self.vectorizer, item.images, answer.vectorize_tier or Tier.AUTO)
                    images = [{"data": r.svg.encode(), "tier": r.tier, "ssim": r.ssim} for r in svgs]
                else:
                    images = [{"data": image} for image in item.images]
                ids = await self._image_ids(len(images), assignment, owner, admitted.drawing)
                marks = moderated.marks() or [None] * len(images)
                kept = dict(zip(ids, zip([image["data"] for image in images], marks, strict=True), strict=True))
                delivered = await self.results.delivered(request, admitted.model, item.seed, owner, kept)
                for image, image_id, done in zip(images, ids, delivered, strict=True):
                    image["id"], image["data"] = image_id, b"" if done.url else done.data
                    if done.url:
                        image["url"] = done.url
                for image, mark in zip(images, moderated.marks() or (), strict=False):
                    image["moderation"] = mark  # as the HTTP answer's marks
                answer.prompts_named(images)  # the images go prompt by prompt
                yield StreamedImages(
                    item.seed,
                    images,
                    assignment.model,
                    assignment.experiment,
                    item.steps_skipped,
                    item.prompt_tokens_dropped or None,
                    fallback,
                )

    async def _streamed(
        self, admitted: Admitted, scope: str, stack: AsyncExitStack
    ) -> tuple[Admitted, ServedModel, AsyncIterator[Progress | EncodedImages]]:
        """``admitted``'s model loaded and its stream's items, once its first arrived (kept open by ``stack``).

        What fails before the first item (an open circuit, engines unavailable) fails here, where a fallback can
        still answer; the loaded model and the measurement stay open until ``stack`` closes. A remote model's
        stream is its images alone.
        """
        if isinstance(admitted.model, RemoteModel):
            async with variant_measured(admitted.assignment):
                drawn, _ = await self._remote(admitted)
            return admitted, admitted.model, _one(drawn)
        async with AsyncExitStack() as attempt:
            served, running, _ = await attempt.enter_async_context(self._loaded_for(admitted))
            await attempt.enter_async_context(variant_measured(admitted.assignment))
            stream = self._pipeline(served).options(stream=True).generate_stream
            stream = stream.remote(running.drawing, running.plan, time.time(), cache_scope=scope)
            first = await anext(stream)
            stack.push_async_exit(attempt.pop_all())

        async def items() -> AsyncIterator[Progress | EncodedImages]:
            yield first
            async for item in stream:
                yield item

        return admitted, served, items()


async def _one(item: EncodedImages) -> AsyncIterator[EncodedImages]:
    yield item
