"""The public HTTP API: a FastAPI ingress deployment in front of the pipeline deployments, and the app builder.

Every route hands its call to one of the Gateway's plain serving classes (:mod:`serve.serving`), and so does every
gRPC method; the image routes are :mod:`serve.http.results`', the LoRA and stored-reference routes
:mod:`serve.http.adapters`', the feedback and experiment
routes :mod:`serve.http.experiments`', the vectorize routes :mod:`serve.http.vectorize`', the moderations route
:mod:`serve.http.moderation`' (each included in its place). No
``from __future__ import annotations`` here: Ray Serve reads the builder's ``AppArgs`` annotation at run time.
"""

import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from importlib.resources import files
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve import contract, grpc_api, metrics
from serve.access import BODY, KeyCheck, call_admitted, caller, job_owner, open_access, request_body, request_priced
from serve.adapters.requests import StackAdapters
from serve.cache import DEFAULT_CACHE_BYTES, open_cache
from serve.errors import EaselError, RouteError, invalid_input
from serve.experiments import open_experiment_store
from serve.experiments.policy import ExperimentSpec
from serve.experiments.traffic import Experiments
from serve.finishing.upscalers import Upscalers
from serve.grpc_api import easel_pb2
from serve.http import adapters as adapter_routes
from serve.http import experiments as experiment_routes
from serve.http import moderation as moderation_routes
from serve.http import results as result_routes
from serve.http import vectorize as vectorize_routes
from serve.http.videos import ROUTES as VIDEO_ROUTES
from serve.http.videos import VideoCalls
from serve.jobs import open_job_store
from serve.jobs.model import JobStatus
from serve.moderation.images import ImageChecker
from serve.moderation.policy import marked
from serve.moderation.text import Blocklist
from serve.moderation.text_model import TextModerator
from serve.results.settings import ResultSettings
from serve.routes import BODY_LIMITS, PIPELINES, allowed_methods
from serve.serving.adapters import Adapters
from serve.serving.current_models import CurrentModels
from serve.serving.experiments import ExperimentsAndFeedback
from serve.serving.generations import Generations
from serve.serving.health import Health
from serve.serving.jobs import MAX_PAGE, BackgroundJobs
from serve.serving.models import ModelAdmin
from serve.serving.moderation import Moderation
from serve.serving.ray_errors import as_easel_error
from serve.serving.results import Results
from serve.serving.upscale import Upscaling
from serve.serving.vectorize import Vectorizing
from serve.settings import AppArgs
from serve.stores import default_url
from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.models import ModelFolder, NewModel, ServedModels
from serve.vectorize.deployment import Vectorizer
from serve.vectorize.recording import Recording
from serve.vectorize.versions import TableReader
from serve.webhooks import WebhookSettings, sender_of
from serve.wire import BodyLimits

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


class GenerationHeaders:
    """The headers both generation routes read (as FastAPI's dependency): ``Idempotency-Key``, ``Cache-Control``."""

    def __init__(
        self,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
        cache_control: Annotated[str | None, Header(alias="Cache-Control")] = None,
    ) -> None:
        self.idempotency_key = idempotency_key
        self.fresh = "no-cache" in (cache_control or "").lower()  # generate afresh, whatever the result cache holds


def serving(http: Request) -> "Gateway":
    """The Gateway replica that answers ``http``: its plain serving classes (set when the replica starts)."""
    return http.app.state.gateway


# The routes, in the order the OpenAPI document lists them. Each hands its call to one of the Gateway's serving
# classes (serve/serving/); a route's docstring is its description in the document.


@api.get("/healthz")
async def healthz(http: Request) -> dict:
    """Alive: the HTTP path through Ray Serve works."""
    return serving(http).health.alive()


@api.get("/readyz")
async def readyz(http: Request) -> dict:
    """Ready: the loaded models', moderation checks' and Vectorizer's Triton models (503 with Retry-After if not)."""
    return await serving(http).health.ready()


@api.post("/v1/images/generations")
async def generate(http: Request, headers: Annotated[GenerationHeaders, Depends()]) -> JSONResponse:
    """OpenAI Images API: generate ``n`` images for a prompt, returned as base64 (svg: text -> image -> SVG).

    With ``background``: 202 and the job at once (an ``Idempotency-Key`` returns the same job for the same body).
    ``Cache-Control: no-cache`` generates afresh even when the result cache holds the answer. Input images
    (``image``, ``mask``: img2img, inpainting) and ``controlnets`` travel base64 in the JSON. The body (a
    :class:`GenerationRequest`) is the one the key check read and priced.
    """
    return await _generation(http, headers)


@api.post("/v1/images/edits")
async def edit(http: Request, headers: Annotated[GenerationHeaders, Depends()]) -> JSONResponse:
    """OpenAI Images API's edits: multipart ``image`` (one or several) and ``mask`` files, the generation's fields.

    The mask's transparent pixels are redrawn; no mask: img2img. The answer is the generation's. The form is read,
    and priced, by the key check, as a JSON body is.
    """
    return await _generation(http, headers)


async def _generation(http: Request, headers: GenerationHeaders) -> JSONResponse:
    """A generation, whichever route it came by: a job (background) or the answer."""
    gateway, admitted, owner = serving(http), request_priced(http).admitted, job_owner(caller(http))
    if admitted.request.background:
        return await gateway.jobs.submit(admitted, owner, headers.idempotency_key)
    return await gateway.generations.answer(admitted, owner and owner.key_id, headers.fresh)


for _method, _path, _handler in result_routes.ROUTES + adapter_routes.ROUTES:  # /v1/images, /v1/loras, /v1/references
    api.add_api_route(_path, _handler, methods=[_method])


@api.get("/v1/controlnets")
async def controlnets_listed(http: Request) -> dict:
    """The ControlNets of this stack (``easel up --controlnet NAME=DIR``): each ready, or listed with why not."""
    return serving(http).models.controlnets()


@api.get("/v1/models")
async def models_listed(http: Request) -> dict:
    """OpenAI's model list: every model this stack serves (the default first), with its family and what it takes."""
    return await serving(http).models.listing()


@api.get("/v1/models/{model_id}")
async def model(http: Request, model_id: str) -> dict:
    """One served model, as the list gives it (404 if this stack serves none of that name)."""
    return await serving(http).models.describe(model_id)


@api.post("/v1/models")
async def model_added(http: Request, body: NewModel) -> dict:
    """Serve a built engine folder as a new model (admin): installed in Triton and loaded if it fits the room.

    A name served already or an experiment's is a 409; a folder Triton cannot load a 400 naming ``engine_dir``,
    and nothing changes. ``easel models add NAME=DIR`` builds the folder and calls this.
    """
    return await serving(http).models.add(body)


@api.put("/v1/models/{model_id}")
async def model_replaced(http: Request, model_id: str, body: ModelFolder) -> dict:
    """Serve a built engine folder as the model's next version (admin; 404 if none is served under that name).

    Requests from here on get the new version; those in flight finish on the old one, which is then unloaded.
    Its uploaded LoRAs (``loras_dir``: LoRA-ready engines) are prepared again for the new engines.
    """
    replaced = await serving(http).models.replace(model_id, body)
    await serving(http).adapters.loras_refreshed()
    return replaced


@api.delete("/v1/models/{model_id}")
async def model_removed(http: Request, model_id: str) -> dict:
    """Stop serving a model (admin): its requests in flight finish; its jobs not started fail naming ``model``.

    404 if none is served under that name; 409 for the default model or one an experiment has as a variant.
    """
    return await serving(http).models.remove(model_id)


# /v1/moderations, /v1/videos, /v1/feedback, /v1/experiments
for _method, _path, _handler in moderation_routes.ROUTES + VIDEO_ROUTES + experiment_routes.ROUTES:
    api.add_api_route(_path, _handler, methods=[_method])


@api.get("/v1/jobs/{job_id}")
async def job(http: Request, job_id: str) -> dict:
    """A background job: status, progress, timestamps, priority; the images once succeeded, the error if failed."""
    return (await serving(http).jobs.visible(caller(http), job_id)).to_api()


@api.get("/v1/jobs")
async def jobs(
    http: Request,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
    after: str | None = None,
) -> dict:
    """A page of the caller's jobs (every job for an admin key), newest first (``after``: the previous last id)."""
    return await serving(http).jobs.page(caller(http), status, limit, after)


@api.post("/v1/jobs/{job_id}/cancel")
async def cancel(http: Request, job_id: str) -> dict:
    """Cancel a job: a queued one never runs; a running one stops at its next denoising step (409 if over)."""
    return await serving(http).jobs.cancel(caller(http), job_id)


@api.get("/v1/jobs/{job_id}/events")
async def events(http: Request, job_id: str, preview: bool = False) -> StreamingResponse:
    """Server-Sent Events: the job's state first, then one ``progress`` per step, then its final event."""
    return await serving(http).jobs.events(caller(http), job_id, preview)


@api.get("/v1/upscalers")
async def upscalers_listed(http: Request) -> dict:
    """The upscalers of this stack (``easel up --upscaler NAME=FILE``): each ready, or listed with why not."""
    return serving(http).upscaling.listing()


@api.post("/v1/images/upscale")
async def upscale(http: Request) -> dict:
    """Upscale an image with a served upscaler: JSON (base64 ``image``) or multipart (an ``image`` file part).

    Under a moderation policy its image is checked first (under block a flagged one is a 400 naming ``image``).
    """
    gateway, body = serving(http), request_body(http)  # read and priced by the key check
    screening = await gateway.moderation.screened_upload(body.data, caller(http))
    return marked(await gateway.upscaling.upscale(*body), screening)


for _method, _path, _handler in vectorize_routes.ROUTES:  # /v1/vectorize, its analysis and model versions
    api.add_api_route(_path, _handler, methods=[_method])


@serve.deployment(name="Gateway")
@serve.ingress()
class Gateway(VideoCalls):
    """The ingress: builds the serving classes (serve/serving/) and hands them every HTTP route and gRPC method.

    Every generation, synchronous or a job's, is answered by :class:`Generations`; each replica runs a job runner
    over the shared job store (:class:`BackgroundJobs`). The HTTP routes above reach this replica's classes through
    the app's state (:meth:`__serve_build_asgi_app__`); the gRPC methods below are Ray Serve's calls on it.
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
        share_caches: bool = False,
        vectorize_table_path: str | None = None,
        upscalers: Upscalers | None = None,
        triton_grpc_url: str | None = None,
        moderation: Moderation | None = None,
        safety_checker_dir: str | None = None,
        text_moderator_dir: str | None = None,
        results: ResultSettings | None = None,
        url_secret_path: str | None = None,
        webhooks: WebhookSettings | None = None,
        webhook_secret_path: str | None = None,
    ) -> None:
        store_url = store_url or default_url()
        current = CurrentModels(models)
        cache = open_cache(store_url, cache_bytes) if cache_bytes > 0 else None
        vectorize_versions = TableReader(vectorize_table_path)  # an experiment's variants may be vectorize versions
        variants = lambda: current.names() | set(vectorize_versions.now().variant_names())  # noqa: E731
        traffic = Experiments(open_experiment_store(store_url), variants)
        for name, spec in (experiments or {}).items():  # declared at start-up (easel up --experiment): seeds them
            if not traffic.exists(name):  # one the store holds (the API may have edited it) stays as it is
                traffic.define(name, spec)
        self.upscaling = Upscaling.on_triton(upscalers or Upscalers(), triton_grpc_url)
        self.adapters = Adapters(current, text_to_image)
        self.generations = Generations(
            current,
            text_to_image,
            vectorizer,
            residency,
            cache,
            traffic,
            references=self.adapters.references,  # a generation naming a stored reference is checked against them
            share_caches=share_caches,
            upscaling=self.upscaling,
            moderation=(moderation or Moderation()).checking(
                ImageChecker.on_triton(safety_checker_dir, triton_grpc_url),
                TextModerator.on_triton(text_moderator_dir, triton_grpc_url),
            ),
            results=Results.of(results or ResultSettings(), store_url, url_secret_path),  # images kept, their URLs
        )
        self.moderation = self.generations.moderation
        open_access(store_url, self.generations.price)  # the doors' one price: a generation's admission
        webhooks, job_store = webhooks or WebhookSettings(), open_job_store(store_url)
        sender = sender_of(webhooks, store_url, webhook_secret_path)  # this replica's webhook deliveries
        self.jobs = BackgroundJobs(job_store, self.generations, traffic, webhooks, sender)
        self.models = ModelAdmin(current, text_to_image, residency, traffic)
        self.experiments = ExperimentsAndFeedback(traffic)
        self.vectorizing = Vectorizing(vectorizer, residency, traffic)
        self.health = Health(text_to_image, vectorizer, self.models, self.moderation.triton_models)

    def __serve_build_asgi_app__(self) -> FastAPI:
        """The HTTP app, its routes answered by this replica's serving classes."""
        api.state.gateway = self
        return api

    async def Generate(self, message: easel_pb2.GenerateRequest, grpc_context):  # noqa: N802 - the RPC's name
        """The gRPC ``easel.v1.Easel/Generate``: one ``progress`` event per denoising step, then the images.

        The request, its limits, its key check and its errors are the HTTP route's; the result cache is not used
        (a cached answer has no steps to report).
        """
        try:
            parse = partial(grpc_api.generation_request, message)  # once the key is known good
            async with call_admitted(grpc_context, "Generate", parse) as (key, _, priced):
                async for event in self.generations.events(priced.admitted, key):
                    yield event
        except Exception as error:  # every failure ends the stream with its status code
            grpc_api.fail(grpc_context, as_easel_error(error))

    async def Feedback(self, message: easel_pb2.FeedbackRequest, grpc_context) -> easel_pb2.FeedbackReply:  # noqa: N802
        """The gRPC ``easel.v1.Easel/Feedback``: the HTTP route's (``POST /v1/feedback``)."""
        try:
            parse = partial(grpc_api.feedback_request, message)  # once the key is known good
            async with call_admitted(grpc_context, "Feedback", parse) as (key, feedback, _):
                return grpc_api.feedback_reply(await self.experiments.rate(feedback, key))
        except Exception as error:
            grpc_api.fail(grpc_context, as_easel_error(error))

    async def Vectorize(self, message: easel_pb2.VectorizeRequest, grpc_context) -> easel_pb2.VectorizeReply:  # noqa: N802
        """The gRPC ``easel.v1.Easel/Vectorize``: the HTTP route's answer (uploads up to its body limit, 32 MiB)."""
        try:
            parse = partial(grpc_api.vectorize_request, message)  # once the key is known good
            async with call_admitted(grpc_context, "Vectorize", parse) as (_, (image, options), _):
                result = await self.vectorizing.vectorize(image, options)
            return grpc_api.vectorize_reply(result)
        except Exception as error:
            grpc_api.fail(grpc_context, as_easel_error(error))

    async def Analyze(self, message: easel_pb2.VectorizeRequest, grpc_context) -> easel_pb2.AnalyzeReply:  # noqa: N802
        """The gRPC ``easel.v1.Easel/Analyze``: the HTTP route's answer (``POST /v1/vectorize/analyze``)."""
        try:
            parse = partial(grpc_api.vectorize_request, message, "Analyze")  # once the key is known good
            async with call_admitted(grpc_context, "Analyze", parse) as (_, (image, options), _):
                analysis = await self.vectorizing.analysis(image, options)
            return grpc_api.analyze_reply(analysis)
        except Exception as error:
            grpc_api.fail(grpc_context, as_easel_error(error))


def build_app(args: AppArgs) -> serve.Application:
    """Typed Serve application builder (``serve.http.app:build_app``); a Gateway replica does not import the loop's."""
    from serve.text_to_image.deployment import TextToImage
    from serve.text_to_image.residency import ModelResidency

    ip_ready = {name: EngineFolder(path).adapters.ip_adapter is not None for name, path in args.models.items()}
    adapters = {name: StackAdapters(args.loras_dir.get(name), ip, args.store, name) for name, ip in ip_ready.items()}
    models = ServedModels.open(
        args.models, adapters, args.memory_budget_bytes, args.max_cost, args.model_weights_bytes, args.model_table_path
    )
    residency = ModelResidency.bind(
        models, args.pin, args.triton_http_url, args.parked_path, args.repository, args.vectorize_table_path
    )
    return Gateway.bind(
        TextToImage.bind(models, args.triton_grpc_url, args.defaults, args.store),
        Vectorizer.bind(args.triton_grpc_url, args.vectorize_table_path, Recording.of(args)),
        residency,
        models,
        args.store,
        args.cache_bytes,
        args.experiments,
        args.share_caches,
        args.vectorize_table_path,
        Upscalers.read(args.upscalers_dir),
        args.triton_grpc_url,
        Moderation(args.moderation, Blocklist.read(args.prompt_blocklist)),
        args.safety_checker_dir,
        args.text_moderator_dir,
        ResultSettings.model_validate(args.model_dump(include=set(ResultSettings.model_fields))),
        args.url_secret_path,
        WebhookSettings.model_validate(args.model_dump(include=set(WebhookSettings.model_fields))),
        args.webhook_secret_path,
    )
