"""Tiled VAE decoding matches diffusers' own ``tiled_decode`` on a small VAE, in-process."""

import asyncio

import numpy as np
import torch

from serve.text_to_image.tiling import VaeTiling


def test_tiles_blend_exactly_as_diffusers_tiled_decode():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=32,
    ).eval()
    latents = torch.randn(2, 4, 40, 28)  # taller and wider than a 16-position tile, not a multiple of it
    with torch.no_grad():
        vae.enable_tiling()
        expected = vae.decode(latents).sample.numpy()

        async def decode_tile(tile: np.ndarray) -> np.ndarray:
            vae.disable_tiling()
            return vae.decode(torch.from_numpy(tile)).sample.numpy()

        tiling = VaeTiling(sample_tile=32, vae_scale_factor=2)
        assert tiling.latent_tile == 16 and tiling.applies(40, 28)
        got = asyncio.run(tiling.decode(latents.numpy(), decode_tile))
    assert got.shape == expected.shape == (2, 3, 80, 56)
    np.testing.assert_allclose(got, expected, atol=1e-5)
