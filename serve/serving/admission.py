"""Admission, the one step between the door and any work: a request admitted, and its cost charged to its key.

Every route and RPC that runs work names it: HTTP's :func:`serve.http.admission.admit` (a FastAPI dependency in the
handler's signature), gRPC's servicer (:mod:`serve.grpc_api.servicer`) by :meth:`Admission.admit`. A generation is
admitted by :meth:`Generations.admitted` (its model resolved once, every rule checked, its cost on that model), a video
as the generation it runs as, a rerun as the generation its image's record holds, an upscale by the work it runs
(:meth:`Upscaling.work`), a moderation by its texts' characters and its images' pixels (:func:`moderation_cost`), a
stored reference by its image's decode and encode (:func:`reference_cost`); then its cost is taken from the caller's
key (:func:`serve.access.charge`: 429 past its cost limit). The handler runs what was admitted, as it is.

Costs are megapixel-passes (:class:`serve.text_to_image.admission.Work`): a 512x512 image through one engine pass is
0.26. Images are priced from their headers: no pixel is decoded before the cost is taken.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from serve.access import Caller, charge
from serve.images import base64_bytes
from serve.images.raster import MAX_PIXELS, header_size
from serve.moderation.requests import ModerationRequest
from serve.results.rerun import RerunRequest
from serve.serving.admitted import Admitted
from serve.serving.generations import Generations
from serve.serving.upscale import UpscaleBody, Upscaling
from serve.text_to_image.images import header_size as input_header_size
from serve.text_to_image.reference_request import NewReference
from serve.text_to_image.schema import GenerationRequest
from serve.text_to_image.video import VideoRequest

ENCODER_MEGAPIXELS = 224 * 224 / 1e6
"""One pass of a CLIP image encoder (the image checker's, the IP-Adapter's): its input is 224 x 224."""
CHARACTERS_PER_COST = 100_000
"""Moderated text as the price counts it: 100,000 characters cost 1 (32 texts of 32,000 characters: 10.2)."""


def moderation_cost(body: ModerationRequest) -> float:
    """Its texts' characters, + each image's decoded megapixels and one checker pass (400: one that is no image)."""
    cost = 0.0
    for i, item in enumerate(body.items()):
        if isinstance(item, str):
            cost += len(item) / CHARACTERS_PER_COST
        else:
            width, height = header_size(item, f"input.{i}.image_url.image_url.url", MAX_PIXELS)
            cost += width * height / 1e6 + ENCODER_MEGAPIXELS
    return cost


def reference_cost(body: NewReference) -> float:
    """Its image's decoded megapixels and one image-encoder pass (as a generation's ``ip_adapter_image`` counts it)."""
    width, height = input_header_size(base64_bytes(body.image), "image")
    return width * height / 1e6 + ENCODER_MEGAPIXELS


@dataclass(frozen=True)
class AdmittedBody:
    """A body whose price is its own (a moderation, a stored reference): as read, and what it costs."""

    body: ModerationRequest | NewReference
    cost: float


@dataclass(frozen=True)
class AdmittedUpscale:
    """An upscale admitted: its image and options as read, and the cost of the work it runs."""

    body: UpscaleBody
    cost: float


@dataclass(frozen=True)
class AdmittedRerun:
    """A rerun admitted: the kept image it names, and the generation that image's record holds, admitted."""

    rerun: RerunRequest
    generation: Admitted

    @property
    def cost(self) -> float:
        """What the generation it reruns costs."""
        return self.generation.cost


class Admission:
    """The doors' one admission: what a costed request runs, admitted once, its cost charged to its caller's key."""

    def __init__(self, generations: Generations, upscaling: Upscaling) -> None:
        self.generations, self.upscaling = generations, upscaling

    async def admit(
        self,
        body: GenerationRequest | VideoRequest | UpscaleBody | RerunRequest | ModerationRequest | NewReference,
        caller: Caller,
    ) -> Admitted | AdmittedUpscale | AdmittedRerun | AdmittedBody:
        """``body`` admitted for ``caller`` (a 400 naming the field if not), its cost charged (429 past its limit).

        The cost is the work of the model it resolved to (:meth:`serve.text_to_image.models.ServedModel.work`), which
        the replicas' admission counts too; its images' headers are read from :func:`serve.images.base64_bytes`
        (decoded once in the process).
        """
        if isinstance(body, UpscaleBody):
            admitted = AdmittedUpscale(body, (await asyncio.to_thread(self.upscaling.work, body)).cost)
        elif isinstance(body, ModerationRequest):
            admitted = AdmittedBody(body, await asyncio.to_thread(moderation_cost, body))
        elif isinstance(body, NewReference):
            admitted = AdmittedBody(body, await asyncio.to_thread(reference_cost, body))
        elif isinstance(body, RerunRequest):  # a kept image made again: the generation its record holds
            request = await self.generations.results.rerun_request(body, caller.key)
            admitted = AdmittedRerun(body, await self.generations.admitted(request, caller.key))
        elif isinstance(body, VideoRequest):  # a video: the generation it runs as, on the model it names
            admitted = await self.generations.video_admitted(body, caller.key)
        else:
            admitted = await self.generations.admitted(body, caller.key)
        await charge(caller, admitted.cost)
        return admitted
