"""What the embedded models made here share: their seed and CLIP's byte-level vocabulary (tokenizers without merges)."""

from __future__ import annotations

SEED = 20261121


def byte_vocabulary() -> dict[str, int]:
    """CLIP's byte-level alphabet with and without the end-of-word marker, plus the special tokens."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    tokens = alphabet + [f"{c}</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}
