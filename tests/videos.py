"""AnimateDiff's own pipeline, the reference videos are checked against (unit and integration tests)."""

import numpy as np
import torch

from serve.text_to_image.samplers import NOISE_SAMPLERS


def animatediff(diffusers_pipeline, motion_adapter):
    """diffusers' ``AnimateDiffPipeline`` over ``diffusers_pipeline``'s weights and the ``MotionAdapter`` folder."""
    from diffusers import AnimateDiffPipeline, MotionAdapter

    adapter = MotionAdapter.from_pretrained(motion_adapter)
    pipeline = AnimateDiffPipeline.from_pipe(diffusers_pipeline, motion_adapter=adapter)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def reference_frames(pipeline, scheduler: str, frames: int, seed: int, **kwargs) -> np.ndarray:
    """uint8 frames (F, H, W, 3) from AnimateDiff with Easel's sampler ``scheduler``."""
    pipeline.scheduler = NOISE_SAMPLERS[scheduler].build(pipeline.scheduler.config)
    generator = torch.Generator().manual_seed(seed)
    video = pipeline(num_frames=frames, generator=generator, output_type="np", **kwargs).frames[0]
    return (np.asarray(video) * 255).round().astype(np.uint8)
