"""ControlNets, input images and masks for tests, made here (``build_engines/text_to_image/random_controls.py``)."""

import base64
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from build_engines.text_to_image.random_controls import make_controlnet
from tests.images import encode, icon_pixels


@dataclass(frozen=True)
class ControlNets:
    """ControlNet folders for the tiny SD and the tiny SDXL."""

    sd: dict[str, Path]
    sdxl: dict[str, Path]

    @property
    def for_sd(self) -> dict[str, Path]:
        """What a tiny SD stack is started with: its two, and one made for SDXL (refused)."""
        return {**self.sd, "xl": self.sdxl["edges"]}

    @property
    def for_sdxl(self) -> dict[str, Path]:
        """What a tiny SDXL stack is started with: its two, and one made for SD (refused)."""
        return {**self.sdxl, "sd": self.sd["edges"]}


def make_controlnets(sd_model: Path, sdxl_model: Path, folder: Path) -> ControlNets:
    """Two random ControlNets for each model (seeded: the same folders, so the same cached engines, every run)."""
    made = {}
    for family, model, seed in (("sd", sd_model, 10), ("sdxl", sdxl_model, 20)):
        made[family] = {
            name: make_controlnet(model, folder / family / name, seed=seed + offset)
            for offset, name in enumerate(("edges", "depth"))
        }
    return ControlNets(made["sd"], made["sdxl"])


def input_image(size: int = 64, width: int | None = None) -> np.ndarray:
    """An RGB input image (a two-colour icon on white)."""
    return icon_pixels(size, width)


def edges_image(size: int = 64, seed: int = 0) -> np.ndarray:
    """A control image: sparse white dots on black, RGB."""
    return ((np.random.default_rng(seed).random((size, size, 3)) > 0.8) * 255).astype(np.uint8)


def box_mask(size: int = 64) -> np.ndarray:
    """A grey mask, white (draw) over a box left of centre, black elsewhere."""
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4 : 3 * size // 4, size // 8 : 5 * size // 8] = 255
    return mask


def openai_mask(mask: np.ndarray) -> bytes:
    """``mask`` as OpenAI's edits take one: a PNG, transparent (alpha 0) where to draw, opaque elsewhere."""
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[:, :, 3] = np.where(mask > 127, 0, 255)
    return encode(Image.fromarray(rgba, "RGBA"))


def b64(pixels: np.ndarray) -> str:
    """An image as base64 PNG."""
    return base64.b64encode(encode(Image.fromarray(pixels))).decode()
