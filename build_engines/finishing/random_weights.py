"""Upscaler and face restorer files with random weights, in the community files' key layouts (nothing downloaded).

Real-ESRGAN's ``RealESRGAN_x4plus.pth`` / ``x2plus`` keep BasicSR's RRDBNet under ``params_ema``;
``realesr-general-x4v3.pth`` keeps SRVGGNetCompact under ``params``. PyTorch's default initialisation, except
RRDBNet's last convolution: scaled so that its output spreads over ``[0, 1]`` around 0.5 as a picture's would (a
random RRDBNet's output is otherwise near 0, all black once clamped, and any two would compare equal).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from serve.finishing.architectures import RRDBNet, SRVGGNetCompact
from serve.finishing.codeformer_architecture import CodeFormer
from serve.finishing.face_architecture import GFPGANv1Clean, ModulatedConv2d

FULL_SIZE = {
    "RRDBNet": {"features": 64, "blocks": 23, "growth": 32},
    "SRVGGNetCompact": {"features": 64, "convs": 32},
}
TINY = {"RRDBNet": {"features": 8, "blocks": 2, "growth": 8}, "SRVGGNetCompact": {"features": 16, "convs": 4}}
WRAPPER = {
    "RRDBNet": "params_ema",
    "SRVGGNetCompact": "params",
    "GFPGANv1Clean": "params_ema",
    "CodeFormer": "params_ema",
}
TINY_RESTORER = {"style": 64, "channel_multiplier": 1, "narrow": 0.125}
"""GFPGAN's layout (512x512, v1.4's options) with an eighth of its channels and a 64-wide style."""
SMALL_CODEFORMER = {"width": 64, "layers": 1, "codebook_size": 64, "fused": ("32", "64")}
"""CodeFormer's layout with a narrow, one-layer transformer and a small codebook (its VQGAN is the file's, full size:
no smaller one loads as CodeFormer); ``codeformer.pth``'s: 512 wide, 9 layers, 1024 codes, fused at 32 to 256."""


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


def random_restorer(seed: int = 0, **arguments) -> GFPGANv1Clean:
    """A GFPGAN v1 clean face restorer with random weights (tiny unless told; ``{}``-less full size: v1.4's).

    As GFPGAN initialises them, the style modulations start at 1 (their bias), so the decoder's features neither
    vanish nor saturate; the output is a face-sized picture in ``[-1, 1]``, different for every input.
    """
    torch.manual_seed(seed)
    module = GFPGANv1Clean(**(TINY_RESTORER | arguments))
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, ModulatedConv2d):
                layer.modulation.bias.fill_(1.0)
        for index in range(len(module.stylegan_decoder.noises._buffers)):
            getattr(module.stylegan_decoder.noises, f"noise{index}").normal_()
    return module.eval()


def random_codeformer(seed: int = 0, **arguments) -> CodeFormer:
    """A CodeFormer with random weights (:data:`SMALL_CODEFORMER` unless told), its positions' embedding drawn too."""
    torch.manual_seed(seed)
    module = CodeFormer(**(SMALL_CODEFORMER | arguments))
    with torch.no_grad():
        module.position_emb.normal_()
    return module.eval()


def drawn_face(side: int = 256, background: tuple[int, int, int] = (70, 90, 120)) -> np.ndarray:
    """A cartoon face on a plain ground, ``side`` pixels square (RGB ``uint8``): one face the Haar cascade finds.

    Drawn, so deterministic and free of any licence; found at 128, 256 and 512 pixels.
    """
    image = Image.new("RGB", (side, side), background)
    draw = ImageDraw.Draw(image)
    unit = side / 256

    def shape(kind: str, box: tuple[float, ...], fill: tuple[int, int, int]) -> None:
        points = [value * unit for value in box]
        {"ellipse": draw.ellipse, "rectangle": draw.rectangle}[kind](points, fill=fill)

    shape("ellipse", (58, 30, 198, 220), (225, 190, 160))  # head
    for left in (80, 140):
        shape("rectangle", (left, 88, left + 36, 96), (60, 40, 30))  # brows
        shape("ellipse", (left + 6, 104, left + 32, 122), (40, 30, 30))  # eyes
    draw.polygon([(128 * unit, 115 * unit), (118 * unit, 158 * unit), (138 * unit, 158 * unit)], fill=(200, 160, 135))
    shape("ellipse", (100, 170, 156, 186), (150, 60, 60))  # mouth
    return np.asarray(image.filter(ImageFilter.GaussianBlur(2 * unit)))
