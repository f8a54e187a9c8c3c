"""Vectorize requests: a raster image, from its three HTTP encodings or gRPC's message, traced to SVG.

Each is admitted first (:meth:`Vectorizing.admitted`, by the doors' admission): its experiment's variant drawn and its
version checked (400s naming them) and its price (:func:`serve.serving.prices.vectorize_cost`: its image's pixels from
its header, and the passes its tier may run), before its cost is taken and anything runs.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace

from fastapi.responses import JSONResponse, Response
from ray.serve.handle import DeploymentHandle

from serve import metrics
from serve.errors import InvalidInput
from serve.experiments.feedback import new_image_id
from serve.experiments.traffic import Assignment, Experiments
from serve.serving.prices import vectorize_cost
from serve.vectorize.deployment import VectorizeResult
from serve.vectorize.schema import VectorizeOptions
from serve.vectorize.versions import NewVersion, TableReader, VersionChange, variant_version


@dataclass(frozen=True)
class VectorizeBody:
    """A vectorize request as read (:func:`serve.http.bodies.read_vectorize_request`, or gRPC's message)."""

    data: bytes  # the image's bytes
    options: VectorizeOptions
    analysis: bool = False  # ``/v1/vectorize/analyze`` (gRPC's ``Analyze``): the models' analysis, nothing converted


@dataclass(frozen=True)
class AdmittedVectorize:
    """A vectorize request admitted: as it runs (its variant's version in its options), what chose that, its cost."""

    body: VectorizeBody
    assignment: Assignment | None  # its experiment's variant (None: it names none, or an analysis)
    cost: float


REWARD_SSIM = 0.9
"""The measured SSIM an answer must reach (without the request's own target_quality) for a bandit's reward of 1."""


def measured_reward(ssim: float, target_quality: float | None) -> float:
    """A bandit's reward for an answer whose SSIM was measured: 1 if it reaches the target, else 0."""
    return 1.0 if ssim >= (REWARD_SSIM if target_quality is None else target_quality) else 0.0


def _observe_variant(result: VectorizeResult, seconds: float, labels: dict[str, str]) -> None:
    """An experiment's answer on the vectorize dashboard: its variant's latency, outcome, bytes and measured SSIM."""
    metrics.observe(metrics.VARIANT_LATENCY, seconds, **labels)
    metrics.count(metrics.VARIANT_REQUESTS, outcome="fallback" if result.fallback else "ok", **labels)
    metrics.observe(metrics.VARIANT_SVG_BYTES, result.bytes, **labels)
    if result.ssim is not None:
        metrics.observe(metrics.VARIANT_SSIM, result.ssim, **labels)


class Vectorizing:
    """Vectorize requests answered by the ``Vectorizer`` deployment; its model versions changed by the residency.

    A request naming an ``experiment`` over vectorize versions gets the version its variant names (sticky per
    ``user`` in a split, a Thompson draw in a bandit); its answer gets an ``id`` that feedback may rate, and when its
    SSIM was measured (``validate``) that SSIM rewards its variant at once (:func:`measured_reward`).
    """

    def __init__(
        self,
        vectorizer: DeploymentHandle,
        residency: DeploymentHandle,
        experiments: Experiments | None = None,
        table: TableReader | None = None,
    ) -> None:
        self.vectorizer = vectorizer
        self.residency = residency
        self.experiments = experiments
        self.table = table  # the installed versions, a request's checked against at admission (None: not checked)

    async def versions(self) -> dict:
        """The vectorize model versions installed, the current one marked."""
        return await self.residency.vectorize_versions.remote()

    async def change(
        self, method: str, body: NewVersion | VersionChange | None = None, version: int | None = None
    ) -> dict:
        """Add (POST), replace or serve again (PUT), or remove (DELETE) a vectorize model version (admin)."""
        return await self.residency.change_vectorize.remote(method, body, version)

    async def admitted(self, body: VectorizeBody, owner: str | None) -> AdmittedVectorize:
        """``body`` as it will run for key ``owner``, and its price: what can refuse it refused now, before its cost.

        Its experiment's variant drawn (a 400 naming ``experiment`` for an unknown one) and the version it runs
        checked against those installed (a 400 naming ``model_version``); its image's header read (a 413 naming
        ``image`` over 4,194,304 pixels). Nothing is decoded or run.
        """
        options, assignment = body.options, None
        if not body.analysis:
            options, assignment = await self.assigned(options, owner)
        if self.table is not None:
            await asyncio.to_thread(lambda: self.table.now().resolve(options.model_version))
        cost = await asyncio.to_thread(vectorize_cost, body.data, options, body.analysis)
        return AdmittedVectorize(replace(body, options=options), assignment, cost)

    async def assigned(
        self, options: VectorizeOptions, owner: str | None
    ) -> tuple[VectorizeOptions, Assignment | None]:
        """``options`` with the version of its experiment's variant, and that variant (None: it names no experiment).

        A 400 naming ``experiment`` when it names one that is not over vectorize versions.
        """
        if options.experiment is None:
            return options, None
        assignment = await asyncio.to_thread(self.experiments.assign, options.experiment, options.user, owner)
        if assignment is None or variant_version(assignment.model) is None:
            message = f"experiment: no experiment {options.experiment!r} over vectorize versions (vectorize.vN)"
            raise InvalidInput(message, "experiment")
        return options.model_copy(update={"model_version": variant_version(assignment.model)}), assignment

    async def vectorize(self, image: bytes, options: VectorizeOptions, owner: str | None = None) -> VectorizeResult:
        """The image traced to SVG for key ``owner`` (None: the open API), its experiment's variant drawn first."""
        options, assignment = await self.assigned(options, owner)
        return await self.traced(image, options, assignment, owner)

    async def traced(
        self, image: bytes, options: VectorizeOptions, assignment: Assignment | None, owner: str | None
    ) -> VectorizeResult:
        """The image traced with ``options`` as assigned (:meth:`assigned`); an experiment's answer is recorded."""
        if assignment is None:
            return await self.vectorizer.vectorize.remote(image, options, sent_at=time.time())
        labels, started = {"experiment": assignment.label, "variant": assignment.model}, time.perf_counter()
        try:
            result = await self.vectorizer.vectorize.remote(image, options, sent_at=time.time())
        except Exception:
            metrics.count(metrics.VARIANT_REQUESTS, outcome="error", **labels)
            raise
        _observe_variant(result, time.perf_counter() - started, labels)
        result = replace(result, id=new_image_id(), experiment=assignment.experiment)
        await asyncio.to_thread(self._recorded, result, assignment, options.target_quality, owner)
        return result

    async def served(self, admitted: AdmittedVectorize, owner: str | None) -> VectorizeResult:
        """An admitted request traced (gRPC's ``Vectorize`` answers this)."""
        return await self.traced(admitted.body.data, admitted.body.options, admitted.assignment, owner)

    def _recorded(
        self, result: VectorizeResult, assignment: Assignment, target_quality: float | None, owner: str | None
    ) -> None:
        """Remember what served ``result`` (feedback names its id); its measured SSIM, if any, rewards the variant."""
        self.experiments.record([result.id], assignment, owner)
        if result.ssim is not None:
            reward = measured_reward(result.ssim, target_quality)
            self.experiments.store.rate(result.id, reward)
            metrics.observe(metrics.VARIANT_REWARD, reward, experiment=assignment.label, variant=assignment.model)

    async def analysis(self, admitted: AdmittedVectorize) -> dict:
        """The image's features, class and each tier's predicted result, not converted (gRPC's ``Analyze``)."""
        return await self.vectorizer.analyze.remote(admitted.body.data, admitted.body.options)

    async def analyze(self, admitted: AdmittedVectorize) -> JSONResponse:
        """The HTTP answer of ``POST /v1/vectorize/analyze``: the analysis as JSON."""
        result = await self.analysis(admitted)
        headers = {"Easel-Tier": result["tier"], "Easel-Model-Version": str(result["model_version"])}
        return JSONResponse(result, headers=headers)

    async def answer(self, admitted: AdmittedVectorize, owner: str | None, accept: str) -> Response:
        """The HTTP answer: the SVG, or with ``Accept: application/json`` the SVG, its tier and timings."""
        result = await self.served(admitted, owner)
        headers = {"Easel-Tier": result.tier, "Easel-Model-Version": str(result.model_version)}
        if result.experiment:
            headers["Easel-Experiment"] = result.experiment
        if result.fallback:  # a short label: free text (error messages) never goes into a header
            headers["Easel-Fallback"] = result.why
        if "application/json" in accept:
            return JSONResponse(result.to_json(), headers=headers)
        return Response(result.svg, media_type="image/svg+xml", headers=headers)
