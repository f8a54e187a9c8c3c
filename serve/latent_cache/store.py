"""The latent cache's contract: intermediate latents of earlier generations, found by their prompt's embedding."""

from __future__ import annotations

import hashlib
import io
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Match:
    """The kept latents nearest a prompt, and how similar their prompt is (cosine of the embeddings)."""

    similarity: float
    latents: np.ndarray


class LatentStore(ABC):
    """Latents by shape (everything but the prompt that shapes them) and prompt embedding, at most ``max_entries``.

    Embeddings are unit vectors; the nearest of a shape's entries is the one of largest dot product (ties: the
    earliest key in sort order, so a lookup is a function of the store's contents). Keeping latents under a shape
    and an embedding already held replaces them; the least recently used entries go beyond the bound.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries

    @abstractmethod
    def nearest(self, shape: str, embedding: np.ndarray) -> Match | None:
        """The entry of ``shape`` whose embedding is nearest ``embedding`` (now the most recently used), or None."""

    @abstractmethod
    def put(self, shape: str, embedding: np.ndarray, latents: np.ndarray) -> None:
        """Keep ``latents`` under ``shape`` and ``embedding``, dropping the least recently used beyond the bound."""

    @abstractmethod
    def count(self) -> int:
        """Entries held."""


def entry_key(shape: str, embedding: np.ndarray) -> str:
    """An entry's key: its embedding's and shape's content addresses.

    The same prompt's latents replace each other; equally near entries are told apart by their embeddings alone.
    """
    vector = np.ascontiguousarray(embedding, np.float32).tobytes()
    return f"{hashlib.sha256(vector).hexdigest()}-{hashlib.sha256(shape.encode()).hexdigest()[:16]}"


def to_bytes(array: np.ndarray) -> bytes:
    """An array as ``np.save`` bytes (its dtype and shape kept)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def from_bytes(data: bytes) -> np.ndarray:
    """The array :func:`to_bytes` wrote."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def nearest_of(embeddings: dict[str, np.ndarray], embedding: np.ndarray) -> tuple[str, float] | None:
    """The key of the embedding nearest ``embedding`` (ties: the smallest key) and its similarity; None if none."""
    if not embeddings:
        return None
    keys = sorted(embeddings)
    similarities = np.stack([embeddings[key] for key in keys]) @ np.asarray(embedding, np.float32)
    best = int(np.argmax(similarities))  # the first of equal maxima
    return keys[best], float(similarities[best])
