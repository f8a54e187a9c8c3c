"""Videos (AnimateDiff) through OpenAI's videos API: the body, the generation it becomes, the video object, the files.

``POST /v1/videos`` takes OpenAI's fields (``prompt``, ``model``, ``size``, ``seconds``) and Easel's (``frames``,
``fps``, ``seed``, ``steps``, ``scheduler``, ``guidance_scale``, ``negative_prompt``, ``loras``, ``motion_adapter``),
as JSON or as the multipart form the ``openai`` client sends; ``input_reference`` (an image, with Easel's
``strength``) makes it image-to-video, the image the generation's img2img input. It becomes a
:class:`VideoGeneration`: a generation request whose frames are one axis of its latents, denoised together by the
motion adapter's UNet (``unet_motion_<name>``), run as a background job of the job store. The job's answer is its
frames as PNGs (lossless); ``GET /v1/videos/{id}/content`` encodes them as an MP4 (H.264, PyAV) or, with
``variant=frames``, zips them (Easel's: the exact frames, for parity).
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
from serve.protocol.character_requests import CharacterChoice
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
MAX_FPS = 30
MAX_VIDEO_FORM_FIELDS = 32
INPUT_REFERENCE = "input_reference"


class VideoFamily(Protocol):
    """What a video's generation reads of its model's family (:class:`serve.text_to_image.families.Family`)."""

    motion_adapters: Collection[str]
    pipeline_class: str


class VideoGeneration(GenerationRequest):
    """A generation request that makes one video: ``frames`` frames (shown at ``fps``) with ``motion_adapter``."""

    frames: int = Field(ge=1, le=MAX_FRAMES)
    fps: int = Field(ge=1, le=MAX_FPS)
    motion_adapter: str = Field(min_length=1)
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
    scheduler: Literal[SCHEDULER_NAMES] = Field(Sampling.scheduler, description="A sampler the model runs.")
    guidance_scale: float = Field(Sampling.guidance_scale, ge=0.0, le=MAX_GUIDANCE, allow_inf_nan=False)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    loras: list[LoraChoice] = Field(
        [],
        max_length=MAX_LORAS,
        description=f"Up to {MAX_LORAS} of the stack's LoRAs (uploaded ones too), motion LoRAs among them, as "
        "AnimateDiff loads them.",
    )
    motion_adapter: str | None = Field(None, description="A motion adapter of the model; default: its first.")
    character: CharacterChoice | None = Field(
        None, description="A character of POST /v1/characters, drawn in as a still's generation draws it."
    )
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

    @field_validator("interpolate", "upscale", "restore_faces", mode="before")
    @classmethod
    def _form_json(cls, value: object) -> object:
        """A multipart form carries the finishing objects as JSON text."""
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
        if self.frames is not None:
            return self.frames
        return self.seconds * self.fps if self.seconds is not None else DEFAULT_FRAMES

    @model_validator(mode="after")
    def _strength_with_a_reference(self) -> VideoRequest:
        if self.strength is not None and self.input_reference is None:
            raise InvalidInput("strength: only accepted with an input_reference (image-to-video)", "strength")
        return self

    def generation(self, model: str, native_size: int, family: VideoFamily) -> VideoGeneration:
        """The generation request this video runs as on ``model`` (of ``family``, ``native_size``).

        Its motion adapter: this body's, else the model's first (none: a 400 naming ``motion_adapter``).
        """
        motion_adapter = self.motion_adapter or next(iter(family.motion_adapters), None)
        if motion_adapter is None:
            raise InvalidInput(
                f"motion_adapter: model {model} serves no motion adapters (a {family.pipeline_class} model; they "
                "serve SD 1.x models started with easel up --motion-adapter NAME=DIR)",
                "motion_adapter",
            )
        decided = {
            "model": model,
            "size": self.size or f"{native_size}x{native_size}",
            "frames": self.frame_count,
            "motion_adapter": motion_adapter,
            "num_inference_steps": self.steps,
            "image": [self.input_reference] if self.input_reference else [],
            "upscale": UpscaleChoice(**self.upscale.model_dump()) if self.upscale else None,
            "background": True,
        }
        same = (VideoRequest.model_fields.keys() & VideoGeneration.model_fields.keys()) - decided.keys()
        try:  # the fields a video's body shares with a generation's, by name, pass as they are
            return VideoGeneration(**{name: getattr(self, name) for name in same}, **decided)
        except ValidationError as error:  # what the generation's rules refuse (a size, a sampler): 400 naming it
            refused = invalid_input(error)
            if refused.field == "num_inference_steps":  # the generation's name of the video's steps
                refused = InvalidInput(refused.message.replace("num_inference_steps", "steps", 1), "steps")
            raise refused from None


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
