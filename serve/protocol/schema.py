"""The images API request (OpenAI Images shape plus Easel's extensions) and its limits.

One request model serves ``/v1/images/generations`` (JSON: images in base64), ``/v1/images/edits`` (multipart, as
OpenAI's edits take it: the files become this model's base64 fields) and gRPC's ``Generate``. Input images
(``image``, ``mask``, ``outpaint``: img2img, inpainting, outpainting) and ``controlnets`` are checked here for shape;
decoding them is the replica's (:mod:`serve.text_to_image.images`). Its parts: sizes and outpainting's margins
(:mod:`serve.protocol.sizes`), LoRAs and ControlNets (:mod:`serve.protocol.adapter_choices`), one
prompt or many (:mod:`serve.protocol.prompt_batch`), how its images are answered
(:mod:`serve.protocol.delivery`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, Strict, StrictBool, field_validator, model_validator
from pydantic_core import PydanticCustomError

from serve.adapters.ip_adapter import MAX_REFERENCES
from serve.finishing.schema import RESTORE_FACES_FIELD, UPSCALE_FIELD, RestoreFaces, UpscaleChoice
from serve.images import BASE64_IMAGE, MAX_IMAGE_BYTES, MAX_IMAGE_CHARS, Base64Image, content_digest
from serve.images import checked_base64 as _base64_image
from serve.integers import JsonInt, json_int
from serve.priority import Priority
from serve.protocol import ip_scale
from serve.protocol.adapter_choices import MAX_CONTROLNETS, MAX_LORAS, ControlNetChoice, LoraChoice, Unit
from serve.protocol.best_of import BestOf
from serve.protocol.character_requests import CharacterChoice, IdentityChoice
from serve.protocol.delivery import Delivery
from serve.protocol.ip_scale import (
    MAX_IP_ADAPTERS,
    MAX_IP_SCALE,
    REFERENCE_PATTERN,
    IpAdapterChoice,
    IpScale,
    IpScaleMap,
)
from serve.protocol.prompt_batch import MAX_PROMPT_CHARS, MAX_SEED, ONE_OF_THEM, PromptBatch
from serve.protocol.prompt_weights import checked_prompt
from serve.protocol.sizes import MAX_SIDE, MIN_SIDE, SIDE_MULTIPLE, SIZE_PATTERN, Outpaint, checked_size
from serve.vectorize.schema import BASE64_PATTERN

MAX_IMAGES = 4
MAX_STEPS = 150
MAX_GUIDANCE = 50.0
MAX_TAG_CHARS = 32  # quality and style: OpenAI's words (hd, vivid), taken for its clients and otherwise unused
MAX_WEBHOOK_CHARS = 2048
WEBHOOK_PATTERN = r"^https?://\S+$"
MAX_USER_CHARS = 256  # user: an end user's id, as OpenAI's clients send it (an experiment's assignment sticks to it)
FEW_STEP_SCHEDULERS = ("lcm", "tcd")
"""Samplers of latent consistency models (:data:`serve.text_to_image.samplers.FEW_STEP_SAMPLERS`)."""
SCHEDULER_NAMES = ("ddim", "euler", "dpmpp_2m", *FEW_STEP_SCHEDULERS)
MAX_CACHE_INTERVAL = 10
MAX_FEW_STEPS = 50
"""The few-step samplers' most steps: their ``original_inference_steps``, the distillation's DDIM skeleton."""
MAX_REQUEST_BYTES = 32 << 20
"""A generation's or an edit's body on the wire: all its images together (base64 in JSON, files in multipart)."""
DEFAULT_STRENGTH = 0.8
"""img2img's default (diffusers' StableDiffusionImg2ImgPipeline); with a mask: 1.0, the masked area redrawn."""
DEPENDENT_FIELDS = [
    {
        "if": {"required": ["vectorize_tier"], "properties": {"vectorize_tier": {"not": {"type": "null"}}}},
        "then": {"required": ["output_format"], "properties": {"output_format": {"const": "svg"}}},
    },
    {
        "if": {"required": ["ip_adapter_scale"], "properties": {"ip_adapter_scale": {"not": {"const": 1}}}},
        "then": {
            "anyOf": [
                {"required": ["ip_adapter_image"], "properties": {"ip_adapter_image": {"type": "string"}}},
                {"required": ["ip_adapter_reference"], "properties": {"ip_adapter_reference": {"type": "string"}}},
            ]
        },
    },
    {
        "if": {"required": ["ip_adapter_image"], "properties": {"ip_adapter_image": {"type": "string"}}},
        "then": {"properties": {"ip_adapter_reference": {"type": "null"}}},
    },
    {
        "if": {"required": ["scheduler"], "properties": {"scheduler": {"enum": list(FEW_STEP_SCHEDULERS)}}},
        "then": {"properties": {"num_inference_steps": {"maximum": MAX_FEW_STEPS}}},
    },
]
"""Fields that need or bound another, as the schema states them: vectorize_tier needs output_format svg, an
ip_adapter_scale other than its default needs an ip_adapter_image or ip_adapter_reference (one of them, not both),
a few-step sampler takes at most :data:`MAX_FEW_STEPS` steps. Four is as many as schemathesis draws from beside
``prompt``/``prompts``' one-of (its canonical form runs out at a fifth): a webhook's need of background and
candidates' of text only are limits the document states in words (:mod:`serve.contract.generation_limits`)."""


@dataclass(frozen=True)
class Sampling:
    """How a generation samples, with the API's defaults.

    A request's fields default to these; the benchmarks' and the evaluation's settings start from them.
    """

    steps: int = 20
    guidance_scale: float = 7.5
    scheduler: str = "ddim"


class GenerationRequest(PromptBatch, Delivery, BestOf):
    """``POST /v1/images/generations`` body. Types are strict: ``"7"`` is not a number, ``true`` not a count.

    How its images are answered (their format, base64 or a URL, their record) is its :class:`Delivery` part; what
    it draws, one prompt or many, its :class:`PromptBatch` part; best-of-n (``candidates``) its :class:`BestOf` part.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra={"allOf": [ONE_OF_THEM, *DEPENDENT_FIELDS]})

    n: JsonInt = Field(1, ge=1, le=MAX_IMAGES, description="Number of images.")
    size: str | None = Field(
        None,
        json_schema_extra={"pattern": SIZE_PATTERN},  # documented; checked by checked_size
        description=f"WIDTHxHEIGHT, each a multiple of {SIDE_MULTIPLE} in [{MIN_SIDE}, {MAX_SIDE}]; "
        "default: the served model's native size (64x64 for the embedded default).",
    )
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="What to steer away from (weighted too).")
    num_inference_steps: JsonInt = Field(Sampling.steps, ge=1, le=MAX_STEPS, description="Denoising steps.")
    guidance_scale: Annotated[float, Strict()] = Field(
        Sampling.guidance_scale,
        ge=0.0,
        le=MAX_GUIDANCE,
        allow_inf_nan=False,
        description="Classifier-free guidance; <= 1 disables it.",
    )
    guidance_cutoff: Annotated[float, Strict()] | None = Field(
        None,
        gt=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="Adaptive guidance: the share of the steps that run guided (the first ones); the rest run one "
        "UNet row per image instead of two. 1: every step (today's images). Default: the stack's "
        "(easel up --guidance-cutoff, 1 unless set).",
    )
    cache_interval: JsonInt = Field(
        1,
        ge=1,
        le=MAX_CACHE_INTERVAL,
        description="Step caching (DeepCache): the whole UNet runs every cache_interval-th step and its deep features "
        "serve the steps between, which run a shallow UNet. 1: the whole UNet every step. Needs a stack started with "
        "--step-cache; not with loras, an IP-Adapter reference, ControlNets or a distilled UNet (lcm, tcd).",
    )
    approximate_cache: StrictBool | None = Field(
        None,
        description="Approximate caching across requests: true: may start from the kept latents of the most similar "
        "earlier prompt (same model, size, sampler, steps, guidance, adapters), skipping the stack's share of the "
        "steps (the Easel-Steps-Skipped header says how many); false: never. Default: on where the stack keeps "
        "latents (easel up --approximate-cache) and the request has no seed (a seed asks for the same image every "
        "time). Text to image only: not with input images, a mask, an IP-Adapter reference or ControlNets.",
    )
    seed: json_int(ge=0, le=MAX_SEED) | None = Field(None, description="Random seed; drawn at random when omitted.")
    scheduler: Literal[SCHEDULER_NAMES] = Field(
        Sampling.scheduler,
        description=f"Sampler. lcm and tcd are few-step samplers (at most {MAX_FEW_STEPS} steps; 4 is typical) for "
        "latent consistency models: a model's distilled UNet where its folder ships one (unet_lcm/, made by easel "
        "train lcm; its guidance is distilled in, so guidance_scale and negative_prompt are not used), else the "
        "model's UNet as loaded, e.g. with an LCM-LoRA in loras (guided as diffusers' pipeline guides it: keep "
        "guidance_scale near 1).",
    )
    background: StrictBool = Field(
        False,
        description="Run as a background job: answered at once with 202 and the job (GET /v1/jobs/{id} for the "
        "result, /events for its progress). An Idempotency-Key header returns the same job for the same body.",
    )
    fallback: StrictBool = Field(
        True, description="May be answered by its model's fallback chain when the model cannot serve (false: a 503)."
    )
    priority: Priority = Field(
        Priority.NORMAL,
        description="Under load, higher-priority generations start first and their denoising steps go first.",
    )
    webhook: str | None = Field(
        None,
        max_length=MAX_WEBHOOK_CHARS,
        pattern=WEBHOOK_PATTERN,
        description="With background: an http(s) URL, on a host and port the stack allows (easel up "
        "--webhook-hosts), that the job is POSTed to when it ends (succeeded, failed or canceled), with the URL as "
        "webhook_url, signed as Standard Webhooks specifies with the API key's webhook secret (easel keys "
        "webhook-secret) and retried with backoff; each delivery's webhook-id is the same on every attempt.",
    )
    loras: list[LoraChoice] = Field(
        [],
        max_length=MAX_LORAS,
        description=f"Up to {MAX_LORAS} LoRA adapters (names from GET /v1/loras), combined with their own weights; "
        "empty: the base model.",
    )
    ip_adapter_image: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_IMAGE_CHARS,
        json_schema_extra={"pattern": BASE64_PATTERN} | BASE64_IMAGE,  # documented; checked by _ip_image_is_base64
        description=f"IP-Adapter reference image, base64 PNG/JPEG/WebP of at most {MAX_IMAGE_BYTES >> 20} MiB "
        "(sides up to 4096); needs a stack started with --ip-adapter.",
    )
    ip_adapter_reference: str | None = Field(
        None,
        pattern=REFERENCE_PATTERN,
        description="Instead of ip_adapter_image: a reference stored with POST /v1/references by the same key "
        "(its embeddings, encoded once).",
    )
    ip_adapter_scale: IpScale | IpScaleMap = Field(
        1.0,
        description="With ip_adapter_image or ip_adapter_reference: the reference's weight in "
        f"[0, {MAX_IP_SCALE:g}], or InstantStyle's per-block mapping as diffusers' set_ip_adapter_scale takes it, "
        'e.g. {"up": {"block_0": [0.0, 1.0, 0.0]}}.',
    )
    ip_adapters: list[IpAdapterChoice] = Field(
        [],
        max_length=MAX_IP_ADAPTERS,
        description=f"Up to {MAX_IP_ADAPTERS} IP-Adapters of the model (easel up --ip-adapter NAME=DIR), each with "
        f"its references (up to {MAX_REFERENCES}), scale and region masks, as diffusers' load_ip_adapter with lists "
        "and ip_adapter_masks; instead of ip_adapter_image, ip_adapter_reference and ip_adapter_scale.",
    )
    character: CharacterChoice | None = Field(
        None,
        description="A character of POST /v1/characters: its trigger words before the prompt, its LoRA after "
        "loras, its pictures (encoded when it was made) one more of ip_adapters at this scale.",
    )
    identity: IdentityChoice | None = Field(None, description="A face to keep, by the model's IP-Adapter FaceID.")
    image: list[Base64Image] = Field(
        [],
        max_length=MAX_IMAGES,
        description="Input images (img2img; with mask, inpainting): base64 PNG/JPEG/WebP, each at most "
        f"{MAX_IMAGE_BYTES >> 20} MiB and 4096 px a side, alpha flattened onto white. Several: one batch, n images "
        "from each (image i of the answer starts from image i modulo their number); all the same size.",
    )
    mask: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_IMAGE_CHARS,
        json_schema_extra=BASE64_IMAGE,
        description="With image: where to draw, base64 PNG of the image's size: its fully transparent pixels "
        "(OpenAI's edits), or for a mask without alpha its white pixels (diffusers' convention).",
    )
    strength: Unit | None = Field(
        None,
        description=f"With image: how much of the schedule runs from it, as diffusers' strength (default "
        f"{DEFAULT_STRENGTH}; with a mask or outpaint 1.0). steps x strength steps run; none: the image through "
        "the VAE.",
    )
    outpaint: Outpaint | None = Field(
        None,
        description='With image: pixels (multiples of 8) to add on each side and draw, e.g. {"left": 64}: the '
        "image padded (its edge pixels repeated) and the new area masked, joined to any mask given.",
    )
    controlnets: list[ControlNetChoice] = Field(
        [],
        max_length=MAX_CONTROLNETS,
        description=f"Up to {MAX_CONTROLNETS} ControlNets of GET /v1/controlnets, their residuals added up "
        "(diffusers' MultiControlNetModel).",
    )
    scores: StrictBool = Field(
        False, description="Each image's scores as generated, in its object: clip_score, aesthetic (easel up --scorer)."
    )
    upscale: UpscaleChoice | None = Field(None, description=UPSCALE_FIELD)
    restore_faces: RestoreFaces | None = Field(None, description=RESTORE_FACES_FIELD)
    model: str | None = Field(
        None,
        max_length=64,
        description="The model to generate with, one GET /v1/models lists, or an experiment (a model alias: one of its "
        "variants serves; GET /v1/experiments). Absent: the stack's default model.",
    )
    # Accepted for OpenAI client compatibility.
    quality: str | None = Field(None, max_length=MAX_TAG_CHARS, description="OpenAI's quality word; unused.")
    style: str | None = Field(None, max_length=MAX_TAG_CHARS, description="OpenAI's style word; unused.")
    user: str | None = Field(
        None, max_length=MAX_USER_CHARS, description="An end user's id (OpenAI's): its experiment variant sticks to it."
    )

    @field_validator("negative_prompt")
    @classmethod
    def _negative_prompt_reads(cls, value: str) -> str:
        return checked_prompt(value, "negative_prompt")

    @field_validator("loras")
    @classmethod
    def _loras_once_each(cls, value: list[LoraChoice]) -> list[LoraChoice]:
        names = [lora.name for lora in value]
        if len(set(names)) != len(names):
            raise ValueError("each adapter may appear once")
        return value

    @field_validator("ip_adapter_image")
    @classmethod
    def _ip_image_is_base64(cls, value: str | None) -> str | None:
        return None if value is None else _base64_image(value)

    @field_validator("image")
    @classmethod
    def _images_are_base64(cls, value: list[str]) -> list[str]:
        return [_base64_image(image, f"image {index}") for index, image in enumerate(value)]

    @field_validator("mask")
    @classmethod
    def _mask_is_base64(cls, value: str | None) -> str | None:
        return None if value is None else _base64_image(value)

    @model_validator(mode="after")
    def _image_fields_with_an_image(self) -> GenerationRequest:
        """A mask, strength or outpaint needs an image; n images from each input image stay within the limit."""
        for name in ("mask", "strength", "outpaint"):
            if getattr(self, name) is not None and not self.image:
                raise PydanticCustomError("needs_image", "only accepted with an image", {"field": name})
        if self.rows > MAX_IMAGES:
            each = f"{self.n} images from each of {max(1, len(self.image))} input images"
            message = f"{each} for each of {self.prompt_count} prompts is over {MAX_IMAGES} images"
            raise PydanticCustomError("too_many", message, {"field": "prompts" if self.prompts else "n"})
        if self.prompts and self.upscale is not None and self.upscale.denoise is not None:
            message = "not with upscale.denoise (its second pass redraws with one prompt)"
            raise PydanticCustomError("one_prompt", message, {"field": "prompts"})
        return self

    @model_validator(mode="after")
    def _webhook_of_a_job(self) -> GenerationRequest:
        if self.webhook is not None and not self.background:
            message = "is only accepted with background: true (a job's end is what it tells of)"
            raise PydanticCustomError("needs_background", message, {"field": "webhook"})
        return self

    @model_validator(mode="after")
    def _few_steps_for_few_step_samplers(self) -> GenerationRequest:
        if self.scheduler in FEW_STEP_SCHEDULERS and (steps := self.num_inference_steps) > MAX_FEW_STEPS:
            message = f"the {self.scheduler} sampler takes at most {MAX_FEW_STEPS} steps, not {steps}"
            raise PydanticCustomError("too_many_steps", message, {"field": "num_inference_steps"})
        return self

    @field_validator("ip_adapter_scale", mode="before")
    @classmethod
    def _ip_scale_shape(cls, value):
        """Name what is wrong (where, and the limit) before the union's own, less readable, errors."""
        return ip_scale.checked_shape(value)

    @model_validator(mode="after")
    def _ip_fields_together(self) -> GenerationRequest:
        ip_scale.check_fields(self)
        return self

    @field_validator("size")
    @classmethod
    def _size_in_range(cls, value: str | None) -> str | None:
        return None if value is None else checked_size(value)

    def width_height(self, native_size: int) -> tuple[int, int]:
        """The requested (width, height) in pixels; ``native_size`` square when no size was given.

        A request with input images and no size takes theirs (:func:`serve.text_to_image.images.output_size`).
        """
        if self.size is None:
            return native_size, native_size
        width, height = map(int, self.size.split("x"))
        return width, height

    @property
    def rows(self) -> int:
        """Images made: ``n`` from each input image, for each prompt."""
        return self.n * max(1, len(self.image)) * self.prompt_count

    @property
    def inpainting(self) -> bool:
        """Whether part of the image is redrawn (a mask, or outpainting's new area)."""
        return self.mask is not None or self.outpaint is not None

    @property
    def effective_strength(self) -> float:
        """The strength a request with images runs at (1.0 without images)."""
        if not self.image:
            return 1.0
        return self.strength if self.strength is not None else 1.0 if self.inpainting else DEFAULT_STRENGTH

    @property
    def denoising_steps(self) -> int:
        """The steps that run: img2img's strength runs part of the schedule, as diffusers' ``get_timesteps``."""
        return min(int(self.num_inference_steps * self.effective_strength), self.num_inference_steps)

    @property
    def passes(self) -> int:
        """UNet-sized engine calls per step: the UNet, each ControlNet and an InstantID's IdentityNet."""
        return 1 + len(self.controlnets) + bool(self.identity and self.identity.keypoints)

    def images_hashed(self) -> dict:
        """The request as JSON with each image replaced by its content's SHA-256 (an image's record keeps it)."""
        body = self.model_dump(mode="json")
        body["image"] = [content_digest(image) for image in self.image]
        for part, name in ((body, "mask"), (body, "ip_adapter_image"), (body["identity"] or {}, "aligned_face")):
            if part.get(name) is not None:
                part[name] = content_digest(part[name])
        for control in body["controlnets"]:
            control["image"] = content_digest(control["image"])
        for choice in body["ip_adapters"]:
            choice["images"], choice["masks"] = (
                [content_digest(i) for i in choice[part]] for part in ("images", "masks")
            )
        return body
