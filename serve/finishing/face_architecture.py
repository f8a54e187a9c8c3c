"""GFPGAN v1 clean (``GFPGANv1.4.pth``, ``GFPGANCleanv1-NoCE-C2.pth``) in plain PyTorch, with the files' key names.

A U-Net encoder reads the face down to 4x4 and back up; at every level its features make a scale and a shift (SFT)
that modulate a StyleGAN2 decoder, whose style codes come from the encoder's bottom. Written after GFPGAN's
``gfpganv1_clean_arch.py`` (Apache-2.0), with two changes that give the same output:

* a modulated convolution scales the input by the style and demodulates the output (StyleGAN2's non-fused form),
  not one grouped convolution per image, so the batch axis stays dynamic in ONNX;
* the decoder's noise is the file's stored noise (GFPGAN's ``randomize_noise=False``): one face, one answer.

Takes and gives NCHW RGB in ``[-1, 1]`` at ``out_size`` (512 for the community files).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional

SLOPE = 0.2


def _channels(multiplier: float, narrow: float) -> dict[int, int]:
    """Channels per resolution of GFPGAN's decoder (the encoder has half)."""
    wide = {side: int(512 * narrow) for side in (4, 8, 16, 32)}
    return wide | {2**i: int(2 ** (14 - i) * multiplier * narrow) for i in range(6, 11)}


def _upsample(x: torch.Tensor) -> torch.Tensor:
    return functional.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class ModulatedConv2d(nn.Module):
    """StyleGAN2's convolution: its weight scaled per input channel by the style, optionally demodulated."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, style: int, demodulate: bool = True) -> None:
        super().__init__()
        self.demodulate, self.padding = demodulate, kernel // 2
        self.modulation = nn.Linear(style, channels_in)
        self.weight = nn.Parameter(torch.randn(1, channels_out, channels_in, kernel, kernel) / math.sqrt(channels_in))

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """``x`` convolved under ``style`` (one per image)."""
        scales = self.modulation(style)  # b x c_in
        out = functional.conv2d(x * scales[:, :, None, None], self.weight[0], padding=self.padding)
        if self.demodulate:
            energy = self.weight[0].pow(2).sum([2, 3])  # c_out x c_in
            out = out * torch.rsqrt(scales.pow(2) @ energy.t() + 1e-8)[:, :, None, None]
        return out


class StyleConv(nn.Module):
    """A modulated 3x3 convolution (upsampling first if asked), stored noise, bias, leaky ReLU."""

    def __init__(self, channels_in: int, channels_out: int, style: int, upsample: bool) -> None:
        super().__init__()
        self.upsample = upsample
        self.modulated_conv = ModulatedConv2d(channels_in, channels_out, 3, style)
        self.weight = nn.Parameter(torch.zeros(1))  # the noise's strength
        self.bias = nn.Parameter(torch.zeros(1, channels_out, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The layer's features."""
        out = self.modulated_conv(_upsample(x) if self.upsample else x, style) * 2**0.5
        return functional.leaky_relu(out + self.weight * noise + self.bias, SLOPE)


class ToRGB(nn.Module):
    """A modulated 1x1 convolution to RGB, added to the previous level's RGB upsampled."""

    def __init__(self, channels_in: int, style: int) -> None:
        super().__init__()
        self.modulated_conv = ModulatedConv2d(channels_in, 3, 1, style, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """This level's RGB."""
        out = self.modulated_conv(x, style) + self.bias
        return out if skip is None else out + _upsample(skip)


class ConstantInput(nn.Module):
    """The decoder's learned 4x4 start."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, channels, 4, 4))


class StyleGAN2Decoder(nn.Module):
    """GFPGAN's ``StyleGAN2GeneratorCSFT``: a clean StyleGAN2 generator whose features the conditions modulate.

    The style MLP is kept for the file's keys (v1.4 feeds the encoder's codes as latents, past it).
    """

    def __init__(self, out_size: int, style: int, mlp: int, channels: dict[int, int], sft_half: bool) -> None:
        super().__init__()
        self.sft_half, self.log_size = sft_half, int(math.log2(out_size))
        layers: list[nn.Module] = [nn.Identity()]  # NormStyleCode (no weights)
        for _ in range(mlp):
            layers += [nn.Linear(style, style), nn.LeakyReLU(SLOPE)]
        self.style_mlp = nn.Sequential(*layers)
        self.constant_input = ConstantInput(channels[4])
        self.style_conv1 = StyleConv(channels[4], channels[4], style, upsample=False)
        self.to_rgb1 = ToRGB(channels[4], style)
        self.style_convs, self.to_rgbs, self.noises = nn.ModuleList(), nn.ModuleList(), nn.Module()
        for index in range((self.log_size - 2) * 2 + 1):
            side = 2 ** ((index + 5) // 2)
            self.noises.register_buffer(f"noise{index}", torch.randn(1, 1, side, side))
        channels_in = channels[4]
        for level in range(3, self.log_size + 1):
            channels_out = channels[2**level]
            self.style_convs.append(StyleConv(channels_in, channels_out, style, upsample=True))
            self.style_convs.append(StyleConv(channels_out, channels_out, style, upsample=False))
            self.to_rgbs.append(ToRGB(channels_out, style))
            channels_in = channels_out

    def _sft(self, out: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        if not self.sft_half:
            return out * scale + shift
        same, modulated = torch.split(out, out.size(1) // 2, dim=1)
        return torch.cat([same, modulated * scale + shift], dim=1)

    def forward(self, latent: torch.Tensor, conditions: list[torch.Tensor]) -> torch.Tensor:
        """The image from ``latent`` (b x layers x style) under the encoder's ``conditions`` (scale, shift, ...)."""
        noise = [getattr(self.noises, f"noise{i}") for i in range(len(self.style_convs) + 1)]
        out = self.constant_input.weight.expand(latent.shape[0], -1, -1, -1)
        out = self.style_conv1(out, latent[:, 0], noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        index = 1
        for level, to_rgb in enumerate(self.to_rgbs):
            out = self.style_convs[2 * level](out, latent[:, index], noise[index])
            if 2 * level + 1 < len(conditions):
                out = self._sft(out, conditions[2 * level], conditions[2 * level + 1])
            out = self.style_convs[2 * level + 1](out, latent[:, index + 1], noise[index + 1])
            skip = to_rgb(out, latent[:, index + 2], skip)
            index += 2
        return skip


class ResBlock(nn.Module):
    """The encoder's residual block, resampling bilinearly by ``factor`` (0.5 down, 2 up)."""

    def __init__(self, channels_in: int, channels_out: int, factor: float) -> None:
        super().__init__()
        self.factor = factor
        self.conv1 = nn.Conv2d(channels_in, channels_in, 3, 1, 1)
        self.conv2 = nn.Conv2d(channels_in, channels_out, 3, 1, 1)
        self.skip = nn.Conv2d(channels_in, channels_out, 1, bias=False)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        return functional.interpolate(x, scale_factor=self.factor, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output."""
        out = functional.leaky_relu(self.conv1(x), SLOPE)
        out = functional.leaky_relu(self.conv2(self._resample(out)), SLOPE)
        return out + self.skip(self._resample(x))


def _sft_branch(channels: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, 1, 1), nn.LeakyReLU(SLOPE), nn.Conv2d(channels, channels_out, 3, 1, 1)
    )


class GFPGANv1Clean(nn.Module):
    """GFPGAN v1 clean (the v1.4 file: ``channel_multiplier=2``, ``different_w``, ``sft_half``, latent input)."""

    def __init__(
        self,
        out_size: int = 512,
        style: int = 512,
        channel_multiplier: float = 2,
        narrow: float = 1,
        mlp: int = 8,
        different_w: bool = True,
        sft_half: bool = True,
    ) -> None:
        super().__init__()
        self.log_size, self.style, self.different_w = int(math.log2(out_size)), style, different_w
        decoder = _channels(channel_multiplier, narrow)
        encoder = _channels(channel_multiplier, narrow * 0.5)
        self.conv_body_first = nn.Conv2d(3, encoder[out_size], 1)
        sides = [2**level for level in range(self.log_size, 2, -1)]  # out_size ... 8
        self.conv_body_down = nn.ModuleList(ResBlock(encoder[s], encoder[s // 2], 0.5) for s in sides)
        self.final_conv = nn.Conv2d(encoder[4], encoder[4], 3, 1, 1)
        self.conv_body_up = nn.ModuleList(ResBlock(encoder[s // 2], encoder[s], 2.0) for s in reversed(sides))
        self.toRGB = nn.ModuleList(nn.Conv2d(encoder[s], 3, 1) for s in reversed(sides))  # noqa: N815 - the files' key
        latents = (self.log_size * 2 - 2) if different_w else 1
        self.final_linear = nn.Linear(encoder[4] * 16, latents * style)
        self.stylegan_decoder = StyleGAN2Decoder(out_size, style, mlp, decoder, sft_half)
        sft = {s: encoder[s] if sft_half else encoder[s] * 2 for s in sides}
        self.condition_scale = nn.ModuleList(_sft_branch(encoder[s], sft[s]) for s in reversed(sides))
        self.condition_shift = nn.ModuleList(_sft_branch(encoder[s], sft[s]) for s in reversed(sides))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The restored face (``x``: b x 3 x out_size x out_size in ``[-1, 1]``)."""
        feat = functional.leaky_relu(self.conv_body_first(x), SLOPE)
        skips = []
        for block in self.conv_body_down:
            feat = block(feat)
            skips.insert(0, feat)
        feat = functional.leaky_relu(self.final_conv(feat), SLOPE)
        latent = self.final_linear(feat.flatten(1)).view(x.shape[0], -1, self.style)
        if not self.different_w:
            latent = latent.expand(-1, self.log_size * 2 - 2, -1)
        conditions = []
        for skip, up, scale, shift in zip(
            skips, self.conv_body_up, self.condition_scale, self.condition_shift, strict=True
        ):
            feat = up(feat + skip)
            conditions += [scale(feat), shift(feat)]
        return self.stylegan_decoder(latent, conditions)
