"""The torch modules SVD's engines are exported from (:mod:`serve.text_to_image.families.svd`)."""

from __future__ import annotations

from pathlib import Path

import torch

from serve.adapters.ip_adapter import IMAGE_ENCODER
from serve.text_to_image.families.exports import ExportModule, diffusers_model, transformers_model
from serve.text_to_image.spec import UNET, VAE_DECODER, VAE_ENCODER

TEMPORAL_VAE = "AutoencoderKLTemporalDecoder"


class ImageEmbeds(torch.nn.Module):
    """``CLIPVisionModelWithProjection`` -> its projected ``image_embeds`` (pixels normalised as CLIP's)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values):
        """The projected image embedding."""
        return self.encoder(pixel_values).image_embeds


class VideoUnet(torch.nn.Module):
    """``UNetSpatioTemporalConditionModel`` with positional inputs: a whole video per row, frames first."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, added_time_ids):
        """The noise prediction of every frame: (videos, frames, channels, height, width)."""
        return self.unet(sample, timestep, encoder_hidden_states, added_time_ids, return_dict=False)[0]


class StillLatents(torch.nn.Module):
    """The VAE's encoder: an image in ``[-1, 1]`` -> its latent distribution's mode, unscaled (the pipeline's)."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image):
        """The latents' mode."""
        return self.vae.encode(image, return_dict=False)[0].mode()


class TemporalDecoder(torch.nn.Module):
    """The VAE's temporal decoder: a row of frames' scaled latents -> the frames in ``[0, 1]`` (once clamped).

    The frames of a row are decoded together (``num_frames``), as the pipeline decodes one ``decode_chunk_size``.
    """

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)

    def forward(self, latent):
        """The decoded frames: (rows, frames, 3, height, width)."""
        rows, frames = latent.shape[:2]
        image = self.vae.decode(latent.flatten(0, 1) / self.scaling_factor, num_frames=frames, return_dict=False)[0]
        return (image / 2 + 0.5).reshape(rows, frames, *image.shape[1:])


def svd_exports(model_dir: Path, keep_vae_fp32: bool) -> dict[str, ExportModule]:
    """Each SVD engine's module, loaded from ``model_dir`` (the VAE in fp32 when its config says ``force_upcast``)."""

    def vae(wrapper: type[torch.nn.Module]) -> ExportModule:
        return ExportModule(
            lambda dtype: wrapper(diffusers_model(TEMPORAL_VAE, model_dir / "vae", dtype)), keep_vae_fp32
        )

    encoder = model_dir / IMAGE_ENCODER
    return {
        IMAGE_ENCODER: ExportModule(
            lambda dtype: ImageEmbeds(transformers_model("CLIPVisionModelWithProjection", encoder, dtype))
        ),
        UNET: ExportModule(
            lambda dtype: VideoUnet(diffusers_model("UNetSpatioTemporalConditionModel", model_dir / UNET, dtype))
        ),
        VAE_ENCODER: vae(StillLatents),
        VAE_DECODER: vae(TemporalDecoder),
    }
