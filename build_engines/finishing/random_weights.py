"""Upscaler files with random weights, saved in the community files' key layouts (nothing is downloaded).

Real-ESRGAN's ``RealESRGAN_x4plus.pth`` / ``x2plus`` keep BasicSR's RRDBNet under ``params_ema``;
``realesr-general-x4v3.pth`` keeps SRVGGNetCompact under ``params``. PyTorch's default initialisation, except
RRDBNet's last convolution: scaled so that its output spreads over ``[0, 1]`` around 0.5 as a picture's would (a
random RRDBNet's output is otherwise near 0, all black once clamped, and any two would compare equal).
"""

from __future__ import annotations

from pathlib import Path

import torch

from serve.finishing.architectures import RRDBNet, SRVGGNetCompact

FULL_SIZE = {
    "RRDBNet": {"features": 64, "blocks": 23, "growth": 32},
    "SRVGGNetCompact": {"features": 64, "convs": 32},
}
TINY = {"RRDBNet": {"features": 8, "blocks": 2, "growth": 8}, "SRVGGNetCompact": {"features": 16, "convs": 4}}
WRAPPER = {"RRDBNet": "params_ema", "SRVGGNetCompact": "params"}


def random_upscaler(kind: str, scale: int, seed: int = 0, **arguments) -> torch.nn.Module:
    """An upscaler of ``kind`` (``RRDBNet``, ``SRVGGNetCompact``) with random weights (tiny unless told)."""
    torch.manual_seed(seed)
    module = {"RRDBNet": RRDBNet, "SRVGGNetCompact": SRVGGNetCompact}[kind](scale=scale, **(TINY[kind] | arguments))
    if isinstance(module, RRDBNet):
        with torch.no_grad():
            picture = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 32, 32), 5, 1, 2)  # smooth, as pictures are
            spread = module(picture).std()
            module.conv_last.weight *= 0.25 / spread
            module.conv_last.bias.fill_(0.5)
    return module.eval()


def save_upscaler(module: torch.nn.Module, path: Path) -> Path:
    """Save ``module`` as its community file does (``.pth`` wrapped; ``.safetensors`` a flat state dict)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.contiguous() for key, value in module.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({WRAPPER[type(module).__name__]: state}, path)
    return path
