"""The torch side of LoRA slots: the layers an engine's graph gets, and adapter files read as diffusers reads them.

Used at export time (:func:`lora_ready`, :func:`save_slots`) and when a stack starts (:func:`prepare`). The numpy
side, which the engines' python-backend models use, is :mod:`serve.adapters.lora`.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
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
        self.layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []


class RowLoRA(torch.nn.Module):
    """A Linear or Conv2d plus its slot's low-rank deltas, each row weighted by its own adapters' weights."""

    def __init__(self, base: torch.nn.Module, bank: _Bank, index: int) -> None:
        super().__init__()
        self.base, self.bank, self.index = base, bank, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x) + up((down x) * scale[row, column])``."""
        down, up, column = self.bank.layers[self.index]
        scale = self.bank.scale.index_select(1, column)  # [batch, R]; an fp16 export casts every input (CastIO)
        if isinstance(self.base, torch.nn.Conv2d):
            hidden = F.conv2d(x, down, None, self.base.stride, self.base.padding, self.base.dilation)
            hidden = hidden * scale.unsqueeze(-1).unsqueeze(-1)
            return self.base(x) + F.conv2d(hidden, up)
        hidden = F.linear(x, down)
        for _ in range(hidden.dim() - 2):  # [batch, ..., R]: one weight per row and column
            scale = scale.unsqueeze(1)
        return self.base(x) + F.linear(hidden * scale, up)


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
        self.bank.scale = scale
        self.bank.layers = [tuple(banks[3 * i : 3 * i + 3]) for i in range(self.slots)]
        try:
            return self.module(*inputs)
        finally:
            self.bank.scale, self.bank.layers = None, []


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


# -- reading adapters (start-up) --------------------------------------------------------------------------------------


class AdapterError(ValueError):
    """An adapter file that cannot be served (unreadable, a format diffusers does not read, or not for this model)."""


@dataclass(frozen=True)
class PreparedLora:
    """An adapter in the engines' slot order: ``tensors["<engine>.<slot>.down" | ".up"]``, ``B`` scaled."""

    tensors: dict[str, np.ndarray]
    rank: int
    layers: dict[str, int]  # engine -> how many of its slots the adapter touches

    @property
    def nbytes(self) -> int:
        """Bytes of all its tensors."""
        return sum(t.nbytes for t in self.tensors.values())


def weightless(model_dir: Path, component: str) -> torch.nn.Module:
    """``component`` of ``model_dir`` built from its config with uninitialised (never touched) weights."""
    import diffusers
    import transformers
    from accelerate import init_empty_weights

    config = json.loads((model_dir / component / "config.json").read_text())
    with init_empty_weights():
        if "_class_name" in config:  # a diffusers model: the UNet or a transformer
            model = getattr(diffusers, config["_class_name"]).from_config(config)
        else:
            cls = getattr(transformers, config.get("architectures", ["CLIPTextModel"])[0])
            model = cls(cls.config_class.from_dict(config))
    return model.to_empty(device="cpu").eval()


def _first_line(error: Exception, limit: int = 200) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text if len(text) <= limit else text[:limit] + "..."


def _lora_keys(state: dict, prefix: str) -> int:
    """How many LoRA layers (their down/A matrices) ``state`` has under ``prefix``."""
    markers = ("lora_A.", "lora.down.", "lora_down.", "lora_linear_layer.down.")
    return sum(1 for key in state if key.startswith(prefix + ".") and any(m in key for m in markers))


def prepare(path: Path, model_dir: Path, pipeline_class: str, slots: dict[str, list[Slot]]) -> PreparedLora:
    """Read the LoRA at ``path`` as diffusers' ``load_lora_weights`` would into ``model_dir``'s modules.

    ``slots``: each LoRA-ready engine's slot table. Raises :class:`AdapterError` (with the reason) for a file that
    cannot be served here: unreadable, not a LoRA, DoRA or other variants, or layers this model does not have.
    """
    import diffusers

    loader = getattr(diffusers, pipeline_class)
    try:
        state, alphas, metadata = _read(loader, path)
    except Exception as error:  # noqa: BLE001 - any reader error is the file's: reported with its name
        raise AdapterError(f"not a readable LoRA file ({type(error).__name__}: {_first_line(error)})") from error
    if not state or not all("lora" in key for key in state):
        raise AdapterError("not a LoRA file: every tensor name must contain 'lora'")
    tensors, layers = {}, {}
    for engine, engine_slots in slots.items():
        expected = _lora_keys(state, engine)
        if not expected:
            continue
        model = weightless(model_dir, engine)
        try:
            _load_into(loader, engine, model, state, alphas, metadata)
        except Exception as error:  # noqa: BLE001
            raise AdapterError(
                f"diffusers could not load its {engine} layers into this model, made for another base model? "
                f"({type(error).__name__}: {_first_line(error)})"
            ) from error
        found = _take_layers(model, engine, engine_slots, tensors)
        if found < expected:
            raise AdapterError(
                f"{expected - found} of its {expected} {engine} layers match no layer of this model "
                "(an adapter made for another base model?)"
            )
        layers[engine] = found
    if not tensors:
        raise AdapterError(f"it has no layers for this model's {', '.join(slots)}")
    rank = max(array.shape[0] for key, array in tensors.items() if key.endswith(".down"))
    return PreparedLora(tensors, rank, layers)


def _read(loader, path: Path) -> tuple[dict, dict | None, dict | None]:
    """``(state, alphas, metadata)`` of a LoRA file as the pipeline class's ``lora_state_dict`` reads it.

    SD and SDXL return alphas with the metadata, Flux when asked, SD3 none (its LoRAs carry no alphas).
    """
    options = {"return_lora_metadata": True}
    if "return_alphas" in inspect.signature(loader.lora_state_dict).parameters:
        options["return_alphas"] = True
    read = loader.lora_state_dict(str(path), **options)
    return (read[0], None, read[1]) if len(read) == 2 else read


def _load_into(loader, engine: str, model: torch.nn.Module, state: dict, alphas, metadata) -> None:
    """Inject the LoRA's ``engine`` layers into ``model`` as the pipeline class's ``load_lora_weights`` does."""
    if engine == "unet":
        loader.load_lora_into_unet(state, alphas, model, adapter_name="easel", metadata=metadata)
    elif engine == "transformer":
        takes_alphas = "network_alphas" in inspect.signature(loader.load_lora_into_transformer).parameters
        extra = {"network_alphas": alphas} if takes_alphas else {}
        loader.load_lora_into_transformer(state, transformer=model, adapter_name="easel", metadata=metadata, **extra)
    else:
        loader.load_lora_into_text_encoder(state, alphas, model, prefix=engine, adapter_name="easel", metadata=metadata)


def _take_layers(model: torch.nn.Module, engine: str, slots: list[Slot], tensors: dict[str, np.ndarray]) -> int:
    """Put the LoRA layers diffusers injected into ``model`` into ``tensors`` in slot order; returns how many."""
    from peft.tuners.lora import LoraLayer

    slot_index = {slot.name: index for index, slot in enumerate(slots)}
    found = 0
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or "easel" not in module.lora_A:
            continue
        if name not in slot_index:
            raise AdapterError(f"{engine} layer {name!r} ({type(module).__name__}) cannot take LoRA in Easel")
        if module.use_dora.get("easel") or getattr(module, "lora_bias", {}).get("easel"):
            raise AdapterError(f"{engine} layer {name!r}: DoRA and LoRA biases are not supported")
        down = module.lora_A["easel"].weight.detach().float()
        up = module.lora_B["easel"].weight.detach().float() * float(module.scaling["easel"])
        tensors[f"{engine}.{slot_index[name]}.down"] = down.numpy().copy()
        tensors[f"{engine}.{slot_index[name]}.up"] = up.numpy().copy()
        found += 1
    return found


# -- banks per batch (the python-backend model) ------------------------------------------------------------------------
