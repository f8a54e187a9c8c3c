"""LoRA files read as diffusers' ``load_lora_weights`` reads them, into the engines' slot order (start-up and upload).

:func:`prepare` runs ``lora_state_dict``, then ``load_lora_into_unet`` / ``load_lora_into_text_encoder`` (or the
transformer's) on weightless copies of the model's modules, built from their ``config.json`` files, and keeps each
layer's ``A`` and ``B * scaling`` in the engines' slot order; :func:`prepare_into` does it once per content, into a
folder of prepared adapters named by their content key (what engines load, :mod:`serve.adapters.registry`). A file
diffusers cannot read, DoRA, layers the model lacks, or weights past the operator's :class:`LoraLimits` (NaN or Inf,
a rank or a layer's norm over its bound): :class:`AdapterError` with the reason. The tensors kept are balanced
(``A`` and ``B`` scaled to equal norms, their product unchanged), so no intermediate grows past the layer's bound.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from serve.adapters.limits import LoraLimits
from serve.adapters.lora import Slot, lora_component
from serve.files import file_hash

if TYPE_CHECKING:  # torch is loaded by diffusers where a LoRA is read, not by every process that imports this
    import torch

logger = logging.getLogger(__name__)


class AdapterError(ValueError):
    """An adapter file that cannot be served (unreadable, a format diffusers does not read, or not for this model)."""


@dataclass(frozen=True)
class PreparedLora:
    """An adapter in the engines' slot order: ``tensors["<engine>.<slot>.down" | ".up"]``, ``B`` scaled."""

    tensors: dict[str, np.ndarray]
    rank: int
    layers: dict[str, int]  # engine -> how many of its slots the adapter touches
    norm: float = 0.0  # its largest layer's ||B x scaling|| x ||A|| (Frobenius)

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


def prepare(
    path: Path, model_dir: Path, pipeline_class: str, slots: dict[str, list[Slot]], limits: LoraLimits | None = None
) -> PreparedLora:
    """Read the LoRA at ``path`` as diffusers' ``load_lora_weights`` would into ``model_dir``'s modules.

    ``slots``: each LoRA-ready engine's slot table. Raises :class:`AdapterError` (with the reason) for a file that
    cannot be served here: unreadable, not a LoRA, DoRA or other variants, layers this model does not have, or
    weights past ``limits``.
    """
    import diffusers

    loader = getattr(diffusers, pipeline_class)
    try:
        state, alphas, metadata = _read(loader, path)
    except Exception as error:  # noqa: BLE001 - any reader error is the file's: reported with its name
        raise AdapterError(f"not a readable LoRA file ({type(error).__name__}: {_first_line(error)})") from error
    if not state or not all("lora" in key for key in state):
        raise AdapterError("not a LoRA file: every tensor name must contain 'lora'")
    tensors, layers, refused = {}, {}, {}
    for engine, engine_slots in slots.items():
        component = lora_component(engine)
        if not _lora_keys(state, component):
            continue
        taken: dict[str, np.ndarray] = {}
        try:
            layers[engine] = _engine_layers(loader, engine, model_dir, engine_slots, (state, alphas, metadata), taken)
        except AdapterError as error:
            refused.setdefault(component, error)
        else:
            tensors |= taken
    loaded = {lora_component(engine) for engine in layers}
    for component, error in refused.items():
        if component not in loaded:  # no engine of it takes the keys (one may: a motion LoRA loads into motion UNets)
            raise error
    if not tensors:
        raise AdapterError(f"it has no layers for this model's {', '.join(slots)}")
    tensors, norm = _bounded(tensors, slots, limits or LoraLimits())
    rank = max(array.shape[0] for key, array in tensors.items() if key.endswith(".down"))
    return PreparedLora(tensors, rank, layers, norm)


def _bounded(tensors: dict[str, np.ndarray], slots: dict[str, list[Slot]], limits: LoraLimits) -> tuple[dict, float]:
    """``tensors`` checked against ``limits`` (:class:`AdapterError` naming the layer), balanced; their largest norm."""
    balanced, largest = {}, 0.0
    for key, down in tensors.items():
        if not key.endswith(".down"):
            continue
        layer = key.removesuffix(".down")
        engine, index = layer.split(".")
        where, up = f"{engine} layer {slots[engine][int(index)].name!r}", tensors[f"{layer}.up"]
        if not (np.isfinite(down).all() and np.isfinite(up).all()):
            raise AdapterError(f"{where} has NaN or Inf weights")
        down_norm, up_norm = (float(np.linalg.norm(part.astype(np.float64))) for part in (down, up))
        within(limits, len(down), down_norm * up_norm, where)
        factor = np.sqrt(up_norm / down_norm) if down_norm > 0 and up_norm > 0 else 1.0
        balanced[key], balanced[f"{layer}.up"] = (down * factor).astype(np.float32), (up / factor).astype(np.float32)
        largest = max(largest, down_norm * up_norm)
    return balanced, largest


def within(limits: LoraLimits, rank: int, norm: float, where: str = "it") -> None:
    """Raise :class:`AdapterError` if a LoRA (or its layer ``where``) of ``rank`` and ``norm`` is past ``limits``."""
    if rank > limits.max_rank:
        raise AdapterError(f"{where} has rank {rank}, over the largest served, {limits.max_rank} (--lora-max-rank)")
    if not norm <= limits.max_norm:
        raise AdapterError(
            f"{where} has ||B x scaling|| x ||A|| = {norm:.3g}, over the largest served, {limits.max_norm:g} "
            "(--lora-max-norm): weights that large overflow"
        )


def _engine_layers(loader, engine: str, model_dir: Path, slots: list[Slot], read: tuple, tensors: dict) -> int:
    """Load the LoRA's layers of ``engine``'s component into a weightless ``engine`` and take them into ``tensors``."""
    state = read[0]
    component = lora_component(engine)
    expected = _lora_keys(state, component)
    model = weightless(model_dir, engine)
    try:
        _load_into(loader, component, model, *read)
    except Exception as error:  # noqa: BLE001
        raise AdapterError(
            f"diffusers could not load its {component} layers into this model, made for another base model? "
            f"({type(error).__name__}: {_first_line(error)})"
        ) from error
    found = _take_layers(model, engine, slots, tensors)
    if found < expected:
        raise AdapterError(
            f"{expected - found} of its {expected} {component} layers match no layer of this model "
            "(an adapter made for another base model?)"
        )
    return found


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


def content_key(path: Path, engines_key: str) -> str:
    """The key of ``path``'s adapter prepared for the engines named ``engines_key`` (both contents in it)."""
    return hashlib.sha256(f"{file_hash(path)}:{engines_key}".encode()).hexdigest()[:24]


@dataclass(frozen=True)
class PreparedFile:
    """An adapter prepared into a folder: ``<folder>/<key>.safetensors`` (its tensors) and ``<key>.json``."""

    path: Path
    rank: int
    layers: dict[str, int]
    nbytes: int

    @property
    def key(self) -> str:
        """Its content key (what a batch row names, and what engines load)."""
        return self.path.stem


def prepare_into(
    path: Path,
    folder: Path,
    model_dir: Path,
    pipeline_class: str,
    slots: dict[str, list[Slot]],
    engines_key: str,
    limits: LoraLimits | None = None,
) -> PreparedFile:
    """:func:`prepare` ``path`` into ``folder`` under its content key, or reuse what is there (within ``limits``).

    Written whole or not at all (a reader never sees half a file); a file reused is touched (its age is its last
    use: :func:`serve.adapters.catalog.LoraCatalog.sweep` keeps it). Raises :class:`AdapterError` as :func:`prepare`.
    """
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    prepared = folder / f"{content_key(path, engines_key)}.safetensors"
    meta_path = prepared.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if prepared.is_file() and meta_path.is_file() else {}
    if "norm" in meta:  # prepared already (one prepared before weights were checked has no norm: prepared again)
        within(limits or LoraLimits(), meta["rank"], meta["norm"])  # the limits may be lower than when it was prepared
        os.utime(prepared)
    else:
        started = time.perf_counter()
        adapter = prepare(path, model_dir, pipeline_class, slots, limits)
        meta = {"rank": adapter.rank, "layers": adapter.layers, "bytes": adapter.nbytes, "norm": adapter.norm}
        partial = prepared.with_name(f"{prepared.name}.{os.getpid()}.{threading.get_ident()}.partial")
        save_file(adapter.tensors, partial)
        meta_partial = partial.with_suffix(".json")
        meta_partial.write_text(json.dumps(meta))
        meta_partial.replace(meta_path)
        partial.replace(prepared)
        logger.info(
            "LoRA %s prepared in %.2f s (rank %d, %s)",
            path.name,
            time.perf_counter() - started,
            adapter.rank,
            adapter.layers,
        )
    nbytes = meta.get("bytes") or prepared.stat().st_size
    return PreparedFile(prepared, meta["rank"], meta["layers"], nbytes)
