"""The OpenAPI document as the API behaves: every status a route answers, the one error body, every request body.

FastAPI documents a 422 the API never sends and nothing else that can go wrong (the statuses each route answers
are declared in :mod:`serve.routes`); ``/v1/vectorize`` reads its body by hand and a generation's is read by its
admission (:mod:`serve.http.admission`), so FastAPI sees neither.
:func:`openapi` starts from FastAPI's document and makes it true, in this one place.

The schemas state every limit they can. What no schema can state is in :data:`UNSTATED_LIMITS`
(:mod:`serve.contract.limits`), each with why: the document lists them under the status they answer, and the
contract test accepts those refusals of schema-valid requests, and no other.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from serve.contract.examples import add_examples
from serve.contract.limits import UNSTATED_LIMITS
from serve.contract.unstated import ANALYZE, EDITS, GENERATIONS, UPSCALE, VECTORIZE, VIDEOS
from serve.finishing.schema import UpscaleJson, UpscaleOptions
from serve.jobs.model import MAX_IDEMPOTENCY_KEY
from serve.protocol.schema import MAX_IMAGES, GenerationRequest
from serve.protocol.video import VideoRequest
from serve.routes import KEYED_ROUTE_ERRORS, route
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
                "code": {
                    "anyOf": [{"type": "integer"}, {"type": "string"}],
                    "description": "The HTTP status, or OpenAI's code where it names one (content_policy_violation).",
                },
            },
        }
    },
}

WHY = {
    400: "Invalid input: the message names the field and its limit.",
    401: "No valid API key (once keys exist): send Authorization: Bearer <key>.",
    403: "The key's scopes do not include this route's.",
    404: "No such job, experiment or model (or route).",
    408: "The request body stopped arriving for 15 s.",
    409: "The job is over already, the Idempotency-Key was used with another body, the image or job was rated "
    "already, or the model cannot change so (its name is served or an experiment's; the default model, or a variant "
    "of an experiment, cannot be removed).",
    413: "The request body is over its limit.",
    429: "Over the key's limit or the stack's queue: retry after Retry-After seconds.",
    502: "A remote model's service (easel up --remote) refused the request, or answered over its byte limit, "
    "without images, or with an image that does not decode or has more pixels than asked; the message names the "
    "model.",
    503: "A backend is not ready or failed: retry after Retry-After seconds.",
    504: "A remote model's service did not answer within its timeout; the message names the model.",
}


def _why(method: str, path: str, status: int) -> str:
    """A status's description on one route: what it means, and the limits no schema states that it answers."""
    limits = [limit for limit in UNSTATED_LIMITS if (limit.method, limit.path, limit.status) == (method, path, status)]
    beyond = "".join(
        f"\n- {', '.join(f'`{param}`' for param in limit.params)}: {limit.limit}. Not in the schema: {limit.why}."
        for limit in limits
    )
    return WHY[status] + (f"\n\nLimits no schema states:{beyond}" if beyond else "")


_BINARY = {"type": "string", "format": "binary"}
IDEMPOTENCY_KEY = {"type": "string", "pattern": f"^[!-~]{{1,{MAX_IDEMPOTENCY_KEY}}}(?!\\n)$"}
"""The ``Idempotency-Key`` header as :func:`~serve.jobs.model.check_idempotency_key` takes it (visible ASCII)."""


def _add_schema(components: dict, model: type[BaseModel]) -> dict:
    """``model``'s JSON schema as pydantic writes it (exact integer limits; FastAPI's rounds 2**63 - 1 to a float)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return schema


def _not_null(schema: dict) -> dict:
    """A field's schema as a form states it: a form has no null (a field left out takes its default)."""
    kinds = [kind for kind in schema.get("anyOf", ()) if kind != {"type": "null"}]
    if len(kinds) != 1:
        return schema
    rest = {key: value for key, value in schema.items() if key != "anyOf" and (key, value) != ("default", None)}
    return rest | kinds[0]


def _upload_body(components: dict, options_model: type[BaseModel], json_model: type[BaseModel], **how) -> dict:
    """A body read by hand: multipart (a file part + the options' fields) or JSON (the image in base64).

    ``how``: ``file`` (the file part's name), ``description``, and ``raw`` (the bare image too, its options in the
    query string).
    """
    _add_schema(components, json_model)
    options = _add_schema(components, options_model)
    fields = {name: _not_null(schema) for name, schema in options["properties"].items()}
    form = {
        "type": "object",
        "required": [how["file"], *options.get("required", [])],
        "properties": {how["file"]: _BINARY | {"description": "The PNG/JPEG/... file."}, **fields},
        "additionalProperties": options.get("additionalProperties", False),
    }
    content = {
        "multipart/form-data": {"schema": form},
        "application/json": {"schema": {"$ref": f"#/components/schemas/{json_model.__name__}"}},
    }
    if how.get("raw"):
        content |= {"image/png": {"schema": _BINARY}, "image/jpeg": {"schema": _BINARY}}
    return {"required": True, "content": content, "description": how["description"]}


_VECTORIZE_BODY = {
    "file": "file",
    "raw": True,
    "description": "The image, in one of three encodings; with image/*, the options go in the query string.",
}


def _edit_body(components: dict) -> dict:
    """``/v1/images/edits``' multipart body: the generation's fields, its images as files."""
    request = _add_schema(components, GenerationRequest)
    properties = {name: _not_null(schema) for name, schema in request["properties"].items()}
    properties["image"] = {
        "type": "array",
        "items": _BINARY,
        "minItems": 1,
        "maxItems": MAX_IMAGES,
        "description": "The image(s) to edit: one file part `image`, or several (`image` or `image[]`).",
    }
    properties["mask"] = _BINARY | {"description": "Where to draw: the PNG's fully transparent pixels."}
    properties["ip_adapter_image"] = _BINARY | {"description": "An IP-Adapter reference (a file, or base64 text)."}
    form = {
        "type": "object",
        "required": ["image", "prompt"],
        "properties": properties,
        "additionalProperties": request.get("additionalProperties", False),
    }
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
            declared = route(method, path)
            for parameter in operation.get("parameters", ()):
                if parameter["name"] == "Idempotency-Key":  # generations, edits, videos: one check for all
                    parameter["schema"] = IDEMPOTENCY_KEY
            if declared and declared.json_body and "requestBody" not in operation:
                _add_schema(components, declared.body)  # a JSON body its admission reads, once, not FastAPI
                operation["requestBody"] = {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{declared.body.__name__}"}}
                    },
                }
            for status in declared.error_statuses if declared else KEYED_ROUTE_ERRORS:
                responses[str(status)] = {
                    "description": _why(method, path, status),
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
    for path in (GENERATIONS, EDITS):
        document["paths"][path]["post"]["responses"]["202"] = {
            "description": 'With "background": true: the job, queued (Location: /v1/jobs/{id}).',
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    document["paths"][EDITS]["post"]["requestBody"] = _edit_body(components)
    _add_schema(components, VideoRequest)
    document["paths"][VIDEOS]["post"]["requestBody"] = {  # read by its admission (JSON, or the openai client's form)
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/VideoRequest"}}},
    }
    document["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"] = {
        "description": "Server-Sent Events: state, one progress per step, then completed, failed or canceled.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
    vectorize = document["paths"][VECTORIZE]["post"]
    vectorize["requestBody"] = _upload_body(components, VectorizeOptions, VectorizeJson, **_VECTORIZE_BODY)
    vectorize["responses"]["200"] = {
        "description": "The SVG (image/svg+xml), or with Accept: application/json the SVG, its tier and timings.",
        "content": {
            "image/svg+xml": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
    upscale = {"file": "image", "description": "The image and the upscaler: a form, or JSON with the image in base64."}
    document["paths"][UPSCALE]["post"]["requestBody"] = _upload_body(components, UpscaleOptions, UpscaleJson, **upscale)
    analyze = document["paths"][ANALYZE]["post"]
    analyze["requestBody"] = _upload_body(components, VectorizeOptions, VectorizeJson, **_VECTORIZE_BODY)
    analyze["responses"]["200"] = {
        "description": "The image's features, class (with a confidence), the tier chosen and each tier's predicted "
        "SSIM and bytes, as JSON; nothing is converted.",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    add_examples(document)
    return document
