"""Which upscaler a weights file holds, from its state-dict keys alone, as spandrel recognises them.

A ``.pth`` (Real-ESRGAN's ``{"params_ema": ...}`` / ``{"params": ...}`` or a bare state dict, old ESRGAN's
``model.N`` layout included) or ``.safetensors`` file is read without running any code it holds
(``weights_only``). What is not recognised raises :class:`UnrecognisedUpscaler` saying why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from serve.finishing.architectures import RRDBNet, SRVGGNetCompact
from serve.finishing.codeformer_architecture import CodeFormer, codeformer_arguments
from serve.finishing.face_architecture import GFPGANv1Clean

SUFFIXES = (".pth", ".pt", ".safetensors")
WRAPPERS = ("params_ema", "params", "state_dict")
"""Keys under which training tools save the weights (Real-ESRGAN prefers the EMA weights, as its loader does)."""
RRDB_FOLDS = {3: 4, 12: 2, 48: 1}
"""RRDBNet's ``conv_first`` input channels -> its scale (pixels folded into channels before the body)."""


class UnrecognisedUpscaler(ValueError):
    """A file Easel cannot serve as an upscaler; the message says why."""


@dataclass(frozen=True)
class Architecture:
    """A recognised upscaler: its architecture's name, scale and constructor arguments."""

    kind: str
    scale: int
    arguments: dict = field(default_factory=dict)

    @property
    def restores_faces(self) -> bool:
        """Whether it is a face restorer (same size in and out), not an upscaler."""
        return self.kind in RESTORERS

    def module(self, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        """The architecture with ``state`` loaded (strict), in eval mode."""
        scale = {} if self.restores_faces else {"scale": self.scale}
        module = ARCHITECTURES[self.kind](**scale, **self.arguments)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as error:  # keys recognised, but some missing, extra or of another shape
            raise UnrecognisedUpscaler(f"a {self.kind} x{self.scale} whose weights do not load: {error}") from error
        return module.eval()


ARCHITECTURES = {"RRDBNet": RRDBNet, "SRVGGNetCompact": SRVGGNetCompact, "GFPGANv1Clean": GFPGANv1Clean}
ARCHITECTURES["CodeFormer"] = CodeFormer
RESTORERS = ("GFPGANv1Clean", "CodeFormer")
CODEFORMER_KEYS = (
    "position_emb",
    "idx_pred_layer.1.weight",
    "quantize.embedding.weight",
    "ft_layers.0.self_attn.in_proj_weight",
    "encoder.blocks.0.weight",
)
"""The keys spandrel recognises CodeFormer by."""


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (a ``.pth``/``.pt`` or ``.safetensors`` file), unwrapped, in the new key layout."""
    if path.suffix not in SUFFIXES:
        raise UnrecognisedUpscaler(f"{path}: not a {', '.join(SUFFIXES)} or .onnx file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise many kinds for a damaged or foreign file
        why = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"
        raise UnrecognisedUpscaler(f"{path}: not readable as weights ({why})") from error
    for wrapper in WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnrecognisedUpscaler(f"{path}: holds no state dict of tensors")
    return _new_esrgan_keys(state)


def recognise(state: dict[str, torch.Tensor]) -> Architecture:
    """The architecture and scale of ``state`` (its keys and shapes), or :class:`UnrecognisedUpscaler`."""
    if "conv_first.weight" in state and "body.0.rdb1.conv1.weight" in state:
        return _rrdbnet(state)
    if "body.0.weight" in state and "body.1.weight" in state and state["body.1.weight"].ndim == 1:
        return _compact(state)
    if "stylegan_decoder.constant_input.weight" in state and "conv_body_first.weight" in state:
        return _gfpgan(state)
    if all(key in state for key in CODEFORMER_KEYS):
        return Architecture("CodeFormer", 1, codeformer_arguments(state))
    sample = ", ".join(sorted(state)[:4])
    raise UnrecognisedUpscaler(
        f"not a known upscaler: the keys ({sample}, ...) match neither RRDBNet (ESRGAN, Real-ESRGAN x4plus/x2plus) "
        "nor SRVGGNetCompact (realesr-general) with PReLU, nor GFPGAN v1 clean or CodeFormer (face restorers)"
    )


def _rrdbnet(state: dict[str, torch.Tensor]) -> Architecture:
    channels_in = state["conv_first.weight"].shape[1]
    if channels_in not in RRDB_FOLDS:
        raise UnrecognisedUpscaler(f"RRDBNet with {channels_in} input channels (3, 12 or 48 known)")
    blocks = len({key.split(".")[1] for key in state if re.match(r"body\.\d+\.rdb1\.conv1\.weight$", key)})
    arguments = {
        "features": state["conv_first.weight"].shape[0],
        "blocks": blocks,
        "growth": state["body.0.rdb1.conv1.weight"].shape[0],
    }
    return Architecture("RRDBNet", RRDB_FOLDS[channels_in], arguments)


def _compact(state: dict[str, torch.Tensor]) -> Architecture:
    indexes = sorted(int(key.split(".")[1]) for key in state if re.match(r"body\.\d+\.weight$", key))
    last = state[f"body.{indexes[-1]}.weight"]
    scale = round((last.shape[0] / 3) ** 0.5)
    if last.ndim != 4 or 3 * scale * scale != last.shape[0]:
        raise UnrecognisedUpscaler(f"SRVGGNetCompact whose last layer makes {last.shape[0]} channels (3 x scale^2)")
    arguments = {"features": state["body.0.weight"].shape[0], "convs": (len(indexes) - 3) // 2}
    return Architecture("SRVGGNetCompact", scale, arguments)


def _gfpgan(state: dict[str, torch.Tensor]) -> Architecture:
    """GFPGAN v1 clean's sizes from its shapes: output side, style width, channels, ``different_w``, ``sft_half``."""
    levels = len({key.split(".")[1] for key in state if re.match(r"conv_body_down\.\d+\.conv1\.weight$", key)})
    if levels < 4:
        raise UnrecognisedUpscaler(f"GFPGAN with {levels} encoder levels (at least 4: a 64x64 face)")
    style = state["stylegan_decoder.style_mlp.1.weight"].shape[0]
    narrow = state["stylegan_decoder.constant_input.weight"].shape[1] / 512
    at_64 = state["stylegan_decoder.style_convs.6.modulated_conv.weight"].shape[1]  # the decoder's channels at 64
    decoder_last = state[f"stylegan_decoder.style_convs.{2 * levels - 1}.modulated_conv.weight"].shape[1]
    arguments = {
        "out_size": 2 ** (levels + 2),
        "style": style,
        "channel_multiplier": at_64 / (256 * narrow),
        "narrow": narrow,
        "mlp": len([key for key in state if re.match(r"stylegan_decoder\.style_mlp\.\d+\.weight$", key)]),
        "different_w": state["final_linear.weight"].shape[0] > style,
        "sft_half": state[f"condition_scale.{levels - 1}.2.weight"].shape[0] < decoder_last,
    }
    return Architecture("GFPGANv1Clean", 1, arguments)


_OLD_ESRGAN = {
    "model.0": "conv_first",
    "model.3": "conv_up1",
    "model.6": "conv_up2",
    "model.8": "conv_hr",
    "model.10": "conv_last",
}


def _new_esrgan_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old ESRGAN's ``model.N`` keys (the original x4 files) in BasicSR's names; any other layout as it is."""
    if "model.0.weight" not in state or "model.1.sub.0.RDB1.conv1.0.weight" not in state:
        return state
    blocks = len({key.split(".")[3] for key in state if re.match(r"model\.1\.sub\.\d+\.RDB1", key)})
    renamed = {}
    for key, value in state.items():
        match = re.match(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(\w+)$", key)
        if match:
            block, rdb, conv, kind = match.groups()
            renamed[f"body.{block}.rdb{rdb}.conv{conv}.{kind}"] = value
        elif key.startswith(f"model.1.sub.{blocks}."):
            renamed["conv_body." + key.rsplit(".", 1)[1]] = value
        else:
            prefix, kind = key.rsplit(".", 1)
            renamed[f"{_OLD_ESRGAN.get(prefix, prefix)}.{kind}"] = value
    return renamed
