"""Where a generation's tensors live between its engine calls: on the host, or on the GPU its engines run on.

The replica's loop calls engines in another process (Triton): its latents, scheduler and guidance live on the host
and every step's inputs travel (:class:`OnHost`). The loop inside Triton on a GPU calls engines in its own process:
there its text states, latents, timesteps, guidance and scheduler step stay on the GPU for the whole generation,
one copy in and one out (:class:`OnGpu`). The GPU is never waited for inside a step: each step is settled (checked
finite, reported) once the next one is queued, so the GPU always has the next step to run while the host works, and
concurrent generations stay in step for their calls to merge.
"""

from __future__ import annotations

import asyncio

import numpy as np
import torch

from serve.errors import Diverged
from serve.text_to_image.generation import StepCallback


class OnHost:
    """Tensors on the host; each step checked and reported as it ends."""

    async def put(self, array: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """``array`` where the loop keeps it (here: as it is)."""
        return array

    def timestep(self, t: torch.Tensor, rows: int) -> np.ndarray:
        """A step's timestep for each of ``rows`` (float32: a fractional one stays whole)."""
        return np.full(rows, float(t), dtype=np.float32)

    def engine_input(self, tensor: torch.Tensor) -> np.ndarray:
        """``tensor`` as an engine call takes it."""
        return tensor.numpy()

    def tensor(self, output: np.ndarray) -> torch.Tensor:
        """An engine's output as a tensor."""
        return torch.from_numpy(output)

    async def settle(self, step: int, total: int, latents: torch.Tensor, on_step: StepCallback | None) -> None:
        """Step ``step`` of ``total`` ended with ``latents``: refused if not finite, else reported."""
        if not torch.isfinite(latents).all():  # an adapter's (or the model's) weights overflow: never a black image
            raise Diverged.at(step, total)
        if on_step is not None:
            await on_step(step, total, latents.numpy())

    async def finish(self, on_step: StepCallback | None) -> None:
        """The last step settled (here: it was)."""

    async def images(self, pixels: np.ndarray) -> list[np.ndarray] | None:
        """The VAE's ``pixels`` (NCHW, about 0..1) as uint8 images (HWC); None when one is not finite."""
        if not np.isfinite(pixels).all():
            return None
        pixels = np.clip(pixels, 0.0, 1.0)
        return [np.round(image.transpose(1, 2, 0) * 255).astype(np.uint8) for image in pixels]


class OnGpu(OnHost):
    """Tensors on ``device`` for the whole generation; a step settles once the next is queued (one step behind)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pending: tuple[int, int, torch.Tensor, torch.Tensor, torch.cuda.Event] | None = None

    async def put(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``array`` copied to the GPU, in a thread (a copy from the host waits for the GPU's queue)."""
        tensor = torch.as_tensor(array)
        return await asyncio.to_thread(tensor.to, self.device)

    def timestep(self, t: torch.Tensor, rows: int) -> torch.Tensor:
        """A step's timestep for each of ``rows``, filled on the GPU (nothing copied)."""
        return torch.full((rows,), float(t), dtype=torch.float32, device=self.device)

    def engine_input(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` as it is: the engines run where it is."""
        return tensor

    def tensor(self, output: torch.Tensor) -> torch.Tensor:
        """An engine's output (already a tensor on the GPU: as it is)."""
        return torch.as_tensor(output)

    async def settle(self, step: int, total: int, latents: torch.Tensor, on_step: StepCallback | None) -> None:
        """Queue step ``step``'s check; settle the step before it (wait for the GPU to end it, check, report).

        What the host reads of a step (whether it is finite; its latents, for a progress callback) is copied to the
        host behind the step, without waiting: reading a GPU tensor directly would wait for the next step too.
        """
        finite = _to_host(torch.isfinite(latents).all())
        seen = _to_host(latents) if on_step is not None else None
        pending, self._pending = self._pending, (step, total, seen, finite, self._mark())
        if pending is not None:
            await self._settled(pending, on_step)

    async def finish(self, on_step: StepCallback | None) -> None:
        """Settle the last step."""
        pending, self._pending = self._pending, None
        if pending is not None:
            await self._settled(pending, on_step)

    async def images(self, pixels: torch.Tensor) -> list[np.ndarray] | None:
        """The images made uint8 on the GPU (the host's arithmetic, a quarter of the bytes), copied in a thread."""
        pixels = torch.as_tensor(pixels).float()
        finite = torch.isfinite(pixels).all()
        made = (pixels.clamp(0.0, 1.0) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        finite, made = await asyncio.to_thread(lambda: (bool(finite), made.cpu().numpy()))
        return list(made) if finite else None

    def _mark(self) -> torch.cuda.Event:
        """An event the GPU reaches once the work queued so far has run."""
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return event

    async def _settled(self, pending, on_step: StepCallback | None) -> None:
        step, total, seen, finite, event = pending
        await asyncio.to_thread(event.synchronize)  # the step and its copies have run
        if not bool(finite):
            raise Diverged.at(step, total)
        if on_step is not None:
            await on_step(step, total, seen.numpy())


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` copied to the host behind the work queued so far, not waited for (pinned memory on a GPU)."""
    if not tensor.is_cuda:
        return tensor.clone()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor, non_blocking=True)


def place_for(device: str | torch.device | None) -> OnHost:
    """Where a loop over engines on ``device`` keeps its tensors (None or a CPU: the host)."""
    device = torch.device(device) if device is not None else None
    return OnGpu(device) if device is not None and device.type == "cuda" else OnHost()
