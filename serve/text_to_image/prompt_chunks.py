"""A prompt as its text encoders read it: weighted tokens in chunks, each encoded alone, side by side after.

As AUTOMATIC1111 (``modules/sd_hijack_clip.py``) and compel (``truncate_long_prompts=False``) do: the prompt's
fragments (:mod:`serve.protocol.prompt_weights`) are tokenized one by one, without special tokens, each token
carrying its fragment's weight; the tokens go in chunks of the encoder's length less its BOS and EOS (75 for CLIP),
split where the count falls (compel's ``SplitLongTextMode.BRUTAL``; AUTOMATIC1111 with
``comma_padding_backtrack`` 0); each chunk is ``BOS + tokens + EOS`` padded with the tokenizer's pad token, and
encoded as a row of its own. Each chunk's hidden states are weighted by AUTOMATIC1111's emphasis (its "Original"
option): every token's state multiplied by its weight, then the whole chunk rescaled to its mean before weighting.
The chunks' states go side by side along the sequence axis; a pooled embedding is the first chunk's. Rows with fewer
chunks (a shorter negative prompt) are padded with the empty prompt's chunk, as both tools pad. One chunk of an
unweighted prompt is exactly what diffusers' pipelines encode. A prompt over :data:`MAX_PROMPT_CHUNKS` chunks (or
one chunk, for encoders that take one) is cut there, and how many tokens were dropped is reported.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from serve.protocol.prompt_weights import Fragment, parse_weighted
from serve.text_to_image.spec import MAX_PROMPT_CHUNKS
from serve.triton.spec import EngineRunner, ModelSpec


@dataclass(frozen=True)
class PromptEncoder:
    """A text encoder as a family reads prompts with it: its engine, its tokenizer's folder, its length, most chunks."""

    engine: str
    tokenizer: str
    length: int
    max_chunks: int = MAX_PROMPT_CHUNKS


@dataclass(frozen=True)
class Chunks:
    """One text's tokens for one encoder: ids and weights per chunk ``(chunks, length)``, its tokens, those dropped."""

    ids: np.ndarray
    weights: np.ndarray
    tokens: int
    dropped: int

    @property
    def count(self) -> int:
        """How many chunks the text takes."""
        return len(self.ids)


def chunked(tokenizer, fragments: Sequence[Fragment], length: int, max_chunks: int = MAX_PROMPT_CHUNKS) -> Chunks:
    """``fragments`` tokenized by ``tokenizer`` into chunks of ``length`` tokens with BOS, EOS and padding.

    At most ``max_chunks``; the tokens past them are dropped (and counted).
    """
    ids: list[int] = []
    weights: list[float] = []
    for fragment in fragments:
        if fragment.text:
            piece = tokenizer(fragment.text, add_special_tokens=False, truncation=False).input_ids
            ids += piece
            weights += [fragment.weight] * len(piece)
    bos, eos = _specials(tokenizer)
    body = length - len(bos) - len(eos)
    count = min(max(1, math.ceil(len(ids) / body)), max_chunks)
    rows, row_weights = [], []
    for start in range(0, count * body, body):
        tokens = bos + ids[start : start + body] + eos
        padding = length - len(tokens)
        rows.append(tokens + [tokenizer.pad_token_id] * padding)
        row_weights.append([1.0] * len(bos) + weights[start : start + body] + [1.0] * (len(eos) + padding))
    return Chunks(
        np.asarray(rows, dtype=np.int64),
        np.asarray(row_weights, dtype=np.float32),
        len(ids),
        max(0, len(ids) - count * body),
    )


def _specials(tokenizer) -> tuple[list[int], list[int]]:
    """The tokens ``tokenizer`` puts before and after a text's (CLIP: BOS and EOS; T5: EOS)."""
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    return bos, eos


def emphasised(states: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUTOMATIC1111's emphasis of one chunk's hidden states ``(length, width)`` by its tokens' ``weights``.

    Each token's state multiplied by its weight, then all rescaled so their mean is the one before (unchanged when
    every weight is 1).
    """
    if np.all(weights == 1.0):
        return states
    mean = states.mean()
    weighted = states * weights[:, None]
    return weighted * (mean / weighted.mean())


class PromptChunks:
    """The texts of a job's conditioning rows, each chunked for one text encoder (:func:`chunked`)."""

    def __init__(self, tokenizer, texts: Sequence[str], length: int, max_chunks: int = MAX_PROMPT_CHUNKS) -> None:
        self.rows = [chunked(tokenizer, parse_weighted(text), length, max_chunks) for text in texts]
        self.empty = chunked(tokenizer, (), length)
        self.chunk_tokens = length - sum(map(len, _specials(tokenizer)))  # a text's tokens per chunk
        self.max_chunks = max_chunks

    @property
    def count(self) -> int:
        """The most chunks a row takes: every row is encoded with this many."""
        return max(row.count for row in self.rows)

    @property
    def dropped(self) -> int:
        """The tokens cut from the last row (the prompt)."""
        return self.rows[-1].dropped

    async def encoded(self, engines: EngineRunner, spec: ModelSpec, count: int | None = None) -> dict[str, np.ndarray]:
        """Each of ``spec``'s outputs for the rows, each row padded to ``count`` chunks (default :attr:`count`).

        A hidden state ``(rows, count x length, width)``, the chunks emphasised and side by side; a pooled embedding
        ``(rows, width)``, the first chunk's. Each distinct chunk is encoded once, in calls of the engine's batch.
        """
        count = count or self.count
        padding = [self.empty] * count
        ids = np.concatenate([np.concatenate([r.ids, *(p.ids for p in padding[r.count :])]) for r in self.rows])
        weights = np.concatenate(
            [np.concatenate([r.weights, *(p.weights for p in padding[r.count :])]) for r in self.rows]
        )
        distinct, where = np.unique(ids, axis=0, return_inverse=True)
        step = spec.max_batch_size or len(distinct)
        parts = await asyncio.gather(
            *(engines.infer(spec, {"input_ids": distinct[i : i + step]}) for i in range(0, len(distinct), step))
        )
        outputs = {}
        for tensor in spec.outputs:
            rows = np.concatenate([part[tensor.name] for part in parts])[where.reshape(-1)]
            if len(tensor.dims) == 1:  # pooled: each row's first chunk
                outputs[tensor.name] = rows[::count]
                continue
            states = np.stack([emphasised(state, weight) for state, weight in zip(rows, weights, strict=True)])
            outputs[tensor.name] = states.reshape(len(self.rows), count * states.shape[1], states.shape[2])
        return outputs


def truncated(prompts: Mapping[str, PromptChunks]) -> int:
    """The most tokens of the prompt (the last row) one of its encoders did not read: ``Easel-Prompt-Truncated``."""
    return max(chunks.dropped for chunks in prompts.values())
