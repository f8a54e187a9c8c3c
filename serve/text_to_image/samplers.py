"""The API's samplers (``scheduler``) as each kind of model runs them: diffusers scheduler classes and their settings.

A family names its table (:attr:`serve.text_to_image.families.base.Family.samplers`); a request for a sampler that
is not in it is a 400 naming ``scheduler``. Noise-prediction models (SD, SDXL) run the three diffusers schedulers,
and the few-step samplers ``lcm`` and ``tcd`` (diffusers' ``LCMScheduler`` and ``TCDScheduler``) for latent
consistency models: a UNet with an LCM-LoRA, or a model's distilled UNet
(:meth:`serve.text_to_image.families.base.Family.step_engine`). Flow-matching models (SD3, Flux) run
``FlowMatchEulerDiscreteScheduler``, diffusers' scheduler for them, under both ``euler`` and ``ddim``: deterministic
DDIM on the flow's straight paths (``x_t = (1 - s) x_0 + s noise``) is exactly its Euler step, ``x' = x + (s' - s) v``.
"""

from __future__ import annotations

from typing import NamedTuple


class Sampler(NamedTuple):
    """A diffusers scheduler class, by name (diffusers is imported only where a scheduler is made), and its settings."""

    scheduler: str
    overrides: dict

    @property
    def cls(self) -> type:
        """The diffusers scheduler class."""
        import diffusers

        return getattr(diffusers, self.scheduler)

    def build(self, config):
        """A fresh scheduler from a model's scheduler ``config``."""
        return self.cls.from_config(config, **self.overrides)


NOISE_SAMPLERS = {
    "ddim": Sampler("DDIMScheduler", {}),
    "euler": Sampler("EulerDiscreteScheduler", {}),
    "dpmpp_2m": Sampler("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
}
"""Samplers of models that predict the noise (SD 1.x/2.x, SDXL)."""

FEW_STEP_SAMPLERS = {
    "lcm": Sampler("LCMScheduler", {}),
    "tcd": Sampler("TCDScheduler", {}),
}
"""Samplers of latent consistency models (an LCM-LoRA's UNet, a distilled UNet), run on SD and SDXL models too.

They take at most their ``original_inference_steps`` (50, the distillation's DDIM skeleton) steps: the API's
``MAX_FEW_STEPS``."""

UNET_SAMPLERS = NOISE_SAMPLERS | FEW_STEP_SAMPLERS
"""What the UNet families (SD, SDXL) run."""

FLOW_SAMPLERS = {
    "ddim": Sampler("FlowMatchEulerDiscreteScheduler", {}),
    "euler": Sampler("FlowMatchEulerDiscreteScheduler", {}),
}
"""Samplers of flow-matching models (SD3, Flux)."""
