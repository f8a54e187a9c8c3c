"""Vectorize requests: a raster image, from its three HTTP encodings or gRPC's message, traced to SVG."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve import metrics
from serve.access import caller
from serve.errors import InvalidInput
from serve.experiments.feedback import new_image_id
from serve.experiments.traffic import Assignment, Experiments
from serve.images import base64_bytes
from serve.vectorize.deployment import VectorizeResult
from serve.vectorize.schema import VectorizeJson, VectorizeOptions
from serve.vectorize.versions import VersionChange, variant_version
from serve.wire import read_json


async def read_vectorize_request(request: Request) -> tuple[bytes, VectorizeOptions]:
    """The upload and options of a vectorize request (the body's size is bounded by :class:`BodyLimits`)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=len(VectorizeOptions.model_fields))
        except StarletteHTTPException as error:  # the multipart parser's refusal (too many parts, malformed)
            field = "file" if "files" in str(error.detail) else "body"
            raise InvalidInput(f"{field}: {error.detail} (one file part, 'file', and the options)", field) from None
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidInput("file: a multipart request needs a file part named 'file'", field="file")
        fields = {key: value for key, value in form.items() if key != "file"}
        return await upload.read(), VectorizeOptions.model_validate(fields)
    if content_type.startswith("application/json"):
        body = read_json(VectorizeJson, await request.body(), content_type)
        try:
            return base64_bytes(body.image), body
        except ValueError as error:  # binascii.Error, or characters outside ASCII
            raise InvalidInput(f"image: not valid base64 ({error})", field="image") from error
    if content_type.startswith("image/"):
        return await request.body(), VectorizeOptions.model_validate(dict(request.query_params))
    raise InvalidInput("Content-Type must be multipart/form-data, application/json or image/*", field="Content-Type")


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
        self, vectorizer: DeploymentHandle, residency: DeploymentHandle, experiments: Experiments | None = None
    ) -> None:
        self.vectorizer = vectorizer
        self.residency = residency
        self.experiments = experiments

    async def versions(self) -> dict:
        """The vectorize model versions installed, the current one marked."""
        return await self.residency.vectorize_versions.remote()

    async def change(self, method: str, body: VersionChange | None = None, version: int | None = None) -> dict:
        """Add (POST), replace or serve again (PUT), or remove (DELETE) a vectorize model version (admin)."""
        return await self.residency.change_vectorize.remote(method, body, version)

    async def vectorize(self, image: bytes, options: VectorizeOptions, owner: str | None = None) -> VectorizeResult:
        """The image traced to SVG (gRPC's ``Vectorize`` answers this) for key ``owner`` (None: the open API)."""
        assignment = await self._assigned(options, owner)
        if assignment is None:
            return await self.vectorizer.vectorize.remote(image, options, sent_at=time.time())
        options = options.model_copy(update={"model_version": variant_version(assignment.model)})
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

    async def _assigned(self, options: VectorizeOptions, owner: str | None) -> Assignment | None:
        """The variant of the request's experiment (None without one; a 400 naming ``experiment`` if unknown)."""
        if options.experiment is None:
            return None
        assignment = await asyncio.to_thread(self.experiments.assign, options.experiment, options.user, owner)
        if assignment is None or variant_version(assignment.model) is None:
            message = f"experiment: no experiment {options.experiment!r} over vectorize versions (vectorize.vN)"
            raise InvalidInput(message, "experiment")
        return assignment

    def _recorded(
        self, result: VectorizeResult, assignment: Assignment, target_quality: float | None, owner: str | None
    ) -> None:
        """Remember what served ``result`` (feedback names its id); its measured SSIM, if any, rewards the variant."""
        self.experiments.record([result.id], assignment, owner)
        if result.ssim is not None:
            reward = measured_reward(result.ssim, target_quality)
            self.experiments.store.rate(result.id, reward)
            metrics.observe(metrics.VARIANT_REWARD, reward, experiment=assignment.label, variant=assignment.model)

    async def analysis(self, image: bytes, options: VectorizeOptions) -> dict:
        """The image's features, class and each tier's predicted result, not converted (gRPC's ``Analyze``)."""
        return await self.vectorizer.analyze.remote(image, options)

    async def analyze(self, request: Request) -> JSONResponse:
        """The HTTP answer of ``POST /v1/vectorize/analyze``: the analysis as JSON (the request is vectorize's)."""
        upload, options = await read_vectorize_request(request)
        result = await self.analysis(upload, options)
        headers = {"Easel-Tier": result["tier"], "Easel-Model-Version": str(result["model_version"])}
        return JSONResponse(result, headers=headers)

    async def answer(self, request: Request) -> Response:
        """The HTTP answer: the SVG, or with ``Accept: application/json`` the SVG, its tier and timings."""
        upload, options = await read_vectorize_request(request)
        key = caller(request)
        result = await self.vectorize(upload, options, key and key.id)
        headers = {"Easel-Tier": result.tier, "Easel-Model-Version": str(result.model_version)}
        if result.experiment:
            headers["Easel-Experiment"] = result.experiment
        if result.fallback:  # a short label: free text (error messages) never goes into a header
            headers["Easel-Fallback"] = result.why
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse(result.to_json(), headers=headers)
        return Response(result.svg, media_type="image/svg+xml", headers=headers)
