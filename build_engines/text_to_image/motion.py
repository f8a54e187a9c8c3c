"""Motion adapters at build time: which ``--motion-adapter NAME=DIR`` folders fit the model, and tiny random ones.

Each fitting diffusers ``MotionAdapter`` folder becomes an engine ``unet_motion_<NAME>``: the model's UNet with the
adapter's motion modules (diffusers' ``UNetMotionModel``), exported with a video's latents (frames an axis). A folder
that does not fit is refused before anything is built, naming why.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from serve.errors import UnsupportedModel
from serve.files import content_hash
from serve.text_to_image.families import Family
from serve.text_to_image.families.folder import component_config
from serve.text_to_image.spec import UNET

LORA_MOTION_EXPORT = 1
"""The LoRA-ready motion UNet's export version: bumped when its graph changes (the other engines' graphs then stay)."""


def motion_key(motion_adapters: Mapping[str, Path], lora: bool = False) -> str:
    """Part of the engine cache key: "" without motion adapters, else their names and folders' content.

    ``lora``: the motion UNets are LoRA-ready (:data:`LORA_MOTION_EXPORT` in the key).
    """
    if not motion_adapters:
        return ""
    listed = json.dumps({name: content_hash(folder) for name, folder in sorted(motion_adapters.items())}).encode()
    return f"motion{hashlib.sha256(listed).hexdigest()[:12]}" + (f"lora{LORA_MOTION_EXPORT}" if lora else "")


def motion_fit(family: Family, model_dir: Path, folder: Path) -> str | None:
    """Why the ``MotionAdapter`` in ``folder`` cannot serve ``model_dir``'s model (None: it fits)."""
    if family.name != "sd":
        return f"motion adapters serve StableDiffusionPipeline (SD 1.x) models, not {family.pipeline_class} models"
    try:
        config = component_config(folder, "MotionAdapter")
    except ValueError as why:
        return str(why)
    unet = json.loads((model_dir / UNET / "config.json").read_text())
    if list(config.get("block_out_channels", ())) != list(unet["block_out_channels"]):
        return (
            f"its block_out_channels {config.get('block_out_channels')} are not the UNet's {unet['block_out_channels']}"
        )
    return None


def checked_motion_adapters(family: Family, model_dir: Path, motion_adapters: Mapping[str, Path]) -> dict[str, str]:
    """NAME -> folder of each motion adapter; :class:`UnsupportedModel` naming the first that does not fit."""
    for name, folder in sorted(motion_adapters.items()):
        error = motion_fit(family, model_dir, folder)
        if error:
            raise UnsupportedModel(f"motion adapter {name} ({folder}): {error}")
    return {name: str(Path(folder).resolve()) for name, folder in sorted(motion_adapters.items())}


def random_motion_adapter(model_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """A ``MotionAdapter`` with random weights shaped for ``model_dir``'s UNet, saved in diffusers' format."""
    import torch
    from diffusers import MotionAdapter

    unet = json.loads((model_dir / UNET / "config.json").read_text())
    torch.manual_seed(seed)
    adapter = MotionAdapter(
        block_out_channels=tuple(unet["block_out_channels"]),
        motion_layers_per_block=unet["layers_per_block"],
        motion_norm_num_groups=unet["norm_num_groups"],
        motion_num_attention_heads=2,
        motion_max_seq_length=32,
    )
    adapter.save_pretrained(out_dir)
    return out_dir
