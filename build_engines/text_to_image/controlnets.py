"""ControlNets at build time: which ``--controlnet NAME=DIR`` folders fit the model, and the modules exported for them.

Each fitting diffusers ``ControlNetModel`` folder becomes an engine ``controlnet_<NAME>``, and the UNet is exported
ControlNet-ready: it takes their residuals as its last inputs. A folder that does not fit (not a ControlNetModel,
made for another family, another UNet's blocks, another image scale, guess-mode-only) is recorded with why, not
built: the stack serves the others and a request naming it is a 400
(:class:`serve.text_to_image.controlnet.ControlNetSupport`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from build_engines.text_to_image.ip_adapter import IdentityNetModule, IpAdapterError, IpAdapterFolder, face_projection
from serve.files import content_hash
from serve.text_to_image.controlnet import ERROR, ControlNetEntry, ControlNetSupport, residual_layout
from serve.text_to_image.families import FAMILIES, Family
from serve.text_to_image.families.exports import ExportModule, UnetModule
from serve.text_to_image.families.folder import component_config
from serve.text_to_image.spec import CONTROLNET_PREFIX, UNET
from serve.text_to_image.torch_engines import ControlNetReadyUnet

logger = logging.getLogger(__name__)


def controlnets_key(controlnets: Mapping[str, Path]) -> str:
    """Part of the engine cache key: "" without ControlNets, else their names and folders' content."""
    if not controlnets:
        return ""
    listed = json.dumps({name: content_hash(folder) for name, folder in sorted(controlnets.items())}).encode()
    return f"cn{hashlib.sha256(listed).hexdigest()[:12]}"


def made_for(config: Mapping) -> str:
    """The family a ControlNet config was made for: SDXL's has the ``text_time`` added embedding."""
    return "sdxl" if config.get("addition_embed_type") == "text_time" else "sd"


def fit(family: Family, unet_config: Mapping, folder: Path) -> str | None:
    """Why the ControlNet in ``folder`` cannot serve ``family``'s model (None: it fits)."""
    if not family.takes_images:
        return f"{family.pipeline_class} models take no ControlNets"
    try:
        config = component_config(folder, "ControlNetModel")
    except ValueError as why:
        return str(why)
    kind = made_for(config)
    if kind != family.name:
        return f"made for {FAMILIES[kind].pipeline_class} models; this stack serves a {family.pipeline_class} model"
    if config.get("global_pool_conditions"):
        return "a guess-mode ControlNet (global_pool_conditions), which Easel does not serve"
    checks = {
        "residual layout (block_out_channels, layers_per_block)": (residual_layout(config), family.dims.residuals),
        "cross_attention_dim": (config.get("cross_attention_dim"), unet_config.get("cross_attention_dim")),
        "image scale (conditioning_embedding_out_channels)": (
            2 ** (len(config.get("conditioning_embedding_out_channels", (16, 32, 96, 256))) - 1),
            family.dims.vae_scale_factor,
        ),
        "added embedding (projection_class_embeddings_input_dim)": (
            config.get("projection_class_embeddings_input_dim"),
            unet_config.get("projection_class_embeddings_input_dim"),
        ),
        "in_channels": (config.get("in_channels"), family.dims.latent_channels),
    }
    wrong = [what for what, (theirs, ours) in checks.items() if tuple_of(theirs) != tuple_of(ours)]
    return f"does not fit this model's UNet: {', '.join(wrong)} differ" if wrong else None


def tuple_of(value):
    """Lists as tuples (configs read from JSON against dims), anything else as is."""
    return tuple(tuple_of(v) for v in value) if isinstance(value, list | tuple) else value


def controlnet_support(
    family: Family,
    model_dir: Path,
    controlnets: Mapping[str, Path],
    identity_nets: Mapping[str, IpAdapterFolder] | None = None,
) -> ControlNetSupport:
    """The entry of each ControlNet for ``model_dir``'s model: ready to build, or why not (logged).

    ``identity_nets``: InstantIDs by adapter name, whose IdentityNets join as ControlNets of that name that
    read the face (a name both lists use is refused: :class:`IpAdapterError`).
    """
    unet_config = json.loads((model_dir / UNET / "config.json").read_text()) if family.denoiser == UNET else {}
    entries = []
    for name, instantid in sorted((identity_nets or {}).items()):
        source = instantid.weights.parent
        if name in controlnets:
            raise IpAdapterError(f"InstantID {name} and ControlNet {name}: its IdentityNet is a ControlNet of its name")
        error = fit(family, unet_config, instantid.identity_net)
        if error:
            raise IpAdapterError(f"InstantID {name} ({source}): its IdentityNet {error}")
        entries.append(ControlNetEntry(name, str(source), family=family.name, face=instantid.face_width))
    for name, folder in sorted(controlnets.items()):
        config_path = folder / "config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        error = fit(family, unet_config, folder)
        family_name = made_for(config) if config.get("_class_name") == "ControlNetModel" else None
        if error:
            logger.warning("ControlNet %s (%s) is not served: %s", name, folder, error)
            entries.append(ControlNetEntry(name, str(folder), ERROR, family_name, error))
        else:
            entries.append(ControlNetEntry(name, str(folder), family=family_name))
    return ControlNetSupport(tuple(entries))


def controlnet_modules(modules: dict, family: Family, support: ControlNetSupport) -> dict:
    """``modules`` with a ControlNet-ready UNet and an engine module per ready ControlNet (none: unchanged).

    Called after the IP-Adapter's UNet is made and before LoRA slots wrap it (its residuals come after the IP
    inputs and before the LoRA banks, as the specs order them).
    """
    if not support.ready:
        return modules
    modules = dict(modules)
    source = modules[UNET]
    count = len(family.dims.residuals)

    def ready_unet(dtype: torch.dtype) -> torch.nn.Module:
        module = source.load(dtype)
        unet = next(m for m in module.modules() if isinstance(m, UnetModule))
        return ControlNetReadyUnet(module, unet, count)

    modules[UNET] = ExportModule(ready_unet, source.keep_fp32)
    for entry in support.entries:
        if entry.status != ERROR:
            modules[f"{CONTROLNET_PREFIX}{entry.name}"] = _export(family, entry)
    return modules


def _export(family: Family, entry: ControlNetEntry) -> ExportModule:
    """A ready ControlNet's engine module: diffusers' ``ControlNetModel``, or an InstantID's IdentityNet."""
    if not entry.face:
        return family.controlnet_export(Path(entry.source))
    folder = IpAdapterFolder.read(Path(entry.source))
    controlnet = family.controlnet_export(folder.identity_net)
    return ExportModule(lambda dtype: IdentityNetModule(face_projection(folder, dtype), controlnet.load(dtype)))
