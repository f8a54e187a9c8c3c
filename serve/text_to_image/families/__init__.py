"""Model families, each declared once and recognised from ``model_index.json``'s class.

``sd.py`` and ``sdxl.py`` (UNets), ``sd3.py`` and ``flux.py`` (flow-matching transformers, ``flow.py``), ``svd.py``
(Stable Video Diffusion: a still animated).
"""

from __future__ import annotations

from pathlib import Path

from serve.errors import UnsupportedModel
from serve.text_to_image.families.base import Family, PipelineDims
from serve.text_to_image.families.flux import Flux
from serve.text_to_image.families.folder import read_model_index
from serve.text_to_image.families.sd import StableDiffusion
from serve.text_to_image.families.sd3 import StableDiffusion3
from serve.text_to_image.families.sdxl import StableDiffusionXL
from serve.text_to_image.families.svd import StableVideoDiffusion

FAMILIES: dict[str, type[Family]] = {
    family.name: family for family in (StableDiffusion, StableDiffusionXL, StableDiffusion3, Flux, StableVideoDiffusion)
}

__all__ = ["FAMILIES", "Family", "PipelineDims", "family_of_folder"]


def family_of_folder(model_dir: Path) -> Family:
    """The family of a diffusers folder with its dims; :class:`UnsupportedModel` names what does not fit."""
    class_name = read_model_index(model_dir).get("_class_name")
    family = next((f for f in FAMILIES.values() if class_name in f.pipeline_classes), None)
    if family is None:
        supported = ", ".join(name for f in FAMILIES.values() for name in f.pipeline_classes)
        raise UnsupportedModel(f"{model_dir}: pipeline class {class_name!r} is not supported (supported: {supported})")
    family.check_folder(model_dir)
    return family(family.read_dims(model_dir))
