"""What the flow-matching transformer families (SD3, Flux) share: the denoiser, samplers and timesteps.

Their denoiser is a diffusion transformer (the ``transformer`` engine) over 2x2 patches of 16-channel latents, so an
image side is a multiple of 16 pixels; it predicts the flow's velocity, which diffusers' flow-matching scheduler steps
with. With ``use_dynamic_shifting`` in the scheduler config (Flux dev) the schedule's shift grows with the image's
patch count (``mu``, as diffusers' ``calculate_shift``).
"""

from __future__ import annotations

import numpy as np

from serve.text_to_image.families.base import Family
from serve.text_to_image.generation import Generation
from serve.text_to_image.samplers import FLOW_SAMPLERS
from serve.text_to_image.spec import TRANSFORMER

PATCH = 2


class FlowFamily(Family):
    """A flow-matching family: the ``transformer`` engine, flow samplers, sides in whole patches, text only."""

    denoiser = TRANSFORMER
    takes_images = False
    samplers = FLOW_SAMPLERS
    latent_multiple = PATCH
    max_shift_default = 1.15  # the pipeline's ``max_shift`` when the scheduler config has none

    def patches(self, job: Generation) -> int:
        """How many patches (image tokens) the transformer sees for ``job``'s size."""
        side = self.side_multiple
        return (job.sampling.height // side) * (job.sampling.width // side)

    def shift_mu(self, scheduler, job: Generation) -> float:
        """The dynamic shift's ``mu`` for ``job``: linear in the patch count, as diffusers' ``calculate_shift``."""
        config = scheduler.config
        base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
        base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", self.max_shift_default)
        slope = (max_shift - base_shift) / (max_len - base_len)
        return self.patches(job) * slope + base_shift - slope * base_len


def sigmas(steps: int) -> np.ndarray:
    """Flux's sigmas before the shift: evenly from 1 to ``1 / steps``."""
    return np.linspace(1.0, 1 / steps, steps)
