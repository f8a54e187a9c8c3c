"""The API's limits that no schema states, each with why: one table, :data:`UNSTATED_LIMITS`.

The OpenAPI document (:mod:`serve.contract`) lists them under the status they answer; the contract test accepts those
refusals of schema-valid requests, and no other.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass

from serve.finishing.upscalers import MAX_OUTPUT_PIXELS
from serve.images.raster import MAX_PIXELS, MAX_SIDE, MIN_SIDE
from serve.text_to_image.schema import MAX_FEW_STEPS


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


GENERATIONS, EDITS, VECTORIZE = "/v1/images/generations", "/v1/images/edits", "/v1/vectorize"
ANALYZE, UPSCALE, MODERATIONS = "/v1/vectorize/analyze", "/v1/images/upscale", "/v1/moderations"
"""The routes whose bodies are read by hand (the document states them: :func:`serve.contract.openapi`)."""
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
_RESTORER = "a face restorer GET /v1/upscalers lists as ready (face_restorers)"
_ONE_OF_THEM = "exactly one of trained_dir and version"
_TRAINED_DIR = (
    "an absolute path, on the stack's machine, to a folder `easel train vectorize` wrote (the predictor's and the "
    "policy's ONNX files with the inputs and outputs the ensemble wires, and a readable tier1.json)"
)
_IMAGE = "whether bytes are an image is known by decoding them"
_GENERATION_LIMITS = (
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("num_inference_steps",),
        "is over the limit of",
        "the cost, n x megapixels (of size, or of the model's native size) x engine passes (the steps that run x (1 + "
        "ControlNets), the VAE's) + input megapixels, is at most the stack's cost ceiling, `easel up --max-cost`",
        "a product of three fields against a setting of the stack",
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("size",),
        "the memory budget leaves",
        "one image of this size fits each engine in the activation memory the stack's memory budget leaves beside the "
        "engines' weights, `easel up --memory-budget`",
        "what a size needs depends on the engines the stack serves",
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("scheduler",),
        "is not a sampler of",
        "a sampler of the served model's family (flow-matching models, SD3 and Flux, take ddim and euler)",
        "the samplers are the served model family's",
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("size",),
        "images are multiples of",
        "sides that are whole latent patches of the served model (multiples of 16 for SD3 and Flux)",
        "the patch is the served model's",
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("n", "num_inference_steps", "seed", "outpaint.*"),
        "valid integer",
        "an integer written without a fraction: 2, not 2.0",
        "JSON Schema counts 2.0 as an integer; the API's types are strict",
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("webhook",),
        "webhook: ",
        "a URL on a host the stack allows, `easel up --webhook-hosts` (none by default)",
        "the allowed hosts are the stack's",
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("model",),
        "unknown model",
        "a model GET /v1/models lists (absent: the stack's default model)",
        "the models are the stack's, `easel up --model NAME=DIR`",
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("loras.*.name",),
        "LoRA adapter",
        "each name is an adapter GET /v1/loras lists as ready",
        "the adapters are the stack's, `easel up --loras`",
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("loras",),
        "each adapter may appear once",
        "each adapter appears once",
        "JSON Schema's uniqueItems compares whole items, name and scale, not names",
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("ip_adapter_image",),
        "",
        "a PNG, JPEG or WebP image within the field's limits, on a stack started with --ip-adapter",
        f"{_IMAGE}; the IP-Adapter is the stack's",
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("ip_adapter_scale",),
        "",
        "an InstantStyle mapping names blocks the model's UNet has, with at most one scale per layer",
        "the blocks are the model's",
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("image", "mask", "controlnets"),
        "take no input images",
        "input images, masks and ControlNets go to UNet models (SD 1.x/2.x, SDXL); SD3 and Flux models take text only",
        "the family is the served model's",
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("image", "image.*", "mask", "controlnets.*.image", "controlnets"),
        "",
        "each image (an input image, the mask, a control image) decodes as PNG, JPEG or WebP with sides from 8 to "
        "4096 pixels; a mask has its image's size; several input images have one size",
        _IMAGE,
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("outpaint",),
        "needs at least one side over 0",
        "an outpaint grows the image by at least one pixel on some side",
        "a rule over several fields of an object (one of them above 0)",
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("controlnets.*.name",),
        "ControlNet",
        "each name is a ControlNet GET /v1/controlnets lists for the model",
        "the ControlNets are the stack's, `easel up --controlnet`",
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("mask", "strength", "outpaint", "n", "prompts"),
        "image",
        "mask, strength and outpaint come with an image; n images from each input image, for each prompt, are at "
        "most 4 in all",
        "a field that needs another, and a product of three fields",
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("prompts",),
        "upscale.denoise",
        "prompts do not come with an upscale's denoise (its second pass redraws with one prompt)",
        "a field that excludes another's sub-field",
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("ip_adapter_reference",),
        "",
        "a reference the caller's key stored (POST /v1/references) for the model, on a stack with an IP-Adapter",
        "the stored references are the stack's, each of one key",
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("ip_adapters.*.name",),
        "IP-Adapter",
        "each name is an IP-Adapter of the model (GET /v1/models lists its ip_adapters; absent: the first), on a "
        "stack started with --ip-adapter",
        "the IP-Adapters are the stack's, `easel up --ip-adapter NAME=DIR`",
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("ip_adapters.*.images", "ip_adapters.*.masks"),
        "",
        "an IP-Adapter takes 1 to 4 references, its images and references together, and masks one per reference",
        "a rule over the lengths of two lists of an object",
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("ip_adapters.*.images.*", "ip_adapters.*.masks.*"),
        "",
        "each reference image and mask decodes as PNG, JPEG or WebP within the image limits; a mask has the output's "
        "size",
        f"{_IMAGE}; the output's size is the request's size, or the model's",
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("ip_adapters.*.references.*",),
        "",
        "each reference is one the caller's key stored (POST /v1/references) for the model",
        "the stored references are the stack's, each of one key",
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("ip_adapters.*.scale",),
        "",
        "an InstantStyle mapping names blocks the model's UNet has",
        "the blocks are the model's",
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("ip_adapters",),
        "",
        "each IP-Adapter appears once; ip_adapters comes without ip_adapter_image and ip_adapter_reference",
        "JSON Schema's uniqueItems compares whole items, not names; a rule over several fields",
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("cache_interval",),
        "cache_interval:",
        "a cache_interval over 1 needs a stack started with --step-cache, and a job on the model's UNet (no lcm or "
        "tcd on a distilled UNet) without LoRAs, an IP-Adapter reference or ControlNets",
        "the step-cache engines are the stack's, and a rule over several fields",
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("approximate_cache",),
        "approximate_cache:",
        "approximate_cache true needs a stack that keeps latents (--approximate-cache) and a text-to-image job (no "
        "input images, mask, IP-Adapter reference or ControlNets)",
        "the latent cache is the stack's, and a rule over several fields",
    ),
)
"""Limits of a generation's fields, the same on the JSON route and the edits form."""
VIDEOS = "/v1/videos"
_VIDEO_LIMITS = (
    UnstatedLimit(
        "post",
        VIDEOS,
        ("seconds",),
        "seconds:",
        "frames is seconds x fps (one of them may be left out), at most 32",
        "a rule across three fields",
    ),
    UnstatedLimit(
        "post",
        VIDEOS,
        ("motion_adapter",),
        "motion_adapter:",
        "a motion adapter the model serves (an SD 1.x model started with --motion-adapter), no ControlNets with it yet",
        "the motion adapters are the stack's, `easel up --motion-adapter NAME=DIR`",
    ),
    UnstatedLimit(
        "post",
        VIDEOS,
        ("frames", "size"),
        "",
        "the cost, frames x megapixels x (steps + 1), is at most the stack's cost ceiling (`easel up --max-cost`), and "
        "the frames' UNet rows fit the activation memory the memory budget leaves (`easel up --memory-budget`)",
        "a product of three fields against settings and engines of the stack",
    ),
    UnstatedLimit(
        "post",
        VIDEOS,
        ("strength",),
        "only accepted with an input_reference",
        "strength needs an input_reference (image-to-video)",
        "a rule across two fields",
    ),
    UnstatedLimit(
        "post",
        VIDEOS,
        ("input_reference",),
        "",
        "input_reference decodes as PNG, JPEG or WebP with sides from 8 to 4096 pixels",
        _IMAGE,
    ),
    UnstatedLimit(
        "post",
        VIDEOS,
        ("steps",),
        "sampler takes at most",
        f"the few-step samplers (lcm, tcd) take at most {MAX_FEW_STEPS} steps",
        "a rule across two fields",
    ),
    *(
        dataclasses.replace(limit, path=VIDEOS)
        for limit in _GENERATION_LIMITS
        if limit.params in (("model",), ("loras.*.name",), ("loras",), ("scheduler",), ("size",))
    ),
)
"""Limits of a video's fields (``POST /v1/videos``): its own, and the generation's it runs as."""
UNSTATED_LIMITS = (
    *_VIDEO_LIMITS,
    *_GENERATION_LIMITS,
    *(dataclasses.replace(limit, path=EDITS) for limit in _GENERATION_LIMITS),
    UnstatedLimit(
        "post",
        EDITS,
        ("vectorize_tier", "ip_adapter_scale", "webhook"),
        "is only accepted with",
        "vectorize_tier needs output_format svg; an ip_adapter_scale other than 1 needs an ip_adapter_image; a "
        "webhook needs background true",
        "the JSON body's schema states these (allOf); a form's cannot: schemathesis judges conditionals against "
        "its file parts and fails",
    ),
    UnstatedLimit(
        "post",
        EDITS,
        ("prompts",),
        "not both",
        "prompt or prompts, not both",
        "the form requires prompt, as OpenAI's edits form does; the JSON body's schema states the choice (oneOf)",
    ),
    UnstatedLimit(
        "post",
        EDITS,
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
    UnstatedLimit("post", UPSCALE, ("upscaler",), "upscaler", _UPSCALER, _THE_STACK_S_UPSCALERS),
    UnstatedLimit("post", UPSCALE, ("scale",), "is outside", _UPSCALER, _THE_STACK_S_UPSCALERS),
    UnstatedLimit(
        "post",
        UPSCALE,
        ("image", "scale"),
        "",
        f"an image that decodes (PNG, JPEG, WebP, ...) whose upscaled size is at most {MAX_OUTPUT_PIXELS} pixels",
        f"{_IMAGE}, and its size by reading its header",
    ),
    UnstatedLimit("post", GENERATIONS, ("upscale.upscaler", "upscale.scale"), "", _UPSCALER, _THE_STACK_S_UPSCALERS),
    *(
        UnstatedLimit("post", path, ("restore_faces.restorer",), "face restorer", _RESTORER, _THE_STACK_S_UPSCALERS)
        for path in (GENERATIONS, EDITS, UPSCALE)
    ),
    UnstatedLimit(
        "post",
        VECTORIZE,
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
        VECTORIZE,
        ("image",),
        "",
        f"a raster image (PNG, JPEG, WebP, GIF, ...) with sides of at least {MIN_SIDE} pixels that vtracer traces "
        "within the deadline of a request",
        f"{_IMAGE}, and how long tracing takes by tracing",
    ),
    UnstatedLimit(
        "post",
        VECTORIZE,
        ("image",),
        "",
        f"at most {MAX_SIDE} pixels a side and {MAX_PIXELS} pixels in all",
        "an image's size is known by reading its header",
        status=413,
    ),
    UnstatedLimit(
        "post",
        MODERATIONS,
        ("input",),
        "no image moderation model",
        "image items on a stack that serves an image checker (`easel up --safety-checker`)",
        "the image checker is the stack's",
    ),
    UnstatedLimit("post", MODERATIONS, ("input.*.image_url.image_url.url",), "", "base64 image data", _IMAGE),
    UnstatedLimit(
        "post",
        ANALYZE,
        ("image",),
        "",
        f"a raster image (PNG, JPEG, WebP, GIF, ...) with sides of at least {MIN_SIDE} pixels",
        _IMAGE,
    ),
    UnstatedLimit(
        "post",
        ANALYZE,
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
