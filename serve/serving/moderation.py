"""Moderation at the Gateway: prompts at admission, images on the way out, and ``POST /v1/moderations``.

Each under the policy of the request's key, or else the stack's (:mod:`serve.moderation`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import secrets

from ray.serve.context import _get_serve_request_context

from serve import metrics
from serve.access.keys import ApiKey
from serve.errors import ContentPolicyViolation, InvalidInput
from serve.images import base64_bytes
from serve.images.raster import decode_image
from serve.moderation import Policy, Screening, Verdict, policy_of
from serve.moderation.policy import ImageChecker, Moderated, TextChecker, moderated
from serve.moderation.requests import ModerationRequest
from serve.moderation.text import Blocklist
from serve.protocol.ip_scale import ip_choices
from serve.protocol.schema import GenerationRequest
from serve.serving import upscale
from serve.text_to_image.generation import EncodedImages

logger = logging.getLogger(__name__)

MODERATION_MODEL = "easel-moderation"
"""The ``model`` a moderations answer names (the stack's checks: its blocklist, and image checker if served)."""


def input_images(request: GenerationRequest) -> list[tuple[str, bytes]]:
    """The images ``request`` brings to be drawn from, each with its field (a mask is no picture)."""
    named = [("image", text) for text in request.image]
    for ip in ip_choices(request):
        named += [(ip.name_of("images", i), text) for i, text in enumerate(ip.choice.images)]
    named += [(f"controlnets.{index}.image", control.image) for index, control in enumerate(request.controlnets)]
    return [(field, base64_bytes(text)) for field, text in named]


def _request_id() -> str:
    """The id Ray Serve gave the request being answered ('' outside one)."""
    return _get_serve_request_context().request_id


class Moderation:
    """The stack's policy and checks: its prompt blocklist, and the image checker and text classifier it serves."""

    def __init__(
        self,
        policy: Policy = Policy.OFF,
        blocklist: Blocklist | None = None,
        images: ImageChecker | None = None,
        texts: TextChecker | None = None,
    ) -> None:
        self.policy = policy
        self.blocklist = blocklist or Blocklist()
        self.images = images
        self.texts = texts

    def checking(self, images: ImageChecker | None, texts: TextChecker | None = None) -> Moderation:
        """This policy and blocklist with the served checks (built in the replica: they hold a client)."""
        return Moderation(self.policy, self.blocklist, images, texts)

    @property
    def triton_models(self) -> list[str]:
        """The Triton models its served checks run on (``/readyz`` covers them)."""
        return [name for check in (self.images, self.texts) if (name := getattr(check, "triton_model", None))]

    async def texts_checked(self, texts: list[str]) -> list[Verdict]:
        """Each text's verdict: the blocklist's merged with the text classifier's, when one is served."""
        verdicts = [self.blocklist.check(text) for text in texts]
        if self.texts is None or not texts:
            return verdicts
        served = await self.texts.check(texts)
        return [verdict.merged(model) for verdict, model in zip(verdicts, served, strict=True)]

    async def screened(self, request: GenerationRequest, key: ApiKey | None) -> Screening:
        """``request``'s prompt and input images checked under its key's policy (or the stack's), before any work.

        Under ``block`` a flagged one is a 400 (OpenAI's ``content_policy_violation``) naming ``prompt``, or the
        image's field. The negative prompt and the mask are not checked: they name what the image must not show.
        Input images are checked by the stack's image checker, when it serves one.
        """
        key_id = key and key.id
        policy = policy_of(self.policy, key and key.limits.moderation)
        if policy is Policy.OFF:
            return Screening(policy, key_id=key_id)
        named = request.prompt_texts()  # its prompt, or each of its prompts
        verdicts = await self.texts_checked([text for _, text in named])
        for (field, _), prompt_verdict in zip(named, verdicts, strict=True):
            self._refused_if_flagged(field, prompt_verdict, policy, key_id)
        verdict = functools.reduce(Verdict.merged, verdicts)
        named = input_images(request) if self.images is not None else []
        if named:
            checked = await self._images_checked(named)
            for (field, _), image_verdict in zip(named, checked, strict=True):
                self._refused_if_flagged(field, image_verdict, policy, key_id)
                verdict = verdict.merged(image_verdict)
        return Screening(policy, verdict, key_id)

    async def screened_upload(self, data: bytes, key: ApiKey | None) -> Screening:
        """An upscale's input image checked under its key's policy (or the stack's) by the image checker, if served.

        Under ``block`` a flagged one is a 400 naming ``image``; otherwise its verdict marks the answer
        (:func:`serve.moderation.policy.marked`).
        """
        key_id = key and key.id
        policy = policy_of(self.policy, key and key.limits.moderation)
        if policy is Policy.OFF or self.images is None:
            return Screening(policy, key_id=key_id)
        [verdict] = await self.images.check([await asyncio.to_thread(upscale.decode, data)])  # upscale's limits
        self._refused_if_flagged("image", verdict, policy, key_id)
        return Screening(policy, verdict, key_id)

    async def _images_checked(self, named: list[tuple[str, bytes]]) -> list[Verdict]:
        """The image checker's verdict on each encoded image (a 400 naming its field if one does not decode)."""
        pixels = await asyncio.to_thread(lambda: [decode_image(data, field) for field, data in named])
        return await self.images.check(pixels)

    def _refused_if_flagged(self, field: str, verdict: Verdict, policy: Policy, key_id: str | None) -> None:
        """A flagged input counted, and under ``block`` refused naming ``field``."""
        if not verdict.flagged:
            return
        is_prompt = field.split(".")[0] in ("prompt", "prompts")
        self._counted("prompt" if is_prompt else "input_image", verdict, key_id)
        if policy is Policy.BLOCK:
            raise ContentPolicyViolation(
                f"{field}: refused by the content policy (flagged: {', '.join(verdict.flagged_categories)})",
                field=field,
            )

    async def rescreened(self, request: GenerationRequest, policy: Policy | None, key_id: str | None) -> Screening:
        """A queued job's prompt as it runs, under ``policy``: the one it was submitted under (None: the stack's).

        Its images are checked and marked by it. Never refused here: the job was admitted (its prompt and input images
        checked under that policy) at submission.
        """
        policy = self.policy if policy is None else policy
        if policy is Policy.OFF:
            return Screening(policy, key_id=key_id)
        verdicts = await self.texts_checked([text for _, text in request.prompt_texts()])
        return Screening(policy, functools.reduce(Verdict.merged, verdicts), key_id)  # its images were checked then

    async def checked(self, result: EncodedImages, screening: Screening) -> tuple[EncodedImages, Moderated]:
        """``result``'s images under ``screening``'s policy (:func:`serve.moderation.policy.moderated`)."""
        if screening.policy is Policy.OFF:
            return result, moderated(result.images, screening)
        named = [("image", image) for image in result.images]
        checked = await self._images_checked(named) if self.images is not None and named else None
        done = await asyncio.to_thread(moderated, result.images, screening, checked)
        for verdict in done.checked:
            if verdict.flagged:
                self._counted("image", verdict, screening.key_id)
        return dataclasses.replace(result, images=done.images), done

    def check_served(self, body: ModerationRequest) -> None:
        """A 400 naming ``input`` when ``body`` has an image and the stack serves no image checker (at admission)."""
        if self.images is None and any(isinstance(item, bytes) for item in body.items()):
            raise InvalidInput("input: no image moderation model is served by this stack", field="input")

    async def moderations(self, body: ModerationRequest, key: ApiKey | None) -> dict:
        """``POST /v1/moderations``: one result per input item, by :meth:`texts_checked` and the image checker.

        An image with no image checker served is a 400 naming ``input`` (:meth:`check_served`, made by admission
        before the request is charged, and again here for a caller that did not admit it).
        """
        self.check_served(body)
        items = body.items()
        images = [
            (f"input.{i}.image_url.image_url.url", item) for i, item in enumerate(items) if isinstance(item, bytes)
        ]
        image_verdicts = iter(await self._images_checked(images) if images else ())
        text_verdicts = iter(await self.texts_checked([item for item in items if isinstance(item, str)]))
        verdicts = [next(text_verdicts) if isinstance(item, str) else next(image_verdicts) for item in items]
        for verdict in verdicts:
            if verdict.flagged:
                self._counted("input", verdict, key and key.id)
        return {
            "id": f"modr-{secrets.token_hex(12)}",
            "model": body.model or MODERATION_MODEL,
            "results": [verdict.to_api() for verdict in verdicts],
        }

    @staticmethod
    def _counted(item: str, verdict: Verdict, key_id: str | None) -> None:
        """A flag counted by category and key, and logged with the key and request ids (never the text)."""
        for category in verdict.flagged_categories:
            metrics.count(metrics.MODERATION_FLAGS, item=item, category=category, key_id=key_id or "none")
        logger.warning(
            "moderation flagged a %s (%s): key %s, request %s",
            item,
            ", ".join(verdict.flagged_categories),
            key_id or "none",
            _request_id() or "none",
        )
