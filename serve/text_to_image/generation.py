"""A generation as the loop runs it: the validated job, what it gives back, and its step callback."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from serve.priority import Priority


@dataclass(frozen=True)
class Generation:
    """One validated generation job."""

    prompt: str
    negative_prompt: str
    n: int
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    scheduler: str
    priority: Priority = Priority.NORMAL
    loras: tuple[tuple[str, float], ...] = ()  # LoRA adapters (name, weight)
    ip_image: np.ndarray | None = None  # IP-Adapter reference, RGB uint8
    ip_scale: float | dict = 1.0  # its weight, or InstantStyle's per-block mapping


StepCallback = Callable[[int, int, np.ndarray], Awaitable[None]]
"""Called after each denoising step with (step, total, latents); what it raises stops the generation."""


@dataclass(frozen=True)
class GenerationResult:
    """Images as uint8 HWC arrays, plus what the caller should be told."""

    images: list[np.ndarray]
    seed: int
    prompt_tokens_dropped: int
