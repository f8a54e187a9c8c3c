"""What the embedded models made here share: their seed, CLIP's byte-level vocabulary (no merges), a T5 tokenizer."""

from __future__ import annotations

SEED = 20261121


def byte_vocabulary() -> dict[str, int]:
    """CLIP's byte-level alphabet with and without the end-of-word marker, plus the special tokens."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    tokens = alphabet + [f"{c}</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


T5_VOCAB_SIZE = 512
"""The tiny T5 encoders' embedding rows: more than their tokenizer's pieces (as T5's 32128 rows hold 32100 pieces)."""


def t5_tokenizer():
    """A T5 tokenizer (SentencePiece unigram, as T5's) over printable ASCII: each character alone or opening a word."""
    import string

    from transformers import T5Tokenizer

    characters = [c for c in string.printable if not c.isspace()]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + c, -1.0) for c in characters] + [(c, -1.5) for c in characters]
    return T5Tokenizer(vocab=pieces, extra_ids=0)
