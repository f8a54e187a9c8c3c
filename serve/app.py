"""The public HTTP API: a FastAPI ingress deployment in front of the pipeline deployments, and the app builder.

No ``from __future__ import annotations`` here: Ray Serve reads the builder's ``AppArgs`` annotation at run time.
``@serve.ingress`` pickles the FastAPI app when the class is decorated: helpers must be defined above it.
"""

import asyncio
import base64
import binascii
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile

from serve import metrics
from serve.errors import EaselError, InvalidInput, NotReady, Overloaded
from serve.text_to_image.admission import DEFAULT_MAX_COST, Limits, default_memory_budget
from serve.text_to_image.deployment import TextToImage, require_ready
from serve.text_to_image.schema import GenerationRequest
from serve.vectorize.deployment import Vectorizer
from serve.vectorize.schema import MAX_UPLOAD_BYTES, VectorizeJson, VectorizeOptions
from serve.vectorize.tiers import Tier
from serve.wire import BodyLimits

logger = logging.getLogger(__name__)

api = FastAPI(title="Easel", description="Text-to-image and vectorize serving on Triton and Ray Serve.")


def as_easel_error(error: BaseException) -> EaselError:
    """The :class:`EaselError` behind ``error`` (unwrapping Ray's task errors).

    Anything that is not an Easel error is not the client's fault (a replica died, a backend broke): it becomes a
    503 with ``Retry-After``, its details logged here and never sent to the client.
    """
    if isinstance(error, RayTaskError):
        error = error.cause
    if isinstance(error, EaselError):
        return error
    if isinstance(error, BackPressureError):
        return Overloaded("too many requests in flight; retry shortly", retry_after_s=1)
    logger.error("request failed: %s: %s", type(error).__name__, error)
    return NotReady("the service failed to answer this request; retry shortly", retry_after_s=2)


def error_response(error: EaselError) -> JSONResponse:
    """The HTTP response for an Easel error."""
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers())


@api.exception_handler(RequestValidationError)
@api.exception_handler(ValidationError)
async def _invalid_request(_: Request, exc: RequestValidationError | ValidationError) -> JSONResponse:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
    if first["type"] == "json_invalid":
        return error_response(InvalidInput(f"request body is not valid JSON: {first['msg']}", field="body"))
    message = first["msg"].removeprefix("Value error, ")
    return error_response(InvalidInput(f"{field}: {message}", field=field))


async def _easel_error(_: Request, exc: Exception) -> JSONResponse:
    return error_response(as_easel_error(exc))


for _error_type in (EaselError, RayTaskError, BackPressureError, Exception):
    api.add_exception_handler(_error_type, _easel_error)


PIPELINES = {"/v1/images/generations": metrics.TEXT_TO_IMAGE, "/v1/vectorize": metrics.VECTORIZE}
BODY_LIMITS = {"/v1/vectorize": MAX_UPLOAD_BYTES}  # other routes: serve.wire.DEFAULT_BODY_LIMIT

api.add_middleware(BodyLimits, limits=BODY_LIMITS)  # added before the metrics middleware, so 413s are counted


@api.middleware("http")
async def _record_metrics(request: Request, call_next):
    """Count every answer by endpoint and status code, and time it (status 500 if the app raised)."""
    started = time.perf_counter()
    status = 500
    try:
        response = await call_next(request)
        status = response.status_code
        return response
    finally:
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        metrics.count(metrics.HTTP_REQUESTS, endpoint=endpoint, method=request.method, status=status)
        metrics.observe(
            metrics.HTTP_LATENCY,
            time.perf_counter() - started,
            endpoint=endpoint,
            pipeline=PIPELINES.get(endpoint, "none"),
        )


async def _read_vectorize_request(request: Request) -> tuple[bytes, VectorizeOptions]:
    """The upload and options of a vectorize request (the body's size is bounded by :class:`BodyLimits`)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=8)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidInput("file: a multipart request needs a file part named 'file'", field="file")
        fields = {key: value for key, value in form.items() if key != "file"}
        return await upload.read(), VectorizeOptions.model_validate(fields)
    if content_type.startswith("application/json"):
        body = VectorizeJson.model_validate_json(await request.body())
        try:
            return base64.b64decode(body.image, validate=True), body
        except binascii.Error as error:
            raise InvalidInput(f"image: not valid base64 ({error})", field="image") from error
    if content_type.startswith("image/"):
        return await request.body(), VectorizeOptions.model_validate(dict(request.query_params))
    raise InvalidInput("Content-Type must be multipart/form-data, application/json or image/*", field="Content-Type")


@serve.deployment(name="Gateway")
@serve.ingress(api)
class Gateway:
    """Validates requests, forwards them to the pipeline deployments and shapes the responses."""

    def __init__(self, text_to_image: DeploymentHandle, vectorizer: DeploymentHandle) -> None:
        self.text_to_image = text_to_image
        self.vectorizer = vectorizer

    @api.get("/healthz")
    async def healthz(self) -> dict:
        """Alive: the HTTP path through Ray Serve works."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> dict:
        """Ready: every Triton model the pipelines need is loaded (503 with Retry-After if not)."""
        states = await self.text_to_image.ready.remote()
        require_ready(states)
        vectorize = await self.vectorizer.ready.remote()
        return {"status": "ready", "models": {**states, **vectorize}}

    @api.post("/v1/images/generations")
    async def generate(self, request: GenerationRequest) -> JSONResponse:
        """OpenAI Images API: generate ``n`` images for a prompt, returned as base64 (svg: text -> image -> SVG)."""
        result = await self.text_to_image.generate.remote(request, sent_at=time.time())
        if request.output_format == "svg":
            data = await self._vectorize_all(result.images, request.vectorize_tier or Tier.AUTO)
        else:
            data = [{"b64_json": base64.b64encode(image).decode()} for image in result.images]
        body = {"created": int(time.time()), "seed": result.seed, "data": data}
        headers = {"Easel-Seed": str(result.seed)}
        if result.prompt_tokens_dropped:
            headers["Easel-Prompt-Truncated"] = str(result.prompt_tokens_dropped)
        return JSONResponse(body, headers=headers)

    async def _vectorize_all(self, pngs: list[bytes], tier: Tier) -> list[dict]:
        """Each generated PNG through the Vectorizer: the SVG in ``b64_json``, with its tier and rendered-back SSIM."""
        options = VectorizeOptions(tier=tier, validate=True)
        results = await asyncio.gather(
            *(self.vectorizer.vectorize.remote(png, options, sent_at=time.time()) for png in pngs)
        )
        return [
            {"b64_json": base64.b64encode(r.svg.encode()).decode(), "tier": r.tier, "ssim": r.ssim} for r in results
        ]

    @api.post("/v1/vectorize")
    async def vectorize(self, request: Request) -> Response:
        """Raster logo/icon -> SVG. Multipart (``file``), JSON (base64 ``image``) or a raw ``image/*`` body."""
        upload, options = await _read_vectorize_request(request)
        result = await self.vectorizer.vectorize.remote(upload, options, sent_at=time.time())
        headers = {"Easel-Tier": result.tier}
        if result.fallback:  # a short label: free text (error messages) never goes into a header
            headers["Easel-Fallback"] = result.why
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse(result.to_json(), headers=headers)
        return Response(result.svg, media_type="image/svg+xml", headers=headers)


class AppArgs(BaseModel):
    """Arguments of the Easel Serve application (``args:`` in the Serve config)."""

    engine_dir: str = Field(description="Engine folder from `easel build` (tokenizer, scheduler, pipeline.json).")
    triton_grpc_url: str = Field(description="host:port of Triton's gRPC endpoint.")
    memory_budget_bytes: int = Field(
        default_factory=default_memory_budget, gt=0, description="Memory budget of the text-to-image engines."
    )
    max_cost: float = Field(DEFAULT_MAX_COST, gt=0, description="Largest n x steps x megapixels served.")


def build_app(args: AppArgs) -> serve.Application:
    """Typed Serve application builder: ``import_path: serve.app:build_app``."""
    limits = Limits(args.memory_budget_bytes, args.max_cost, 2 * args.max_cost)
    return Gateway.bind(
        TextToImage.bind(args.engine_dir, args.triton_grpc_url, limits), Vectorizer.bind(args.triton_grpc_url)
    )
