"""Names and batching of the text-to-image engines; each model family (``families/``) declares its engines' I/O."""

from __future__ import annotations

import dataclasses

from serve.adapters.ip_adapter import IMAGE_ENCODER
from serve.priority import PRIORITIES
from serve.triton.spec import DynamicBatching, ModelSpec, TensorSpec

TEXT_ENCODER = "text_encoder"
TEXT_ENCODER_2 = "text_encoder_2"
TEXT_ENCODER_3 = "text_encoder_3"
UNET = "unet"
DISTILLED_UNET = "unet_lcm"
"""A model's LCM-distilled UNet (an optional folder of a UNet model; its engine has the UNet's inputs)."""
UNET_DEEP = "unet_deep"
UNET_SHALLOW = "unet_shallow"
"""Step caching's engines (``easel up --step-cache``): the whole UNet returning its deep features, the shallow one."""
DEEP_FEATURES = "deep_features"
TRANSFORMER = "transformer"
VAE_DECODER = "vae_decoder"
VAE_ENCODER = "vae_encoder"
CONTROLNET_PREFIX = "controlnet_"
"""A ControlNet's engine is ``controlnet_<name>`` (``easel up --controlnet NAME=DIR``)."""
FACE_EMBEDS = "face_embeds"
"""An InstantID IdentityNet's input where a ControlNet takes the prompt's states: each row's face embedding."""
RESIDUAL_PREFIX = "residual_"
"""A ControlNet's outputs, a ControlNet-ready UNet's inputs: ``residual_down_<i>``, then ``residual_mid``."""
# Every engine name some family uses: a build removes the ones its family does not use from the model repository
# (and every ControlNet engine the folder does not have).
ALL_ENGINE_NAMES = (
    TEXT_ENCODER,
    TEXT_ENCODER_2,
    TEXT_ENCODER_3,
    UNET,
    DISTILLED_UNET,
    TRANSFORMER,
    VAE_DECODER,
    VAE_ENCODER,
    IMAGE_ENCODER,
)

# A request with classifier-free guidance sends 2 rows per UNet call; 16 such requests fit one batch. No queue delay:
# under load the UNet is busy and its queue fills anyway (8 requests: 7 rows per batch on average either way), while
# a wait would delay every step of a lone request (0.66 ms per step in Triton's queue stats at 500 us).
# Every text-to-image engine queues requests by the generation's priority (serve/priority.py).
UNET_MAX_BATCH = 32
UNET_BATCHING = DynamicBatching(max_queue_delay_us=0, preferred_batch_sizes=(8, 16, 32), **PRIORITIES)
TEXT_ENCODER_MAX_BATCH = 16
VAE_MAX_BATCH = 8

LATENT_AXES = ("latent_height", "latent_width")
TEXT_AXIS = "text_tokens"
MAX_PROMPT_CHUNKS = 16
"""A prompt's most chunks of its text encoders' length (75 tokens and BOS/EOS for CLIP: 1200 tokens); a longer one
is cut there, and the answer says so (``Easel-Prompt-Truncated``)."""
VIDEO_AXES = ("frames", *LATENT_AXES)
SAMPLED_FRAMES = 8
"""A video row's frames where an engine is traced, checked or measured at a reference side: within every motion
adapter's positions, and a video of ``side`` frames at a full-size model's side would take minutes a row."""


def sampled_sides(tensor: TensorSpec, side: int) -> tuple[int, ...]:
    """``tensor``'s dynamic axes' sides at reference ``side`` (a video's frames at most :data:`SAMPLED_FRAMES`)."""
    return (min(side, SAMPLED_FRAMES), side, side) if tensor.axis_names == VIDEO_AXES else (side,)


def text_encoder_spec(name: str, text_length: int, outputs: tuple[TensorSpec, ...]) -> ModelSpec:
    """A text encoder: token ids in, ``outputs`` out."""
    return ModelSpec(
        name=name,
        inputs=(TensorSpec("input_ids", "int64", (text_length,)),),
        outputs=outputs,
        max_batch_size=TEXT_ENCODER_MAX_BATCH,
        dynamic_batching=DynamicBatching(**PRIORITIES),
    )


def text_states(name: str, text_length: int, width: int) -> TensorSpec:
    """A UNet's text conditioning: a prompt's chunks of ``text_length`` tokens side by side, 1 to the most."""
    return TensorSpec(name, "float32", (-1, width), (TEXT_AXIS,), chunks=(text_length, MAX_PROMPT_CHUNKS))


SMALL_UNET_BYTES = 1 << 30
"""A UNet whose weights are at most this runs as two Triton instances (see :func:`unet_instances`)."""


def unet_instances(unet_bytes: int | None) -> int:
    """Two UNet instances for a small UNet, else one.

    With two, a large request's long UNet call (it sends its calls one at a time) occupies one instance while other
    requests' steps run on the other, instead of queueing behind it. Each instance holds its own copy of the weights,
    which a large model cannot spare.
    """
    return 2 if unet_bytes is not None and unet_bytes <= SMALL_UNET_BYTES else 1


def denoiser_spec(
    latent_channels: int,
    conditioning: tuple[TensorSpec, ...],
    instances: int = 1,
    name: str = UNET,
    in_channels: int | None = None,
) -> ModelSpec:
    """The denoiser (a UNet or a transformer): latents, a per-row timestep and the family's per-row ``conditioning``.

    Out comes what the scheduler steps with (``noise_pred``), in the latents' layout. An inpainting UNet's ``sample``
    is the latents, the mask and the masked image's latents (``in_channels`` in all); its output is the latents'.
    """
    sample = TensorSpec("sample", "float32", (in_channels or latent_channels, -1, -1), LATENT_AXES)
    return ModelSpec(
        name=name,
        inputs=(sample, TensorSpec("timestep", "float32", ()), *conditioning),
        outputs=(TensorSpec("noise_pred", "float32", (latent_channels, -1, -1), LATENT_AXES),),
        max_batch_size=UNET_MAX_BATCH,
        dynamic_batching=UNET_BATCHING,
        instance_count=instances,
    )


def motion_unet_spec(name: str, unet: ModelSpec) -> ModelSpec:
    """A motion adapter's UNet (diffusers' ``UNetMotionModel``): ``unet``'s inputs with a video's latents.

    ``sample`` and ``noise_pred`` are (channels, frames, height, width) per row, every frame of one video in a row;
    the timestep and conditioning are per video. One instance: a row is a whole video.
    """
    channels = unet.input("sample").dims[0]

    def video(tensor: TensorSpec) -> TensorSpec:
        return TensorSpec(tensor.name, tensor.dtype, (channels, -1, -1, -1), VIDEO_AXES)

    inputs = tuple(video(t) if t.name == "sample" else t for t in unet.inputs)
    return dataclasses.replace(unet, name=name, inputs=inputs, outputs=(video(unet.outputs[0]),), instance_count=1)


def vae_decoder_spec(latent_channels: int) -> ModelSpec:
    """The VAE decoder: latents in, an image in [0, 1] out."""
    return ModelSpec(
        name=VAE_DECODER,
        inputs=(TensorSpec("latent", "float32", (latent_channels, -1, -1), LATENT_AXES),),
        outputs=(TensorSpec("image", "float32", (3, -1, -1), ("height", "width")),),
        max_batch_size=VAE_MAX_BATCH,
        dynamic_batching=DynamicBatching(**PRIORITIES),
    )


def vae_encoder_spec(latent_channels: int, vae_scale_factor: int) -> ModelSpec:
    """The VAE encoder: an image in ``[-1, 1]`` in; its latent distribution's mean and deviation (scaled) out."""
    latent = {"dims": (latent_channels, -1, -1), "axis_names": LATENT_AXES}
    return ModelSpec(
        name=VAE_ENCODER,
        inputs=(TensorSpec("image", "float32", (3, -1, -1), ("height", "width"), vae_scale_factor),),
        outputs=(TensorSpec("latent_mean", "float32", **latent), TensorSpec("latent_std", "float32", **latent)),
        max_batch_size=VAE_MAX_BATCH,
        dynamic_batching=DynamicBatching(**PRIORITIES),
    )


def residual_inputs(residuals) -> tuple[TensorSpec, ...]:
    """A ControlNet's residuals as tensors (a ControlNet engine's outputs, a ControlNet-ready UNet's inputs).

    ``residuals``: (channels, downscale) of each down-block residual, then the mid block's.
    """
    *down, mid = residuals
    names = [f"{RESIDUAL_PREFIX}down_{i}" for i in range(len(down))] + [f"{RESIDUAL_PREFIX}mid"]
    return tuple(
        TensorSpec(
            name,
            "float32",
            (channels, -1, -1),
            (f"latent_height_{scale}", f"latent_width_{scale}") if scale > 1 else LATENT_AXES,
            1 / scale,
        )
        for name, (channels, scale) in zip(names, residuals, strict=True)
    )


def controlnet_spec(
    name: str, unet: ModelSpec, latent_channels: int, vae_scale_factor: int, residuals, face: int = 0
) -> ModelSpec:
    """ControlNet ``name``'s engine; its residuals out.

    In: the latents, timestep and conditioning of ``unet`` (a plain UNet's spec), the control image (``[0, 1]``, at
    the image's size) and a per-row scale. ``face``: an InstantID's IdentityNet, which takes each row's face
    embedding (``face`` wide, :data:`FACE_EMBEDS`) in place of the prompt's states.
    """
    conditioning = tuple(t for t in unet.inputs if t.name not in ("sample", "timestep"))
    if face:
        own = TensorSpec(FACE_EMBEDS, "float32", (1, face))
        conditioning = tuple(own if t.name == "encoder_hidden_states" else t for t in conditioning)
    return ModelSpec(
        name=f"{CONTROLNET_PREFIX}{name}",
        inputs=(
            TensorSpec("sample", "float32", (latent_channels, -1, -1), LATENT_AXES),
            TensorSpec("timestep", "float32", ()),
            *conditioning,
            TensorSpec("controlnet_cond", "float32", (3, -1, -1), ("height", "width"), vae_scale_factor),
            TensorSpec("conditioning_scale", "float32", ()),
        ),
        outputs=residual_inputs(residuals),
        max_batch_size=UNET_MAX_BATCH,
        dynamic_batching=UNET_BATCHING,
    )
