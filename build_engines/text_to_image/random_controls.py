"""ControlNets and inpainting checkpoints with random weights for a local diffusers model, in diffusers' formats.

* :func:`make_controlnet`: a ``ControlNetModel`` made from the model's UNet as diffusers makes one
  (``ControlNetModel.from_unet``), its zero convolutions given random weights so that it steers the image (a trained
  ControlNet's are not zero either); saved with ``save_pretrained``.
* :func:`make_inpainting_model`: the model as an inpainting checkpoint: its UNet with 9 input channels (the
  latents' weights kept, the mask's and masked image's new), saved as the family's inpainting pipeline
  (``model_index.json`` says ``StableDiffusionInpaintPipeline`` / ``StableDiffusionXLInpaintPipeline``).

Nothing is downloaded; tests, benchmarks and ``easel random-controlnet`` make theirs here. Both are deterministic.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from serve.text_to_image.families import family_of_folder

logger = logging.getLogger(__name__)

INPAINT_PIPELINES = {"sd": "StableDiffusionInpaintPipeline", "sdxl": "StableDiffusionXLInpaintPipeline"}


def make_controlnet(
    model_dir: Path, out_dir: Path, seed: int = 0, strength: float = 0.5, image_gain: float = 1.0
) -> Path:
    """Write a random ControlNet for ``model_dir``'s UNet to ``out_dir`` (``strength``: its zero convs' scale).

    ``image_gain`` scales the conditioning embedding's other convolutions: above 1, a sparse control image (a few
    dots, as InstantID's landmarks) steers the residuals as much as a dense one does at 1.
    """
    from diffusers import ControlNetModel, UNet2DConditionModel

    family = family_of_folder(model_dir)
    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    levels = family.dims.vae_scale_factor.bit_length()  # the conditioning embedding downsamples to the latent side
    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 96, 256)[:levels])
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    with torch.no_grad():
        embedding = controlnet.controlnet_cond_embedding
        for conv in [embedding.conv_in, *embedding.blocks]:
            conv.weight.mul_(image_gain)
        for conv in [*zero_convs, controlnet.controlnet_cond_embedding.conv_out]:
            fan_in = conv.weight[0].numel()
            conv.weight.copy_(torch.randn_like(conv.weight) * strength / fan_in**0.5)
            conv.bias.copy_(torch.randn_like(conv.bias) * strength * 0.1)
    controlnet.save_pretrained(out_dir)
    logger.info("random ControlNet for %s written to %s (%d residuals)", model_dir, out_dir, len(zero_convs))
    return out_dir


def make_inpainting_model(model_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """Write ``model_dir``'s model as an inpainting checkpoint (a 9-channel UNet) to ``out_dir``."""
    import diffusers
    from diffusers import UNet2DConditionModel

    family = family_of_folder(model_dir)
    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    latent = unet.config.in_channels
    inpainting = UNet2DConditionModel.from_config({**unet.config, "in_channels": 2 * latent + 1})
    state = unet.state_dict()
    torch.manual_seed(seed)
    old = state["conv_in.weight"]
    extra = torch.randn(old.shape[0], latent + 1, *old.shape[2:]) * old.std()
    state["conv_in.weight"] = torch.cat([old, extra], dim=1)
    inpainting.load_state_dict(state)
    pipeline_class = getattr(diffusers, INPAINT_PIPELINES[family.name])
    extra_args = {"requires_safety_checker": False} if family.name == "sd" else {}
    pipeline = pipeline_class.from_pretrained(model_dir, unet=inpainting, **extra_args)
    pipeline.save_pretrained(out_dir)
    logger.info("inpainting checkpoint of %s (UNet in_channels %d) written to %s", model_dir, 2 * latent + 1, out_dir)
    return out_dir
