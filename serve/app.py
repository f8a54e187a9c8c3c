"""The public HTTP API: a FastAPI ingress deployment in front of the pipeline deployments, and the app builder.

No ``from __future__ import annotations`` here: Ray Serve reads the builder's ``AppArgs`` annotation at run time.
``@serve.ingress`` pickles the FastAPI app when the class is decorated: helpers must be defined above it.
"""

import asyncio
import base64
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import Field, ValidationError
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from redis.exceptions import RedisError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve import contract, grpc_api, metrics
from serve.access import (
    BODY,
    KeyCheck,
    call_admitted,
    caller,
    job_owner,
    may_see,
    open_access,
    owner_filter,
    request_body,
)
from serve.access.keys import ApiKey
from serve.adapters.requests import StackAdapters
from serve.cache import DEFAULT_CACHE_BYTES, cache_key, open_cache
from serve.errors import Conflict, EaselError, InvalidInput, NotReady, Overloaded, RouteError, invalid_input
from serve.experiments import open_experiment_store
from serve.experiments.feedback import FeedbackRequest, new_image_id
from serve.experiments.policy import NAME_PATTERN, ExperimentSpec
from serve.experiments.traffic import NO_EXPERIMENT, Assignment, Experiments
from serve.grpc_api import easel_pb2
from serve.jobs import open_job_store
from serve.jobs.model import FINAL_EVENTS, Job, JobStatus, Owner, check_idempotency_key
from serve.jobs.runner import JobCanceled, JobLease, JobRunner
from serve.jobs.store import LeaseLost
from serve.routes import BODY_LIMITS, PIPELINES, allowed_methods, rpc_route
from serve.settings import AppSettings
from serve.stores import default_url
from serve.text_to_image.deployment import EncodedImages, Progress, TextToImage, draw_seed, require_ready
from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.images import decode_images
from serve.text_to_image.models import ModelFolder, NewModel, ServedModel, ServedModels
from serve.text_to_image.residency import ModelResidency
from serve.text_to_image.schema import GenerationRequest
from serve.vectorize.deployment import Vectorizer, VectorizeResult
from serve.vectorize.schema import Tier, VectorizeJson, VectorizeOptions
from serve.wire import BodyLimits, read_json

logger = logging.getLogger(__name__)


DOCS_ASSETS = "/docs-assets"
"""Where Swagger UI's files are served from (fastapi-offline's copies: /docs loads nothing from outside)."""


class BodyReadOnce(APIRoute):
    """A route that answers the refusal of the body the key check read (:func:`serve.access.request_body`).

    The refusal is given before the handler, and the dependency that finds its Serve replica, runs.
    """

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        """The route's handler, behind its body's refusal."""
        handler = super().get_route_handler()

        async def refused_first(request: Request) -> Response:
            if BODY in request.scope.get("state", {}):
                request_body(request)  # raises the refusal, if the body was refused
            return await handler(request)

        return refused_first


class EaselAPI(FastAPI):
    """FastAPI whose OpenAPI document is the behaviour (:mod:`serve.contract`), with a self-contained /docs page."""

    def __init__(self, **kwargs) -> None:
        super().__init__(docs_url=None, redoc_url=None, **kwargs)
        self.router.route_class = BodyReadOnce
        self.mount(DOCS_ASSETS, StaticFiles(directory=files("fastapi_offline") / "static"), name="docs-assets")
        self.add_api_route("/docs", self.docs_page, include_in_schema=False)

    async def docs_page(self) -> HTMLResponse:
        """Swagger UI over this API's document."""
        return get_swagger_ui_html(
            openapi_url=self.openapi_url,
            title=f"{self.title} API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        )

    def openapi(self) -> dict:
        """The document, made once."""
        if self.openapi_schema is None:
            self.openapi_schema = contract.openapi(super().openapi())
        return self.openapi_schema


api = EaselAPI(title="Easel", description="Text-to-image and vectorize serving on Triton and Ray Serve.")


def as_easel_error(error: BaseException) -> EaselError:
    """The :class:`EaselError` behind ``error`` (unwrapping Ray's task errors).

    Anything that is not an Easel error is not the client's fault (a replica died, a backend broke): it becomes a
    503 with ``Retry-After``, its details logged here and never sent to the client.
    """
    error = unwrap(error)
    if isinstance(error, EaselError):
        return error
    if isinstance(error, BackPressureError):
        return Overloaded("too many requests in flight; retry shortly", retry_after_s=1)
    logger.error("request failed: %s: %s", type(error).__name__, error)
    return NotReady("the service failed to answer this request; retry shortly", retry_after_s=2)


def unwrap(error: BaseException) -> BaseException:
    """The exception a deployment raised, from the Ray error that carries it."""
    return error.cause if isinstance(error, RayTaskError) and error.cause is not None else error


def error_response(error: EaselError) -> JSONResponse:
    """The HTTP response for an Easel error."""
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers())


@api.exception_handler(RequestValidationError)
@api.exception_handler(ValidationError)
async def _invalid_request(_: Request, exc: RequestValidationError | ValidationError) -> JSONResponse:
    return error_response(invalid_input(exc))


@api.exception_handler(StarletteHTTPException)
async def _route_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """The framework's own refusals in the one error shape (its headers kept; 405's ``Allow`` lists every method).

    Starlette's ``Allow`` names the methods of the first route whose path matched; a path several routes share
    (``/v1/experiments/{name}``: GET, PUT, DELETE) has them all.
    """
    if exc.status_code == 400 and "parsing the body" in str(exc.detail):
        error = RouteError("body: not readable (invalid UTF-8, nested too deeply, or malformed)", 400, "body")
    elif exc.status_code == 404:
        error = RouteError("no such route", 404)
    elif exc.status_code == 405:
        error = RouteError("this route does not take that method", 405)
    else:
        error = RouteError(str(exc.detail), exc.status_code)
    response = error_response(error)
    response.headers.update(exc.headers or {})
    if exc.status_code == 405 and (methods := allowed_methods(request.url.path)):
        response.headers["Allow"] = ", ".join(methods)
    return response


async def _easel_error(_: Request, exc: Exception) -> JSONResponse:
    return error_response(as_easel_error(exc))


for _error_type in (EaselError, RayTaskError, BackPressureError, Exception):
    api.add_exception_handler(_error_type, _easel_error)


api.add_middleware(KeyCheck)  # inside BodyLimits: a generation's body is bounded before it is read (once, there)
# The proxy applies the same limits first where it loads serve.wire (the stack's Ray); these hold on any proxy, and,
# added before the metrics middleware, their 413s are counted.
api.add_middleware(BodyLimits, limits=BODY_LIMITS)


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
        try:
            form = await request.form(max_files=1, max_fields=8)
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
            return base64.b64decode(body.image, validate=True), body
        except ValueError as error:  # binascii.Error, or characters outside ASCII
            raise InvalidInput(f"image: not valid base64 ({error})", field="image") from error
    if content_type.startswith("image/"):
        return await request.body(), VectorizeOptions.model_validate(dict(request.query_params))
    raise InvalidInput("Content-Type must be multipart/form-data, application/json or image/*", field="Content-Type")


SSE_POLL_S = 0.25
SSE_KEEPALIVE_S = 15.0
MAX_PAGE = 100


def _sse(event: str, data: dict, seq: int | None = None) -> bytes:
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode()


OnStep = Callable[[Progress], Awaitable[None]]
"""What a job's generation hands each step to (it writes the step to the store)."""


class GenerationHeaders:
    """The headers both generation routes read (as FastAPI's dependency): ``Idempotency-Key``, ``Cache-Control``."""

    def __init__(
        self,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
        cache_control: Annotated[str | None, Header(alias="Cache-Control")] = None,
    ) -> None:
        self.idempotency_key = idempotency_key
        self.fresh = "no-cache" in (cache_control or "").lower()  # generate afresh, whatever the result cache holds


@asynccontextmanager
async def _variant_measured(assignment: Assignment) -> AsyncIterator[None]:
    """Count a generation by the model that serves it and the experiment that chose it, and time it."""
    labels = {"experiment": assignment.label, "variant": assignment.model}
    started = time.perf_counter()
    try:
        yield
    except Exception:
        metrics.count(metrics.VARIANT_REQUESTS, outcome="error", **labels)
        raise
    metrics.count(metrics.VARIANT_REQUESTS, outcome="ok", **labels)
    metrics.observe(metrics.VARIANT_LATENCY, time.perf_counter() - started, **labels)


def _body_hash(request: GenerationRequest) -> str:
    return hashlib.sha256(request.model_dump_json().encode()).hexdigest()


@serve.deployment(name="Gateway")
@serve.ingress(api)
class Gateway:
    """Validates requests, forwards them to the pipeline deployments and shapes the responses; runs background jobs.

    Every generation, synchronous or a job's, goes through :meth:`_answer` (the result cache, TextToImage, the
    Vectorizer for SVG). Each replica runs a :class:`JobRunner` over the shared job store.
    """

    def __init__(
        self,
        text_to_image: DeploymentHandle,
        vectorizer: DeploymentHandle,
        residency: DeploymentHandle,
        models: ServedModels,
        store_url: str | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        experiments: dict[str, ExperimentSpec] | None = None,
    ) -> None:
        self.text_to_image = text_to_image
        self.vectorizer = vectorizer
        self.residency = residency
        self._models = models
        store_url = store_url or default_url()
        self.store = open_job_store(store_url)
        open_access(store_url, models.default.native_size)
        self.cache = open_cache(store_url, cache_bytes) if cache_bytes > 0 else None
        self.experiments = Experiments(open_experiment_store(store_url), self._served_models)
        for name, spec in (experiments or {}).items():  # declared at start-up (easel up --experiment): seeds them
            if not self.experiments.exists(name):  # one the store holds (the API may have edited it) stays as it is
                self.experiments.define(name, spec)
        self.runner = JobRunner(self.store, self._run_job).start()

    @property
    def models(self) -> ServedModels:
        """The models served now (the table read again when the residency has changed it)."""
        self._models = self._models.refreshed()
        return self._models

    def _model(self, request: GenerationRequest) -> ServedModel:
        """The served model ``request`` asks for (the one door: an unknown name is a 400 naming ``model``)."""
        return self.models.resolve(request.model)

    def _pipeline(self, model: ServedModel) -> DeploymentHandle:
        """The ``TextToImage`` handle that routes to the replicas serving ``model``'s version."""
        return self.text_to_image.options(multiplexed_model_id=model.version_id)

    def _served_models(self) -> frozenset[str]:
        """The names a request's ``model`` may give (an experiment's variants are among them)."""
        return frozenset(self.models)

    async def _assignment(self, request: GenerationRequest) -> tuple[GenerationRequest, Assignment]:
        """The request as its model serves it (an experiment's alias resolved to a variant), and what serves it.

        In front of :meth:`_model`: a name that is neither a served model nor an experiment is its 400.
        """
        chosen = None
        if request.model and request.model not in self.models:
            chosen = await asyncio.to_thread(self.experiments.assign, request.model, request.user)
        if chosen is None:
            return request, Assignment(self._model(request).name)
        return request.model_copy(update={"model": chosen.model}), chosen

    @asynccontextmanager
    async def _loaded_for(
        self, model: ServedModel, request: GenerationRequest
    ) -> AsyncIterator[tuple[ServedModel, dict]]:
        """``model`` loaded in Triton, and kept loaded, while the block runs; yields its version and the headers.

        The version is the one the residency counted the request on: it finishes on it, whatever replaces it
        meanwhile. A cold model's request waits for its load (``Easel-Model-Load-Seconds``).
        """
        version_id, waited = await self.residency.begin.remote(model.name)
        try:
            served = self.models.version(version_id)
            if served.version_id != model.version_id:  # replaced since it was checked: checked again, by the new one
                served.check(request)
            loading = {"Easel-Model-Load-Seconds": f"{waited:.3f}"} if waited else {}
            yield served, {"Easel-Model": model.name, "Easel-Model-Version": str(served.version)} | loading
        finally:
            try:
                await self.residency.end.remote(version_id)
            except Exception as error:  # noqa: BLE001 - bookkeeping: a generation that ended is not lost for it
                logger.warning("model %s: its request's end not counted: %s", version_id, error)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        """Alive: the HTTP path through Ray Serve works."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> dict:
        """Ready: every Triton model of the loaded models and the Vectorizer is ready (503 with Retry-After if not)."""
        states = await self.text_to_image.ready.remote(await self._loaded_triton_models())
        require_ready(states)
        vectorize = await self.vectorizer.ready.remote()
        return {"status": "ready", "models": {**states, **vectorize}}

    @api.post("/v1/images/generations")
    async def generate(self, http: Request, headers: Annotated[GenerationHeaders, Depends()]) -> JSONResponse:
        """OpenAI Images API: generate ``n`` images for a prompt, returned as base64 (svg: text -> image -> SVG).

        With ``background``: 202 and the job at once (an ``Idempotency-Key`` returns the same job for the same body).
        ``Cache-Control: no-cache`` generates afresh even when the result cache holds the answer. Input images
        (``image``, ``mask``: img2img, inpainting) and ``controlnets`` travel base64 in the JSON. The body (a
        :class:`GenerationRequest`) is the one the key check read and priced.
        """
        return await self._generation(http, request_body(http), headers)

    @api.post("/v1/images/edits")
    async def edit(self, http: Request, headers: Annotated[GenerationHeaders, Depends()]) -> JSONResponse:
        """OpenAI Images API's edits: multipart ``image`` (one or several) and ``mask`` files, the generation's fields.

        The mask's transparent pixels are redrawn; no mask: img2img. The answer is the generation's. The form is read,
        and priced, by the key check, as a JSON body is.
        """
        return await self._generation(http, request_body(http), headers)

    async def _generation(self, http: Request, request: GenerationRequest, headers: GenerationHeaders) -> JSONResponse:
        """A generation, whichever route it came by: a job (background) or the answer."""
        asked = request
        request, assignment = await self._assignment(request)  # an experiment's alias: its variant from here on
        model = self._model(request)
        model.check(request)  # an unknown adapter is a 400 now, not a failed job later
        owner = job_owner(caller(http))
        if request.background:
            await asyncio.to_thread(decode_images, request, model.native_size)  # so is an image that does not decode
            key = check_idempotency_key(headers.idempotency_key)
            # the body as sent, not as assigned: a replay is the same job whichever variant a draw would pick now
            idempotency = (f"{owner.key_id}/{key}" if owner else key, _body_hash(asked)) if key else None
            return await self._submit(request, assignment, idempotency, owner)
        body, answer_headers = await self._served_answer(request, assignment, owner and owner.key_id, headers.fresh)
        return JSONResponse(body, headers=answer_headers)

    async def _submit(
        self,
        request: GenerationRequest,
        assignment: Assignment,
        idempotency: tuple[str, str] | None,
        owner: Owner | None,
    ) -> JSONResponse:
        """Queue ``request`` as ``owner``'s job (its seed drawn now, so a re-run draws the same image).

        ``idempotency``: (the key, owner's own, and the body's hash). An experiment's variant is chosen at submission
        (the job's request names it) and recorded under the job's id, so feedback can name the job.
        """
        stored = request.model_dump(mode="json") | {"seed": draw_seed(request.seed)}
        job, created = await asyncio.to_thread(self.store.submit, stored, request.priority, idempotency, owner)
        if created:
            await asyncio.to_thread(self.experiments.record, [job.id], assignment, owner and owner.key_id)
        self.runner.wake()
        headers = {"Location": f"/v1/jobs/{job.id}"} | ({} if created else {"Idempotent-Replayed": "true"})
        return JSONResponse(job.to_api(), status_code=202, headers=headers | assignment.headers())

    async def _served_answer(
        self,
        request: GenerationRequest,
        assignment: Assignment,
        owner: str | None,
        fresh: bool = False,
        on_step: OnStep | None = None,
    ) -> tuple[dict, dict]:
        """:meth:`_answer`, each image given an id (recorded with what served it), the model and experiment named.

        Per-variant requests and latency are counted here, whichever door the generation came by.
        """
        async with _variant_measured(assignment):
            body, headers = await self._answer(request, fresh, on_step)
        ids = await self._image_ids(len(body["data"]), assignment, owner)
        body["data"] = [{"id": image_id, **item} for image_id, item in zip(ids, body["data"], strict=True)]
        return body | assignment.to_api(), headers | assignment.headers()

    async def _image_ids(self, count: int, assignment: Assignment, owner: str | None) -> list[str]:
        """Ids for ``count`` images, recorded with what served them (so feedback can name each)."""
        ids = [new_image_id() for _ in range(count)]
        await asyncio.to_thread(self.experiments.record, ids, assignment, owner)
        return ids

    async def _answer(
        self, request: GenerationRequest, fresh: bool = False, on_step: OnStep | None = None
    ) -> tuple[dict, dict]:
        """The body and headers of a generation: from the cache (unless ``fresh``), or generated (and cached).

        ``on_step``: the generation is streamed and each step's :class:`Progress` handed to it; what it raises stops
        reading, which cancels the generation.
        """
        model = self._model(request)
        engine = f"{model.key}|{model.adapters.cache_tag(request)}"  # the adapters' files shape the images too
        key = cache_key(engine, request.images_hashed()) if self.cache is not None else None
        if key is not None and not fresh:
            cached = await self._cache(self.cache.get, key)
            metrics.count(metrics.CACHE_REQUESTS, result="hit" if cached else "miss")
            if cached is not None:
                body = json.loads(cached) | {"created": int(time.time())}
                return body, {"Easel-Seed": str(body["seed"]), "Easel-Cache": "hit"}
        async with self._loaded_for(model, request) as (served, model_headers):
            if on_step is None:
                result = await self._pipeline(served).generate.remote(request, sent_at=time.time())
            else:
                result = await self._generate_reporting(served, request, on_step)
        if request.output_format == "svg":
            vectorized = await self._vectorize_all(result.images, request.vectorize_tier or Tier.AUTO)
            data = [
                {"b64_json": base64.b64encode(r.svg.encode()).decode(), "tier": r.tier, "ssim": r.ssim}
                for r in vectorized
            ]
        else:
            data = [{"b64_json": base64.b64encode(image).decode()} for image in result.images]
        body = {"created": int(time.time()), "seed": result.seed, "data": data}
        headers = {"Easel-Seed": str(result.seed)} | model_headers
        if result.prompt_tokens_dropped:
            headers["Easel-Prompt-Truncated"] = str(result.prompt_tokens_dropped)
        if result.steps_skipped is not None:
            headers["Easel-Steps-Skipped"] = str(result.steps_skipped)
        if key is not None:
            await self._cache(self.cache.put, key, json.dumps(body).encode())
            headers["Easel-Cache"] = "miss"
        return body, headers

    @staticmethod
    async def _cache(call: Callable, *args):
        """A result-cache call in a worker thread; one the store fails (its disk full, Redis restarting) is a miss.

        The generation is answered without the cache, never refused for it.
        """
        try:
            return await asyncio.to_thread(call, *args)
        except (sqlite3.Error, RedisError) as error:
            logger.warning("result cache skipped: %s", error)
            return None

    async def _generate_reporting(
        self, model: ServedModel, request: GenerationRequest, on_step: OnStep
    ) -> EncodedImages:
        """The generation as a stream with previews: each step to ``on_step``, then the images."""
        stream = (
            self._pipeline(model)
            .options(stream=True)
            .generate_stream.remote(request, sent_at=time.time(), previews=True)
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

    async def _run_job(self, job: Job, lease: JobLease) -> dict:
        """The job runner's work: the job's request answered as a synchronous one, each step written to the store.

        Only the Gateway writes the job store: a step's progress (and preview) as it streams in; a cancel asked
        meanwhile, or the lease lost, stops reading the stream, which stops the generation.
        """
        try:
            request = GenerationRequest.model_validate(job.request)
        except ValidationError as error:  # a stored request this version refuses: the job's fault, not retried
            raise invalid_input(error) from None

        async def report(progress: Progress) -> None:
            args = (lease.job_id, lease.worker, lease.lease_s, progress.step, progress.total, progress.preview)
            if await asyncio.to_thread(self.store.progress, *args):
                raise JobCanceled(lease.job_id)

        chosen = await asyncio.to_thread(self.experiments.served_by, job.id)  # at submission
        assignment = chosen or Assignment(self._model(request).name)
        try:
            body, _ = await self._served_answer(request, assignment, job.owner, on_step=report)
        except Exception as error:
            cause = unwrap(error)
            if isinstance(cause, JobCanceled | LeaseLost):
                raise cause from None
            raise as_easel_error(error) from None
        return body

    async def _visible_job(self, http: Request, job_id: str) -> Job:
        """The job, if the caller's key may see it; another key's job is as unknown as a missing one (404)."""
        job = await asyncio.to_thread(self.store.require, job_id)
        if not may_see(caller(http), job.owner):
            raise self.store.missing(job_id)
        return job

    @api.get("/v1/loras")
    async def loras(self) -> dict:
        """The LoRA adapters of this stack (``easel up --loras DIR``): each ready, or listed with why it cannot be."""
        return {"object": "list", "data": self.models.default.adapters.listing()}

    @api.get("/v1/controlnets")
    async def controlnets_listed(self) -> dict:
        """The ControlNets of this stack (``easel up --controlnet NAME=DIR``): each ready, or listed with why not."""
        return {"object": "list", "data": self.models.default.folder.controlnets.listing()}

    @api.get("/v1/models")
    async def models_listed(self) -> dict:
        """OpenAI's model list: every model this stack serves (the default first), with its family and what it takes."""
        loaded = await self._loaded()
        return {"object": "list", "data": [model.public(loaded[name]) for name, model in self.models.items()]}

    @api.get("/v1/models/{model_id}")
    async def model(self, model_id: str) -> dict:
        """One served model, as the list gives it (404 if this stack serves none of that name)."""
        model = self.models.require(model_id)
        return model.public((await self._loaded())[model_id])

    @api.post("/v1/models")
    async def model_added(self, body: NewModel) -> dict:
        """Serve a built engine folder as a new model (admin): installed in Triton and loaded if it fits the room.

        A name served already or an experiment's is a 409; a folder Triton cannot load a 400 naming ``engine_dir``,
        and nothing changes. ``easel models add NAME=DIR`` builds the folder and calls this.
        """
        if await asyncio.to_thread(self.experiments.exists, body.name):
            raise Conflict(f"name: an experiment is named {body.name!r}; a model may not shadow it", "name")
        return await self.residency.add.remote(body.name, body.engine_dir)

    @api.put("/v1/models/{model_id}")
    async def model_replaced(self, model_id: str, body: ModelFolder) -> dict:
        """Serve a built engine folder as the model's next version (admin; 404 if none is served under that name).

        Requests from here on get the new version; those in flight finish on the old one, which is then unloaded.
        """
        return await self.residency.replace.remote(model_id, body.engine_dir)

    @api.delete("/v1/models/{model_id}")
    async def model_removed(self, model_id: str) -> dict:
        """Stop serving a model (admin): its requests in flight finish; its jobs not started fail naming ``model``.

        404 if none is served under that name; 409 for the default model or one an experiment has as a variant.
        """
        experiments = await asyncio.to_thread(self.experiments.using, model_id)
        if experiments:
            named = ", ".join(experiments)
            raise Conflict(f"model_id: {model_id!r} is a variant of {named}: redefine or delete it first", "model_id")
        return await self.residency.remove.remote(model_id)

    async def _loaded(self) -> dict[str, bool]:
        """Whether each model is loaded (its engines all ready in Triton)."""
        states = await self.text_to_image.ready.remote(await self._loaded_triton_models())
        return {name: all(states.get(t, False) for t in model.triton_names()) for name, model in self.models.items()}

    async def _loaded_triton_models(self) -> list[str]:
        """The Triton models of the versions loaded now (old versions still finishing their requests included)."""
        loaded = set(await self.residency.loaded.remote())
        return [name for model in self.models.versions() if model.version_id in loaded for name in model.triton_names()]

    @api.post("/v1/feedback")
    async def feedback(self, http: Request, body: FeedbackRequest) -> dict:
        """A reward (0 to 1) or a 1-5 rating for a generated image (its ``id``) or a background job (its id).

        It goes to the posterior of the variant that served it, if an experiment chose it; each id counts once (409
        after). An id the caller's key did not generate is as unknown as one never made (400 naming the field).
        """
        return await self._rated(body, caller(http))

    async def _rated(self, feedback: FeedbackRequest, key: ApiKey | None) -> dict:
        """Feedback taken for ``key`` (it may rate what it generated), and its reward in the per-variant metric."""
        answer = await asyncio.to_thread(self.experiments.rate, feedback, lambda owner: may_see(key, owner))
        labels = {"experiment": answer["experiment"] or NO_EXPERIMENT, "variant": answer["model"]}
        metrics.observe(metrics.VARIANT_REWARD, answer["reward"], **labels)
        return answer

    @api.get("/v1/experiments")
    async def experiments_listed(self) -> dict:
        """Every experiment: its policy, its variants and each variant's posterior (admin)."""
        return {"object": "list", "data": await asyncio.to_thread(self.experiments.listing)}

    @api.get("/v1/experiments/{name}")
    async def experiment(self, name: str) -> dict:
        """One experiment with its variants' posteriors (admin; 404 if there is none)."""
        return await asyncio.to_thread(self.experiments.describe, name)

    @api.put("/v1/experiments/{name}")
    async def experiment_defined(self, name: Annotated[str, Path(pattern=NAME_PATTERN)], spec: ExperimentSpec) -> dict:
        """Create or replace experiment ``name``, a model alias (admin): its variants must be served models.

        Replacing keeps the posteriors of the variants it keeps.
        """
        return await asyncio.to_thread(self.experiments.define, name, spec)

    @api.delete("/v1/experiments/{name}")
    async def experiment_deleted(self, name: str) -> dict:
        """Remove experiment ``name`` and its posteriors (admin; 404 if there is none)."""
        return await asyncio.to_thread(self.experiments.delete, name)

    @api.get("/v1/jobs/{job_id}")
    async def job(self, http: Request, job_id: str) -> dict:
        """A background job: status, progress, timestamps, priority; the images once succeeded, the error if failed."""
        return (await self._visible_job(http, job_id)).to_api()

    @api.get("/v1/jobs")
    async def jobs(
        self,
        http: Request,
        status: JobStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
        after: str | None = None,
    ) -> dict:
        """A page of the caller's jobs (every job for an admin key), newest first (``after``: the previous last id)."""
        page = await asyncio.to_thread(self.store.list, status, limit + 1, after, owner_filter(caller(http)))
        data = [job.to_api() for job in page[:limit]]
        return {
            "object": "list",
            "data": data,
            "has_more": len(page) > limit,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }

    @api.post("/v1/jobs/{job_id}/cancel")
    async def cancel(self, http: Request, job_id: str) -> dict:
        """Cancel a job: a queued one never runs; a running one stops at its next denoising step (409 if over)."""
        before = await self._visible_job(http, job_id)
        job = await asyncio.to_thread(self.store.cancel, job_id)
        metrics.count(metrics.JOB_CANCELS, state=before.status.value)
        return job.to_api()

    @api.get("/v1/jobs/{job_id}/events")
    async def events(self, http: Request, job_id: str, preview: bool = False) -> StreamingResponse:
        """Server-Sent Events: the job's state first, then one ``progress`` per step, then its final event."""
        job = await self._visible_job(http, job_id)
        return StreamingResponse(
            self._event_stream(job, preview),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _event_stream(self, job: Job, preview: bool):
        """The state as read, then every event after it (``job.seq``: the last event that state includes)."""
        yield _sse("state", job.to_api())
        after, quiet_since = (job.seq - 1 if job.status.final else job.seq), time.monotonic()
        while True:
            for event in await asyncio.to_thread(self.store.events, job.id, after):
                after, quiet_since = event.seq, time.monotonic()
                data = event.data if preview else {k: v for k, v in event.data.items() if k != "preview"}
                yield _sse(event.type.value, data, event.seq)
                if event.type in FINAL_EVENTS.values():
                    return
            if time.monotonic() - quiet_since > SSE_KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield b": keep-alive\n\n"
            await asyncio.sleep(SSE_POLL_S)

    async def _vectorize_all(self, pngs: list[bytes], tier: Tier) -> list[VectorizeResult]:
        """Each generated PNG through the Vectorizer (its SVG checked: rendered back, SSIM measured)."""
        options = VectorizeOptions(tier=tier, validate=True)
        return await asyncio.gather(
            *(self.vectorizer.vectorize.remote(png, options, sent_at=time.time()) for png in pngs)
        )

    async def Generate(self, message: easel_pb2.GenerateRequest, grpc_context):  # noqa: N802 - the RPC's name
        """The gRPC ``easel.v1.Easel/Generate``: one ``progress`` event per denoising step, then the images.

        The request, its limits, its key check and its errors are the HTTP route's; the result cache is not used
        (a cached answer has no steps to report).
        """
        try:
            request = grpc_api.generation_request(message)
            async with call_admitted(grpc_context, rpc_route("Generate").path, request) as key:
                request, assignment = await self._assignment(request)  # an experiment's alias: its variant
                model = self._model(request)
                model.check(request)
                async with self._loaded_for(model, request) as (served, _), _variant_measured(assignment):
                    stream = self._pipeline(served).options(stream=True).generate_stream
                    async for item in stream.remote(request, sent_at=time.time()):
                        if isinstance(item, Progress):
                            yield grpc_api.progress(item.step, item.total)
                            continue
                        if request.output_format == "svg":
                            tier = request.vectorize_tier or Tier.AUTO
                            images = [grpc_api.svg_image(r) for r in await self._vectorize_all(item.images, tier)]
                        else:
                            images = [easel_pb2.Image(data=image) for image in item.images]
                        ids = await self._image_ids(len(images), assignment, key and key.id)
                        for image, image_id in zip(images, ids, strict=True):
                            image.id = image_id
                        yield grpc_api.result(
                            item.seed, images, assignment.model, assignment.experiment, item.steps_skipped
                        )
        except Exception as error:  # every failure ends the stream with its status code
            grpc_api.fail(grpc_context, as_easel_error(error))

    async def Feedback(self, message: easel_pb2.FeedbackRequest, grpc_context) -> easel_pb2.FeedbackReply:  # noqa: N802
        """The gRPC ``easel.v1.Easel/Feedback``: the HTTP route's (``POST /v1/feedback``)."""
        try:
            feedback = grpc_api.feedback_request(message)
            async with call_admitted(grpc_context, rpc_route("Feedback").path) as key:
                return grpc_api.feedback_reply(await self._rated(feedback, key))
        except Exception as error:
            grpc_api.fail(grpc_context, as_easel_error(error))

    async def Vectorize(self, message: easel_pb2.VectorizeRequest, grpc_context) -> easel_pb2.VectorizeReply:  # noqa: N802
        """The gRPC ``easel.v1.Easel/Vectorize``: the HTTP route's answer (uploads up to gRPC's 4 MiB message size)."""
        try:
            options = grpc_api.vectorize_options(message)
            async with call_admitted(grpc_context, rpc_route("Vectorize").path):
                result = await self.vectorizer.vectorize.remote(message.image, options, sent_at=time.time())
            return grpc_api.vectorize_reply(result)
        except Exception as error:
            grpc_api.fail(grpc_context, as_easel_error(error))

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


class AppArgs(AppSettings):
    """Arguments of the Easel Serve application (``args:`` in the Serve config); its budgets and store: the base's."""

    models: dict[str, str] = Field(
        min_length=1,
        description="The models served: NAME -> engine folder from `easel build` (tokenizer, scheduler, "
        "pipeline.json), installed in Triton's repository under the names `easel up` gives them; the first is the "
        "default (its engines keep their bare names, e.g. `unet`; another's are `NAME.unet`).",
    )
    triton_grpc_url: str = Field(
        description="host:port of Triton's gRPC endpoint, or `this-node`: each replica's own node's Triton (a cluster)."
    )
    loras_dir: str | None = Field(
        None, description="The LoRA registry folder `easel up --loras` wrote (registry.json); None: no LoRAs."
    )
    triton_http_url: str | None = Field(
        None,
        description="Triton's HTTP endpoint, for loading and unloading models (its control key in the workers' "
        "environment); None: every model stays loaded.",
    )
    parked_path: str | None = Field(
        None, description="The file naming the Triton models not loaded now, which Triton's supervisor reads."
    )
    model_table_path: str | None = Field(
        None,
        description="The file naming the models served now (`models.json`), which models added, replaced or removed "
        "while the stack runs change; None: `models`, unchangeable.",
    )
    repository: str | None = Field(
        None, description="Triton's model repository, where a model added or replaced while the stack runs goes."
    )


def build_app(args: AppArgs) -> serve.Application:
    """Typed Serve application builder: ``import_path: serve.app:build_app``."""
    default = EngineFolder(next(iter(args.models.values())))
    adapters = StackAdapters(args.loras_dir, default.adapters.ip_adapter is not None)
    models = ServedModels.open(
        args.models, adapters, args.memory_budget_bytes, args.max_cost, args.model_weights_bytes, args.model_table_path
    )
    residency = ModelResidency.bind(models, args.pin, args.triton_http_url, args.parked_path, args.repository)
    return Gateway.bind(
        TextToImage.bind(models, args.triton_grpc_url, args.defaults, args.store),
        Vectorizer.bind(args.triton_grpc_url),
        residency,
        models,
        args.store,
        args.cache_bytes,
        args.experiments,
    )
