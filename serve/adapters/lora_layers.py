"""The torch side of LoRA slots: the layers a LoRA-ready engine's module gets (:func:`lora_ready`).

The ONNX path exports the module (its graph takes the banks); the torch runtime runs it (its CUDA graphs keep the
banks as static inputs, :mod:`serve.triton.torch_runtime`). Adapter files are read for these slots by
:mod:`serve.adapters.lora_files` (at start-up and on upload); the numpy side, which assembles each batch's banks, is
:mod:`serve.adapters.lora`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from serve.adapters.lora import SCALE_INPUT, Slot, bank_names

_EXCLUDED = (".processor.", "encoder_hid_proj")  # IP-Adapter's own layers: not LoRA targets


def save_slots(slots: list[Slot], path: Path) -> None:
    """Write the slot table beside an engine (the python-backend model and the adapter preparation read it)."""
    path.write_text(json.dumps([asdict(slot) for slot in slots]))


def slot_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Every Linear and Conv2d of ``model`` in module order, IP-Adapter's own layers excluded."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d) and not any(part in f".{name}." for part in _EXCLUDED)
    ]


def slots_of(model: torch.nn.Module) -> list[Slot]:
    """The slots of ``model`` (see :func:`slot_modules`)."""
    slots = []
    for name, module in slot_modules(model):
        if isinstance(module, torch.nn.Conv2d):
            slots.append(Slot(name, "conv", module.in_channels, module.out_channels, tuple(module.kernel_size)))
        else:
            slots.append(Slot(name, "linear", module.in_features, module.out_features))
    return slots


class _Bank:
    """The bank tensors of the forward being traced (set by :class:`LoraReady`, read by each :class:`RowLoRA`)."""

    def __init__(self) -> None:
        self.scale: torch.Tensor | None = None
        self.used: torch.Tensor | None = None  # [batch] bool: the rows that have any adapter
        self.layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []


class RowLoRA(torch.nn.Module):
    """A Linear or Conv2d plus its slot's low-rank deltas, each row weighted by its own adapters' weights.

    A layer may see several rows per engine row, each engine row's together (a video's frames, or its pixels' frame
    sequences in a motion module): each takes its engine row's weights.

    Rows are selected, never scaled by 0 (NaN x 0 is NaN): a rank column's values reach only the rows that weigh
    that adapter, and a row without adapters gets ``base(x)`` itself, whatever the batch's banks hold.
    """

    def __init__(self, base: torch.nn.Module, bank: _Bank, index: int) -> None:
        super().__init__()
        self.base, self.bank, self.index = base, bank, index

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # named as torch's layers name it (a caller passes it so)
        """``base(x) + up((down x) * scale[row, column])`` on the rows that have adapters; ``base(x)`` on the others."""
        x = input
        down, up, column = self.bank.layers[self.index]
        scale = self.bank.scale.index_select(1, column)  # [batch, R]; an fp16 export casts every input (CastIO)
        if isinstance(self.base, torch.nn.Conv2d):
            hidden = F.conv2d(x, down, None, self.base.stride, self.base.padding, self.base.dilation)
            delta = F.conv2d(_per_row(hidden, scale, 1), up)
        else:
            hidden = F.linear(x, down)
            delta = F.linear(_per_row(hidden, scale, hidden.dim() - 1), up)
        return self.base(x) + _rows_used(delta, self.bank.used)


def _per_row(hidden: torch.Tensor, scale: torch.Tensor, axis: int) -> torch.Tensor:
    """``hidden`` (rank on ``axis``) times ``scale[batch, rank]``, its rows grouped by engine row (batch divides).

    A column a row does not weigh is 0 for it, selected (``where``), whatever ``hidden`` holds there.
    """
    grouped = hidden.reshape(scale.shape[0], -1, *hidden.shape[1:])
    weights = scale.reshape(scale.shape[0], *([1] * axis), scale.shape[1], *([1] * (hidden.dim() - axis - 1)))
    return torch.where(weights != 0, grouped * weights, 0.0).reshape(hidden.shape)


def _rows_used(delta: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
    """``delta`` on the rows ``used[batch]`` marks, 0 (selected) on the others; its rows grouped by engine row."""
    grouped = delta.reshape(used.shape[0], -1, *delta.shape[1:])
    return torch.where(used.reshape(-1, *([1] * (grouped.dim() - 1))), grouped, 0.0).reshape(delta.shape)


@dataclass(frozen=True)
class GraphExtras:
    """Inputs an engine's graph takes beyond its Triton spec's (fed by its python-backend model, not by clients)."""

    names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    sample: Callable[[int, torch.Generator], dict[str, torch.Tensor]]


class LoraReady(torch.nn.Module):
    """An engine module whose Linear and Conv2d layers take LoRA banks: ``forward(*inputs, lora_scale, *banks)``."""

    def __init__(self, module: torch.nn.Module, bank: _Bank, slots: int) -> None:
        super().__init__()
        self.module, self.bank, self.slots = module, bank, slots

    def forward(self, *args):
        """The engine's outputs with each row's adapters applied."""
        split = len(args) - 1 - 3 * self.slots
        inputs, scale, banks = args[:split], args[split], args[split + 1 :]
        self.bank.scale, self.bank.used = scale, (scale != 0).any(dim=1)
        self.bank.layers = [tuple(banks[3 * i : 3 * i + 3]) for i in range(self.slots)]
        try:
            return self.module(*inputs)
        finally:
            self.bank.scale, self.bank.used, self.bank.layers = None, None, []


def lora_ready(module: torch.nn.Module, model: torch.nn.Module) -> tuple[LoraReady, list[Slot], GraphExtras]:
    """Put a slot on every Linear and Conv2d of ``model`` (the diffusers/transformers model inside ``module``)."""
    slots = slots_of(model)
    bank = _Bank()
    for index, (name, layer) in enumerate(slot_modules(model)):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, RowLoRA(layer, bank, index))
    names = [SCALE_INPUT]
    axes = {SCALE_INPUT: {0: "batch", 1: "loras"}}
    for index in range(len(slots)):
        down, up, column = bank_names(index)
        names += [down, up, column]
        axes.update({down: {0: f"rank_{index}"}, up: {1: f"rank_{index}"}, column: {0: f"rank_{index}"}})

    def sample(batch: int, generator: torch.Generator, rank: int = 2) -> dict[str, torch.Tensor]:
        feeds = {SCALE_INPUT: torch.rand(batch, rank, generator=generator) * 2 - 1}
        for index, slot in enumerate(slots):
            down, up, column = bank_names(index)
            feeds[down] = torch.randn(slot.down_shape(rank), generator=generator) * 0.1
            feeds[up] = torch.randn(slot.up_shape(rank), generator=generator) * 0.1
            feeds[column] = torch.arange(rank, dtype=torch.int64)
        return feeds

    return LoraReady(module, bank, len(slots)), slots, GraphExtras(tuple(names), axes, sample)


def inner_model(module: torch.nn.Module) -> torch.nn.Module:
    """The diffusers/transformers model inside an engine's export wrapper (the one that has the layers)."""
    from diffusers import ModelMixin
    from transformers import PreTrainedModel

    while True:
        children = [child for child in module.children() if not isinstance(child, torch.nn.Identity)]
        if len(children) != 1 or isinstance(module, ModelMixin | PreTrainedModel):
            return module
        module = children[0]
