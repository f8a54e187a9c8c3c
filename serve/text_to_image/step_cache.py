"""Step caching (DeepCache): a UNet's deep features reused between adjacent steps, as two engines Triton serves.

DeepCache (Ma et al., CVPR 2024) observes that a UNet's deep features change little from one step to the next. With
``cache_interval`` ``N``, every N-th step (the first of each run of N) runs the whole UNet as the ``unet_deep``
engine, which also returns the hidden state that enters the last layer of the UNet's final up block (its
``deep_features``); the steps between run the ``unet_shallow`` engine: the time embedding, the input convolution,
that last layer (its resnet, and its attention where the block has one) on the kept features and the fresh input
convolution's skip, and the output layers. That is the DeepCache package's ``DeepCacheSDHelper`` with
``cache_branch_id=0`` (the shallowest branch), step for step.

The pair is built only where asked (``easel up --step-cache``: a second full UNet and a small one beside the UNet) and
from the plain UNet: it takes no adapters or ControlNets, and a job with those, or one that runs a distilled UNet, is
refused by name (``cache_interval``). ``N = 1`` (the default) is the plain loop, the UNet every step. The full
steps' rows go to ``unet_deep`` and merge with other cached jobs' there, not with uncached jobs' ``unet`` rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from serve.errors import InvalidInput
from serve.text_to_image.generation import Outline
from serve.text_to_image.spec import DEEP_FEATURES, LATENT_AXES, UNET, UNET_DEEP, UNET_SHALLOW
from serve.triton.spec import EngineRunner, ModelSpec, TensorSpec

OFF = 1
"""A cache interval of 1: the whole UNet every step."""


def step_cache_specs(unet: ModelSpec, width: int) -> dict[str, ModelSpec]:
    """The pair's specs from the plain UNet's: ``width``, the channels of the final up block (the first block's)."""
    features = TensorSpec(DEEP_FEATURES, "float32", (width, -1, -1), LATENT_AXES)
    return {
        UNET_DEEP: dataclasses.replace(unet, name=UNET_DEEP, outputs=(*unet.outputs, features)),
        UNET_SHALLOW: dataclasses.replace(unet, name=UNET_SHALLOW, inputs=(*unet.inputs, features)),
    }


def check(asked: Outline, specs: Mapping[str, ModelSpec], step_engine: str) -> None:
    """Refuse (400 naming ``cache_interval``) a cached generation the engines cannot run as asked."""
    if asked.cache_interval == OFF:
        return
    field = "cache_interval"
    if UNET_SHALLOW not in specs:
        raise InvalidInput(f"{field}: this stack has no step-cache engines (start it with --step-cache)", field)
    if step_engine != UNET:
        raise InvalidInput(
            f"{field}: step caching runs the model's UNet; the {asked.scheduler} sampler runs its distilled UNet",
            field,
        )
    if asked.adapted:
        raise InvalidInput(f"{field}: step caching takes no LoRAs, IP-Adapter reference or ControlNets", field)


class JobStepCache:
    """One job's denoiser calls: the step engine every step, or with an interval the cached pair."""

    def __init__(self, specs: Mapping[str, ModelSpec], step_engine: str, interval: int) -> None:
        self.specs, self.step_engine, self.interval = specs, step_engine, interval
        self.features: np.ndarray | None = None

    async def noise(self, engines: EngineRunner, index: int, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The denoiser's ``noise_pred`` at step ``index`` (counted from the first step that runs)."""
        if self.interval == OFF:
            return (await engines.infer(self.specs[self.step_engine], inputs))["noise_pred"]
        if index % self.interval == 0:
            out = await engines.infer(self.specs[UNET_DEEP], inputs)
            self.features = out[DEEP_FEATURES]
            return out["noise_pred"]
        rows = len(inputs["sample"])
        if len(self.features) != rows:  # guidance ended since they were kept: the prompt's rows
            self.features = self.features[len(self.features) - rows :]
        return (await engines.infer(self.specs[UNET_SHALLOW], {**inputs, DEEP_FEATURES: self.features}))["noise_pred"]
