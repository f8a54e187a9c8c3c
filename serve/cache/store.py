"""The result cache's contract: answers by key, bounded in bytes, least recently used out."""

from __future__ import annotations

from abc import ABC, abstractmethod


class ResultCache(ABC):
    """Answers by key, at most ``max_bytes`` of them."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The answer cached under ``key`` (now the most recently used), or None."""

    @abstractmethod
    def put(self, key: str, value: bytes) -> None:
        """Keep ``value`` under ``key``, dropping the least recently used answers beyond the bound."""

    @abstractmethod
    def size(self) -> int:
        """Bytes held."""
