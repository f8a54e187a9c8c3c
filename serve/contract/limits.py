"""The API's limits that no schema states, each with why: one table, :data:`UNSTATED_LIMITS`.

The OpenAPI document (:mod:`serve.contract`) lists them under the status they answer; the contract test accepts those
refusals of schema-valid requests, and no other.
"""

from __future__ import annotations

import dataclasses

from serve.contract.generation_limits import GENERATION_LIMITS, PROMPTS, VIDEO_LIMITS
from serve.contract.unstated import (
    ANALYZE,
    BY_DECODING,
    EDITS,
    GENERATIONS,
    MODERATIONS,
    UPSCALE,
    VECTORIZE,
    VIDEOS,
    UnstatedLimit,
)
from serve.finishing.upscalers import MAX_OUTPUT_PIXELS
from serve.images.raster import MAX_PIXELS, MAX_SIDE, MIN_SIDE
from serve.protocol.schema import MAX_FEW_STEPS

_EXPERIMENT = "/v1/experiments/{name}"
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
_PROMPT_ANALYSIS = "/v1/prompts/analyze"
_CHARACTERS = "/v1/characters"
_IMAGE_SIZE = f"at most {MAX_SIDE} pixels a side and {MAX_PIXELS} pixels in all"
_SCORER, _SCORE = "the scorer is the stack's", "/v1/images/score"
_FACE_MODELS, _FACES = "the face models are the stack's", "/v1/faces/analyze"
_UPSCALER = "an upscaler GET /v1/upscalers lists as ready, at a scale from 1 up to its own"
_THE_STACK_S_UPSCALERS = "the upscalers are the stack's"
_RESTORER = "a face restorer GET /v1/upscalers lists as ready (face_restorers)"
_FIDELITY = "a fidelity only for a restorer that takes one (a CodeFormer)"
_TRAINED_DIR = (
    "an absolute path, on the stack's machine, to a folder `easel train vectorize` wrote (the predictor's and the "
    "policy's ONNX files with the inputs and outputs the ensemble wires, and a readable tier1.json)"
)


def _identity_limits(path: str) -> tuple[UnstatedLimit, ...]:
    """A generation's ``identity`` (an IP-Adapter FaceID's face) on route ``path``."""
    return (
        UnstatedLimit(
            "post",
            path,
            ("identity", "identity.adapter"),
            "IP-Adapter FaceID",
            "a model served with an IP-Adapter FaceID or InstantID (`easel up --ip-adapter MODEL:NAME=DIR` of h94's "
            "FaceID layout or InstantX's); `adapter`, when given, one of them",
            "the IP-Adapters are the stack's, `easel up --ip-adapter NAME=DIR`",
        ),
        UnstatedLimit(
            "post",
            path,
            ("identity.image",),
            "identity.image: ",
            "a picture that decodes (PNG, JPEG, WebP) within the image limits, on a stack serving face models "
            "(`easel up --faces`), in which they find one face (or several, with `face: largest`)",
            f"{BY_DECODING}; the face models are the stack's",
        ),
        UnstatedLimit(
            "post",
            path,
            ("identity.image",),
            "identity.image: ",
            _IMAGE_SIZE,
            "an image's size is known by reading its header",
            status=413,
        ),
        UnstatedLimit(
            "post",
            path,
            ("identity.aligned_face",),
            "identity.aligned_face: ",
            "for a FaceID Plus: with an embedding, the face aligned at 224 px as a picture that decodes",
            f"{BY_DECODING}; which adapters are FaceID Plus is the stack's",
        ),
        UnstatedLimit(
            "post",
            path,
            ("identity.keypoints",),
            "identity.keypoints: ",
            "for an InstantID only: the face's landmarks drawn, a picture that decodes, drawn from `image` or a "
            "character's, or sent",
            f"{BY_DECODING}; which adapters are InstantIDs is the stack's",
        ),
        UnstatedLimit(
            "post",
            path,
            ("identity.character",),
            "identity.character: ",
            "a character of the key's (GET /v1/characters) made where the stack served face models",
            "the characters are the stack's store's, each key's own",
        ),
        UnstatedLimit(
            "post",
            path,
            ("identity.embedding",),
            "identity.embedding: ",
            "as many finite values as the adapter takes (ArcFace's 512), not all 0",
            "the adapter's width is the stack's engines'",
        ),
    )


UNSTATED_LIMITS = (
    *VIDEO_LIMITS,
    *(
        dataclasses.replace(limit, path=_PROMPT_ANALYSIS)
        for limit in GENERATION_LIMITS
        if limit.params in (("model",), PROMPTS)
    ),
    *GENERATION_LIMITS,
    *(dataclasses.replace(limit, path=EDITS) for limit in GENERATION_LIMITS),
    *_identity_limits(GENERATIONS),
    *_identity_limits(EDITS),
    *_identity_limits(VIDEOS),
    *(  # a video's references are a still's, in every frame
        dataclasses.replace(limit, path=VIDEOS)
        for limit in GENERATION_LIMITS
        if limit.params[0].startswith("ip_adapters")
    ),
    UnstatedLimit(
        "post",
        EDITS,
        ("vectorize_tier", "ip_adapter_scale", "webhook", "output_compression"),
        "is only accepted with",
        "vectorize_tier needs output_format svg; an ip_adapter_scale other than 1 needs an ip_adapter_image; a "
        "webhook needs background true; output_compression needs output_format jpeg or webp",
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
        "put",
        _EXPERIMENT,
        ("variants",),
        "",
        "a split's weights sum to 1 (within 1e-6); every variant is a model GET /v1/models lists",
        "a sum over a mapping's values, and the stack's models",
    ),
    UnstatedLimit(
        "put",
        _EXPERIMENT,
        ("reward",),
        "is not a score this stack gives",
        "a reward other than feedback is a score the stack's scorer gives (`easel up --scorer`)",
        _SCORER,
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
    UnstatedLimit(
        "put",
        _LORA,
        ("file",),
        "a PUT gives new weights",
        "new weights (file), a visibility, or both",
        "a form's schema cannot state a choice: schemathesis judges it against the file parts (as the edits form)",
    ),
    UnstatedLimit("delete", _LORA, ("model",), "", _LORA_FILE, _THE_STACK_S),
    UnstatedLimit(
        "post",
        "/v1/references",
        ("image", "model"),
        "",
        "an image that decodes (PNG, JPEG or WebP, sides up to 4096) for a served model with an IP-Adapter",
        f"{BY_DECODING}; the IP-Adapter is the stack's",
    ),
    *(
        UnstatedLimit(
            method,
            path,
            ("images", "images.*", "model", "lora.name", "name"),
            "",
            "pictures that decode (PNG, JPEG or WebP, sides up to 4096), each showing one face where the stack serves "
            "face models (or face: largest), for a served model, with a LoRA the key may use; POST: a name the key "
            "has not; PUT: the path's name, one the key has",
            f"{BY_DECODING}; the models, LoRAs and characters are the stack's",
        )
        for method, path in (("post", _CHARACTERS), ("put", f"{_CHARACTERS}/{{name}}"))
    ),
    UnstatedLimit(
        "post",
        _PROMPT_ANALYSIS,
        ("model",),
        "is a remote model",
        "a model this stack draws itself (a remote model's service reads its prompts)",
        "the models are the stack's",
    ),
    UnstatedLimit("post", _MODELS, ("engine_dir",), "engine_dir:", _ENGINE_DIR, _ON_THE_MACHINE),
    UnstatedLimit(
        "post",
        _MODELS,
        ("remote.key_env",),
        "declared for remotes' keys",
        "a remote's key_env names a variable the operator declared for remotes' keys (easel up --remote-key-envs: "
        "EASEL_REMOTE_* by default)",
        "the stack's settings are known by reading them",
    ),
    UnstatedLimit(
        "post",
        _MODELS,
        ("remote.key_env",),
        "environment",
        "a remote's key_env names a variable set in the stack's environment",
        "the stack's environment is known by reading it",
    ),
    UnstatedLimit(
        "put",
        f"{_MODEL}/fallback",
        ("chain",),
        "chain:",
        "models this stack serves (or remote ones), each named once, not the model itself",
        "the models are the stack's",
    ),
    UnstatedLimit("put", _MODEL, ("engine_dir",), "engine_dir:", _ENGINE_DIR, _ON_THE_MACHINE),
    UnstatedLimit("post", UPSCALE, ("upscaler",), "upscaler", _UPSCALER, _THE_STACK_S_UPSCALERS),
    UnstatedLimit("post", UPSCALE, ("scale",), "is outside", _UPSCALER, _THE_STACK_S_UPSCALERS),
    UnstatedLimit(
        "post",
        UPSCALE,
        ("image", "scale"),
        "",
        f"an image that decodes (PNG, JPEG, WebP, ...) whose upscaled size is at most {MAX_OUTPUT_PIXELS} pixels",
        f"{BY_DECODING}, and its size by reading its header",
    ),
    *(
        UnstatedLimit("post", path, ("upscale.upscaler", "upscale.scale"), "", _UPSCALER, _THE_STACK_S_UPSCALERS)
        for path in (GENERATIONS, VIDEOS)
    ),
    *(
        UnstatedLimit("post", path, ("restore_faces.restorer",), "face restorer", _RESTORER, _THE_STACK_S_UPSCALERS)
        for path in (GENERATIONS, EDITS, UPSCALE, VIDEOS)
    ),
    *(
        UnstatedLimit("post", path, ("restore_faces.fidelity",), "takes no fidelity", _FIDELITY, _THE_STACK_S_UPSCALERS)
        for path in (GENERATIONS, EDITS, UPSCALE, VIDEOS)
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
        UnstatedLimit(method, _VECTORIZE_MODELS, ("trained_dir",), "trained_dir:", _TRAINED_DIR, _ON_THE_MACHINE)
        for method in ("post", "put")
    ),
    *(
        UnstatedLimit(method, path, ("version",), "no vectorize version", "an installed version", "the stack's")
        for method, path in (("put", _VECTORIZE_MODELS), ("delete", f"{_VECTORIZE_MODELS}/{{version}}"))
    ),
    *(  # checked before the image is read (issue 76: nothing refused after its charge)
        UnstatedLimit("post", path, ("model_version",), "no vectorize version", "an installed version", "the stack's")
        for path in (VECTORIZE, ANALYZE)
    ),
    UnstatedLimit(
        "post",
        VECTORIZE,
        ("image",),
        "",
        f"a raster image (PNG, JPEG, WebP, GIF, ...) with sides of at least {MIN_SIDE} pixels that vtracer traces "
        "within the deadline of a request",
        f"{BY_DECODING}, and how long tracing takes by tracing",
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
    UnstatedLimit("post", MODERATIONS, ("input.*.image_url.image_url.url",), "", "base64 image data", BY_DECODING),
    UnstatedLimit(
        "post",
        ANALYZE,
        ("image",),
        "",
        f"a raster image (PNG, JPEG, WebP, GIF, ...) with sides of at least {MIN_SIDE} pixels",
        BY_DECODING,
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
    UnstatedLimit("post", _SCORE, ("images",), "serves no scorer", "a stack serving `easel up --scorer`", _SCORER),
    *(
        dataclasses.replace(limit, path=_SCORE, params=("prompt",))  # a prompt to score against is weighted too
        for limit in GENERATION_LIMITS
        if limit.path == GENERATIONS and limit.params == PROMPTS and limit.says == "weight"
    ),
    UnstatedLimit(
        "post", _SCORE, ("images", "images.*"), "", "base64 images that decode (PNG, JPEG, WebP)", BY_DECODING
    ),
    UnstatedLimit("post", _SCORE, ("images.*",), "", _IMAGE_SIZE, "an image's size is known by reading it", status=413),
    UnstatedLimit("post", _FACES, ("image",), "no face models", "a stack serving `easel up --faces DIR`", _FACE_MODELS),
    UnstatedLimit("post", _FACES, ("image",), "", "a base64 image that decodes (PNG, JPEG, WebP)", BY_DECODING),
    UnstatedLimit("post", _FACES, ("image",), "", _IMAGE_SIZE, "an image's size is known by reading it", status=413),
)
"""Every limit of the API that no schema states."""


def unstated_limit(method: str, path: str, status: int, error: dict) -> UnstatedLimit | None:
    """The limit of :data:`UNSTATED_LIMITS` a refusal is (``path`` as the document names the route), or None."""
    return next((limit for limit in UNSTATED_LIMITS if limit.refuses(method, path, status, error)), None)


def refuses_for_an_unstated_limit(method: str, path: str, status: int, body: dict) -> bool:
    """Whether an answer (``status``, its JSON ``body``) refuses a request for a limit of :data:`UNSTATED_LIMITS`."""
    error = body.get("error") if isinstance(body, dict) else None
    if status not in (400, 413) or not isinstance(error, dict):
        return False
    return unstated_limit(method, path, status, error) is not None
