"""Approximate caching across requests: a generation starts from a similar earlier prompt's latents, K steps in.

NIRVANA (Agarwal et al., NSDI'24) observes that the first steps of a generation fix its layout and colours, and that
prompts near each other share them. A stack started with ``--approximate-cache SHARE`` keeps, for each text-to-image
generation that runs from the start, its latents after the first ``K = floor(SHARE x steps)`` steps in the latent
cache (:mod:`serve.latent_cache`), under the job's *shape* (everything but the prompt and the seed that shapes its
latents: the model, size, images per request, sampler, steps, guidance and its cut-off, step caching, LoRAs, the
negative prompt, K) and its prompt's *embedding*. A later job of the same shape whose nearest kept prompt is at least
``--approximate-similarity`` similar starts from those latents at step K and runs only the rest, on its own prompt
and seed; one that finds none runs in full and keeps its own.

The embedding is the mean over the tokens of each of the prompt's conditioning rows (the text encoder's states, and
a pooled embedding where the family has one), joined and normalised; the similarity is their cosine. On the embedded
default's training captions the mean over tokens separates a prompt's rewordings (another caption template of the
same colour and icon: 95 % at 0.98 or above) from another colour or icon (99 % below 0.975), where the whole
token-by-token states do not (rewordings from 0.78, other colours up to 0.94): hence the default threshold, 0.98.

Whether a job may use the cache (:func:`decide`): a request's ``approximate_cache`` (true: yes, refused by name on a
stack that keeps no latents or for a job with input images, a mask, an IP-Adapter reference or ControlNets; false:
no); unset, yes where the stack keeps latents and the request has no seed, so a request that names its seed gets the
same image every time. A job that may is deterministic for a fixed seed and the same cache contents.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from serve.errors import InvalidInput
from serve.latent_cache import LatentStore, Match
from serve.text_to_image.generation import Generation

logger = logging.getLogger(__name__)

FIELD = "approximate_cache"


def skipped_steps(share: float, steps: int) -> int:
    """K: the steps a hit skips, ``floor(share x steps)`` (never all of them)."""
    return min(steps - 1, math.floor(round(share * steps, 9)))


def usable(job: Generation, inpainting: bool) -> bool:
    """Whether ``job`` is text to image alone (no input images, mask, IP-Adapter reference or ControlNets)."""
    return not (
        job.inputs.images
        or job.inputs.mask is not None
        or job.adapters.ip_image is not None
        or job.inputs.controls
        or inpainting
    )


def decide(asked: bool | None, seeded: bool, job: Generation, share: float, inpainting: bool) -> bool:
    """Whether ``job`` may start from kept latents: ``asked`` (the request's field), else the stack's default."""
    if asked is None:
        return share > 0 and not seeded and usable(job, inpainting)
    if asked and share <= 0:
        raise InvalidInput(f"{FIELD}: this stack keeps no latents (start it with --approximate-cache SHARE)", FIELD)
    if asked and not usable(job, inpainting):
        raise InvalidInput(
            f"{FIELD}: only text-to-image jobs (no input images, mask, IP-Adapter reference or ControlNets)", FIELD
        )
    return asked


def embedding(conditioning: Mapping[str, np.ndarray]) -> np.ndarray:
    """The prompt's embedding from its conditioning rows (before they are repeated per image; the prompt's last).

    Each row is averaged over its tokens (a 1-D row, a pooled embedding, as it is), the parts joined and normalised.
    """
    parts = []
    for name in sorted(conditioning):
        row = np.asarray(conditioning[name][-1], dtype=np.float32)
        parts.append(row.reshape(-1, row.shape[-1]).mean(axis=0) if row.ndim > 1 else row)
    joined = np.concatenate(parts)
    return joined / max(float(np.linalg.norm(joined)), 1e-12)


def shape_key(model: str, job: Generation, step: int) -> str:
    """The content address of everything but the prompt and seed that shapes ``job``'s latents at ``step``."""
    shaping = {
        "model": model,
        "size": [job.sampling.width, job.sampling.height],
        "n": job.sampling.n,
        "steps": job.sampling.steps,
        "scheduler": job.sampling.scheduler,
        "guidance_scale": job.sampling.guidance_scale,
        "guidance_cutoff": job.sampling.guidance_cutoff,
        "cache_interval": job.cache.interval,
        "negative_prompt": job.sampling.negative_prompt,
        "loras": [list(lora) for lora in job.adapters.loras],
        "step": step,
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Start:
    """Where a job that may use the cache starts: at ``step`` (0: from noise), from ``latents`` when skipping."""

    step: int
    shape: str
    embedding: np.ndarray
    latents: np.ndarray | None = None
    similarity: float | None = None

    @property
    def skipped(self) -> int:
        """The steps skipped: ``step`` on a hit, else none (the job runs from noise and keeps its latents there)."""
        return self.step if self.latents is not None else 0


@dataclass(frozen=True)
class LatentReuse:
    """A stack's approximate cache: its store, the share of steps a hit skips, the similarity a hit needs."""

    store: LatentStore
    share: float
    similarity: float

    async def start(self, model: str, job: Generation, conditioning: Mapping[str, np.ndarray], steps: int) -> Start:
        """Where ``job`` (``steps`` of it run from noise) starts: from the nearest kept latents if similar enough."""
        step = skipped_steps(self.share, steps)
        shape, vector = shape_key(model, job, step), embedding(conditioning)
        if step <= 0:
            return Start(0, shape, vector)
        match: Match | None = await asyncio.to_thread(self.store.nearest, shape, vector)
        if match is None or match.similarity < self.similarity:
            return Start(step, shape, vector, similarity=None if match is None else match.similarity)
        return Start(step, shape, vector, match.latents, match.similarity)

    async def keep(self, start: Start, latents: np.ndarray) -> None:
        """Keep a job's latents after its first ``start.step`` steps."""
        await asyncio.to_thread(self.store.put, start.shape, start.embedding, latents)
