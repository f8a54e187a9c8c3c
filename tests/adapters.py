"""Adapters for tests, made here in the formats users bring (``build_engines/text_to_image/random_adapters.py``)."""

import base64
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from build_engines.text_to_image.random_adapters import IP_WEIGHTS, make_ip_adapter, make_lora
from tests.images import encode

# name -> (format, rank, seed); two more LoRAs than a resident bound of 2 holds
LORAS = {
    "style": ("diffusers", 4, 1),
    "line": ("diffusers", 2, 2),
    "kohya": ("kohya", 4, 3),
    "spare": ("diffusers", 3, 4),
}


@dataclass(frozen=True)
class Adapters:
    """A LoRA folder (good adapters plus a corrupt one) and an IP-Adapter folder."""

    loras: Path
    ip_adapter: Path

    def lora_file(self, name: str) -> str:
        """The file of LoRA ``name`` (what diffusers' ``load_lora_weights`` is given)."""
        return f"{name}.safetensors"


def make_adapters(model_dir: Path, folder: Path) -> Adapters:
    """Random LoRAs in diffusers and kohya formats, a corrupt ``broken.safetensors``, and an IP-Adapter."""
    loras = folder / "loras"
    for name, (fmt, rank, seed) in LORAS.items():
        make_lora(model_dir, loras / f"{name}.safetensors", rank=rank, seed=seed, fmt=fmt)
    (loras / "broken.safetensors").write_bytes(b"not a safetensors file")
    ip_adapter = make_ip_adapter(model_dir, folder / "ip_adapter", seed=5)
    assert (ip_adapter / IP_WEIGHTS).is_file()
    return Adapters(loras, ip_adapter)


def reference_image(seed: int = 0, height: int = 40, width: int = 52) -> tuple[Image.Image, str]:
    """A random RGB reference image and its base64 PNG."""
    pixels = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    return image, base64.b64encode(encode(image)).decode()
