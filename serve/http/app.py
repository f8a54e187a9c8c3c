"""The public HTTP API's assembly: the FastAPI app, its error handlers and middleware, and every route in its place.

Each concern's handlers are a module of this package (:data:`ROUTE_MODULES`), each naming the operation of
:data:`serve.routes.ROUTES` it answers (:mod:`serve.http.operations`) and handing its call to one of the Gateway's
plain serving classes (:mod:`serve.serving`); a handler that runs work names its admission in its signature
(:mod:`serve.http.admission`). Every JSON body is read by the one strict reader (:func:`serve.wire.read_json`,
:class:`StrictJsonRoute`). The Gateway deployment serves this app (:mod:`serve.gateway`).
"""

import logging
import time
from collections.abc import Awaitable, Callable
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.params import Form
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve import contract, metrics
from serve.access import KeyCheck
from serve.errors import EaselError, RouteError, invalid_input
from serve.http import (
    adapters,
    audit,
    characters,
    experiments,
    faces,
    generations,
    health,
    jobs,
    models,
    moderation,
    quality,
    results,
    studio,
    upscale,
    vectorize,
    videos,
)
from serve.http.operations import handled
from serve.routes import BODY_LIMITS, PIPELINES, allowed_methods
from serve.serving.ray_errors import as_easel_error
from serve.wire import BodyLimits, read_json_value

logger = logging.getLogger(__name__)


DOCS_ASSETS = "/docs-assets"
"""Where Swagger UI's files are served from (fastapi-offline's copies: /docs loads nothing from outside)."""


class StrictJson(Request):
    """A request whose JSON body is read by the one strict reader (:func:`serve.wire.read_json_value`)."""

    async def json(self) -> object:
        """The body's JSON value (400 naming ``body`` or ``Content-Type`` if it is not JSON in UTF-8)."""
        if not hasattr(self, "_strict_json"):
            self._strict_json = read_json_value(await self.body(), self.headers.get("content-type"))
        return self._strict_json


class StrictJsonRoute(APIRoute):
    """A route whose JSON body FastAPI validates, read first by the one strict reader (:class:`StrictJson`).

    Its refusal (a body in UTF-16, nested too deep) is the 400 naming ``body`` that every JSON route gives, before the
    handler's dependencies run; FastAPI then validates the value read.
    """

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        """The route's handler, its JSON body read strictly first."""
        handler = super().get_route_handler()
        if self.body_field is None or isinstance(self.body_field.field_info, Form):
            return handler  # no body, or a form's

        async def read_strictly(request: Request) -> Response:
            request = StrictJson(request.scope, request.receive)
            if await request.body():  # none: FastAPI says which field is missing
                await request.json()
            return await handler(request)

        return read_strictly


class EaselAPI(FastAPI):
    """FastAPI whose OpenAPI document is the behaviour (:mod:`serve.contract`), with a self-contained /docs page."""

    def __init__(self, **kwargs) -> None:
        super().__init__(docs_url=None, redoc_url=None, **kwargs)
        self.router.route_class = StrictJsonRoute
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


api.add_middleware(KeyCheck)  # inside BodyLimits: it reads no body; admission reads it, bounded
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
        endpoint = getattr(route, "path_format", "unmatched")  # a path parameter's convertor left out
        metrics.count(metrics.HTTP_REQUESTS, endpoint=endpoint, method=request.method, status=status)
        metrics.observe(
            metrics.HTTP_LATENCY,
            time.perf_counter() - started,
            endpoint=endpoint,
            pipeline=PIPELINES.get(endpoint, "none"),
        )


ROUTE_MODULES = (
    health,
    generations,
    results,
    adapters,
    characters,
    models,
    moderation,
    quality,
    faces,
    videos,
    experiments,
    jobs,
    upscale,
    vectorize,
    audit,
)
"""The modules whose handlers name their operations (:func:`serve.http.operations.answers`), imported to do so."""
for _method, _path, _handler in handled():  # serve.routes' order, the OpenAPI document's; one by one, not as included
    api.add_api_route(_path, _handler, methods=[_method])  # routers, whose lock Ray Serve could not pickle
studio.add_to(api)
