"""Videos (AnimateDiff, SVD) through OpenAI's videos API: the body, the generation it becomes, the files.

``POST /v1/videos`` takes OpenAI's fields (``prompt``, ``model``, ``size``, ``seconds``) and Easel's (``frames``,
``fps``, ``seed``, ``steps``, ``scheduler``, ``guidance_scale``, ``negative_prompt``, ``loras``, ``motion_adapter``),
as JSON or as the multipart form the ``openai`` client sends; ``input_reference`` (an image, with Easel's
``strength``) makes it image-to-video, the image the generation's img2img input. It becomes a
:class:`VideoGeneration`: a generation request whose frames are one axis of its latents, denoised together by the
motion adapter's UNet (``unet_motion_<name>``), run as a background job of the job store. The job's answer is its
frames as PNGs (lossless); ``GET /v1/videos/{id}/content`` encodes them as an MP4 (H.264, PyAV) or, with
``variant=frames``, zips them (Easel's: the exact frames, for parity). On an image-to-video model (Stable Video
Diffusion) the ``input_reference`` is the still every frame is drawn from, no prompt is read (it is the video's
caption), and SVD's own conditioning applies: ``motion_bucket_id``, ``noise_aug_strength``, ``decode_chunk_size``
and ``min_guidance_scale`` (its guidance grows over the frames up to ``guidance_scale``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Annotated, Literal, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from serve.errors import InvalidInput, invalid_input
from serve.finishing.schema import (
    INTERPOLATE_FIELD,
    RESTORE_FACES_FIELD,
    FrameUpscale,
    Interpolate,
    RestoreFaces,
    UpscaleChoice,
    form_json,
)
from serve.images import BASE64_IMAGE, MAX_IMAGE_BYTES, MAX_IMAGE_CHARS, checked_base64
from serve.priority import Priority
from serve.protocol.adapter_choices import MAX_LORAS, LoraChoice
from serve.protocol.character_requests import CharacterChoice, IdentityChoice
from serve.protocol.ip_scale import MAX_IP_ADAPTERS, IpAdapterChoice
from serve.protocol.prompt_batch import MAX_PROMPT_CHARS, MAX_SEED, PROMPT_PATTERN
from serve.protocol.prompt_weights import checked_prompt
from serve.protocol.schema import (
    DEFAULT_STRENGTH,
    MAX_GUIDANCE,
    MAX_STEPS,
    SCHEDULER_NAMES,
    GenerationRequest,
    Sampling,
)
from serve.protocol.sizes import SIZE_PATTERN

MAX_FRAMES = 32
"""A video's most frames: AnimateDiff's motion modules' positions (``MotionAdapter``'s ``motion_max_seq_length``)."""
DEFAULT_FRAMES = 16
DEFAULT_FPS = 8
MAX_MOTION_BUCKET = 255  # SVD's micro-conditioning: how much the video moves (diffusers' default 127)
MAX_NOISE_AUG = 1.0  # SVD's: the noise added to the still before it is encoded (default 0.02)
MAX_FPS = 30
MAX_VIDEO_FORM_FIELDS = 32
INPUT_REFERENCE = "input_reference"


class VideoFamily(Protocol):
    """What a video's generation reads of its model's family (:class:`serve.text_to_image.families.Family`).

    An image-to-video family (SVD) also says its default frames and size (``default_frames``, ``default_size``).
    """

    motion_adapters: Collection[str]
    pipeline_class: str
    animates_images: bool


SVD_CONDITIONING = {
    "motion_bucket_id": 127,
    "noise_aug_strength": 0.02,
    "decode_chunk_size": None,
    "min_guidance_scale": 1.0,
}
"""An image-to-video model's conditioning and diffusers' defaults (``decode_chunk_size`` None: every frame at once)."""
ANIMATEDIFF_DEFAULTS = {"guidance_scale": Sampling.guidance_scale, "scheduler": Sampling.scheduler}
SVD_DEFAULTS = {"guidance_scale": 3.0, "scheduler": "euler"}
"""``guidance_scale`` and ``scheduler`` when a video asks none: the stills' for AnimateDiff, the pipeline's for SVD."""


class VideoGeneration(GenerationRequest):
    """A generation request that makes one video: ``frames`` frames (shown at ``fps``) with ``motion_adapter``."""

    frames: int = Field(ge=1, le=MAX_FRAMES)
    fps: int = Field(ge=1, le=MAX_FPS)
    motion_adapter: str = ""  # AnimateDiff's; "": an image-to-video model's (its conditioning below)
    motion_bucket_id: int | None = Field(None, ge=0, le=MAX_MOTION_BUCKET)
    noise_aug_strength: float | None = Field(None, ge=0.0, le=MAX_NOISE_AUG)
    decode_chunk_size: int | None = Field(None, ge=1, le=MAX_FRAMES)
    min_guidance_scale: float | None = Field(None, ge=0.0, le=MAX_GUIDANCE)
    interpolate: Interpolate | None = None
    source_video: str | None = None  # made from that video's frames (POST /v1/videos/{id}/interpolate): none drawn

    @property
    def shown_frames(self) -> int:
        """The frames the video has: those drawn, with an interpolation's between them."""
        return self.interpolate.frames_from(self.frames) if self.interpolate else self.frames

    @property
    def shown_size(self) -> str:
        """The frames' size: ``size``, times an upscale's scale (named at admission)."""
        if self.upscale is None or self.upscale.scale is None:
            return self.size
        width, height = (round(int(side) * self.upscale.scale) for side in self.size.split("x"))
        return f"{width}x{height}"

    @property
    def shown_fps(self) -> int:
        """The frames per second it is shown at: ``fps``, times an interpolation's factor."""
        return self.fps * (self.interpolate.factor if self.interpolate else 1)

    @property
    def seconds(self) -> str:
        """The clip's duration, as OpenAI's video object says it (``"2"``, ``"0.5"``)."""
        return f"{self.shown_frames / self.shown_fps:g}"


class VideoRequest(BaseModel):
    """``POST /v1/videos`` body: OpenAI's fields and Easel's (numbers may come as text, as a form sends them).

    ``frames`` defaults to ``seconds`` x ``fps`` (no ``seconds``: 16); both given, they must agree.
    """

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        json_schema_extra={"pattern": PROMPT_PATTERN},
        description="What the video shows.",
    )
    model: str | None = Field(
        None, description="A served model (an SD 1.x one with motion adapters); default: the default model."
    )
    size: str | None = Field(
        None,
        json_schema_extra={"pattern": SIZE_PATTERN},  # checked by the generation it runs as
        description="WIDTHxHEIGHT (as the images API takes it); default: the model's native size.",
    )
    seconds: int | None = Field(
        None, ge=1, le=MAX_FRAMES, description=f"Duration: frames / fps (at most {MAX_FRAMES} frames)."
    )
    frames: int | None = Field(
        None, ge=1, le=MAX_FRAMES, description=f"Frames, at most {MAX_FRAMES}; default: seconds x fps, else 16."
    )
    fps: int = Field(DEFAULT_FPS, ge=1, le=MAX_FPS, description="Frames per second of the MP4.")
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = Field(None, description="Random seed; drawn when omitted.")
    steps: int = Field(Sampling.steps, ge=1, le=MAX_STEPS, description="Denoising steps.")
    scheduler: Literal[SCHEDULER_NAMES] | None = Field(
        None, description=f"A sampler the model runs; default: {Sampling.scheduler} (SVD: euler, its only one)."
    )
    guidance_scale: float | None = Field(
        None,
        ge=0.0,
        le=MAX_GUIDANCE,
        allow_inf_nan=False,
        description=f"Default {Sampling.guidance_scale} (SVD: 3.0, its last frame's: it grows over the frames).",
    )
    motion_bucket_id: int | None = Field(
        None, ge=0, le=MAX_MOTION_BUCKET, description="SVD: how much the video moves (default 127)."
    )
    noise_aug_strength: float | None = Field(
        None,
        ge=0.0,
        le=MAX_NOISE_AUG,
        allow_inf_nan=False,
        description="SVD: noise added to the still before it is encoded (default 0.02; more: freer motion).",
    )
    decode_chunk_size: int | None = Field(
        None, ge=1, le=MAX_FRAMES, description="SVD: frames decoded together per VAE call (default: all)."
    )
    min_guidance_scale: float | None = Field(
        None, ge=0.0, le=MAX_GUIDANCE, allow_inf_nan=False, description="SVD: the first frame's guidance (default 1.0)."
    )
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    loras: list[LoraChoice] = Field(
        [],
        max_length=MAX_LORAS,
        description=f"Up to {MAX_LORAS} of the stack's LoRAs (uploaded ones too), motion LoRAs among them, as "
        "AnimateDiff loads them.",
    )
    motion_adapter: str | None = Field(None, description="A motion adapter of the model; default: its first.")
    character: CharacterChoice | None = Field(
        None, description="A character of POST /v1/characters: its trigger words, LoRA and pictures, as a still's."
    )
    ip_adapters: list[IpAdapterChoice] = Field(
        [], max_length=MAX_IP_ADAPTERS, description="IP-Adapters and their references, as a still's, in every frame."
    )
    identity: IdentityChoice | None = Field(None, description="A face to keep in every frame, as a still's identity.")
    input_reference: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_IMAGE_CHARS,
        json_schema_extra=BASE64_IMAGE,
        description=f"Image-to-video: a PNG/JPEG/WebP (base64 in JSON, a file in the form) of at most "
        f"{MAX_IMAGE_BYTES >> 20} MiB, resized to the video's size and encoded once; every frame starts from its "
        "latent noised to strength (diffusers' AnimateDiffVideoToVideoPipeline given the image as every frame).",
    )
    strength: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        allow_inf_nan=False,
        description=f"With input_reference: how much of the schedule runs from it, in (0, 1] (default "
        f"{DEFAULT_STRENGTH}): steps x strength steps run.",
    )
    upscale: FrameUpscale | None = Field(
        None, description="Each frame upscaled (GET /v1/upscalers), tiled and batched as a still's; before interpolate."
    )
    restore_faces: RestoreFaces | None = Field(None, description=f"Per frame. {RESTORE_FACES_FIELD}")
    interpolate: Interpolate | None = Field(None, description=INTERPOLATE_FIELD)
    priority: Priority = Priority.NORMAL

    @field_validator("interpolate", "upscale", "restore_faces", "character", "ip_adapters", "identity", mode="before")
    @classmethod
    def _form_json(cls, value: object) -> object:
        """A multipart form carries the objects as JSON text."""
        return form_json(value)

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _prompt_reads(cls, value: str, info: ValidationInfo) -> str:
        return checked_prompt(value, info.field_name)

    @field_validator("input_reference")
    @classmethod
    def _reference_is_base64(cls, value: str | None) -> str | None:
        return None if value is None else checked_base64(value)

    @model_validator(mode="after")
    def _frames_agree(self) -> VideoRequest:
        if self.seconds is not None and self.frames is not None and self.frames != self.seconds * self.fps:
            raise InvalidInput(
                f"seconds: {self.seconds} s at {self.fps} fps is {self.seconds * self.fps} frames, but frames is "
                f"{self.frames} (send one of them, or frames = seconds x fps)",
                "seconds",
            )
        frames = self.frame_count
        if frames > MAX_FRAMES:
            field = "frames" if self.frames is not None else "seconds"
            raise InvalidInput(
                f"{field}: {frames} frames is over the limit of {MAX_FRAMES} (AnimateDiff's motion modules)", field
            )
        return self

    @property
    def frame_count(self) -> int:
        """The video's frames: ``frames``, else ``seconds`` x ``fps``, else 16."""
        return self.frames_or(DEFAULT_FRAMES)

    def frames_or(self, default: int) -> int:
        """The video's frames: ``frames``, else ``seconds`` x ``fps``, else ``default`` (the model's)."""
        if self.frames is not None:
            return self.frames
        return self.seconds * self.fps if self.seconds is not None else default

    @model_validator(mode="after")
    def _strength_with_a_reference(self) -> VideoRequest:
        if self.strength is not None and self.input_reference is None:
            raise InvalidInput("strength: only accepted with an input_reference (image-to-video)", "strength")
        return self

    def generation(self, model: str, native_size: int, family: VideoFamily) -> VideoGeneration:
        """The generation request this video runs as on ``model`` (of ``family``, ``native_size``).

        AnimateDiff's (:meth:`_animated`) or an image-to-video model's (:meth:`_still_animated`); what a field
        does not say, the model's kind decides.
        """
        kind = self._still_animated(model, family) if family.animates_images else self._animated(model, family)
        decided = {
            "model": model,
            "size": self.size or f"{native_size}x{native_size}",
            "frames": self.frame_count,
            "num_inference_steps": self.steps,
            "image": [self.input_reference] if self.input_reference else [],
            "upscale": UpscaleChoice(**self.upscale.model_dump()) if self.upscale else None,
            "background": True,
        } | kind
        same = (VideoRequest.model_fields.keys() & VideoGeneration.model_fields.keys()) - decided.keys()
        try:  # the fields a video's body shares with a generation's, by name, pass as they are
            return VideoGeneration(**{name: getattr(self, name) for name in same}, **decided)
        except ValidationError as error:  # what the generation's rules refuse (a size, a sampler): 400 naming it
            refused = invalid_input(error)
            if refused.field == "num_inference_steps":  # the generation's name of the video's steps
                refused = InvalidInput(refused.message.replace("num_inference_steps", "steps", 1), "steps")
            raise refused from None

    def _defaults(self, defaults: dict) -> dict:
        """``guidance_scale`` and ``scheduler``: this body's, else the model kind's ``defaults``."""
        return {name: value if (value := getattr(self, name)) is not None else defaults[name] for name in defaults}

    def _animated(self, model: str, family: VideoFamily) -> dict:
        """AnimateDiff's fields: its motion adapter (this body's, else the model's first; none: a 400 naming it).

        SVD's conditioning fields are a 400 naming the first given.
        """
        if given := next((name for name in SVD_CONDITIONING if getattr(self, name) is not None), None):
            raise InvalidInput(
                f"{given}: Stable Video Diffusion's conditioning; model {model} is a {family.pipeline_class} model "
                "(its videos move by a motion adapter)",
                given,
            )
        motion_adapter = self.motion_adapter or next(iter(family.motion_adapters), None)
        if motion_adapter is None:
            raise InvalidInput(
                f"motion_adapter: model {model} serves no motion adapters (a {family.pipeline_class} model; they "
                "serve SD 1.x models started with easel up --motion-adapter NAME=DIR)",
                "motion_adapter",
            )
        return {"motion_adapter": motion_adapter, **self._defaults(ANIMATEDIFF_DEFAULTS)}

    def _still_animated(self, model: str, family: VideoFamily) -> dict:
        """An image-to-video model's fields: its still (required), frames and size by default, SVD's conditioning.

        What only AnimateDiff reads (a motion adapter, a strength, a negative prompt, a character, references, an
        identity) is a 400 naming it.
        """
        if self.input_reference is None:
            raise InvalidInput(
                f"{INPUT_REFERENCE}: model {model} ({family.pipeline_class}) animates a still: send one",
                INPUT_REFERENCE,
            )
        given = {
            "motion_adapter": self.motion_adapter,
            "strength": self.strength,
            "negative_prompt": self.negative_prompt,
            "character": self.character,  # its trigger words, LoRA and pictures: nothing SVD reads
            "ip_adapters": self.ip_adapters,
            "identity": self.identity,
        }
        if refused := next((name for name, value in given.items() if value), None):
            raise InvalidInput(
                f"{refused}: model {model} ({family.pipeline_class}) animates a still, every frame drawn from it, and "
                f"reads no prompt; {refused} is AnimateDiff's",
                refused,
            )
        asked = {name: getattr(self, name) for name in SVD_CONDITIONING}
        return {
            "motion_adapter": "",
            "frames": self.frames_or(family.default_frames),
            "size": self.size or family.default_size,
            "strength": 1.0,  # every step runs: the frames start from noise, the still conditions them
            **{name: value if value is not None else SVD_CONDITIONING[name] for name, value in asked.items()},
            **self._defaults(SVD_DEFAULTS),
        }


class InterpolateBody(NamedTuple):
    """``POST /v1/videos/{video_id}/interpolate``: the finished video named by the path, and its body."""

    video_id: str
    options: Interpolate


def interpolation_of(source: VideoGeneration, video_id: str, options: Interpolate) -> VideoGeneration:
    """The video a finished one's frames make at ``options``: its request, made from its frames (nothing drawn).

    A video interpolated already is a 400 naming ``video_id`` (its source, at a larger factor, is the same frames).
    """
    if source.interpolate is not None or source.source_video is not None:
        raise InvalidInput(
            f"video_id: video {video_id} is interpolated already (x{source.interpolate.factor}): interpolate the "
            "video it was drawn as, at the factor wanted",
            "video_id",
        )
    return source.model_copy(update={"interpolate": options, "source_video": video_id, "webhook": None})


@contextmanager
def body_fields_named(prefix: str) -> Iterator[None]:
    """A 400 naming a field under ``prefix`` names it as the body does, without it (a body that is that part)."""
    try:
        yield
    except InvalidInput as error:
        if not (error.field or "").startswith(prefix):
            raise
        field = error.field.removeprefix(prefix)
        raise InvalidInput(error.message.replace(error.field, field, 1), field) from None


@contextmanager
def input_reference_named() -> Iterator[None]:
    """A video's input image is its ``input_reference``: the stills' image checks' 400s name that field."""
    try:
        yield
    except InvalidInput as error:
        if (error.field or "").split(".")[0] != "image":
            raise
        raise InvalidInput(error.message.replace(error.field, INPUT_REFERENCE, 1), INPUT_REFERENCE) from None


def stored_request(stored: dict) -> GenerationRequest:
    """A job's stored request read back as the model it was stored from (a video's has ``frames``)."""
    return (VideoGeneration if "frames" in stored else GenerationRequest).model_validate(stored)
