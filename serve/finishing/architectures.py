"""Upscaler architectures in plain PyTorch, with the parameter names the community files use.

* :class:`RRDBNet`: ESRGAN and Real-ESRGAN (``RealESRGAN_x4plus``, ``RealESRGAN_x2plus``), as BasicSR writes it:
  the x2 model folds 2x2 pixels into channels first (``pixel_unshuffle``), then upsamples 4x like the x4 one.
* :class:`SRVGGNetCompact`: Real-ESRGAN's compact model (``realesr-general-x4v3``, ``realesr-animevideov3``).

Both take and give NCHW RGB in ``[0, 1]``; torchvision is not needed (it has no CPU build here).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional


def _conv(channels_in: int, channels_out: int) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, 3, 1, 1)


class ResidualDenseBlock(nn.Module):
    """Five densely connected convolutions, the output scaled by 0.2 and added to the input."""

    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        for index in range(1, 5):
            setattr(self, f"conv{index}", _conv(features + (index - 1) * growth, growth))
        self.conv5 = _conv(features + 4 * growth, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's residual output."""
        found = [x]
        for index in range(1, 5):
            conv = getattr(self, f"conv{index}")
            found.append(functional.leaky_relu(conv(torch.cat(found, 1)), 0.2))
        return self.conv5(torch.cat(found, 1)) * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks, scaled by 0.2 and added to the input."""

    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(features, growth)
        self.rdb2 = ResidualDenseBlock(features, growth)
        self.rdb3 = ResidualDenseBlock(features, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's residual output."""
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN's generator (BasicSR's ``RRDBNet``): ``scale`` 1, 2 or 4 (1 and 2 fold pixels into channels first)."""

    def __init__(self, scale: int = 4, features: int = 64, blocks: int = 23, growth: int = 32) -> None:
        super().__init__()
        self.scale = scale
        self.fold = {4: 1, 2: 2, 1: 4}[scale]
        self.conv_first = _conv(3 * self.fold**2, features)
        self.body = nn.Sequential(*(RRDB(features, growth) for _ in range(blocks)))
        self.conv_body = _conv(features, features)
        self.conv_up1 = _conv(features, features)
        self.conv_up2 = _conv(features, features)
        self.conv_hr = _conv(features, features)
        self.conv_last = _conv(features, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The image upscaled ``scale`` times."""
        feat = self.conv_first(functional.pixel_unshuffle(x, self.fold) if self.fold > 1 else x)
        feat = feat + self.conv_body(self.body(feat))
        for conv in (self.conv_up1, self.conv_up2):
            feat = functional.leaky_relu(conv(functional.interpolate(feat, scale_factor=2.0, mode="nearest")), 0.2)
        return self.conv_last(functional.leaky_relu(self.conv_hr(feat), 0.2))


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact network: ``convs`` 3x3 convolutions with PReLU, a pixel shuffle, plus nearest."""

    def __init__(self, scale: int = 4, features: int = 64, convs: int = 32) -> None:
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [_conv(3, features), nn.PReLU(features)]
        for _ in range(convs):
            layers += [_conv(features, features), nn.PReLU(features)]
        layers.append(_conv(features, 3 * scale * scale))
        self.body = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The image upscaled ``scale`` times."""
        out = x
        for layer in self.body:
            out = layer(out)
        base = functional.interpolate(x, scale_factor=float(self.scale), mode="nearest")
        return functional.pixel_shuffle(out, self.scale) + base
