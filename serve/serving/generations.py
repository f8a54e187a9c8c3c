"""Generations: a request admitted once (the model, or an experiment's variant, resolved and checked), then answered.

Every door admits a generation by :meth:`Generations.admitted` (in the admission step every route and RPC that runs
work names, :class:`serve.serving.admission.Admission`, for a synchronous request and a job's submission alike; a
job is admitted again by :meth:`Generations.readmitted` as it runs): its model resolved once, every rule checked that
can be without running (:meth:`serve.models.served.ServedModel.check`) and its cost counted on that model, before
any model loads. Every generation,
synchronous or a job's, is then answered by :meth:`Generations.served_answer` (the result cache, the model's version
kept loaded, the ``TextToImage`` deployment, the Vectorizer for SVG); gRPC's ``Generate`` streams the same steps
(:meth:`Generations.events`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi.responses import JSONResponse
from ray.serve.handle import DeploymentHandle

from serve import metrics
from serve.access import may_see
from serve.access.keys import ApiKey
from serve.cache import cache_call, cache_key, cache_scope
from serve.cache.store import ResultCache
from serve.errors import InvalidInput, NotReady
from serve.experiments.feedback import new_image_id
from serve.experiments.policy import FEEDBACK
from serve.experiments.traffic import Assignment, Experiments
from serve.finishing.upscalers import Upscalers
from serve.jobs.model import Progress
from serve.models.admission import Plan
from serve.models.served import ServedModel
from serve.moderation import Policy
from serve.protocol.schema import GenerationRequest
from serve.protocol.video import VideoRequest, input_reference_named
from serve.remote.models import DROPPED_HEADER, RemoteModel
from serve.resilience.circuits import Circuits
from serve.scoring import check_scores
from serve.serving.admitted import Admitted
from serve.serving.answer_items import answer_items
from serve.serving.characters import Characters
from serve.serving.current_models import CurrentModels, ModelsNow
from serve.serving.fallbacks import Fallbacks
from serve.serving.identity import identified
from serve.serving.moderation import Moderation
from serve.serving.ray_errors import against_model
from serve.serving.references import References
from serve.serving.results import Results
from serve.serving.streaming import Streaming
from serve.serving.upscale import Upscaling, finishes
from serve.serving.variants import observe_scores, variant_measured
from serve.text_to_image.best_of import check_best_of
from serve.text_to_image.drawing import Drawing
from serve.text_to_image.generation import PROMPT_TRUNCATED, EncodedImages, OnStep, draw_seed

logger = logging.getLogger(__name__)


def seed_header(seed: int | None) -> dict[str, str]:
    """``Easel-Seed``, where the answer has a seed (a remote service may neither take nor say one)."""
    return {} if seed is None else {"Easel-Seed": str(seed)}


def truncation_header(body: dict) -> dict[str, str]:
    """``Easel-Prompt-Truncated`` for an answer whose prompt was cut (:data:`PROMPT_TRUNCATED`), else nothing."""
    return {"Easel-Prompt-Truncated": str(body[PROMPT_TRUNCATED])} if PROMPT_TRUNCATED in body else {}


class Generations(Streaming):
    """Generations answered: the model resolved (an experiment's alias to its variant), kept loaded, run, cached."""

    def __init__(
        self,
        models: CurrentModels,
        text_to_image: DeploymentHandle,
        vectorizer: DeploymentHandle,
        residency: DeploymentHandle,
        cache: ResultCache | None,
        experiments: Experiments,
        references: References | None = None,
        share_caches: bool = False,
        upscaling: Upscaling | None = None,
        moderation: Moderation | None = None,
        results: Results | None = None,
        circuits: Circuits | None = None,
        fallback_queue_wait_s: float | None = None,
        scores: tuple[str, ...] = (),
        characters: Characters | None = None,
    ) -> None:
        self.characters = characters  # a generation naming one is drawn with it (serve.serving.characters)
        self.scores = scores  # what the stack's scorer gives (none: no scorer): checked here, before the charge
        self.circuits = circuits or Circuits(failed=against_model)  # each model's breaker
        self.fallbacks = Fallbacks(self._relinked, fallback_queue_wait_s)  # down each model's chain
        self.moderation = moderation or Moderation()
        self.results = results or Results()  # each image kept, with what made it
        self.models = models
        self.references = references
        self.share_caches = share_caches  # the caches are everyone's, not each key's (serve.cache.cache_scope)
        self.upscaling = upscaling or Upscaling(Upscalers(), None)
        self.text_to_image = text_to_image
        self.vectorizer = vectorizer
        self.residency = residency
        self.cache = cache
        self.experiments = experiments

    def _pipeline(self, model: ServedModel) -> DeploymentHandle:
        """The ``TextToImage`` handle that routes to the replicas serving ``model``'s version."""
        return self.text_to_image.options(multiplexed_model_id=model.version_id)

    async def _resolved(
        self, request: GenerationRequest, model: ServedModel | None, owner: str | None, models: ModelsNow
    ) -> tuple[GenerationRequest, Assignment, ServedModel]:
        """The request as its model serves it (an experiment's alias resolved to a variant), what chose it, the model.

        The name is resolved once, in ``models`` (:meth:`~serve.serving.current_models.ModelsNow.named`): one that
        is neither a model (served or remote) nor an experiment is a 400 naming ``model``. ``model``: resolved
        already (a video's). ``owner``: the asking key, whose ``user`` a personal experiment draws for.
        """
        if model is not None:
            return request, Assignment(model.name), model
        served = models.names()
        if request.model and request.model not in served:
            chosen = await asyncio.to_thread(self.experiments.assign, request.model, request.user, owner, served)
            if chosen is not None:  # rewarded by a score: each image's is measured (and said only if asked)
                measured = chosen.reward != FEEDBACK and (chosen.reward != "identity" or request.character)
                update = {"model": chosen.model} | ({"scores": True} if measured else {})
                return request.model_copy(update=update), chosen, models.named(chosen.model)
        model = models.named(request.model)
        return request, Assignment(model.name), model

    def _checked(
        self,
        request: GenerationRequest,
        assignment: Assignment,
        model: ServedModel,
        asked: GenerationRequest,
        owner: str | None,
        models: ModelsNow,
    ) -> Admitted:
        """``request`` checked by ``model``'s rules (``owner``'s LoRAs), the stack's upscalers and scorer (400s).

        ``models``: the table it was resolved in, where its fallback chain is looked up.
        """
        work, plan = model.check(request, owner)
        chain = models.chains.get(model.name, ())
        plan = dataclasses.replace(plan, queue_wait_s=self.fallbacks.queue_wait(request, chain))
        face = None  # its character's, its images' scores.identity are against it
        if isinstance(model, RemoteModel):  # what it draws without (unsupported=drop) is no longer asked
            request = model.drawn(request)
        else:  # drawn and scored by a replica: with scores the stack's scorer gives (an experiment's reward too)
            face = self.characters.face_of(request, owner) if self.characters is not None else None
            check_scores(["clip_score"] if request.scores and not face else [], self.scores, "scores")
            check_best_of(request.candidates, request.best_of, (*self.scores, *(("identity",) if face else ())))
        self.results.check(request)
        self.upscaling.check_generation(request, work.width, work.height)
        finishing = self.upscaling.finishing_cost(request, work.width, work.height)
        drawing = Drawing.of(request, work.width, work.height, draw_seed(request.seed), face)  # its seed drawn here
        cost = work.cost + finishing
        return Admitted(request, assignment, model, cost, asked, plan, drawing, owner=owner, models=models)

    async def admitted(
        self,
        request: GenerationRequest,
        key: ApiKey | None = None,
        model: ServedModel | None = None,
        models: ModelsNow | None = None,
    ) -> Admitted:
        """``request`` admitted: its model resolved once and every rule checked, before any model loads (400 if not).

        Its adapters, sampler, size, images, ControlNets, step caching, cost and memory; an unknown adapter is a 400
        now, not a failed job later; so is a stored reference ``key`` may not see (another key's is as unknown as a
        missing one). ``model``: the model it names, resolved already (a video's) in ``models``; otherwise the table
        is read once, here.
        """
        screening = await self.moderation.screened(request, key)  # flagged input under block: a 400, before any work
        models = models or self.models.snapshot()
        assigned, assignment, model = await self._resolved(request, model, key and key.id, models)  # alias: variant
        found = 0.0  # the price of finding its identity's face
        if self.characters is not None:  # its trigger words, LoRA and pictures, as if sent by hand; its face embedded
            assigned = await self.characters.expanded(assigned, model, key)
            assigned, found = await identified(assigned, model, key, self.characters)
        args = (assigned, assignment, model, request, key and key.id, models)
        admitted = await asyncio.to_thread(self._checked, *args)
        admitted = dataclasses.replace(admitted, cost=admitted.cost + found)
        if self.references is not None:
            await self.references.check(assigned, model, functools.partial(may_see, key))
        return dataclasses.replace(await self.fallbacks.priced(admitted), screening=screening)

    async def video_admitted(self, request: VideoRequest, key: ApiKey | None) -> Admitted:
        """A video admitted as the generation it runs as, on the model it names (resolved once, here)."""
        models = self.models.snapshot()
        if request.model in models.remotes:
            raise InvalidInput(f"model: {request.model} is a remote model; videos are drawn by this stack", "model")
        model = models.served.resolve(request.model)
        generation = self.upscaling.scale_named(request.generation(model.name, model.native_size, model.folder.family))
        with input_reference_named():  # its image read as a still's (its header here)
            return await self.admitted(generation, key, model, models)

    async def readmitted(
        self, request: GenerationRequest, assignment: Assignment | None, policy: Policy | None, owner: str | None
    ) -> Admitted:
        """A queued job's request admitted again as it runs, by the model its name serves now (resolved once).

        ``request`` names its variant already; ``assignment``: what chose it at submission (None: no experiment);
        ``policy``: the moderation policy it was submitted under (None: a job stored without one, the stack's).
        """
        models = self.models.snapshot()
        model = models.named(request.model)
        admitted = self._checked(request, assignment or Assignment(model.name), model, request, owner, models)
        return dataclasses.replace(admitted, screening=await self.moderation.rescreened(request, policy, owner))

    async def _relinked(self, link: str, admitted: Admitted) -> Admitted:
        """``admitted`` for the model ``link`` (a fallback): checked by its rules (400 if it cannot take it)."""
        model = admitted.models.named(link)
        request = admitted.request.model_copy(update={"model": link})
        args = (request, Assignment(link), model, admitted.asked, admitted.owner, admitted.models)
        return dataclasses.replace(await asyncio.to_thread(self._checked, *args), screening=admitted.screening)

    @staticmethod
    def _rechecked(admitted: Admitted, served: ServedModel) -> Admitted:
        """``admitted`` checked again by ``served``, its model's version now (its plan and drawing; the same seed)."""
        work, plan = served.check(admitted.request, admitted.owner)
        face = admitted.drawing.answer.character_face
        drawing = Drawing.of(admitted.request, work.width, work.height, admitted.drawing.seed, face)
        return dataclasses.replace(admitted, plan=plan, drawing=drawing)

    async def answer(self, admitted: Admitted, owner: str | None, fresh: bool) -> JSONResponse:
        """A synchronous generation's answer (``fresh``: generated even when the result cache holds it)."""
        body, headers = await self.served_answer(admitted, owner, fresh)
        return JSONResponse(body, headers=headers)

    @asynccontextmanager
    async def _loaded_for(self, admitted: Admitted) -> AsyncIterator[tuple[ServedModel, Admitted, dict]]:
        """The admitted model loaded in Triton and kept loaded while the block runs: its version, what runs, headers.

        The version is the one the residency counted the request on: it finishes on it, whatever replaces it
        meanwhile. A cold model's request waits for its load (``Easel-Model-Load-Seconds``). The model's circuit
        breaker guards the block: open, it is refused at once; its outcome is counted.
        """
        model = admitted.model
        async with self.circuits.guarded(model.name):  # an open circuit: refused before the model is waited for
            version_id, waited = await self.residency.begin.remote(model.version_id)
            try:
                served = model
                if version_id != model.version_id:  # replaced since it was checked: checked again, by the new one
                    served = self.models.now().version(version_id)
                    admitted = self._rechecked(admitted, served)
                headers = {"Easel-Model": model.name, "Easel-Model-Version": str(served.version)}
                loading = {"Easel-Model-Load-Seconds": f"{waited:.3f}"} if waited else {}
                yield served, admitted, headers | loading
            finally:
                try:
                    await self.residency.end.remote(version_id)
                except Exception as error:  # noqa: BLE001 - bookkeeping: a generation that ended is not lost for it
                    logger.warning("model %s: its request's end not counted: %s", version_id, error)

    async def served_answer(
        self, admitted: Admitted, owner: str | None, fresh: bool = False, on_step: OnStep | None = None
    ) -> tuple[dict, dict]:
        """:meth:`_answer`, each image given an id (recorded with what served it), the model and experiment named.

        Per-variant requests and latency are counted here, whichever door the generation came by. A cached answer's
        images are recorded without their experiment: their feedback is taken, but is no new evidence. A model that
        cannot serve hands it down its fallback chain (:class:`~serve.serving.fallbacks.Fallbacks`).
        """
        scope = cache_scope(owner, self.share_caches)

        async def answered(chosen: Admitted) -> tuple[Admitted, tuple[dict, dict]]:
            async with variant_measured(chosen.assignment):
                return chosen, await self._answer(chosen, scope, fresh, on_step)

        (admitted, (body, headers)), fallback = await self.fallbacks.served(admitted, answered)
        if fallback is not None:  # drawn by a link of its model's chain: said in the headers and the body
            body, headers = body | fallback.to_api(), headers | fallback.headers()
        assignment = admitted.assignment
        cached = headers.get("Easel-Cache") == "hit"
        recorded = Assignment(assignment.model, user=assignment.user) if cached else assignment  # counts to no variant
        ids = await self._image_ids(len(body["data"]), recorded, owner, admitted.drawing)
        if not cached:  # an experiment rewarded by a score: each image's rewards its variant (feedback replaces it)
            scores = [item.get("scores") for item in body["data"]]
            await asyncio.to_thread(self.experiments.measure, ids, scores, assignment)
        if not admitted.asked.scores:  # measured for the experiment's reward alone
            body["data"] = [{k: v for k, v in item.items() if k != "scores"} for item in body["data"]]
        body["data"] = [{"id": image_id, **item} for image_id, item in zip(ids, body["data"], strict=True)]
        body = await self.results.answer_body(admitted.request, admitted.model, body, owner)  # kept; a URL if asked
        return body | assignment.to_api(), headers | assignment.headers()

    async def _image_ids(self, count: int, assignment: Assignment, owner: str | None, drawing: Drawing) -> list[str]:
        """Ids for ``count`` images, recorded with what served and made them (so feedback can name each)."""
        ids = [new_image_id() for _ in range(count)]
        await asyncio.to_thread(self.experiments.record, ids, assignment, owner, *drawing.made_with)
        return ids

    async def _answer(
        self, admitted: Admitted, scope: str, fresh: bool = False, on_step: OnStep | None = None
    ) -> tuple[dict, dict]:
        """The body and headers of a generation: from the cache (unless ``fresh``), or generated (and cached).

        ``scope``: whose cached answers and kept latents it may use (:func:`serve.cache.cache_scope`).

        ``on_step``: the generation is streamed and each step's :class:`Progress` handed to it; what it raises stops
        reading, which cancels the generation.
        """
        model = admitted.model
        loras = ",".join(f"{key}={weight}" for key, weight in admitted.plan.loras)  # their files shape the images too
        engine = f"{model.key}|{loras}"
        engine += f"|{admitted.screening.policy}"  # an answer's moderation marks are its policy's
        key = cache_key(engine, admitted.drawing.identity(), scope) if self.cache is not None else None
        if key is not None and not fresh:
            cached = await cache_call(self.cache.get, key)
            metrics.count(metrics.CACHE_REQUESTS, result="hit" if cached else "miss")
            if cached is not None:
                body = json.loads(cached) | {"created": int(time.time())}
                return body, seed_header(body["seed"]) | {"Easel-Cache": "hit"} | truncation_header(body)
        if isinstance(model, RemoteModel):  # drawn by another service: nothing to load, no steps to report
            result, model_headers = await self._remote(admitted)
        else:
            async with self._loaded_for(admitted) as (served, running, model_headers):
                drawing, plan = running.drawing, running.plan
                if on_step is None:
                    result = await self._pipeline(served).generate.remote(drawing, plan, time.time(), scope)
                else:
                    result = await self._generate_reporting(served, drawing, plan, on_step, scope)
                result = await self._finished(served, admitted, result, scope, on_step)
        result, moderated = await self.moderation.checked(result, admitted.screening)  # marked; blacked out (block)
        observe_scores(admitted.assignment, result.scores)
        answer = admitted.drawing.answer
        data = answer.prompts_named(await answer_items(self.vectorizer, answer, result))  # each its prompt_index
        body = {"created": int(time.time()), "seed": result.seed, "data": data}
        if result.prompt_tokens_dropped:  # said in the body too: a job's record and a cached answer keep it
            body[PROMPT_TRUNCATED] = result.prompt_tokens_dropped
        if result.candidates is not None:  # best-of-n: every candidate drawn, its seed, scores and whether kept
            body["candidates"] = result.candidates
        if DROPPED_HEADER in model_headers:  # a remote model's: what it was drawn without
            body["dropped"] = model_headers[DROPPED_HEADER].split(",")
        for item, mark in zip(body["data"], moderated.marks() or (), strict=False):
            item["moderation"] = mark
        headers = seed_header(result.seed) | model_headers | truncation_header(body)
        if result.steps_skipped is not None:
            headers["Easel-Steps-Skipped"] = str(result.steps_skipped)
        if result.loop is not None:
            headers["Easel-Loop"] = result.loop
        if key is not None and not moderated.flagged:  # a flagged answer is never cached
            await cache_call(self.cache.put, key, json.dumps(body).encode())
            headers["Easel-Cache"] = "miss"
        return body, headers

    async def _remote(self, admitted: Admitted) -> tuple[EncodedImages, dict]:
        """A remote model's images, its circuit breaker guarding the call, and its answer's headers."""
        model = admitted.model
        async with self.circuits.guarded(model.name):
            result = await model.generate(admitted.request, admitted.drawing.seed)
        return result, model.headers(admitted.asked)  # what it was drawn without: asked, dropped at admission

    async def _finished(
        self, served: ServedModel, admitted: Admitted, result: EncodedImages, scope: str, on_step: OnStep | None = None
    ) -> EncodedImages:
        """``result`` with its images upscaled (and redrawn, a hires fix), their faces restored, as the request asks.

        A video's interpolation reports each pair of frames done to ``on_step`` (its own stage).

        A hires fix's second pass is priced with the first, at the door (:meth:`admitted`; its replica admits it alone).
        """
        request = admitted.request
        if not finishes(request):
            return result

        async def img2img(second: GenerationRequest) -> list[bytes]:
            work, plan = await asyncio.to_thread(served.check, second, admitted.owner)  # the second pass's
            drawing = Drawing.of(second, work.width, work.height, second.seed)
            return (await self._pipeline(served).generate.remote(drawing, plan, time.time(), scope)).images

        images, faces = await self.upscaling.finish(request, result.images, result.seed, img2img, on_step)
        return dataclasses.replace(result, images=images, faces=faces)

    async def _generate_reporting(
        self, model: ServedModel, drawing: Drawing, plan: Plan, on_step: OnStep, scope: str
    ) -> EncodedImages:
        """The generation as a stream with previews: each step to ``on_step``, then the images."""
        stream = (
            self._pipeline(model)
            .options(stream=True)
            .generate_stream.remote(drawing, plan, time.time(), previews=True, cache_scope=scope)
        )
        try:
            async for item in stream:
                if isinstance(item, Progress):
                    await on_step(item)
                else:
                    return item
        finally:
            stream.cancel()  # a no-op once the stream ended; otherwise the generation stops at its current step
        raise NotReady("the generation ended without its images; retry shortly", retry_after_s=2)
