"""RIFE's IFNet in plain PyTorch, in Practical-RIFE's ``flownet.pkl`` layout (v4.25/4.26), as no library loads it.

The layout: five flow blocks and a 16-channel feature head.

:class:`IFNet` estimates the flows from a pair to the moment ``timestep`` between them, coarse to fine
(:data:`SCALES`), warps both frames there and blends them by the mask it estimates: the middle frame.
:func:`read_flownet` loads a released file (its keys carry DDP's ``module.`` prefix, as Practical-RIFE saves them);
:func:`random_flownet` writes one with random weights (tests, benchmarks). The served engine runs
:class:`Interpolator` (a pair and a timestep in, the middle frame out) on frames padded as Practical-RIFE pads them
(:func:`serve.finishing.interpolators.padded_side`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from serve.finishing.recognise import UnrecognisedUpscaler

SCALES = (16.0, 8.0, 4.0, 2.0, 1.0)
"""Each block's downscale, coarse to fine (Practical-RIFE's ``scale_list`` at ``scale=1``)."""
HEAD_CHANNELS = 16
BLOCKS = ((7 + 2 * HEAD_CHANNELS, 192), *((8 + 4 + 8 + 2 * HEAD_CHANNELS, c) for c in (128, 96, 64, 32)))
"""Each flow block's (input channels, width): the first sees the pair, their features and the timestep; the
others also the warped pair, the flow so far, the mask and the previous block's 8 feature channels."""
BLOCK_OUTPUTS = 4 + 1 + 8
"""A block's outputs, per pixel: the two flows' change (4), the mask (1), features for the next block (8)."""


def _conv(inputs: int, outputs: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, 3, stride, 1), nn.LeakyReLU(0.2, True))


class Head(nn.Module):
    """The features each frame is warped with (16 channels, full resolution)."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn0 = nn.Conv2d(3, HEAD_CHANNELS, 3, 2, 1)
        self.cnn1 = nn.Conv2d(HEAD_CHANNELS, HEAD_CHANNELS, 3, 1, 1)
        self.cnn2 = nn.Conv2d(HEAD_CHANNELS, HEAD_CHANNELS, 3, 1, 1)
        self.cnn3 = nn.ConvTranspose2d(HEAD_CHANNELS, HEAD_CHANNELS, 4, 2, 1)
        self.relu = nn.LeakyReLU(0.2, True)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """The image's features (16 channels, its size)."""
        x = self.relu(self.cnn0(image))
        x = self.relu(self.cnn1(x))
        x = self.relu(self.cnn2(x))
        return self.cnn3(x)


class ResConv(nn.Module):
    """A 3x3 convolution scaled per channel (``beta``) around a residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)
        self.beta = nn.Parameter(torch.ones((1, channels, 1, 1)))
        self.relu = nn.LeakyReLU(0.2, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` refined (same shape)."""
        return self.relu(self.conv(x) * self.beta + x)


class IFBlock(nn.Module):
    """One flow block: at ``1/scale`` of the frame, what to add to the flows, the mask and the next features."""

    def __init__(self, inputs: int, width: int) -> None:
        super().__init__()
        self.conv0 = nn.Sequential(_conv(inputs, width // 2, 2), _conv(width // 2, width, 2))
        self.convblock = nn.Sequential(*(ResConv(width) for _ in range(8)))
        self.lastconv = nn.Sequential(nn.ConvTranspose2d(width, 4 * BLOCK_OUTPUTS, 4, 2, 1), nn.PixelShuffle(2))

    def forward(
        self, x: torch.Tensor, flow: torch.Tensor | None, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The flows' change (pixels), the mask's logits and the next block's features, at full size."""
        x = F.interpolate(x, scale_factor=1.0 / scale, mode="bilinear", align_corners=False)
        if flow is not None:
            flow = F.interpolate(flow, scale_factor=1.0 / scale, mode="bilinear", align_corners=False) / scale
            x = torch.cat((x, flow), 1)
        out = self.lastconv(self.convblock(self.conv0(x)))
        out = F.interpolate(out, scale_factor=scale, mode="bilinear", align_corners=False)
        return out[:, :4] * scale, out[:, 4:5], out[:, 5:]


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``image`` sampled at each pixel moved by ``flow`` (pixels; bilinear, edges repeated)."""
    height, width = image.shape[2], image.shape[3]
    xs = torch.arange(width, dtype=flow.dtype, device=flow.device).view(1, 1, width).expand(-1, height, -1)
    ys = torch.arange(height, dtype=flow.dtype, device=flow.device).view(1, height, 1).expand(-1, -1, width)
    grid_x = (xs + flow[:, 0]) * (2.0 / (width - 1)) - 1.0
    grid_y = (ys + flow[:, 1]) * (2.0 / (height - 1)) - 1.0
    grid = torch.stack((grid_x, grid_y), dim=3)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


class IFNet(nn.Module):
    """Practical-RIFE's flow network (v4.25 layout): the frame at ``timestep`` between ``frame0`` and ``frame1``."""

    def __init__(self) -> None:
        super().__init__()
        for index, (inputs, width) in enumerate(BLOCKS):
            self.add_module(f"block{index}", IFBlock(inputs, width))
        self.encode = Head()

    def forward(self, frame0: torch.Tensor, frame1: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """RGB in ``[0, 1]`` (N x 3 x H x W, sides multiples of 64), ``timestep`` N x 1 in (0, 1): the middle frame."""
        time = timestep.view(-1, 1, 1, 1) * torch.ones_like(frame0[:, :1])
        features0, features1 = self.encode(frame0), self.encode(frame1)
        warped0, warped1 = frame0, frame1
        flow = mask = features = None
        for index, scale in enumerate(SCALES):
            block = getattr(self, f"block{index}")
            if flow is None:
                x = torch.cat((frame0, frame1, features0, features1, time), 1)
                flow, mask, features = block(x, None, scale)
            else:
                moved0, moved1 = warp(features0, flow[:, :2]), warp(features1, flow[:, 2:4])
                x = torch.cat((warped0, warped1, moved0, moved1, time, mask, features), 1)
                change, mask, features = block(x, flow, scale)
                flow = flow + change
            warped0, warped1 = warp(frame0, flow[:, :2]), warp(frame1, flow[:, 2:4])
        blend = torch.sigmoid(mask)
        return warped0 * blend + warped1 * (1 - blend)


class Interpolator(nn.Module):
    """The served engine's module: ``pair`` (N x 6 x H x W, two RGB frames) and ``timestep`` (N x 1) in."""

    def __init__(self, net: IFNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, pair: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """The middle frame of each row (N x 3 x H x W)."""
        return self.net(pair[:, :3], pair[:, 3:], timestep)


def read_flownet(path: Path) -> IFNet:
    """The IFNet in ``path`` (Practical-RIFE's ``flownet.pkl``: a state dict, keys with or without ``module.``).

    A file of another layout (an older RIFE, another network) is refused naming what is missing or unexpected.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickle, zip or torch errors for a file that is no state dict
        raise UnrecognisedUpscaler(f"{path}: not a PyTorch state dict ({error})") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnrecognisedUpscaler(f"{path}: not a state dict of tensors")
    state = {key.removeprefix("module."): value for key, value in state.items()}
    net = IFNet()
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[1:2] or [str(error)]
        raise UnrecognisedUpscaler(
            f"{path}: not a Practical-RIFE v4.25/4.26 flownet.pkl ({first[0].strip()[:200]})"
        ) from None
    return net.eval()


def random_flownet(path: Path, seed: int = 0, flow_scale: float = 2.0) -> Path:
    """A ``flownet.pkl`` of random weights in the released layout (``module.`` keys).

    Each block's last layer is scaled by ``flow_scale``: random full-size flows move every pixel off the frame.
    """
    torch.manual_seed(seed)
    net = IFNet()
    with torch.no_grad():
        for index in range(len(BLOCKS)):
            last = getattr(net, f"block{index}").lastconv[0]
            last.weight.mul_(flow_scale)
            last.bias.mul_(flow_scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({f"module.{key}": value for key, value in net.state_dict().items()}, path)
    return path
