"""The limits of a generation's fields (the JSON route and the edits form) and of a video's that no schema states.

Part of :data:`serve.contract.limits.UNSTATED_LIMITS`, the API's one table of them.
"""

from __future__ import annotations

import dataclasses

from serve.contract.unstated import BY_DECODING, GENERATIONS, VIDEOS, UnstatedLimit
from serve.protocol.schema import MAX_FEW_STEPS
from serve.protocol.video import SVD_CONDITIONING

SVD_FIELDS = tuple(SVD_CONDITIONING)

BEYOND_FOUR_CONDITIONS = (
    "a fifth condition between this body's fields is more than schemathesis' generator draws from (its canonical form "
    "runs out of intersections), and the contract test needs to draw generations; the schema states four"
)
PROMPTS = ("prompt", "negative_prompt", "prompts.*.prompt")
"""A generation's prompts, whose weighting is parsed."""
GENERATION_LIMITS = (
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
        PROMPTS,
        "weight",
        "AUTOMATIC1111's weighting, its brackets balanced (a literal one escaped, \\( \\) \\[ \\]) and each "
        "weight, nesting multiplied in, a number in [0, 10]",
        "a prompt's syntax is known by parsing it",
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("webhook",),
        "webhook: ",
        "a URL on a host and port the stack allows, `easel up --webhook-hosts` (none by default; a host alone: "
        "ports 80 and 443), and a key with a webhook secret, `easel keys webhook-secret`",
        "the allowed hosts and the keys' secrets are the stack's",
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
        ("character.name",),
        "",
        "a character of the key's, GET /v1/characters, made for the model drawing it, whose LoRA and pictures fit "
        "beside the request's loras and ip_adapters",
        "the characters are the stack's store's, each key's own",
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
        ("webhook",),
        "is only accepted with background",
        "a webhook is a background job's: it needs `background: true`",
        BEYOND_FOUR_CONDITIONS,
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("output_compression",),
        "is only accepted with output_format",
        "`output_compression` is the quality of a lossy encoding: it needs `output_format` jpeg or webp",
        BEYOND_FOUR_CONDITIONS,
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("candidates",),
        "are drawn from text only",
        "`candidates` above 1 are drawn from text only: no input `image`, no `approximate_cache`",
        BEYOND_FOUR_CONDITIONS,
    ),
    UnstatedLimit(
        "post",
        GENERATIONS,
        ("ip_adapter_image",),
        "",
        "a PNG, JPEG or WebP image within the field's limits, on a stack started with --ip-adapter",
        f"{BY_DECODING}; the IP-Adapter is the stack's",
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
        BY_DECODING,
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
        ("controlnets.*.start",),
        "must be below end",
        "a ControlNet's start is below its end",
        "a rule across two fields of an object",
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
        f"{BY_DECODING}; the output's size is the request's size, or the model's",
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
VIDEO_LIMITS = (
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
        SVD_FIELDS,
        "Stable Video Diffusion's conditioning",
        "only an image-to-video (Stable Video Diffusion) model takes them",
        "the models are the stack's, `easel up --model NAME=DIR`",
    ),
    UnstatedLimit(
        "post",
        VIDEOS,
        ("input_reference", "strength", "motion_adapter", "negative_prompt", "character", "ip_adapters", "identity"),
        "animates a still",
        "an image-to-video (SVD) model takes an input_reference, and no strength, motion_adapter, negative_prompt, "
        "character, ip_adapters or identity",
        "the models are the stack's, and what each reads is its family's",
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
        BY_DECODING,
    ),
    UnstatedLimit(
        "post",
        VIDEOS,
        ("steps",),
        "sampler takes at most",
        f"the few-step samplers (lcm, tcd) take at most {MAX_FEW_STEPS} steps",
        "a rule across two fields",
    ),
    UnstatedLimit(
        "post",
        VIDEOS,
        ("interpolate.interpolator",),
        "interpolate.interpolator:",
        "an interpolator GET /v1/upscalers lists as ready (interpolators; absent: its first)",
        "the interpolators are the stack's, `easel up --interpolator NAME=FILE`",
    ),
    UnstatedLimit(
        "post",
        f"{VIDEOS}/{{video_id}}/interpolate",
        ("interpolator",),
        "interpolator:",
        "an interpolator GET /v1/upscalers lists as ready (interpolators; absent: its first)",
        "the interpolators are the stack's, `easel up --interpolator NAME=FILE`",
    ),
    UnstatedLimit(
        "post",
        f"{VIDEOS}/{{video_id}}/interpolate",
        ("video_id",),
        "interpolated already",
        "a video as drawn, not one interpolated already (interpolate its source at the factor wanted)",
        "what a video was made from is the stack's record of it",
    ),
    *(
        dataclasses.replace(limit, path=VIDEOS)
        for limit in GENERATION_LIMITS
        if limit.params
        in (("model",), ("loras.*.name",), ("loras",), ("character.name",), ("scheduler",), ("size",), PROMPTS)
    ),
)
"""Limits of a video's fields (``POST /v1/videos``): its own, and the generation's it runs as."""
