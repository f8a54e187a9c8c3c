"""Admission, the one step between the door and any work: a request admitted, and its cost charged to its key.

Every route and RPC that runs an engine names it (:attr:`serve.routes.Route.engine`): HTTP's
:func:`serve.http.admission.admit` (a FastAPI dependency in the handler's signature), gRPC's servicer
(:mod:`serve.grpc_api.servicer`) by :meth:`Admission.admit`. A generation is admitted by
:meth:`Generations.admitted` (its model resolved once, every rule checked, its cost on that model), a video as the
generation it runs as, a rerun as the generation its image's record holds, an upscale by the work it runs
(:meth:`Upscaling.work`), a vectorize request by :meth:`Vectorizing.admitted`, the other bodies by their own work
(:mod:`serve.serving.prices`). Every check that can refuse a request runs here, before its cost is taken from the
caller's key (:func:`serve.access.charge`: 429 past its cost limit): a request refused is never charged. The handler
runs what was admitted, as it is.

Costs are megapixel-passes (:class:`serve.models.admission.Work`): a 512x512 image through one engine pass is
0.26. Images are priced from their headers: no pixel is decoded before the cost is taken, but a background job's,
decoded to refuse one that does not decode with a 400 rather than a failed job (:meth:`BackgroundJobs.check`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass

from serve.access import Caller, charge
from serve.access.keys import ApiKey
from serve.moderation import Screening
from serve.moderation.requests import ModerationRequest
from serve.protocol.character_requests import CharacterReplacement, NewCharacter
from serve.protocol.face_requests import FaceAnalysisRequest
from serve.protocol.quality_requests import PromptAnalysisRequest, ScoreRequest
from serve.protocol.reference_request import NewReference
from serve.protocol.schema import GenerationRequest
from serve.protocol.video import InterpolateBody, VideoRequest, body_fields_named, input_reference_named
from serve.results.rerun import RerunRequest
from serve.scoring import check_scores
from serve.serving.adapters import Adapters
from serve.serving.admitted import Admitted
from serve.serving.characters import Characters
from serve.serving.generations import Generations
from serve.serving.jobs import BackgroundJobs
from serve.serving.prices import analysis_cost, face_analysis_cost, moderation_cost, reference_cost, score_cost
from serve.serving.prompts import analyzed_model
from serve.serving.upscale import UpscaleBody, Upscaling
from serve.serving.vectorize import AdmittedVectorize, VectorizeBody, Vectorizing
from serve.serving.videos import Videos

OwnPriced = (
    ModerationRequest
    | NewReference
    | ScoreRequest
    | PromptAnalysisRequest
    | FaceAnalysisRequest
    | NewCharacter
    | CharacterReplacement
)
"""The bodies priced by their own work (:mod:`serve.serving.prices`), admitted as an :class:`AdmittedBody`."""
Body = GenerationRequest | VideoRequest | InterpolateBody | UpscaleBody | RerunRequest | VectorizeBody | OwnPriced
"""Every body admission takes."""


@dataclass(frozen=True)
class AdmittedBody:
    """A body whose price is its own (a moderation, a stored reference, a score, a prompt analysis): as read, cost."""

    body: OwnPriced
    cost: float


@dataclass(frozen=True)
class AdmittedUpscale:
    """An upscale admitted: its image and options as read, the cost of the work it runs, its image's screening."""

    body: UpscaleBody
    cost: float
    screening: Screening  # under block a flagged image was refused here, before the charge


@dataclass(frozen=True)
class AdmittedRerun:
    """A rerun admitted: the kept image it names, and the generation that image's record holds, admitted."""

    rerun: RerunRequest
    generation: Admitted

    @property
    def cost(self) -> float:
        """What the generation it reruns costs."""
        return self.generation.cost


Priced = Admitted | AdmittedUpscale | AdmittedRerun | AdmittedBody | AdmittedVectorize
"""What admission hands a handler: the request as it runs, and its cost (taken)."""


class Admission:
    """The doors' one admission: what a costed request runs, admitted once, its cost charged to its caller's key.

    ``jobs``: where a background generation is queued (its submission's checks run here); ``vectorizing``: the
    vectorize requests' serving class; ``adapters``: the stored references' quota; ``characters``: a character's
    checks. None of these: such a request's
    checks are not made (a test's admission of generations alone).
    """

    def __init__(
        self,
        generations: Generations,
        upscaling: Upscaling,
        jobs: BackgroundJobs | None = None,
        vectorizing: Vectorizing | None = None,
        adapters: Adapters | None = None,
        characters: Characters | None = None,
    ) -> None:
        self.generations, self.upscaling = generations, upscaling
        self.jobs, self.vectorizing, self.adapters, self.characters = jobs, vectorizing, adapters, characters

    async def admit(self, body: Body, caller: Caller) -> Priced:
        """``body`` admitted for ``caller`` (a 400 naming the field if not), then its cost charged (429 past its limit).

        The cost is the work of the model it resolved to (:meth:`serve.models.served.ServedModel.work`), which
        the replicas' admission counts too, or the work it runs (:mod:`serve.serving.prices`); its images' headers
        are read from :func:`serve.images.base64_bytes` (decoded once in the process). Whatever can refuse it is
        checked before the charge: a refused request costs its key nothing.
        """
        admitted = await self._admitted(body, caller.key)
        await charge(caller, admitted.cost)
        return admitted

    async def _admitted(self, body: Body, key: ApiKey | None) -> Priced:
        """``body`` admitted for ``key`` and priced, every check that can refuse it made; nothing is charged."""
        if isinstance(body, UpscaleBody):
            work = await asyncio.to_thread(self.upscaling.work, body)
            return AdmittedUpscale(body, work.cost, await self.generations.moderation.screened_upload(body.data, key))
        if isinstance(body, VectorizeBody):
            return await self.vectorizing.admitted(body, key and key.id)
        if isinstance(body, OwnPriced):
            return AdmittedBody(body, await self._own_price(body, key))
        if isinstance(body, RerunRequest):  # a kept image made again: the generation its record holds
            request = await self.generations.results.rerun_request(body, key)
            return AdmittedRerun(body, await self.generations.admitted(request, key))
        if isinstance(body, InterpolateBody):  # a finished video's frames multiplied: priced by the frames it draws
            request = await Videos(self.jobs).interpolation(body, key)
            with body_fields_named("interpolate."):  # the body is the interpolate part: its 400s name its fields
                admitted = await self.generations.admitted(request, key)
            sampling = admitted.drawing.sampling
            cost = self.upscaling.interpolation_cost(request, sampling.width, sampling.height)
            return await self._submittable(dataclasses.replace(admitted, cost=cost))
        if isinstance(body, VideoRequest):  # a video: the generation it runs as, on the model it names
            admitted = await self.generations.video_admitted(body, key)
            with input_reference_named():  # its job's image checks name its input_reference
                return await self._submittable(admitted)
        return await self._submittable(await self.generations.admitted(body, key))

    async def _submittable(self, admitted: Admitted) -> Admitted:
        """``admitted``; a background one checked as its job's submission would check it (400s naming the field)."""
        if admitted.request.background and self.jobs is not None:
            await self.jobs.check(admitted)
        return admitted

    async def _own_price(self, body: OwnPriced, key: ApiKey | None) -> float:
        """What a body priced by its own work costs, after the checks that could refuse it (400, 403, 413)."""
        if isinstance(body, ModerationRequest):
            cost = await asyncio.to_thread(moderation_cost, body)
            self.generations.moderation.check_served(body)  # an image, and no image checker: a 400
            return cost
        if isinstance(body, ScoreRequest):
            cost = await asyncio.to_thread(score_cost, body)  # each image's header: a 413 past the bound
            check_scores(["clip_score"], self.generations.scores, "images")  # no scorer served: a 400
            return cost
        if isinstance(body, FaceAnalysisRequest):
            entry = self.upscaling.upscalers.faces.served("image")  # no face models served: a 400
            return await asyncio.to_thread(face_analysis_cost, body, entry.face_side)
        if isinstance(body, NewCharacter | CharacterReplacement):  # its model, LoRA, name, quota; its pictures' price
            new = isinstance(body, NewCharacter)
            return await self.characters.admitted(*((body, key, None) if new else (body.character, key, body.name)))
        if isinstance(body, PromptAnalysisRequest):
            model = analyzed_model(self.generations.models, body)  # unknown, or remote: a 400 naming model
            return analysis_cost(body, len(model.folder.family.prompt_encoders()))
        cost = await asyncio.to_thread(reference_cost, body)
        if self.adapters is not None:
            await self.adapters.check_new_reference(body, key)  # its model, its IP-Adapter, the key's quota
        return cost
