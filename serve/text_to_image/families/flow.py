"""What the flow-matching transformer families (SD3, Flux) share: the denoiser, samplers and timesteps.

Their denoiser is a diffusion transformer (the ``transformer`` engine) over 2x2 patches of 16-channel latents, so an
image side is a multiple of 16 pixels; it predicts the flow's velocity, which diffusers' flow-matching scheduler steps
with. With ``use_dynamic_shifting`` in the scheduler config (Flux dev) the schedule's shift grows with the image's
patch count (``mu``, as diffusers' ``calculate_shift``).
"""

from __future__ import annotations

import numpy as np
import torch

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


class ExplicitRmsNorm(torch.nn.Module):
    """``torch.nn.RMSNorm`` in elementary ops (the TorchScript ONNX exporter has no ``aten::rms_norm`` at opset 17)."""

    def __init__(self, norm: torch.nn.RMSNorm) -> None:
        super().__init__()
        self.weight = norm.weight
        self.eps = norm.eps

    def forward(self, x):
        """``x`` over its root mean square (last axis), times the weight."""
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        return x * self.weight if self.weight is not None else x


def explicit_rms_norms(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every ``torch.nn.RMSNorm`` (Flux's and SD3.5's query/key norms) as :class:`ExplicitRmsNorm`."""
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.RMSNorm):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, ExplicitRmsNorm(module))
    return model


class FlowTransformerModule(torch.nn.Module):
    """A flow-matching transformer as its engine's module, its RMS norms in elementary ops (:func:`explicit_rms_norms`).

    SD3's and Flux's diffusers transformers take the same four inputs by keyword (Flux more). ``forward`` hands them
    the engine's inputs as they are (SD3); a subclass's makes them from the engine's inputs (Flux's packed latents).
    """

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.transformer = explicit_rms_norms(transformer)

    def forward(self, sample, timestep, encoder_hidden_states, pooled_projections):
        """The predicted velocity, in the latents' layout."""
        return self.velocity(sample, timestep, encoder_hidden_states, pooled_projections)

    def velocity(self, hidden_states, timestep, encoder_hidden_states, pooled_projections, **extra):
        """The transformer's predicted velocity (``extra``: a family's own inputs, such as Flux's position ids)."""
        return self.transformer(
            hidden_states=hidden_states,
            timestep=timestep,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
            return_dict=False,
            **extra,
        )[0]


def sigmas(steps: int) -> np.ndarray:
    """Flux's sigmas before the shift: evenly from 1 to ``1 / steps``."""
    return np.linspace(1.0, 1 / steps, steps)
