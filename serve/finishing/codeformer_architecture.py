"""CodeFormer (``codeformer.pth``) in plain PyTorch, with the community file's key names.

A VQGAN encoder reads the 512x512 face down to 16x16 features; a transformer predicts, for each of those 256
positions, a code of the learned codebook; the codes' vectors (matched to the features' statistics, AdaIN) feed
the VQGAN generator, whose features are fused with the encoder's at the chosen sizes by ``fidelity`` (CodeFormer's
``w``: 0 the codebook's face alone, the most restored; 1 the most faithful to the input). Written after
CodeFormer's ``codeformer_arch.py`` (S-Lab License 1.0) as spandrel-extra-arches carries it, with three changes
that give the same output:

* ``fidelity`` is a tensor, one per image (the engine's input), and the fusion always runs: at 0 it adds nothing,
  as the original's ``if w > 0`` skips it;
* a code's vector is an embedding lookup, not a one-hot matrix product (the same numbers);
* the VQGAN's sizes are fixed as the file's are (512 pixels, 64 channels, multiples 1, 2, 2, 4, 4, 8); the
  transformer's width, depth, codebook and fused sizes are read from the file (:func:`codeformer_arguments`).

Takes and gives NCHW RGB in ``[-1, 1]``.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional

SIDE, CHANNELS, MULTIPLES, CODE_WIDTH, HEADS = 512, 64, (1, 2, 2, 4, 4, 8), 256, 8
FEATURES = {"16": 512, "32": 256, "64": 256, "128": 128, "256": 128, "512": 64}
"""The VQGAN's channels at each side."""
ENCODER_TAPS = {"512": 2, "256": 5, "128": 8, "64": 11, "32": 14, "16": 18}
"""After which encoder block each side's features are kept."""
GENERATOR_TAPS = {"16": 6, "32": 9, "64": 12, "128": 15, "256": 18, "512": 21}
"""After which generator block each side's features are fused."""


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)  # as the original writes it (not silu's kernel): the codes' choice is exact


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResBlock(nn.Module):
    """Two normalised swish 3x3 convolutions and the input (projected when the width changes)."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(channels_in), nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(channels_out), nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.conv_out = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output."""
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        return h + (x if self.conv_out is None else self.conv_out(x))


class AttnBlock(nn.Module):
    """Single-head self-attention over the positions of a feature map."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` plus its attended values."""
        h = self.norm(x)
        b, c, height, width = x.shape
        q = self.q(h).reshape(b, c, height * width).permute(0, 2, 1)
        k, v = self.k(h).reshape(b, c, height * width), self.v(h).reshape(b, c, height * width)
        weights = torch.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)
        return x + self.proj_out(torch.bmm(v, weights.permute(0, 2, 1)).reshape(b, c, height, width))


class Downsample(nn.Module):
    """A stride-2 3x3 convolution, padded right and below."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Half the side."""
        return self.conv(functional.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest doubling, then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Twice the side."""
        return self.conv(functional.interpolate(x, scale_factor=2.0, mode="nearest"))


def _encoder_blocks() -> list[nn.Module]:
    blocks: list[nn.Module] = [nn.Conv2d(3, CHANNELS, 3, padding=1)]
    side, widths = SIDE, (1, *MULTIPLES)
    for i, multiple in enumerate(MULTIPLES):
        width = CHANNELS * widths[i]
        for _ in range(2):
            blocks.append(ResBlock(width, CHANNELS * multiple))
            width = CHANNELS * multiple
            if side == 16:
                blocks.append(AttnBlock(width))
        if i != len(MULTIPLES) - 1:
            blocks.append(Downsample(width))
            side //= 2
    last = CHANNELS * MULTIPLES[-1]
    return [
        *blocks,
        ResBlock(last, last),
        AttnBlock(last),
        ResBlock(last, last),
        _norm(last),
        nn.Conv2d(last, 256, 3, padding=1),
    ]


def _generator_blocks() -> list[nn.Module]:
    width = CHANNELS * MULTIPLES[-1]
    blocks: list[nn.Module] = [nn.Conv2d(CODE_WIDTH, width, 3, padding=1), ResBlock(width, width)]
    blocks += [AttnBlock(width), ResBlock(width, width)]
    side = SIDE // 2 ** (len(MULTIPLES) - 1)
    for i in reversed(range(len(MULTIPLES))):
        for _ in range(2):
            blocks.append(ResBlock(width, CHANNELS * MULTIPLES[i]))
            width = CHANNELS * MULTIPLES[i]
            if side == 16:
                blocks.append(AttnBlock(width))
        if i != 0:
            blocks.append(Upsample(width))
            side *= 2
    return [*blocks, _norm(width), nn.Conv2d(width, 3, 3, padding=1)]


class Blocks(nn.Module):
    """A list of blocks under ``blocks`` (the file's ``encoder.blocks.N`` and ``generator.blocks.N``)."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class Quantize(nn.Module):
    """The codebook (``quantize.embedding``)."""

    def __init__(self, codebook_size: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, CODE_WIDTH)


class TransformerLayer(nn.Module):
    """A pre-norm self-attention layer (positions added to queries and keys) and a GELU MLP."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(width, HEADS)
        self.linear1, self.linear2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """``x`` (tokens x batch x width) through the layer."""
        h = self.norm1(x)
        x = x + self.self_attn(h + position, h + position, value=h)[0]
        return x + self.linear2(functional.gelu(self.linear1(self.norm2(x))))


class Fuse(nn.Module):
    """CodeFormer's controllable feature transform: a scale and a shift of the generator's features, by fidelity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.encode_enc = ResBlock(2 * channels, channels)

        def transform() -> nn.Sequential:
            conv = (nn.Conv2d(channels, channels, 3, padding=1) for _ in range(2))
            return nn.Sequential(next(conv), nn.LeakyReLU(0.2, True), next(conv))

        self.scale, self.shift = transform(), transform()

    def forward(self, encoded: torch.Tensor, decoded: torch.Tensor, fidelity: torch.Tensor) -> torch.Tensor:
        """``decoded`` plus ``fidelity`` times its transform by the encoder's features."""
        features = self.encode_enc(torch.cat([encoded, decoded], dim=1))
        return decoded + fidelity[:, None, None, None] * (decoded * self.scale(features) + self.shift(features))


def _adain(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """``content`` with ``style``'s per-channel mean and (unbiased) deviation, as CodeFormer's AdaIN."""

    def moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.flatten(2)
        return flat.mean(2)[:, :, None, None], (flat.var(2) + 1e-5).sqrt()[:, :, None, None]

    (content_mean, content_std), (style_mean, style_std) = moments(content), moments(style)
    return (content - content_mean) / content_std * style_std + style_mean


class CodeFormer(nn.Module):
    """CodeFormer: ``forward(image, fidelity)``, ``[-1, 1]`` RGB at 512x512 and one fidelity per image."""

    def __init__(self, width: int, layers: int, codebook_size: int, fused: tuple[str, ...]) -> None:
        super().__init__()
        self.encoder, self.generator = Blocks(_encoder_blocks()), Blocks(_generator_blocks())
        self.quantize = Quantize(codebook_size)
        tokens = (SIDE // 2 ** (len(MULTIPLES) - 1)) ** 2
        self.position_emb = nn.Parameter(torch.zeros(tokens, width))
        self.feat_emb = nn.Linear(CODE_WIDTH, width)
        self.ft_layers = nn.Sequential(*(TransformerLayer(width) for _ in range(layers)))
        self.idx_pred_layer = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, codebook_size, bias=False))
        self.fused = fused
        self.fuse_convs_dict = nn.ModuleDict({size: Fuse(FEATURES[size]) for size in fused})

    def forward(self, image: torch.Tensor, fidelity: torch.Tensor) -> torch.Tensor:
        """The restored faces."""
        taps, kept, x = {ENCODER_TAPS[size]: size for size in self.fused}, {}, image
        for i, block in enumerate(self.encoder.blocks):
            x = block(x)
            if i in taps:
                kept[taps[i]] = x
        features = x
        tokens = self.feat_emb(features.flatten(2).permute(2, 0, 1))  # positions x batch x width
        position = self.position_emb.unsqueeze(1)
        for layer in self.ft_layers:
            tokens = layer(tokens, position)
        codes = self.idx_pred_layer(tokens).argmax(dim=2).permute(1, 0)  # batch x positions
        side = features.shape[-1]
        quantized = self.quantize.embedding(codes).reshape(-1, side, side, CODE_WIDTH).permute(0, 3, 1, 2)
        x = _adain(quantized, features)
        fuse = {GENERATOR_TAPS[size]: size for size in self.fused}
        for i, block in enumerate(self.generator.blocks):
            x = block(x)
            if i in fuse:
                x = self.fuse_convs_dict[fuse[i]](kept[fuse[i]], x, fidelity)
        return x


def codeformer_arguments(state: dict[str, torch.Tensor]) -> dict:
    """The transformer's width and depth, the codebook's size and the fused sizes, read from ``state``'s keys."""
    layers = {int(m.group(1)) for key in state if (m := re.match(r"ft_layers\.(\d+)\.", key))}
    return {
        "width": state["position_emb"].shape[1],
        "layers": len(layers),
        "codebook_size": state["idx_pred_layer.1.weight"].shape[0],
        "fused": tuple(size for size in FEATURES if f"fuse_convs_dict.{size}.scale.0.weight" in state),
    }
