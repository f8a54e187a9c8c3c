"""The adapter store's contract: the LoRA adapters uploaded while the stack runs (and the references stored).

Two implementations keep it, tested against the same tests: :mod:`serve.adapters.sqlite` and
:mod:`serve.adapters.redis` (:func:`serve.adapters.open_adapter_store` picks one by URL), so every replica (and,
with Redis, every node) sees the same adapters, and a restart keeps them. The prepared tensors an entry names lie in
the stack's registry folder; the store holds what names them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from serve.adapters.registry import LoraEntry
from serve.errors import InvalidInput


def name_taken(name: str) -> InvalidInput:
    """The 400 for a ``POST`` of a name that is taken."""
    return InvalidInput(f"name: a LoRA adapter is named {name!r} already (PUT /v1/loras/{name} replaces it)", "name")


class AdapterStore(ABC):
    """LoRA entries by name (each of one model)."""

    @abstractmethod
    def add_lora(self, entry: LoraEntry) -> None:
        """Keep a new entry; :func:`name_taken` if one has its name."""

    @abstractmethod
    def replace_lora(self, entry: LoraEntry) -> LoraEntry | None:
        """Put ``entry`` in the place of the one with its name; returns that one (None, and nothing kept: none)."""

    @abstractmethod
    def remove_lora(self, name: str) -> LoraEntry | None:
        """Forget the entry called ``name``; returns it (None: there was none)."""

    @abstractmethod
    def lora(self, name: str) -> LoraEntry | None:
        """The entry called ``name``, or None."""

    @abstractmethod
    def loras(self) -> list[LoraEntry]:
        """Every entry, by name."""

    @abstractmethod
    def close(self) -> None:
        """Release the store's connections."""
