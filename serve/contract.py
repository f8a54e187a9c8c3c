"""The OpenAPI document as the API behaves: every status a route answers, the one error body, every request body.

FastAPI documents a 422 the API never sends and nothing else that can go wrong; ``/v1/vectorize`` reads its body by
hand, so FastAPI sees none. :func:`openapi` starts from FastAPI's document and makes it true, in this one place.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from serve.text_to_image.schema import GenerationRequest
from serve.vectorize.schema import VectorizeJson, VectorizeOptions

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string", "description": "What is wrong, naming the field and its limit."},
                "type": {"type": "string", "description": "invalid_request_error, authentication_error, ..."},
                "param": {"anyOf": [{"type": "string"}, {"type": "null"}], "description": "The field at fault."},
                "code": {"type": "integer", "description": "The HTTP status."},
            },
        }
    },
}

WHY = {
    400: "Invalid input: the message names the field and its limit.",
    401: "No valid API key (once keys exist): send Authorization: Bearer <key>.",
    403: "The key's scopes do not include this route's.",
    404: "No such job (or route).",
    408: "The request body stopped arriving for 15 s.",
    409: "The job is over already, or the Idempotency-Key was used with another body.",
    413: "The request body is over its limit.",
    429: "Over the key's limit or the stack's queue: retry after Retry-After seconds.",
    503: "A backend is not ready or failed: retry after Retry-After seconds.",
}

_ON_EVERY_ROUTE = (400, 401, 403, 408, 413, 429, 503)
ERRORS_BY_ROUTE: dict[tuple[str, str], tuple[int, ...]] = {
    ("get", "/healthz"): (503,),
    ("get", "/readyz"): (503,),
    ("post", "/v1/images/generations"): (*_ON_EVERY_ROUTE, 409),
    ("post", "/v1/images/edits"): (*_ON_EVERY_ROUTE, 409),
    ("get", "/v1/loras"): _ON_EVERY_ROUTE,
    ("get", "/v1/controlnets"): _ON_EVERY_ROUTE,
    ("get", "/v1/jobs"): (*_ON_EVERY_ROUTE, 404),
    ("get", "/v1/jobs/{job_id}"): (*_ON_EVERY_ROUTE, 404),
    ("post", "/v1/jobs/{job_id}/cancel"): (*_ON_EVERY_ROUTE, 404, 409),
    ("get", "/v1/jobs/{job_id}/events"): (*_ON_EVERY_ROUTE, 404),
    ("post", "/v1/vectorize"): _ON_EVERY_ROUTE,
}
"""The error statuses each route can answer (its own, the wire's limits, keys, back-pressure, backends)."""

_BINARY = {"type": "string", "format": "binary"}


def _add_schema(components: dict, model: type[BaseModel]) -> dict:
    """``model``'s JSON schema as pydantic writes it (exact integer limits; FastAPI's rounds 2**63 - 1 to a float)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return schema


def _vectorize_body(components: dict) -> dict:
    """``/v1/vectorize``'s three encodings: multipart (``file`` + option fields), JSON (base64), a raw image."""
    _add_schema(components, VectorizeJson)
    options = _add_schema(components, VectorizeOptions)
    form = {
        "type": "object",
        "required": ["file"],
        "properties": {"file": _BINARY | {"description": "The PNG/JPEG/... file."}, **options["properties"]},
    }
    return {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": form},
            "application/json": {"schema": {"$ref": "#/components/schemas/VectorizeJson"}},
            "image/png": {"schema": _BINARY},
            "image/jpeg": {"schema": _BINARY},
        },
        "description": "The image, in one of three encodings; with image/*, the options go in the query string.",
    }


def _edit_body(components: dict) -> dict:
    """``/v1/images/edits``' multipart body: the generation's fields, its images as files."""
    properties = dict(_add_schema(components, GenerationRequest)["properties"])
    properties["image"] = {
        "type": "array",
        "items": _BINARY,
        "minItems": 1,
        "description": "The image(s) to edit: one file part `image`, or several (`image` or `image[]`).",
    }
    properties["mask"] = _BINARY | {"description": "Where to draw: the PNG's fully transparent pixels."}
    properties["ip_adapter_image"] = _BINARY | {"description": "An IP-Adapter reference (a file, or base64 text)."}
    form = {"type": "object", "required": ["image", "prompt"], "properties": properties}
    return {
        "required": True,
        "content": {"multipart/form-data": {"schema": form}},
        "description": "OpenAI's edits form; fields that are not text (numbers, lists, mappings) as JSON text.",
    }


def openapi(document: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's ``document`` made true to the behaviour (changed in place and returned)."""
    components = document.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    components["Error"] = ERROR
    _add_schema(components, GenerationRequest)
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status in ERRORS_BY_ROUTE.get((method, path), _ON_EVERY_ROUTE):
                responses[str(status)] = {
                    "description": WHY[status],
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
    for path in ("/v1/images/generations", "/v1/images/edits"):
        document["paths"][path]["post"]["responses"]["202"] = {
            "description": 'With "background": true: the job, queued (Location: /v1/jobs/{id}).',
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    document["paths"]["/v1/images/edits"]["post"]["requestBody"] = _edit_body(components)
    document["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"] = {
        "description": "Server-Sent Events: state, one progress per step, then completed, failed or canceled.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
    vectorize = document["paths"]["/v1/vectorize"]["post"]
    vectorize["requestBody"] = _vectorize_body(components)
    vectorize["responses"]["200"] = {
        "description": "The SVG (image/svg+xml), or with Accept: application/json the SVG, its tier and timings.",
        "content": {
            "image/svg+xml": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
    return document
