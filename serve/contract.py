"""The OpenAPI document as the API behaves: every status a route answers, the one error body, every request body.

FastAPI documents a 422 the API never sends and nothing else that can go wrong (the statuses each route answers
are declared in :mod:`serve.routes`); ``/v1/vectorize`` reads its body by hand and a generation's is read by the key
check (:mod:`serve.access`), so FastAPI sees neither.
:func:`openapi` starts from FastAPI's document and makes it true, in this one place.

The schemas state every limit they can. What no schema can state is in :data:`UNSTATED_LIMITS`, each with why: the
document lists them under the status they answer, and the contract test accepts those refusals of schema-valid
requests, and no other.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from serve.finishing.schema import UpscaleJson, UpscaleOptions
from serve.finishing.upscalers import MAX_OUTPUT_PIXELS
from serve.images.raster import MAX_PIXELS, MAX_SIDE, MIN_SIDE
from serve.jobs.model import MAX_IDEMPOTENCY_KEY
from serve.routes import KEYED_ROUTE_ERRORS, route
from serve.text_to_image.schema import MAX_FEW_STEPS, MAX_IMAGES, GenerationRequest
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
    404: "No such job, experiment or model (or route).",
    408: "The request body stopped arriving for 15 s.",
    409: "The job is over already, the Idempotency-Key was used with another body, the image or job was rated "
    "already, or the model cannot change so (its name is served or an experiment's; the default model, or a variant "
    "of an experiment, cannot be removed).",
    413: "The request body is over its limit.",
    429: "Over the key's limit or the stack's queue: retry after Retry-After seconds.",
    503: "A backend is not ready or failed: retry after Retry-After seconds.",
}


@dataclass(frozen=True)
class UnstatedLimit:
    """A limit no schema states: a schema-valid request over it is refused with ``status``, naming one of ``params``."""

    method: str
    path: str
    params: tuple[str, ...]  # the fields the refusal may name (``*`` stands for a list index)
    says: str  # what the refusal's message says
    limit: str  # the limit, as the document says it
    why: str  # why no schema states it
    status: int = 400

    def refuses(self, method: str, path: str, status: int, error: dict) -> bool:
        """Whether ``error`` (the error body's ``error``), answered with ``status`` to an operation, is this limit's."""
        if (method.lower(), path, status) != (self.method, self.path, self.status) or self.says not in error["message"]:
            return False
        return any(fnmatch.fnmatchcase(error["param"] or "", param) for param in self.params)


_GENERATIONS, _EDITS, _VECTORIZE = "/v1/images/generations", "/v1/images/edits", "/v1/vectorize"
_ANALYZE, _UPSCALE = "/v1/vectorize/analyze", "/v1/images/upscale"
_FEEDBACK, _EXPERIMENT = "/v1/feedback", "/v1/experiments/{name}"
_MODELS, _MODEL = "/v1/models", "/v1/models/{model_id}"
_LORAS, _LORA = "/v1/loras", "/v1/loras/{name}"
_LORA_FILE = (
    "a .safetensors LoRA file diffusers reads for the model (its layers, not DoRA), of 1 byte to 256 MiB, under a "
    "name no adapter has, for a served model whose engines are LoRA-ready"
)
_THE_STACK_S = "the models and their adapters are the stack's, and what a file holds is known by reading it"
_ENGINE_DIR = (
    "an absolute path, on the stack's machine, to an engine folder `easel build` finished (its engines measured), "
    "which Triton loads, whose weights fit the room for weights beside the pinned models' and whose engines fit "
    "the activation pool"
)
_ON_THE_MACHINE = "what a folder holds, and whether Triton loads it, is known by reading and loading it"
_VECTORIZE_MODELS = "/v1/vectorize/models"
_UPSCALER = "an upscaler GET /v1/upscalers lists as ready, at a scale from 1 up to its own"
_THE_STACK_S_UPSCALERS = "the upscalers are the stack's"
_ONE_OF_THEM = "exactly one of trained_dir and version"
_TRAINED_DIR = (
    "an absolute path, on the stack's machine, to a folder `easel train vectorize` wrote (the predictor's and the "
    "policy's ONNX files with the inputs and outputs the ensemble wires, and a readable tier1.json)"
)
_IMAGE = "whether bytes are an image is known by decoding them"
_GENERATION_LIMITS = (
    UnstatedLimit(
        "post",
        _GENERATIONS,
        ("num_inference_steps",),
        "is over the limit of",
        "the cost, n x megapixels (of size, or of the model's native size) x engine passes (the steps that run x (1 + "
        "ControlNets), the VAE's) + input megapixels, is at most the stack's cost ceiling, `easel up --max-cost`",
        "a product of three fields against a setting of the stack",
    ),
    UnstatedLimit(
        "post",
        _GENERATIONS,
        ("size",),
        "the memory budget leaves",
        "one image of this size fits each engine in the activation memory the stack's memory budget leaves beside the "
        "engines' weights, `easel up --memory-budget`",
        "what a size needs depends on the engines the stack serves",
    ),
    UnstatedLimit(
        "post",
        _GENERATIONS,
        ("scheduler",),
        "is not a sampler of",
        "a sampler of the served model's family (flow-matching models, SD3 and Flux, take ddim and euler)",
        "the samplers are the served model family's",
    ),
    UnstatedLimit(
        "post",
        _GENERATIONS,
        ("size",),
        "images are multiples of",
        "sides that are whole latent patches of the served model (multiples of 16 for SD3 and Flux)",
        "the patch is the served model's",
    ),
    UnstatedLimit(
        "post",
        _GENERATIONS,
        ("n", "num_inference_steps", "seed", "outpaint.*"),
        "valid integer",
        "an integer written without a fraction: 2, not 2.0",
        "JSON Schema counts 2.0 as an integer; the API's types are strict",
    ),
    UnstatedLimit(
        "post",
        _GENERATIONS,
        ("model",),
        "unknown model",
        "a model GET /v1/models lists (absent: the stack's default model)",
        "the models are the stack's, `easel up --model NAME=DIR`",
    ),
    UnstatedLimit(
        "post",
        _GENERATIONS,
        ("loras.*.name",),
        "LoRA adapter",
        "each name is an adapter GET /v1/loras lists as ready",
        "the adapters are the stack's, `easel up --loras`",
    ),
    UnstatedLimit(
        "post",
        _GENERATIONS,
        ("loras",),
        "each adapter may appear once",
        "each adapter appears once",
        "JSON Schema's uniqueItems compares whole items, name and scale, not names",
    ),
    UnstatedLimit(
        "post",
        _GENERATIONS,
        ("ip_adapter_image",),
        "",
        "a PNG, JPEG or WebP image within the field's limits, on a stack started with --ip-adapter",
        f"{_IMAGE}; the IP-Adapter is the stack's",
    ),
    UnstatedLimit(
        "post",
        _GENERATIONS,
        ("ip_adapter_scale",),
        "",
        "an InstantStyle mapping names blocks the model's UNet has, with at most one scale per layer",
        "the blocks are the model's",
    ),
    UnstatedLimit(
        "post",
        _GENERATIONS,
        ("image", "mask", "controlnets"),
        "take no input images",
        "input images, masks and ControlNets go to UNet models (SD 1.x/2.x, SDXL); SD3 and Flux models take text only",
        "the family is the served model's",
    ),
    UnstatedLimit(
        "post",
        _GENERATIONS,
        ("image", "image.*", "mask", "controlnets.*.image", "controlnets"),
        "",
        "each image (an input image, the mask, a control image) decodes as PNG, JPEG or WebP with sides from 8 to "
        "4096 pixels; a mask has its image's size; several input images have one size",
        _IMAGE,
    ),
    UnstatedLimit(
        "post",
        _GENERATIONS,
        ("outpaint",),
        "needs at least one side over 0",
        "an outpaint grows the image by at least one pixel on some side",
        "a rule over several fields of an object (one of them above 0)",
    ),
    UnstatedLimit(
        "post",
        _GENERATIONS,
        ("controlnets.*.name",),
        "ControlNet",
        "each name is a ControlNet GET /v1/controlnets lists for the model",
        "the ControlNets are the stack's, `easel up --controlnet`",
    ),
    UnstatedLimit(
        "post",
        _GENERATIONS,
        ("mask", "strength", "outpaint", "n"),
        "image",
        "mask, strength and outpaint come with an image; n images from each input image are at most 4 in all",
        "a field that needs another, and a product of two fields",
    ),
    UnstatedLimit(
        "post",
        _GENERATIONS,
        ("ip_adapter_reference",),
        "",
        "a reference the caller's key stored (POST /v1/references) for the model, on a stack with an IP-Adapter",
        "the stored references are the stack's, each of one key",
    ),
    UnstatedLimit(
        "post",
        _GENERATIONS,
        ("cache_interval",),
        "cache_interval:",
        "a cache_interval over 1 needs a stack started with --step-cache, and a job on the model's UNet (no lcm or "
        "tcd on a distilled UNet) without LoRAs, an IP-Adapter reference or ControlNets",
        "the step-cache engines are the stack's, and a rule over several fields",
    ),
    UnstatedLimit(
        "post",
        _GENERATIONS,
        ("approximate_cache",),
        "approximate_cache:",
        "approximate_cache true needs a stack that keeps latents (--approximate-cache) and a text-to-image job (no "
        "input images, mask, IP-Adapter reference or ControlNets)",
        "the latent cache is the stack's, and a rule over several fields",
    ),
)
"""Limits of a generation's fields, the same on the JSON route and the edits form."""
UNSTATED_LIMITS = (
    *_GENERATION_LIMITS,
    *(dataclasses.replace(limit, path=_EDITS) for limit in _GENERATION_LIMITS),
    UnstatedLimit(
        "post",
        _EDITS,
        ("vectorize_tier", "ip_adapter_scale"),
        "is only accepted with",
        "vectorize_tier needs output_format svg; an ip_adapter_scale other than 1 needs an ip_adapter_image",
        "the JSON body's schema states these (allOf); a form's cannot: schemathesis judges conditionals against "
        "its file parts and fails",
    ),
    UnstatedLimit(
        "post",
        _EDITS,
        ("num_inference_steps",),
        "sampler takes at most",
        f"the few-step samplers (lcm, tcd) take at most {MAX_FEW_STEPS} steps",
        "the JSON body's schema states it (allOf); a form's cannot, as above",
    ),
    UnstatedLimit(
        "post",
        _FEEDBACK,
        ("image_id", "job_id"),
        "to rate",
        "the id names an image or a background job this stack generated for the caller's key, within 30 days",
        "the ids are the stack's",
    ),
    UnstatedLimit(
        "post",
        _FEEDBACK,
        ("rating",),
        "valid integer",
        "an integer written without a fraction: 5, not 5.0",
        "JSON Schema counts 5.0 as an integer; the API's types are strict",
    ),
    UnstatedLimit(
        "put",
        _EXPERIMENT,
        ("variants",),
        "",
        "a split's weights are each > 0 and sum to 1 (within 1e-6); a bandit's variants are a list of at least two "
        "different models; every variant is a model GET /v1/models lists",
        "a sum over a mapping's values, a rule across two fields, and the stack's models",
    ),
    UnstatedLimit(
        "put",
        _EXPERIMENT,
        ("name",),
        "is a served model",
        "the name is not a served model's (an experiment may not shadow one)",
        "the models are the stack's",
    ),
    UnstatedLimit("post", _LORAS, ("file", "name", "model"), "", _LORA_FILE, _THE_STACK_S),
    UnstatedLimit("put", _LORA, ("file", "model"), "", _LORA_FILE, _THE_STACK_S),
    UnstatedLimit("delete", _LORA, ("model",), "", _LORA_FILE, _THE_STACK_S),
    UnstatedLimit(
        "post",
        "/v1/references",
        ("image", "model"),
        "",
        "an image that decodes (PNG, JPEG or WebP, sides up to 4096) for a served model with an IP-Adapter",
        f"{_IMAGE}; the IP-Adapter is the stack's",
    ),
    UnstatedLimit("post", _MODELS, ("engine_dir",), "engine_dir:", _ENGINE_DIR, _ON_THE_MACHINE),
    UnstatedLimit("put", _MODEL, ("engine_dir",), "engine_dir:", _ENGINE_DIR, _ON_THE_MACHINE),
    UnstatedLimit("post", _UPSCALE, ("upscaler",), "upscaler", _UPSCALER, _THE_STACK_S_UPSCALERS),
    UnstatedLimit("post", _UPSCALE, ("scale",), "is outside", _UPSCALER, _THE_STACK_S_UPSCALERS),
    UnstatedLimit(
        "post",
        _UPSCALE,
        ("image", "scale"),
        "",
        f"an image that decodes (PNG, JPEG, WebP, ...) whose upscaled size is at most {MAX_OUTPUT_PIXELS} pixels",
        f"{_IMAGE}, and its size by reading its header",
    ),
    UnstatedLimit("post", _GENERATIONS, ("upscale.upscaler", "upscale.scale"), "", _UPSCALER, _THE_STACK_S_UPSCALERS),
    UnstatedLimit(
        "post",
        _VECTORIZE,
        ("experiment",),
        "no experiment",
        "an experiment over vectorize versions (vectorize.vN) that GET /v1/experiments lists",
        "the experiments are the stack's",
    ),
    *(
        UnstatedLimit(method, _VECTORIZE_MODELS, ("body",), "one of them", _ONE_OF_THEM, "a rule across two fields")
        for method in ("post", "put")
    ),
    UnstatedLimit("post", _VECTORIZE_MODELS, ("version",), "", "POST takes a trained_dir only", "a rule per method"),
    *(
        UnstatedLimit(method, _VECTORIZE_MODELS, ("trained_dir",), "trained_dir:", _TRAINED_DIR, _ON_THE_MACHINE)
        for method in ("post", "put")
    ),
    *(
        UnstatedLimit(method, path, ("version",), "no vectorize version", "an installed version", "the stack's")
        for method, path in (("put", _VECTORIZE_MODELS), ("delete", f"{_VECTORIZE_MODELS}/{{version}}"))
    ),
    UnstatedLimit(
        "post",
        _VECTORIZE,
        ("image",),
        "",
        f"a raster image (PNG, JPEG, WebP, GIF, ...) with sides of at least {MIN_SIDE} pixels that vtracer traces "
        "within the deadline of a request",
        f"{_IMAGE}, and how long tracing takes by tracing",
    ),
    UnstatedLimit(
        "post",
        _VECTORIZE,
        ("image",),
        "",
        f"at most {MAX_SIDE} pixels a side and {MAX_PIXELS} pixels in all",
        "an image's size is known by reading its header",
        status=413,
    ),
    UnstatedLimit(
        "post",
        _ANALYZE,
        ("image",),
        "",
        f"a raster image (PNG, JPEG, WebP, GIF, ...) with sides of at least {MIN_SIDE} pixels",
        _IMAGE,
    ),
    UnstatedLimit(
        "post",
        _ANALYZE,
        ("image",),
        "",
        f"at most {MAX_SIDE} pixels a side and {MAX_PIXELS} pixels in all",
        "an image's size is known by reading its header",
        status=413,
    ),
)
"""Every limit of the API that no schema states."""


def unstated_limit(method: str, path: str, status: int, error: dict) -> UnstatedLimit | None:
    """The limit of :data:`UNSTATED_LIMITS` a refusal is (``path`` as the document names the route), or None."""
    return next((limit for limit in UNSTATED_LIMITS if limit.refuses(method, path, status, error)), None)


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
            for status in declared.error_statuses if declared else KEYED_ROUTE_ERRORS:
                responses[str(status)] = {
                    "description": _why(method, path, status),
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
    generation = document["paths"][_GENERATIONS]["post"]
    generation["requestBody"] = {  # read by the key check, once (serve.access), not by FastAPI
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GenerationRequest"}}},
    }
    for parameter in generation["parameters"]:
        if parameter["name"] == "Idempotency-Key":
            parameter["schema"] = IDEMPOTENCY_KEY
    for path in (_GENERATIONS, _EDITS):
        document["paths"][path]["post"]["responses"]["202"] = {
            "description": 'With "background": true: the job, queued (Location: /v1/jobs/{id}).',
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    document["paths"][_EDITS]["post"]["requestBody"] = _edit_body(components)
    document["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"] = {
        "description": "Server-Sent Events: state, one progress per step, then completed, failed or canceled.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
    vectorize = document["paths"][_VECTORIZE]["post"]
    vectorize["requestBody"] = _upload_body(components, VectorizeOptions, VectorizeJson, **_VECTORIZE_BODY)
    vectorize["responses"]["200"] = {
        "description": "The SVG (image/svg+xml), or with Accept: application/json the SVG, its tier and timings.",
        "content": {
            "image/svg+xml": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
    upscale = {"file": "image", "description": "The image and the upscaler: a form, or JSON with the image in base64."}
    document["paths"][_UPSCALE]["post"]["requestBody"] = _upload_body(
        components, UpscaleOptions, UpscaleJson, **upscale
    )
    analyze = document["paths"][_ANALYZE]["post"]
    analyze["requestBody"] = _upload_body(components, VectorizeOptions, VectorizeJson, **_VECTORIZE_BODY)
    analyze["responses"]["200"] = {
        "description": "The image's features, class (with a confidence), the tier chosen and each tier's predicted "
        "SSIM and bytes, as JSON; nothing is converted.",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    return document
