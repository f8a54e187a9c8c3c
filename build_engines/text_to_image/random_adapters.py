"""Adapters with random weights for a local diffusers model, in the formats users bring (nothing downloaded).

* :func:`make_lora`: a LoRA over the denoiser (UNet or transformer) and the text encoder(s) ``load_lora_weights``
  loads into, saved as diffusers saves PEFT adapters (``save_lora_weights``: ``unet.<module>.lora_A.weight`` or
  ``transformer.<module>...``, with the adapter's config as metadata) or, for UNets, as kohya's scripts save them
  (``lora_unet_<module>.lora_down.weight``, ``.lora_up.weight``, ``.alpha``).
* :func:`make_ip_adapter`: an IP-Adapter folder as ``load_ip_adapter`` reads it: one ``ip_adapter.safetensors``
  (``image_proj.*`` and ``ip_adapter.<n>.to_k_ip.weight`` ...) and an ``image_encoder/`` CLIP vision model.
* :func:`make_faceid_adapter`: an IP-Adapter FaceID as h94 ships it: one ``.bin`` (its face projection, its
  ``to_k_ip``/``to_v_ip`` and its LoRA) and no image encoder.
* :func:`make_instantid`: an InstantID as InstantX ships it: ``ip-adapter.bin`` (a resampler over the face embedding,
  its ``to_k_ip``/``to_v_ip``) beside ``ControlNetModel/``, its IdentityNet.

Tests, the adapter benchmark and ``easel random-adapter`` make their adapters here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from serve.adapters.ip_adapter import IDENTITY_NET
from serve.text_to_image.families import family_of_folder

logger = logging.getLogger(__name__)

LORA_FORMATS = ("diffusers", "kohya")
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.2")
TRANSFORMER_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "ff.net.2")
"""SD3's and Flux's attention (image and text streams) and feed-forward layers, as their LoRA trainers target."""
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1")
IP_WEIGHTS = "ip_adapter.safetensors"
IMAGE_ENCODER = "image_encoder"


def _pretrained(model_dir: Path, component: str) -> torch.nn.Module:
    """``component`` of ``model_dir`` with its weights, of the class its config names."""
    import json

    import diffusers
    import transformers

    config = json.loads((model_dir / component / "config.json").read_text())
    if "_class_name" in config:
        return getattr(diffusers, config["_class_name"]).from_pretrained(model_dir / component)
    return getattr(transformers, config["architectures"][0]).from_pretrained(model_dir / component)


def _lora_layers(module: torch.nn.Module, targets: tuple[str, ...], rank: int, alpha: float, seed: int, strength):
    """PEFT LoRA layers with random A and B (B scaled so the adapter moves the image without wrecking it)."""
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False)
    module.add_adapter(config)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_B" in name:
                param.mul_(strength / max(1.0, param.abs().max().item()))
    return get_peft_model_state_dict(module), config.to_dict()


def make_lora(
    model_dir: Path,
    out_file: Path,
    rank: int = 4,
    alpha: float | None = None,
    seed: int = 0,
    fmt: str = "diffusers",
    strength: float = 0.3,
    text_encoder: bool = True,
) -> Path:
    """Write a random LoRA for ``model_dir``'s denoiser (and text encoders) to ``out_file`` in format ``fmt``."""
    family = family_of_folder(model_dir)
    if fmt not in LORA_FORMATS or (fmt == "kohya" and family.denoiser != "unet"):
        raise ValueError(f"format must be one of {LORA_FORMATS} (kohya for UNets), not {fmt!r} for {family.name}")
    alpha = float(rank if alpha is None else alpha)
    denoiser = _pretrained(model_dir, family.denoiser)
    targets = UNET_TARGETS if family.denoiser == "unet" else TRANSFORMER_TARGETS
    layers = {family.denoiser: _lora_layers(denoiser, targets, rank, alpha, seed, strength)}
    encoders = [name for name in family.lora_engines if name in family.specs and name != family.denoiser]
    for offset, name in enumerate(encoders if text_encoder else []):
        module = _pretrained(model_dir, name)
        layers[name] = _lora_layers(module, TEXT_TARGETS, max(1, rank // 2), alpha / 2, seed + 1 + offset, strength)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "kohya":
        _save_kohya(layers, out_file)
    else:
        _save_diffusers(family.pipeline_class, layers, out_file)
    logger.info("random %s LoRA (rank %d, alpha %g) for %s written to %s", fmt, rank, alpha, model_dir, out_file)
    return out_file


def make_motion_lora(
    model_dir: Path, motion_adapter: Path, out_file: Path, rank: int = 2, seed: int = 0, strength: float = 0.3
) -> Path:
    """Write a random motion LoRA (AnimateDiff's: the motion modules' attention only) to ``out_file``.

    For ``model_dir``'s UNet with the ``MotionAdapter`` in ``motion_adapter``, saved as diffusers saves it.
    """
    import diffusers

    adapter = diffusers.MotionAdapter.from_pretrained(motion_adapter)
    unet = diffusers.UNetMotionModel.from_unet2d(_pretrained(model_dir, "unet"), adapter)
    targets = tuple(
        name
        for name, _ in unet.named_modules()
        if ".motion_modules." in name and name.endswith(("attn1.to_q", "attn1.to_v", "attn2.to_out.0"))
    )
    layers = {"unet": _lora_layers(unet, targets, rank, float(rank), seed, strength)}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    _save_diffusers("AnimateDiffPipeline", layers, out_file)
    return out_file


def _save_diffusers(pipeline_class: str, layers: dict, out_file: Path) -> None:
    import diffusers

    kwargs = {}
    for name, (state, config) in layers.items():
        kwargs[f"{name}_lora_layers"] = state
        kwargs[f"{name}_lora_adapter_metadata"] = config
    getattr(diffusers, pipeline_class).save_lora_weights(out_file.parent, weight_name=out_file.name, **kwargs)


# kohya's prefixes (SD 1.x names its one text encoder lora_te_, SDXL its two lora_te1_ and lora_te2_)
_KOHYA_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}


def _save_kohya(layers: dict, out_file: Path) -> None:
    from safetensors.torch import save_file

    single_text_encoder = "text_encoder_2" not in layers
    tensors = {}
    for component, (state, config) in layers.items():
        prefix = "lora_te_" if component == "text_encoder" and single_text_encoder else _KOHYA_PREFIX[component]
        for key, value in state.items():
            if not key.endswith("lora_A.weight"):
                continue
            module = key.removesuffix(".lora_A.weight")
            # kohya names text encoder modules as transformers 4 did (text_model.encoder...)
            path = module if component == "unet" else "text_model." + module.removeprefix("text_model.")
            name = prefix + path.replace(".", "_")
            tensors[f"{name}.lora_down.weight"] = value.contiguous()
            tensors[f"{name}.lora_up.weight"] = state[f"{module}.lora_B.weight"].contiguous()
            tensors[f"{name}.alpha"] = torch.tensor(float(config["lora_alpha"]))
    save_file(tensors, out_file)


def make_ip_adapter(model_dir: Path, out_dir: Path, seed: int = 0, image_size: int = 32, strength: float = 1.0) -> Path:
    """Write a random IP-Adapter (image projection + per-layer ``to_k_ip``/``to_v_ip``) and CLIP image encoder."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    cross = unet.config.cross_attention_dim
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=image_size,
            patch_size=8,
            projection_dim=24,
        )
    ).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(out_dir / IMAGE_ENCODER)
    tokens = 4  # diffusers' ImageProjection for IP-Adapter weights with "proj.weight": 4 image tokens
    tensors = {
        "image_proj.proj.weight": torch.randn(cross * tokens, encoder.config.projection_dim) * 0.2,
        "image_proj.proj.bias": torch.randn(cross * tokens) * 0.1,
        "image_proj.norm.weight": 1 + 0.1 * torch.randn(cross),
        "image_proj.norm.bias": 0.1 * torch.randn(cross),
    }
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        attention = unet.get_submodule(name.removesuffix(".processor"))
        shape = attention.to_k.weight.shape
        for proj in ("to_k_ip", "to_v_ip"):
            tensors[f"ip_adapter.{key_id}.{proj}.weight"] = torch.randn(shape) * strength / shape[1] ** 0.5
        key_id += 2
    save_file({k: v.contiguous() for k, v in tensors.items()}, out_dir / IP_WEIGHTS)
    logger.info("random IP-Adapter for %s written to %s (%d attention layers)", model_dir, out_dir, key_id // 2)
    return out_dir


FACEID_WEIGHTS = "ip-adapter-faceid.bin"
FACEID_PLUSV2_WEIGHTS = "ip-adapter-faceid-plusv2.bin"


def make_faceid_adapter(
    model_dir: Path, out_dir: Path, seed: int = 0, rank: int = 4, face_dim: int = 512, plus: bool = False
) -> Path:
    """Write a random IP-Adapter FaceID in h94's layout: one ``.bin`` and no image encoder.

    ``plus``: a FaceID Plus v2 (``ip-adapter-faceid-plusv2.bin``), whose projection also reads the aligned face's
    CLIP hidden states: with a random CLIP vision model in ``image_encoder/`` (224 px, as the real one's).

    ``image_proj``: the face embedding's feed-forward and norm (``proj.0``, ``proj.2``, ``norm``: 4 tokens);
    ``ip_adapter``: each cross-attention's ``to_k_ip``/``to_v_ip`` and, on every attention layer, the LoRA FaceID
    ships with (``to_{q,k,v,out}_lora.{down,up}``, ``rank``), as ``load_ip_adapter`` reads them.
    """
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    cross, tokens, hidden = unet.config.cross_attention_dim, 4, face_dim * 2
    proj = {
        "proj.0.weight": torch.randn(hidden, face_dim) / face_dim**0.5,
        "proj.0.bias": 0.1 * torch.randn(hidden),
        "proj.2.weight": torch.randn(cross * tokens, hidden) / hidden**0.5,
        "proj.2.bias": 0.1 * torch.randn(cross * tokens),
        "norm.weight": 1 + 0.1 * torch.randn(cross),
        "norm.bias": 0.1 * torch.randn(cross),
    }
    ip = {}
    for key_id, name in enumerate(unet.attn_processors):
        attention = unet.get_submodule(name.removesuffix(".processor"))
        for part in ("to_q", "to_k", "to_v", "to_out"):
            layer = attention.to_out[0] if part == "to_out" else getattr(attention, part)
            ip[f"{key_id}.{part}_lora.down.weight"] = torch.randn(rank, layer.in_features) / layer.in_features**0.5
            ip[f"{key_id}.{part}_lora.up.weight"] = 0.3 * torch.randn(layer.out_features, rank) / rank**0.5
        if not name.endswith("attn1.processor"):
            for part in ("to_k_ip", "to_v_ip"):
                ip[f"{key_id}.{part}.weight"] = torch.randn(attention.to_k.weight.shape) / cross**0.5
    if plus:  # FaceID Plus: a perceiver resampler over the aligned face's CLIP hidden states, and its image encoder
        proj |= _perceiver_resampler(cross, _random_image_encoder(out_dir / IMAGE_ENCODER, 224))
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = FACEID_PLUSV2_WEIGHTS if plus else FACEID_WEIGHTS
    torch.save({"image_proj": proj, "ip_adapter": ip}, out_dir / weights)
    logger.info("random IP-Adapter %s for %s written to %s (LoRA rank %d)", weights, model_dir, out_dir, rank)
    return out_dir


def _random_image_encoder(folder: Path, image_size: int) -> int:
    """A tiny random CLIP vision model saved in ``folder``; its hidden size."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=image_size,
        patch_size=32, projection_dim=24,
    )  # fmt: skip
    CLIPVisionModelWithProjection(config).eval().save_pretrained(folder)
    return config.hidden_size


def _perceiver_resampler(width: int, hidden: int, depth: int = 4) -> dict:
    """FaceID Plus's ``perceiver_resampler`` in h94's keys, beside the face's feed-forward FaceID has already."""
    return {f"perceiver_resampler.{key}": value for key, value in _resampler(width, hidden, depth).items()}


def _resampler(width: int, hidden: int, depth: int = 4, output: int | None = None) -> dict:
    """A resampler in IP-Adapter's keys, its tokens ``width`` wide over ``hidden``-wide inputs.

    ``depth`` blocks of one 64-wide head; out ``output`` wide (default ``width``).
    """
    inner, output = 64, output or width

    def linear(rows: int, cols: int) -> torch.Tensor:
        return torch.randn(rows, cols) / cols**0.5

    resampler = {
        "proj_in.weight": linear(width, hidden),
        "proj_in.bias": 0.1 * torch.randn(width),
        "proj_out.weight": linear(output, width),
        "proj_out.bias": 0.1 * torch.randn(output),
        "norm_out.weight": 1 + 0.1 * torch.randn(output),
        "norm_out.bias": 0.1 * torch.randn(output),
    }
    for i in range(depth):
        for norm in ("0.norm1", "0.norm2", "1.0"):
            resampler[f"layers.{i}.{norm}.weight"] = 1 + 0.1 * torch.randn(width)
            resampler[f"layers.{i}.{norm}.bias"] = 0.1 * torch.randn(width)
        resampler[f"layers.{i}.0.to_q.weight"] = linear(inner, width)
        resampler[f"layers.{i}.0.to_kv.weight"] = linear(2 * inner, width)
        resampler[f"layers.{i}.0.to_out.weight"] = linear(width, inner)
        resampler[f"layers.{i}.1.1.weight"] = linear(width * 4, width)
        resampler[f"layers.{i}.1.3.weight"] = linear(width, width * 4)
    return resampler


INSTANTID_WEIGHTS = "ip-adapter.bin"


def make_instantid(model_dir: Path, out_dir: Path, seed: int = 0, face_dim: int = 512, tokens: int = 16) -> Path:
    """Write a random InstantID in InstantX's layout: ``ip-adapter.bin`` beside ``ControlNetModel/``.

    ``image_proj``: a resampler reading the face embedding as one token (``latents``: ``tokens`` queries, 64 wide),
    out as wide as the UNet's cross-attention; ``ip_adapter``: each cross-attention's ``to_k_ip``/``to_v_ip``;
    ``ControlNetModel``: its IdentityNet, a random ControlNet of the model's UNet (:func:`make_controlnet`).
    """
    from diffusers import UNet2DConditionModel

    from build_engines.text_to_image.random_controls import make_controlnet

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    cross, hidden = unet.config.cross_attention_dim, 64
    proj = {"latents": torch.randn(1, tokens, hidden) / hidden**0.5} | _resampler(hidden, face_dim, output=cross)
    ip = {}
    for key_id, name in enumerate(unet.attn_processors):
        if not name.endswith("attn1.processor"):
            shape = unet.get_submodule(name.removesuffix(".processor")).to_k.weight.shape
            for part in ("to_k_ip", "to_v_ip"):
                ip[f"{key_id}.{part}.weight"] = torch.randn(shape) / cross**0.5
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"image_proj": proj, "ip_adapter": ip}, out_dir / INSTANTID_WEIGHTS)
    make_controlnet(model_dir, out_dir / IDENTITY_NET, seed=seed + 1, image_gain=6.0)  # its landmarks steer it
    logger.info("random InstantID for %s written to %s", model_dir, out_dir)
    return out_dir
