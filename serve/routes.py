"""Every operation of the public API, declared once with the facts the layers around its handler read.

Each :class:`Route` names the key scope it needs (:class:`~serve.access.KeyCheck`), its body limit
(:class:`~serve.wire.BodyLimits`, also in Ray Serve's proxy), the model its body is read as (once, by its admission,
:mod:`serve.http.admission`, which prices it), its pipeline label in the metrics, the error statuses it answers (the
OpenAPI document, :mod:`serve.contract`), the gRPC method that shares its scope and limits, and whether it runs an
engine (:attr:`Route.engine`: then it is ``costed``, admitted and charged before it runs, and its price is a row of
docs/guides/keys-and-limits.md; tests/unit/test_admission_prices.py holds both). Ray Serve's HTTP proxy loads this
module (through :mod:`serve.wire`): it imports only the request schemas.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pydantic import BaseModel
from starlette.routing import compile_path

from serve.adapters.registry import MAX_LORA_BYTES
from serve.finishing.schema import MAX_UPSCALE_REQUEST_BYTES, Interpolate, UpscaleJson
from serve.metrics import TEXT_TO_IMAGE, UPSCALE, VECTORIZE
from serve.moderation.requests import MAX_MODERATION_REQUEST_BYTES, ModerationRequest
from serve.protocol.character_requests import NewCharacter
from serve.protocol.face_requests import FaceAnalysisRequest
from serve.protocol.quality_requests import PromptAnalysisRequest, ScoreRequest
from serve.protocol.reference_request import NewReference
from serve.protocol.schema import MAX_REQUEST_BYTES, GenerationRequest
from serve.protocol.video import VideoRequest
from serve.results.rerun import RerunRequest
from serve.vectorize.schema import MAX_UPLOAD_BYTES, VectorizeJson


class Scope(enum.StrEnum):
    """What an API key may do; each keyed route needs one (:attr:`Route.scope`)."""

    GENERATE = "generate"
    VECTORIZE = "vectorize"
    JOBS = "jobs"
    ADAPTERS = "adapters"
    ADMIN = "admin"


DEFAULT_BODY_LIMIT = 1 << 20
"""Bytes a request body may have on routes without their own limit (JSON requests)."""
LORA_UPLOAD_BYTES = MAX_LORA_BYTES + (64 << 10)
"""A LoRA upload's body: its file (a larger one is a 400 naming ``file``) and the form around it."""
KEYED_ROUTE_ERRORS = (400, 401, 403, 408, 413, 429, 503)
"""What any keyed route can answer: invalid input, the wire's limits (408, 413), the key check (401, 403, 429),
back-pressure (429) and backends (503)."""
REMOTE_ERRORS = (502, 504)
"""What a route that may reach a remote model (``easel up --remote``) adds: its service's bad answer, its timeout."""


@dataclass(frozen=True)
class Route:
    """One operation: its method and path as FastAPI declares them, and what the door and the document know of it."""

    method: str  # lower case, as OpenAPI writes it
    path: str  # a FastAPI path: {name} is a path parameter
    scope: Scope | None  # the key scope it (and every path under it) needs; None: open, no key asked
    errors: tuple[int, ...] = ()  # error statuses of its own (a keyed route adds KEYED_ROUTE_ERRORS)
    body_limit: int | None = None  # bytes; None: DEFAULT_BODY_LIMIT
    pipeline: str = "none"  # the ``pipeline`` label of its latency metric
    rpc: str | None = None  # the gRPC method (``easel.v1.Easel``) that shares its scope and limits
    body: type[BaseModel] | None = None  # its body's model: read once, by its admission (serve.http.admission)
    form: str | None = None  # "edits": the edits form; "upscale", "video": JSON or its form; "vectorize",
    # "analysis": an upload as a form, JSON or a raw image (to trace, to analyze); "interpolate", "character": JSON
    # and the path's video or character; None: JSON
    costed: bool = False  # admitted by serve.http.admission.admit: its body's cost taken from the key's cost limit
    engine: bool = False  # runs an engine (a model, a checker, the scorer, vtracer): costed, and priced in the docs

    @property
    def json_body(self) -> bool:
        """Whether its body is JSON alone, read as :attr:`body` (the document's request body is that model's)."""
        return self.body is not None and self.form in (None, "interpolate", "character")

    @property
    def prefix(self) -> str:
        """The path up to its first parameter: the route and what is under it need its scope."""
        return self.path.split("/{", 1)[0]

    @property
    def audited(self) -> bool:
        """Whether answering it is an admin action the audit log keeps (:mod:`serve.access.audit`).

        An admin action: a change an ``admin`` or ``adapters`` route makes (models, remotes, chains, experiments,
        vectorize versions, LoRAs, shares).
        """
        return self.scope in (Scope.ADMIN, Scope.ADAPTERS) and self.method != "get"

    @property
    def error_statuses(self) -> tuple[int, ...]:
        """Every error status it can answer."""
        return self.errors if self.scope is None else (*KEYED_ROUTE_ERRORS, *self.errors)


ROUTES = (
    Route("get", "/healthz", None, (503,)),
    Route("get", "/readyz", None, (503,)),
    Route(
        "post",
        "/v1/images/generations",
        Scope.GENERATE,
        (409, *REMOTE_ERRORS),
        body_limit=MAX_REQUEST_BYTES,
        pipeline=TEXT_TO_IMAGE,
        rpc="Generate",
        body=GenerationRequest,
        costed=True,
        engine=True,
    ),
    Route(
        "post",
        "/v1/images/edits",
        Scope.GENERATE,
        (409,),
        body_limit=MAX_REQUEST_BYTES,
        pipeline=TEXT_TO_IMAGE,
        body=GenerationRequest,
        form="edits",
        costed=True,
        engine=True,
    ),
    Route(
        "post",
        "/v1/videos",
        Scope.GENERATE,
        (409,),
        body_limit=MAX_REQUEST_BYTES,
        pipeline=TEXT_TO_IMAGE,
        body=VideoRequest,
        form="video",
        rpc="CreateVideo",
        costed=True,  # frames x steps x megapixels (serve.models.admission.Work)
        engine=True,
    ),
    Route(
        "post",
        "/v1/videos/{video_id}/interpolate",
        Scope.GENERATE,
        (404, 409),
        pipeline=TEXT_TO_IMAGE,
        body=Interpolate,
        form="interpolate",
        rpc="InterpolateVideo",
        costed=True,  # the frames it draws x the padded frame's megapixels (Upscaling.finishing_cost)
        engine=True,
    ),
    Route("get", "/v1/videos/{video_id}", Scope.GENERATE, (404,), rpc="GetVideo"),
    Route("get", "/v1/videos/{video_id}/content", Scope.GENERATE, (404, 409), rpc="GetVideoContent"),
    Route("delete", "/v1/videos/{video_id}", Scope.GENERATE, (404, 409), rpc="CancelVideo"),
    Route("get", "/v1/loras", Scope.GENERATE),
    Route("post", "/v1/loras", Scope.ADAPTERS, body_limit=LORA_UPLOAD_BYTES),
    Route("put", "/v1/loras/{name}", Scope.ADAPTERS, (404, 409), body_limit=LORA_UPLOAD_BYTES),
    Route("delete", "/v1/loras/{name}", Scope.ADAPTERS, (404, 409)),
    Route(
        "post",
        "/v1/references",
        Scope.GENERATE,
        body_limit=MAX_REQUEST_BYTES,
        body=NewReference,
        costed=True,  # its image's decode and one image-encoder pass (serve.serving.prices.reference_cost)
        engine=True,
    ),
    Route("get", "/v1/references", Scope.GENERATE),
    Route("get", "/v1/references/{reference_id}", Scope.GENERATE, (404,)),
    Route("delete", "/v1/references/{reference_id}", Scope.GENERATE, (404, 409)),
    Route(
        "post",
        "/v1/characters",
        Scope.GENERATE,
        body_limit=MAX_REQUEST_BYTES,
        body=NewCharacter,
        costed=True,  # its pictures' decode, image-encoder and face passes (serve.serving.prices.character_cost)
        engine=True,
    ),
    Route("get", "/v1/characters", Scope.GENERATE),
    Route("get", "/v1/characters/{name}", Scope.GENERATE, (404,)),
    Route(
        "put",
        "/v1/characters/{name}",
        Scope.GENERATE,
        (404,),
        body_limit=MAX_REQUEST_BYTES,
        body=NewCharacter,
        form="character",
        costed=True,
        engine=True,
    ),
    Route("delete", "/v1/characters/{name}", Scope.GENERATE, (404,)),
    Route("get", "/v1/images", Scope.GENERATE),
    Route(
        "post",
        "/v1/images/rerun",
        Scope.GENERATE,
        (404, *REMOTE_ERRORS),
        pipeline=TEXT_TO_IMAGE,
        body=RerunRequest,
        costed=True,
        engine=True,
    ),
    Route("get", "/v1/images/{image_id}", Scope.GENERATE, (404,)),
    Route("delete", "/v1/images/{image_id}", Scope.GENERATE, (404,)),
    Route("get", "/v1/images/{image_id}/content", None, (400, 403, 404)),  # its signature is the key
    Route("get", "/v1/controlnets", Scope.GENERATE),
    Route("get", "/v1/upscalers", Scope.GENERATE),
    Route(
        "post",
        "/v1/images/upscale",
        Scope.GENERATE,
        body_limit=MAX_UPSCALE_REQUEST_BYTES,
        pipeline=UPSCALE,
        body=UpscaleJson,
        form="upscale",
        costed=True,  # by its output's megapixels (serve.serving.upscale.Upscaling.work)
        engine=True,
    ),
    Route("get", "/v1/models", Scope.GENERATE),
    Route("post", "/v1/models", Scope.ADMIN, (409,)),
    Route("get", "/v1/models/{model_id}", Scope.GENERATE, (404,)),
    Route("put", "/v1/models/{model_id}", Scope.ADMIN, (404, 409)),
    Route("put", "/v1/models/{model_id}/fallback", Scope.ADMIN, (404, 409)),
    Route("delete", "/v1/models/{model_id}", Scope.ADMIN, (404, 409)),
    Route("get", "/v1/jobs", Scope.JOBS, (404,)),
    Route("get", "/v1/jobs/{job_id}", Scope.JOBS, (404,)),
    Route("post", "/v1/jobs/{job_id}/cancel", Scope.JOBS, (404, 409)),
    Route("get", "/v1/jobs/{job_id}/events", Scope.JOBS, (404,)),
    Route(
        "post",
        "/v1/vectorize",
        Scope.VECTORIZE,
        body_limit=MAX_UPLOAD_BYTES,
        pipeline=VECTORIZE,
        rpc="Vectorize",
        body=VectorizeJson,
        form="vectorize",
        costed=True,  # its image's megapixels x the passes its tier may run (serve.serving.prices.vectorize_cost)
        engine=True,
    ),
    Route("get", "/v1/vectorize/models", Scope.VECTORIZE),
    Route("post", "/v1/vectorize/models", Scope.ADMIN, (409,)),
    Route("put", "/v1/vectorize/models", Scope.ADMIN, (409,)),
    Route("delete", "/v1/vectorize/models/{version}", Scope.ADMIN, (409,)),
    Route(
        "post",
        "/v1/vectorize/analyze",
        Scope.VECTORIZE,
        body_limit=MAX_UPLOAD_BYTES,
        pipeline=VECTORIZE,
        rpc="Analyze",
        body=VectorizeJson,
        form="analysis",
        costed=True,  # its image's megapixels x 2: decoded, and the models' pass
        engine=True,
    ),
    Route(
        "post",
        "/v1/moderations",
        Scope.GENERATE,
        body_limit=MAX_MODERATION_REQUEST_BYTES,
        body=ModerationRequest,
        costed=True,
        engine=True,
    ),
    Route(
        "post",
        "/v1/prompts/analyze",
        Scope.GENERATE,
        body=PromptAnalysisRequest,
        costed=True,  # its tokens and its moderation verdict (serve.serving.prices.analysis_cost)
        engine=True,
    ),
    Route(
        "post",
        "/v1/images/score",
        Scope.GENERATE,
        body_limit=MAX_REQUEST_BYTES,
        body=ScoreRequest,
        costed=True,  # each image's megapixels and one scorer pass (serve.serving.prices.score_cost)
        engine=True,
    ),
    Route(
        "post",
        "/v1/faces/analyze",
        Scope.GENERATE,
        body_limit=MAX_REQUEST_BYTES,
        body=FaceAnalysisRequest,
        costed=True,  # its image's megapixels, a detector pass, a recognizer pass a face (prices.face_analysis_cost)
        engine=True,
    ),
    Route("post", "/v1/feedback", Scope.GENERATE, (404, 409), rpc="Feedback"),
    Route("get", "/v1/experiments", Scope.ADMIN),
    Route("get", "/v1/experiments/{name}", Scope.ADMIN, (404,)),
    Route("put", "/v1/experiments/{name}", Scope.ADMIN),
    Route("delete", "/v1/experiments/{name}", Scope.ADMIN, (404,)),
    Route("get", "/v1/users/{user}/preferences", Scope.GENERATE, (404,)),
    Route("delete", "/v1/users/{user}/preferences", Scope.GENERATE, (404,)),
    Route("get", "/v1/audit", Scope.ADMIN),
)
"""The public API. A path not here (``/docs``, ``/openapi.json``) needs a valid key of any scope."""

BODY_LIMITS = {route.path: route.body_limit for route in ROUTES if route.body_limit is not None}
"""Paths with a body limit of their own (a generation may carry input, control and reference images)."""
PIPELINES = {route.path: route.pipeline for route in ROUTES}
"""The metrics' pipeline label by FastAPI route path."""
PAGES = ("/", "/studio", "/studio/{asset}")
"""The Studio (serve/http/studio.py): its page, its files and the front door that sends a browser to it. Open (the
page holds no data; each call it makes carries the key typed into it) and no operation of the API (not in the
document)."""


def route(method: str, path: str) -> Route | None:
    """The route of an operation (``method`` in any case; ``path`` as FastAPI declares it), or None."""
    return next((r for r in ROUTES if r.method == method.lower() and r.path == path), None)


def allowed_methods(path: str) -> list[str]:
    """The methods the API's routes take on a request ``path`` (upper case, sorted; ``Allow`` of a 405).

    A path some route names as it is (``/v1/images/generations``) is that route's, not a templated one's that would
    match it too (``/v1/images/{image_id}``).
    """
    exact = [r for r in ROUTES if r.path == path]
    matching = exact or [r for r in ROUTES if compile_path(r.path)[0].match(path)]
    return sorted({r.method.upper() for r in matching})


def operation(method: str, path: str) -> Route | None:
    """The operation a request names (``method`` in any case, a request ``path``); None: none.

    A path some route names as it is is that route's before a templated one's that matches it too (as
    :func:`allowed_methods`).
    """
    found = [r for r in ROUTES if r.method == method.lower() and _PATTERNS[r].match(path)]
    return next((r for r in found if r.path == path), found[0] if found else None)


def rpc_route(rpc: str) -> Route:
    """The HTTP route a gRPC method shares its scope and limits with."""
    return next(r for r in ROUTES if r.rpc == rpc)


_PATTERNS = {keyed: compile_path(keyed.path)[0] for keyed in ROUTES}
_PAGE_PATTERNS = [compile_path(page)[0] for page in PAGES]


def is_open(path: str) -> bool:
    """Whether a request ``path`` never asks for a key: an open route's (health, an image's signed URL), a page's."""
    if any(page.match(path) for page in _PAGE_PATTERNS):
        return True
    return any(_PATTERNS[open_route].match(path) for open_route in ROUTES if open_route.scope is None)


def required_scope(path: str, method: str = "GET") -> Scope | None:
    """The scope a request needs: its operation's, else that of the keyed route its path is under (None: any key).

    An operation's own scope comes first: ``GET /v1/models`` needs ``generate``, ``POST /v1/models`` ``admin``; a
    method no operation of the path takes (``TRACE /v1/models``) needs none, so every valid key learns it is a 405.
    """
    for keyed in ROUTES:
        if keyed.scope is not None and keyed.method == method.lower() and _PATTERNS[keyed].match(path):
            return keyed.scope
    if allowed_methods(path):  # an operation's path, a method it does not take: any key gets the app's 405
        return None
    for keyed in ROUTES:
        if keyed.scope is not None and (path == keyed.prefix or path.startswith(keyed.prefix + "/")):
            return keyed.scope
    return None
