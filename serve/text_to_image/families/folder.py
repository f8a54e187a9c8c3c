"""A diffusers pipeline folder: the components a family needs in it, and its configs, read as every family reads them.

``model_index.json`` (which family a folder is), a component's JSON config, and the dims every family shares: the
prompts' token length, the VAE's latents and scale, the denoiser's sample size and weights, a UNet's input channels and
the residuals a ControlNet adds to it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from serve.errors import UnsupportedModel
from serve.text_to_image.controlnet import residual_layout
from serve.text_to_image.spec import DISTILLED_UNET, UNET

WEIGHT_SUFFIXES = (".safetensors", ".bin")
MODEL_INDEX = "model_index.json"


@dataclass(frozen=True)
class Component:
    """A folder of a diffusers pipeline that a family needs, and the file that must be in it.

    ``optional``: the pipeline runs without it when ``model_index.json`` lists it as ``[null, null]`` (SD3's T5).
    """

    folder: str
    required_file: str
    has_weights: bool = True
    optional: bool = False


def pipeline_components(denoiser: str, encoders: int, optional: int = 0) -> tuple[Component, ...]:
    """A pipeline folder's components: its text encoders, their tokenizers, the denoiser, the VAE, the scheduler.

    The encoders are ``text_encoder``, ``text_encoder_2``, ...; the last ``optional`` of them and their tokenizers may
    be left out (SD3's T5).
    """
    suffixes = ["" if number == 1 else f"_{number}" for number in range(1, encoders + 1)]
    optional_suffixes = suffixes[encoders - optional :]
    return (
        *(Component(f"text_encoder{s}", "config.json", optional=s in optional_suffixes) for s in suffixes),
        *(
            Component(f"tokenizer{s}", "tokenizer_config.json", has_weights=False, optional=s in optional_suffixes)
            for s in suffixes
        ),
        Component(denoiser, "config.json"),
        Component("vae", "config.json"),
        Component("scheduler", "scheduler_config.json", has_weights=False),
    )


def read_model_index(model_dir: Path) -> dict:
    """``model_index.json`` of a diffusers folder; :class:`UnsupportedModel` when it is missing or not JSON."""
    path = model_dir / MODEL_INDEX
    if not path.is_file():
        raise UnsupportedModel(f"{model_dir} is not a diffusers pipeline folder: it has no {MODEL_INDEX}")
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UnsupportedModel(f"{path} is not valid JSON: {error}") from error
    if not isinstance(index, dict):
        raise UnsupportedModel(f"{path} is not a JSON object")
    return index


def read_config(model_dir: Path, component: str, file: str = "config.json") -> dict:
    """A component's JSON config."""
    return json.loads((model_dir / component / file).read_text())


def component_config(folder: Path, class_name: str) -> dict:
    """An outside diffusers component's ``config.json`` (a ControlNet's, a motion adapter's), if it is one.

    A ``ValueError`` says why not: unreadable, not a ``class_name``, or no weights.
    """
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not readable JSON ({error})") from None
    if config.get("_class_name") != class_name:
        raise ValueError(f"{path} is a {config.get('_class_name')!r}, not a diffusers {class_name}")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise ValueError(f"{folder} has no weights (.safetensors)")
    return config


def vae_dims(model_dir: Path, denoiser: str = UNET, default_sample_size: int = 128, plain_unet: bool = True) -> dict:
    """The dims every family reads from the denoiser's and the VAE's configs.

    A UNet takes the VAE's latents, or (an inpainting UNet) those, a mask and the masked image's latents; its down
    blocks make the residuals a ControlNet adds. ``default_sample_size``: the latent side of a denoiser whose config
    has none (diffusers' Flux default); ``plain_unet``: the UNet is a ``UNet2DConditionModel`` (not SVD's).
    """
    config = read_config(model_dir, denoiser)
    vae = read_config(model_dir, "vae")
    sample_size = config.get("sample_size", default_sample_size)
    vae_sample_size = vae.get("sample_size", 512)
    latent_channels = int(vae.get("latent_channels", 4))
    return {
        "latent_channels": latent_channels,
        "vae_scale_factor": 2 ** (len(vae["block_out_channels"]) - 1),
        "vae_scaling_factor": float(vae.get("scaling_factor", 0.18215)),
        "sample_size": int(sample_size[0] if isinstance(sample_size, list) else sample_size),
        "vae_sample_size": int(vae_sample_size[0] if isinstance(vae_sample_size, list) else vae_sample_size),
        "unet_bytes": sum(f.stat().st_size for f in (model_dir / denoiser).iterdir() if f.suffix in WEIGHT_SUFFIXES),
    } | (_unet_dims(config, latent_channels, model_dir) if denoiser == UNET and plain_unet else {})


def _unet_dims(unet: Mapping, latent_channels: int, model_dir: Path) -> dict:
    """A UNet's input channels (checked against the VAE's latents) and the residuals a ControlNet adds to it.

    Also whether the folder ships a distilled UNet of the same architecture (a different one is refused).
    """
    unet_in_channels = int(unet["in_channels"])
    if unet_in_channels not in (latent_channels, 2 * latent_channels + 1):
        raise UnsupportedModel(
            f"{model_dir}: the UNet takes {unet_in_channels} channels; the VAE's latents have {latent_channels} "
            f"(an inpainting UNet takes {2 * latent_channels + 1})"
        )
    distilled = (model_dir / DISTILLED_UNET / "config.json").is_file()
    if distilled and _architecture(read_config(model_dir, DISTILLED_UNET)) != _architecture(unet):
        raise UnsupportedModel(f"{model_dir}: {DISTILLED_UNET}/ is not a UNet of the same architecture as unet/")
    return {"unet_in_channels": unet_in_channels, "residuals": residual_layout(unet), "distilled_unet": distilled}


def _architecture(config: Mapping) -> dict:
    """A model config without diffusers' bookkeeping (its version, where it was read from)."""
    return {key: value for key, value in config.items() if not key.startswith("_")}


def text_length(model_dir: Path) -> int:
    """Token length of the prompts: the tokenizer's ``model_max_length``, else the text encoder's positions."""
    tokenizer = read_config(model_dir, "tokenizer", "tokenizer_config.json")
    text = read_config(model_dir, "text_encoder")
    return int(tokenizer.get("model_max_length", text["max_position_embeddings"]))
