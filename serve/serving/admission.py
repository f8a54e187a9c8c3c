"""Admission, the one step between the door and any work: a request admitted, and its cost charged to its key.

Every route and RPC that runs work names it: HTTP's :func:`serve.http.admission.admit` (a FastAPI dependency in the
handler's signature), gRPC's servicer (:mod:`serve.grpc_api.servicer`) by :meth:`Admission.admit`. A generation is
admitted by :meth:`Generations.admitted` (its model resolved once, every rule checked, its cost on that model), a video
as the generation it runs as, a rerun as the generation its image's record holds, an upscale by the work it runs
(:meth:`Upscaling.work`); then its cost is taken from the caller's key (:func:`serve.access.charge`: 429 past its cost
limit). The handler runs what was admitted, as it is.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from serve.access import Caller, charge
from serve.results.rerun import RerunRequest
from serve.serving.admitted import Admitted
from serve.serving.generations import Generations
from serve.serving.upscale import UpscaleBody, Upscaling
from serve.text_to_image.schema import GenerationRequest
from serve.text_to_image.video import VideoRequest


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
        self, body: GenerationRequest | VideoRequest | UpscaleBody | RerunRequest, caller: Caller
    ) -> Admitted | AdmittedUpscale | AdmittedRerun:
        """``body`` admitted for ``caller`` (a 400 naming the field if not), its cost charged (429 past its limit).

        The cost is the work of the model it resolved to (:meth:`serve.text_to_image.models.ServedModel.work`), which
        the replicas' admission counts too; its images' headers are read from :func:`serve.images.base64_bytes`
        (decoded once in the process).
        """
        if isinstance(body, UpscaleBody):
            admitted = AdmittedUpscale(body, (await asyncio.to_thread(self.upscaling.work, body)).cost)
        elif isinstance(body, RerunRequest):  # a kept image made again: the generation its record holds
            request = await self.generations.results.rerun_request(body, caller.key)
            admitted = AdmittedRerun(body, await self.generations.admitted(request, caller.key))
        elif isinstance(body, VideoRequest):  # a video: the generation it runs as, on the model it names
            admitted = await self.generations.video_admitted(body, caller.key)
        else:
            admitted = await self.generations.admitted(body, caller.key)
        await charge(caller, admitted.cost)
        return admitted
