"""LoRA per batch row: every Linear and Conv2d of a LoRA-ready engine adds the low-rank deltas of the batch's adapters.

A LoRA-ready engine's graph takes, besides its usual inputs, one bank per layer ("slot"): ``lora_down_<i>``
``[R_i, in(, kh, kw)]``, ``lora_up_<i>`` ``[out, R_i(, 1, 1)]`` and ``lora_column_<i>`` ``[R_i]`` (which of the
batch's adapters each rank column belongs to), and ``lora_scale`` ``[batch, K]``: each row's weight for each of the
batch's K adapters. A layer computes ``base(x) + up((down x) * scale[row, column])``, which is PEFT's
``base(x) + sum_k w_k * scaling_k * B_k(A_k x)`` (``scaling`` folded into ``up``), so rows with different adapters,
different weights or none share one execution. Rows are selected, not scaled by 0 (NaN x 0 is NaN): a row gets
only its own adapters' deltas, and a row without adapters ``base(x)`` alone, whatever the banks hold. The
python-backend model (:mod:`serve.adapters.backend`) assembles the banks of each batch from the adapters it holds
(:class:`LoraBanks`); an adapter that cannot load, or whose weights are not finite, stays out of the banks and fails
only the rows that name it.

Adapters are read exactly as diffusers' ``load_lora_weights`` reads them (``lora_state_dict``, then
``load_lora_into_unet`` / ``load_lora_into_text_encoder`` on weightless copies of the models), so every format
diffusers accepts (diffusers/PEFT, kohya, with alphas, rank patterns) is read the same way; :func:`prepare` keeps each
layer's ``A`` and ``B * scaling`` in the engines' slot order.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

logger = logging.getLogger(__name__)

ADAPTERS_INPUT = "adapters"
"""The per-row Triton input of a LoRA-ready engine: JSON ``[[name, weight], ...]`` ("" or "[]": none)."""
SCALE_INPUT = "lora_scale"
MOTION_UNET_PREFIX = "unet_motion_"
"""A motion adapter's engine is ``unet_motion_<name>``: the UNet with the adapter's motion modules."""


def is_motion_unet(engine: str) -> bool:
    """Whether ``engine`` is a motion adapter's UNet."""
    return engine.startswith(MOTION_UNET_PREFIX)


def lora_component(engine: str) -> str:
    """The pipeline component whose LoRA keys ``engine`` takes: its own, the UNet's for a motion UNet.

    A motion UNet's layers are the UNet's under the same names plus its motion modules', so a LoRA made for the UNet
    and a motion LoRA (keys in the motion modules) both load into it, as ``AnimateDiffPipeline`` loads them.
    """
    return "unet" if is_motion_unet(engine) else engine


@dataclass(frozen=True)
class Slot:
    """One layer that takes LoRA deltas: its module path in the diffusers/transformers model, and its shape."""

    name: str
    kind: str  # "linear" or "conv"
    in_features: int
    out_features: int
    kernel: tuple[int, int] = (1, 1)

    def down_shape(self, rank: int) -> tuple[int, ...]:
        """Shape of ``A`` (``lora_down``) at ``rank``."""
        return (rank, self.in_features, *self.kernel) if self.kind == "conv" else (rank, self.in_features)

    def up_shape(self, rank: int) -> tuple[int, ...]:
        """Shape of ``B * scaling`` (``lora_up``) at ``rank``."""
        return (self.out_features, rank, 1, 1) if self.kind == "conv" else (self.out_features, rank)


def load_slots(path: Path) -> list[Slot]:
    """Read a slot table (``lora_slots.json``, written by ``easel build`` beside a LoRA-ready engine)."""
    return [Slot(**{**raw, "kernel": tuple(raw["kernel"])}) for raw in json.loads(path.read_text())]


def bank_names(index: int) -> tuple[str, str, str]:
    """Graph input names of slot ``index``'s bank."""
    return f"lora_down_{index}", f"lora_up_{index}", f"lora_column_{index}"


def parse_row(text: str) -> tuple[tuple[str, float], ...]:
    """One row's adapters from the ``adapters`` input (JSON ``[[name, weight], ...]``; empty: none)."""
    if not text or text == "[]":
        return ()
    return tuple((str(name), float(weight)) for name, weight in json.loads(text))


def row_text(loras: Iterable[tuple[str, float]]) -> str:
    """The ``adapters`` input of a row (see :func:`parse_row`)."""
    return json.dumps([[name, weight] for name, weight in loras]) if loras else ""


class AdapterUnavailable(ValueError):
    """An adapter a row names that an engine cannot apply: not on this stack, or weights that are not finite."""


class BankFeeds(NamedTuple):
    """A batch's LoRA inputs: each row's weights, the banks its rows share, and the rows refused (row -> why).

    A refused row runs without adapters (its weights 0, its adapter out of the banks); its caller answers it the error.
    """

    scale: np.ndarray
    bank: dict[str, np.ndarray]
    refused: dict[int, Exception]


class LoraBanks:
    """Adapters held by one engine instance (least recently used beyond ``resident`` go), and each batch's banks.

    ``load(name)`` returns an adapter's tensors for this engine (``{slot: (down, up)}``); a batch needing more
    distinct adapters than ``resident`` holds them all for its own execution.
    """

    def __init__(
        self,
        engine: str,
        slots: list[Slot],
        load: Callable[[str], dict[int, tuple[np.ndarray, np.ndarray]]],
        resident: int,
        on_event: Callable[[str, str, float], None] | None = None,
    ) -> None:
        self.engine, self.slots, self._load, self.resident = engine, slots, load, max(1, resident)
        self.on_event = on_event or (lambda kind, name, value: None)
        self._held: OrderedDict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = OrderedDict()
        self._banks: OrderedDict[tuple[str, ...], dict[str, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def _adapter(self, name: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        if name in self._held:
            self._held.move_to_end(name)
            return self._held[name]
        started = time.perf_counter()
        tensors = self._load(name)
        if not all(np.isfinite(down).all() and np.isfinite(up).all() for down, up in tensors.values()):
            raise AdapterUnavailable(f"LoRA adapter {name!r} has NaN or Inf weights")
        self.on_event("load", name, time.perf_counter() - started)
        self._held[name] = tensors
        return tensors

    def _evict(self, keep: set[str]) -> None:
        for name in list(self._held):
            if len(self._held) <= self.resident:
                break
            if name not in keep:
                del self._held[name]
                self._banks = OrderedDict((k, v) for k, v in self._banks.items() if name not in k)
                self.on_event("evict", name, 0.0)

    def feeds(self, rows: list[tuple[tuple[str, float], ...]]) -> BankFeeds:
        """``lora_scale`` (per row), every slot's bank (shared by the rows), the rows refused, for ``rows[i]``."""
        with self._lock:
            adapters, failed = {}, {}
            for name in dict.fromkeys(name for row in rows for name, _ in row):
                try:
                    adapters[name] = self._adapter(name)
                except Exception as error:  # noqa: BLE001 - the rows naming it fail, the batch's others run
                    failed[name] = error
            names = tuple(adapters)
            self._evict(set(names))
            bank = self._banks.get(names)
            if bank is None:
                bank = self._bank(names, adapters)
                self._banks[names] = bank
                while len(self._banks) > 8:
                    self._banks.popitem(last=False)
            else:
                self._banks.move_to_end(names)
        scale = np.zeros((len(rows), max(1, len(names))), dtype=np.float32)
        column, refused = {name: k for k, name in enumerate(names)}, {}
        for i, row in enumerate(rows):
            if errors := [failed[name] for name, _ in row if name in failed]:
                refused[i] = errors[0]
                continue
            for name, weight in row:
                scale[i, column[name]] += weight
        return BankFeeds(scale, bank, refused)

    def _bank(self, names: tuple[str, ...], adapters: dict) -> dict[str, np.ndarray]:
        bank = {}
        for index, slot in enumerate(self.slots):
            parts = [(k, adapters[name][index]) for k, name in enumerate(names) if index in adapters[name]]
            down_name, up_name, column_name = bank_names(index)
            if not parts:  # no adapter of this batch touches the layer: one zero column
                bank[down_name] = np.zeros(slot.down_shape(1), np.float32)
                bank[up_name] = np.zeros(slot.up_shape(1), np.float32)
                bank[column_name] = np.zeros(1, np.int64)
                continue
            bank[down_name] = np.ascontiguousarray(np.concatenate([down for _, (down, _) in parts]))
            bank[up_name] = np.ascontiguousarray(np.concatenate([up for _, (_, up) in parts], axis=1))
            bank[column_name] = np.concatenate([np.full(len(down), k, np.int64) for k, (down, _) in parts])
        return bank

    @property
    def held(self) -> list[str]:
        """Adapters held now, least recently used first."""
        return list(self._held)

    def held_bytes(self) -> int:
        """Bytes of the adapters held now."""
        return sum(d.nbytes + u.nbytes for tensors in self._held.values() for d, u in tensors.values())
