"""A generation as the loop runs it: the validated job (its typed parts), what it gives back, its step callback."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from serve.jobs.model import Progress
from serve.latent_cache import DEFAULT_SIMILARITY
from serve.priority import Priority
from serve.protocol.ip_scale import ip_choices


@dataclass(frozen=True)
class Control:
    """One ControlNet of a job: its name, control image (RGB uint8, any size), scale, and the steps it guides.

    ``start`` and ``end`` are diffusers' ``control_guidance_start`` / ``control_guidance_end``; ``face``: the face
    embedding an InstantID's IdentityNet reads (its image the face's landmarks drawn; None: a ControlNet).
    """

    name: str
    image: np.ndarray
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    face: tuple[float, ...] | None = None


@dataclass(frozen=True)
class SamplingParams:
    """What to draw and how: the prompts, ``n`` images of ``width`` x ``height``, the sampler, its steps and guidance.

    ``guidance_cutoff``: the share of the steps that run guided (:mod:`serve.text_to_image.guidance`).
    """

    prompt: str
    negative_prompt: str
    n: int
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    scheduler: str
    guidance_cutoff: float = 1.0
    seeds: tuple[int, ...] = ()  # best-of-n: each row's own seed, drawn as a one-image job (empty: all from seed)


@dataclass(frozen=True)
class ImageInputs:
    """The images a generation starts from or is steered by (none: text to image).

    With input ``images`` (img2img, inpainting) image ``i`` starts from ``images[i % len(images)]``, as diffusers lays
    out a batch of images. ``mask`` (white: repaint, diffusers' convention) and ``images`` have the job's size;
    ``strength``: how much of the schedule runs from them.
    """

    images: tuple[np.ndarray, ...] = ()  # RGB uint8, width x height
    mask: np.ndarray | None = None  # grey uint8, width x height; white: repaint
    strength: float = 1.0
    controls: tuple[Control, ...] = ()


@dataclass(frozen=True)
class IpReferences:
    """One IP-Adapter of a generation: its references (images to encode, stored embeddings), scale and masks."""

    adapter: int = 0  # its input index (IpAdapterInfo.index)
    images: tuple[np.ndarray, ...] = ()  # references to encode, RGB uint8
    embeds: tuple[np.ndarray, ...] = ()  # stored references' embeddings (no encoder call), after the images
    scale: float | dict = 1.0  # its weight, or InstantStyle's per-block mapping
    masks: np.ndarray | None = None  # [references, H, W]: IPAdapterMaskProcessor's region masks (None: everywhere)


@dataclass(frozen=True)
class AdapterInputs:
    """The adapters a generation runs with: LoRAs by name and weight, and its IP-Adapters' references."""

    loras: tuple[tuple[str, float], ...] = ()  # LoRA adapters (content key, weight): StackAdapters.resolve
    ip: tuple[IpReferences, ...] = ()

    @property
    def referenced(self) -> bool:
        """Whether it has an IP-Adapter reference (an image, or a stored reference's embeddings)."""
        return bool(self.ip)


@dataclass(frozen=True)
class CachePolicy:
    """What a generation may skip of its work.

    ``interval``: steps per whole UNet call, the others shallow (:mod:`serve.text_to_image.step_cache`);
    ``approximate``: it may start from a similar prompt's kept latents (:mod:`serve.text_to_image.approximate`);
    ``scope``: whose kept latents it may start from and keeps its own as: its key's ("": everyone's).
    """

    interval: int = 1
    approximate: bool = False
    scope: str = ""


@dataclass(frozen=True)
class VideoConditioning:
    """What an image-to-video model (SVD) is conditioned on besides its still.

    The API's defaults are :data:`serve.protocol.video.SVD_CONDITIONING`; ``decode_chunk_size``: frames per VAE call
    (None: all of them).
    """

    fps: int
    motion_bucket_id: int
    noise_aug_strength: float
    decode_chunk_size: int | None
    min_guidance_scale: float


@dataclass(frozen=True)
class Motion:
    """A video's part of a generation: its frame count, all denoised together, and what moves them.

    A motion adapter (AnimateDiff's, by name), or an image-to-video model's ``conditioning`` (SVD's; adapter "").
    """

    adapter: str
    frames: int
    conditioning: VideoConditioning | None = None


@dataclass(frozen=True)
class Outline:
    """What a generation asks that a model's rules read, without its pixels.

    The Gateway reads it from a request (:meth:`of_request`, before any model loads) and checks the family's rules
    (its samplers, its side multiple, images at all) and step caching's against it, once: the replica trusts what
    was admitted and reads its job's (:attr:`Generation.outline`) only to pick the step's engine.
    """

    scheduler: str
    width: int
    height: int
    images: bool = False  # input images (img2img, inpainting)
    mask: bool = False
    controls: bool = False  # ControlNets
    loras: bool = False
    referenced: bool = False  # an IP-Adapter reference (an image, or a stored reference)
    cache_interval: int = 1
    motion_adapter: str = ""  # a video's motion adapter ("": a still, or an image-to-video model's video)
    video: bool = False  # it makes a video (frames), not a still

    @property
    def adapted(self) -> bool:
        """Whether it brings LoRAs, an IP-Adapter reference or ControlNets (what a distilled or cached UNet lacks)."""
        return self.loras or self.controls or self.referenced

    @classmethod
    def of_request(cls, request, width: int, height: int) -> Outline:
        """A request's outline (an API ``GenerationRequest``), its output ``width`` x ``height`` as already read.

        An ``identity`` is an IP-Adapter reference (and with an InstantID's landmarks, its IdentityNet a ControlNet),
        as the replica's job reads it.
        """
        identity = getattr(request, "identity", None)
        return cls(
            scheduler=request.scheduler,
            width=width,
            height=height,
            images=bool(request.image),
            mask=request.mask is not None,
            controls=bool(request.controlnets) or bool(identity and identity.keypoints),
            loras=bool(request.loras),
            referenced=bool(ip_choices(request)) or identity is not None,
            cache_interval=request.cache_interval,
            motion_adapter=getattr(request, "motion_adapter", ""),  # a video's (serve.protocol.video)
            video=hasattr(request, "frames"),
        )


@dataclass(frozen=True)
class Generation:
    """One validated generation job, built by keyword from its frozen parts (only ``sampling`` has no default)."""

    sampling: SamplingParams
    priority: Priority = Priority.NORMAL
    inputs: ImageInputs = ImageInputs()
    adapters: AdapterInputs = AdapterInputs()
    cache: CachePolicy = CachePolicy()
    motion: Motion | None = None  # a video: its frames are one axis of its latents

    @property
    def outline(self) -> Outline:
        """What its model's rules read (:class:`Outline`), as the Gateway read it from the request."""
        return Outline(
            scheduler=self.sampling.scheduler,
            width=self.sampling.width,
            height=self.sampling.height,
            images=bool(self.inputs.images),
            mask=self.inputs.mask is not None,
            controls=bool(self.inputs.controls),
            loras=bool(self.adapters.loras),
            referenced=self.adapters.referenced,
            cache_interval=self.cache.interval,
            motion_adapter=self.motion.adapter if self.motion else "",
            video=self.motion is not None,
        )

    def replaced(self, **changes) -> Generation:
        """A copy with ``changes``: fields of any part by their names (``seed``, ``images``, ``approximate``...)."""
        parts = {}
        for name in ("sampling", "inputs", "adapters", "cache"):
            part = getattr(self, name)
            own = {key: changes.pop(key) for key in [f.name for f in dataclasses.fields(part)] if key in changes}
            if own:
                parts[name] = dataclasses.replace(part, **own)
        return dataclasses.replace(self, **parts, **changes)  # priority; a name no part has: TypeError


@dataclass(frozen=True)
class StackDefaults:
    """What a stack gives the requests that leave a technique unset (``easel up``'s options)."""

    guidance_cutoff: float = 1.0
    approximate_cache: float = 0.0  # the share of the steps a similar prompt's kept latents skip; 0: none kept
    approximate_similarity: float = DEFAULT_SIMILARITY  # the cosine of the prompts' embeddings a hit needs


StepCallback = Callable[[int, int, np.ndarray], Awaitable[None]]
"""Called after each denoising step with (step, total, latents); what it raises stops the generation."""


@dataclass(frozen=True)
class GenerationResult:
    """Images as uint8 HWC arrays, plus what the caller should be told."""

    images: list[np.ndarray]
    seed: int
    prompt_tokens_dropped: int
    steps_skipped: int | None = None  # a similar prompt's kept latents skipped these steps (None: not asked)


OnStep = Callable[[Progress], Awaitable[None]]
"""What a job's generation hands each step to (it writes the step to the store)."""


PROMPT_TRUNCATED = "prompt_tokens_truncated"
"""An answer's field (when any were): the most tokens of its prompt one of the model's text encoders did not read."""


@dataclass(frozen=True)
class EncodedImages:
    """Encoded images and what the response should say about them."""

    images: list[bytes]
    seed: int | None  # None: a remote model's service that neither takes nor says seeds
    prompt_tokens_dropped: int
    steps_skipped: int | None = None  # started from a similar prompt's kept latents this many steps in
    faces: list[dict] | None = None  # restore_faces: each image's faces found (serve.finishing.restorers)
    scores: list[dict] | None = None  # scores: each image's, as generated (serve.scoring)
    seeds: list[int] | None = None  # best-of-n: each answered image's seed (serve.text_to_image.best_of)
    candidates: list[dict] | None = None  # best-of-n: every candidate's seed, scores and whether it was answered
    loop: str | None = None  # the loop that drew them: "triton" or "replica" (None: not drawn here)


def draw_seed(seed: int | None) -> int:
    """``seed``, or a random one when the request has none (so the answer can report it)."""
    return seed if seed is not None else random.SystemRandom().randrange(2**31)
