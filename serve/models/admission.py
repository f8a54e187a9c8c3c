"""Admission control for text-to-image: what a request needs and costs, decided before it runs.

- **Memory**: the engines run within a memory budget (``easel up --memory-budget``); what their weights leave is one
  activation pool they share (:func:`serve.triton.memory.activation_pool`), from which Triton's python backend
  reserves each run's bytes, splitting batches to fit (:class:`serve.triton.onnx_backend.MemoryBound`). A request
  whose single image row in an engine cannot fit the pool is refused here with a 400 naming ``size`` and the
  budget; a row that does not fit in the VAE decoder is decoded in tiles (:mod:`serve.text_to_image.tiling`):
  diffusers' own, else halves or quarters of them, the largest that fits; refused only if none does.
- **Cost** (:class:`Work`): every engine pass a request causes, each counted as a denoising step of its image's
  megapixels, plus the megapixels its uploads decode to: ``n x megapixels x (steps that run x (1 + ControlNets) + 1
  VAE decode + 1 VAE encode with input images) + megapixels once more with an IP-Adapter reference + input
  megapixels``; a LoRA row adds, each step, ``rank / LORA_RANK_PER_PASS`` of a pass to every row of the denoiser's
  batch it may share (it slows them all). img2img's ``strength`` runs part of the schedule, but even ``strength`` 0
  pays for its VAE passes and its decoded inputs. The Gateway prices a request with it before running anything (the
  key's cost limit); a request over ``max_cost`` is refused (400); admitted requests wait their turn, before any
  image is decoded, while the replica's requests in flight (of their priority or above) already add up to
  ``max_inflight_cost``.
- Engines a request does not use (the VAE encoder of a text-only request, ControlNets it does not name) are not
  checked for it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from serve.errors import InvalidInput, Saturated
from serve.finishing.schema import MAX_UPSCALE
from serve.priority import Priority
from serve.protocol.ip_scale import ip_choices
from serve.text_to_image.spec import CONTROLNET_PREFIX, VAE_DECODER, VAE_ENCODER, VIDEO_AXES
from serve.text_to_image.tiling import VaeTiling
from serve.triton.memory import MemoryModel
from serve.triton.spec import ModelSpec

if TYPE_CHECKING:  # a type only: admission is read where no engine folder is (the CLI's defaults)
    from serve.text_to_image.engine_folder import EngineFolder

logger = logging.getLogger(__name__)

DEFAULT_MAX_COST = 64.0
"""Largest cost (:class:`Work`) served by default: e.g. 4 images of 512x512 at 60 steps, one 1024x1024 at 60."""
LORA_RANK_PER_PASS = 1280
"""The LoRA rank that adds a whole pass to every row of its batch: a rank-512 LoRA slowed the plain rows batched with
it by about 40 % (the issue 65 probe, against a rank-4 one; every row computes the batch's ``down x``)."""
CALL_SECONDS = 2.0
"""Engine time (one core) a single engine call of a large request aims to stay under (see ``rows_per_call``)."""


@dataclass(frozen=True)
class Work:
    """What one generation runs, as its cost counts it: every engine pass, each a denoising step of its megapixels.

    ``rows``: images made; ``steps``: denoising steps that run; ``passes``: UNet-sized calls per step (the UNet and
    each ControlNet); ``encodes``: its images go through the VAE encoder (input images, an inpainting UNet's);
    ``reference``: an IP-Adapter reference through the image encoder; ``input_pixels``: what its uploads decode to;
    ``lora_rank_rows``: its LoRAs' rank x the rows of the denoiser's batch they may slow (see the module);
    ``upscale``: what the request's ``upscale`` runs after it (:func:`upscale_work`; a hires fix's second pass runs
    as a request of its own): the doors' price and the ``max_cost`` check count it, a replica holds in flight only
    this pass's cost.
    """

    rows: int
    steps: int
    width: int
    height: int
    passes: int = 1
    encodes: bool = False
    reference: bool = False
    input_pixels: int = 0
    upscale: Work | None = None
    lora_rank_rows: int = 0
    frames: int = 1  # a video's: each of its images is this many frames, denoised together
    guided: bool = False  # classifier-free guidance: a video's call holds two rows of every frame

    @property
    def cost_field(self) -> str:
        """The field a refusal of its cost names: a video's ``frames``, a still's ``num_inference_steps``."""
        return "frames" if self.frames > 1 else "num_inference_steps"

    @property
    def megapixels(self) -> float:
        """One output image's megapixels."""
        return self.width * self.height / 1e6

    @property
    def lora_passes(self) -> float:
        """UNet passes per step its LoRA rows add to the batch they share."""
        return self.lora_rank_rows / LORA_RANK_PER_PASS

    @property
    def passes_per_image(self) -> float:
        """Engine passes per image: every step's UNet-sized ones (its LoRAs' too), the VAE decoder's, the encoder's."""
        return self.steps * (self.passes + self.lora_passes) + 1 + int(self.encodes)

    @property
    def pass_cost(self) -> float:
        """This pass's: images (x frames) x megapixels x passes per image, + the reference's, + the input megapixels."""
        return (
            self.rows * self.frames * self.megapixels * self.passes_per_image
            + self.megapixels * int(self.reference)
            + self.input_pixels / 1e6
        )

    @property
    def cost(self) -> float:
        """The whole request's: this pass's, + its upscale's (a hires fix's second pass)."""
        return self.pass_cost + (self.upscale.cost if self.upscale is not None else 0.0)

    def explained(self) -> str:
        """The cost's sum, as a refusal says it."""
        unet = f"{self.passes} passes (the UNet and {self.passes - 1} ControlNets)" if self.passes > 1 else "1 pass"
        unet += f" + {self.lora_passes:.2f} (its LoRAs' rank)" if self.lora_passes else ""
        passes = f"({self.steps} steps x {unet} + 1 VAE decode{' + 1 encode' if self.encodes else ''})"
        reference = f" + {self.megapixels:.2f} (IP-Adapter reference)" if self.reference else ""
        inputs = f" + {self.input_pixels / 1e6:.2f} (input megapixels)" if self.input_pixels else ""
        frames = f" x {self.frames} frames" if self.frames > 1 else ""
        own = f"{self.rows}{frames} x {self.megapixels:.2f} MP x {passes}{reference}{inputs} = {self.pass_cost:.1f}"
        if self.upscale is None:
            return own
        then = self.upscale
        if then.steps:  # a hires fix: its img2img at the upscaled size
            added = f"the hires fix's second pass, {then.explained()}"
        else:
            added = f"the upscale, {then.rows} x {then.megapixels:.2f} MP + {then.input_pixels / 1e6:.2f} (inputs)"
        return f"{own}, + {added}: {self.cost:.1f} in all"


def optional_engine(name: str) -> bool:
    """Whether only some requests use engine ``name`` (the VAE encoder: images in; a ControlNet: naming it)."""
    return name == VAE_ENCODER or name.startswith(CONTROLNET_PREFIX)


def engines_used(request, inpainting: bool) -> list[str]:
    """The optional engines ``request`` uses: its ControlNets' (an InstantID's IdentityNet too), the VAE encoder.

    The VAE encoder for images in (or ``inpainting``).
    """
    uses = [f"{CONTROLNET_PREFIX}{control.name}" for control in request.controlnets]
    identity = getattr(request, "identity", None)
    if identity is not None and identity.keypoints is not None:  # an InstantID: its IdentityNet
        uses.append(f"{CONTROLNET_PREFIX}{identity.adapter}")
    return [*uses, VAE_ENCODER] if request.image or inpainting else uses


@dataclass(frozen=True)
class Limits:
    """What a replica admits."""

    memory_budget_bytes: int
    max_cost: float = DEFAULT_MAX_COST
    max_inflight_cost: float = 2 * DEFAULT_MAX_COST


@dataclass(frozen=True)
class Plan:
    """How a replica runs a request :meth:`Admission.check` passed at the Gateway: cost in flight, tiles, rows."""

    cost: float
    tiling: VaeTiling | None = None
    rows_per_call: dict[str, int] = field(default_factory=dict)  # by engine; absent: any number
    loras: tuple[tuple[str, float], ...] = ()  # its LoRAs (content key, weight), resolved for its key at the Gateway
    queue_wait_s: float | None = None  # the longest it waits for a slot, then Saturated (a chain takes it); None: any


class Admission:
    """Checks a request against the activation pool and the cost ceiling, and queues it for an in-flight slot.

    A latent whose single row does not fit the pool in the VAE decoder is decoded in tiles when a tile fits.
    """

    def __init__(
        self,
        models: dict[str, MemoryModel],
        pool_bytes: int,
        limits: Limits,
        tiling: VaeTiling,
        denoiser: str,
        specs: Mapping[str, ModelSpec] | None = None,
    ) -> None:
        """``pool_bytes``: the engines' activation pool; ``specs``: engines whose positions are not the latents'."""
        self.models, self.pool_bytes, self.limits, self.tiling = models, pool_bytes, limits, tiling
        self.denoiser = denoiser  # the engine each step calls
        self.specs = specs or {}
        self._inflight: Counter[int] = Counter()  # cost in flight by priority rank
        self._waiting: set[tuple[int, int]] = set()  # (priority rank, arrival)
        self._arrivals = itertools.count()
        self._turn = asyncio.Condition()

    @classmethod
    def for_engines(cls, engines: EngineFolder, limits: Limits) -> Admission:
        """Admission for ``engines`` under ``limits``: their measured memory, activation pool and VAE tiling."""
        pool = engines.activation_bytes(limits.memory_budget_bytes)
        return cls(engines.memory_models, pool, limits, engines.tiling, engines.family.denoiser, engines.specs)

    def check(self, work: Work, uses: Collection[str] = ()) -> Plan:
        """Raise :class:`InvalidInput` if the request's ``work`` cannot be served; say how it will be.

        ``uses``: the optional engines it uses (:func:`optional_engine`).
        """
        cost, width, height = work.cost, work.width, work.height
        if cost > self.limits.max_cost:
            raise InvalidInput(
                f"{work.cost_field}: the cost, images (x frames) x megapixels x engine passes (+ inputs), "
                f"{work.explained()}, is over the limit of {self.limits.max_cost:g} (easel up --max-cost)",
                field=work.cost_field,
            )
        latent = (height // self.tiling.vae_scale_factor, width // self.tiling.vae_scale_factor)
        tiling = None
        for name, model in self.models.items():
            if optional_engine(name) and name not in uses:
                continue
            video_row = self._video_row(name)  # a row of this engine is a whole video (SVD's engines)
            need = model.per_row(self._positions(name, model, latent, work.frames if video_row else 1))
            if name == self.denoiser and work.frames > 1:  # a video's call: its frames' UNet rows, or its video row
                self._check_frames(need if video_row else need * work.frames, work)
            if need <= self.pool_bytes:
                continue
            if name == VAE_DECODER and not video_row:
                tiling = self._tiling_within(model, self.pool_bytes, latent)
                if tiling is not None:
                    continue
            field = "frames" if video_row else "size"
            raise InvalidInput(
                f"{field}: {width}x{height}{f' x {work.frames} frames' if video_row else ''} needs about "
                f"{need / 2**30:.2f} GiB per image in the {name} engine; the memory budget leaves "
                f"{self.pool_bytes / 2**30:.2f} GiB for activations (easel up --memory-budget)",
                field=field,
            )
        return Plan(work.pass_cost, tiling, self._rows_per_call(latent))  # in flight: what this replica runs

    def _check_frames(self, video_bytes: int, work: Work) -> None:
        """Raise :class:`InvalidInput` naming ``frames`` when a video's frames (one UNet call) overrun the pool."""
        need = video_bytes * (2 if work.guided else 1)
        if need > self.pool_bytes:
            guided = " (guided: two rows each)" if work.guided else ""
            raise InvalidInput(
                f"frames: {work.frames} frames{guided} of {work.width}x{work.height} need about "
                f"{need / 2**30:.2f} GiB in the video UNet; the memory budget leaves {self.pool_bytes / 2**30:.2f} "
                "GiB for activations (fewer frames, a smaller size, or easel up --memory-budget)",
                field="frames",
            )

    def _tiling_within(self, model: MemoryModel, budget: int, latent: tuple[int, int]) -> VaeTiling | None:
        """The largest tiles (diffusers' own, then halves) a ``latent`` decodes in within ``budget``; None: none."""
        tiling = self.tiling
        while tiling is not None and tiling.applies(*latent):
            if model.per_row(tiling.tile_positions(*latent)) <= budget:
                return tiling
            tiling = tiling.halved()
        return None

    def _video_row(self, name: str) -> bool:
        """Whether a row of engine ``name`` is a whole video (its positions: frames x the latent's)."""
        spec = self.specs.get(name)
        first = next((t for t in spec.inputs if -1 in t.dims), None) if spec is not None else None
        return first is not None and first.axis_names == VIDEO_AXES

    def _positions(self, name: str, model: MemoryModel, latent: tuple[int, int], frames: int = 1) -> int:
        """The positions engine ``name``'s memory and time are fitted over, for a request of ``latent`` size.

        ``frames``: a video row's (:meth:`_video_row`).
        """
        if name in self.specs:
            sides = (frames, *latent) if self._video_row(name) else latent
            return self.specs[name].positions(*sides)
        return latent[0] * latent[1] if model.coefficients[1:] != (0, 0) else 1

    def _rows_per_call(self, latent: tuple[int, int]) -> dict[str, int]:
        """Rows per engine call so that no call holds an engine much longer than :data:`CALL_SECONDS`.

        A large request's steps then go to Triton in several calls one after another, and other requests' calls
        queued meanwhile run between them instead of behind the whole batch. At least one row per core.
        """
        rows = {}
        for name, model in self.models.items():
            if name not in (self.denoiser, VAE_DECODER, VAE_ENCODER) and not name.startswith(CONTROLNET_PREFIX):
                continue
            seconds = model.seconds_per_row(self._positions(name, model, latent))
            if seconds > 0:
                rows[name] = max(os.cpu_count() or 1, int(CALL_SECONDS / seconds))
        return rows

    def _fits(self, cost: float, priority: Priority) -> bool:
        """Whether ``cost`` fits beside what is in flight at ``priority`` or above (lower levels do not count)."""
        ahead = sum(cost for rank, cost in self._inflight.items() if rank <= priority.rank)
        return ahead == 0 or ahead + cost <= self.limits.max_inflight_cost

    @asynccontextmanager
    async def slot(
        self, cost: float, priority: Priority = Priority.NORMAL, wait_s: float | None = None
    ) -> AsyncIterator[None]:
        """Hold ``cost`` of the replica's in-flight capacity for the block, waiting until it is free.

        ``wait_s``: the longest it waits (then :class:`~serve.errors.Saturated`: its fallback chain takes it).

        Requests start in priority order, then in arrival order (a large one is not overtaken for ever by small
        ones); one always runs when nothing of its priority or above is in flight, so every admitted request runs
        eventually, and a higher-priority request never waits for lower ones to finish (they hold their steps while
        it runs: :class:`serve.priority.PriorityGate`).
        """
        me = (priority.rank, next(self._arrivals))
        async with self._turn:
            self._waiting.add(me)
            try:
                async with asyncio.timeout(wait_s):
                    await self._turn.wait_for(lambda: min(self._waiting) == me and self._fits(cost, priority))
            except TimeoutError:
                raise Saturated(
                    f"model: no slot for the request within its queue wait of {wait_s:g} s", "model"
                ) from None
            finally:
                self._waiting.discard(me)
                self._turn.notify_all()
            self._inflight[priority.rank] += cost
        try:
            yield
        finally:
            async with self._turn:
                self._inflight[priority.rank] -= cost
                self._turn.notify_all()


def upscale_work(request, width: int, height: int, frames: int = 1) -> Work | None:
    """What ``request``'s ``upscale`` runs after its ``width`` x ``height`` images (None: no ``upscale``).

    Each image (a video's ``frames`` each) decoded and upscaled: a pass at the upscaled megapixels. A hires fix
    (``denoise``) then runs img2img at that size at ``denoise`` (its input decoded); that pass is counted in its
    place. A ``scale`` not given is the upscaler's own, priced at the largest Easel recognises
    (:data:`serve.finishing.schema.MAX_UPSCALE`).
    """
    choice = request.upscale
    if choice is None:
        return None
    scale = choice.scale or MAX_UPSCALE
    side_x, side_y = round(width * scale), round(height * scale)
    if choice.denoise is None:
        return Work(request.rows, 0, side_x, side_y, input_pixels=request.rows * width * height * frames, frames=frames)
    steps = min(int(request.num_inference_steps * choice.denoise), request.num_inference_steps)
    reference = any(ip.choice.images for ip in ip_choices(request))
    return Work(request.rows, steps, side_x, side_y, request.passes, True, reference, request.rows * side_x * side_y)


class Checked(NamedTuple):
    """A request checked by its model at the Gateway: its work (the cost the doors count) and its replica's plan."""

    work: Work
    plan: Plan
