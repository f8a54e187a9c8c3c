"""The torch runtime's buckets: a call's inputs copied into static tensors, run as a CUDA graph (eager on a CPU).

A bucket (:class:`Bucket`) is a row count at some input shapes (:mod:`serve.triton.torch_runtime` chooses it): a
call's rows are padded to it (the last row repeated) and its outputs sliced back. Inputs without a batch axis (a
LoRA-ready engine's banks) are static tensors too, one set per shapes that every bucket at those shapes reads
(:class:`SharedInputs`): copied in only when a call brings other tensors than the last one did. An axis a call may
hold fewer of than its bucket (a bank's rank, a row's adapters) is zero-padded (:func:`fill`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Sequence

import torch

Padded = tuple[tuple[str, tuple[int, ...]], ...]
"""Axes (by name) a call may hold fewer of than its bucket, each with the sizes its buckets are captured at."""

WARMUP_CALLS = 2
"""Eager calls on the capture stream before a bucket is captured (cuDNN and cuBLAS choose their kernels)."""


def bucket_for(rows: int, buckets: Collection[int]) -> int | None:
    """The smallest bucket holding ``rows`` rows; None when none does (the call runs eager)."""
    return min((size for size in buckets if size >= rows), default=None)


def padded(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """``tensor`` with its last row repeated up to ``rows`` rows (a padded row is a real input: no NaN, no zeros)."""
    missing = rows - len(tensor)
    return tensor if missing <= 0 else torch.cat([tensor, tensor[-1:].expand(missing, *tensor.shape[1:])])


def padding_sizes(padded: Padded) -> list[dict[str, int]]:
    """Every combination of the ``padded`` axes' sizes (one empty one where there are none)."""
    names = [axis for axis, _ in padded]
    return [dict(zip(names, sizes, strict=True)) for sizes in itertools.product(*(s for _, s in padded))]


def padded_shapes(padded: Padded, axes: Sequence[Sequence[str]], shapes: Sequence[tuple[int, ...]]):
    """``shapes`` (each input's, its dims named by ``axes``) with each ``padded`` axis at its bucket's size.

    That is the smallest of its sizes holding the call's largest; None when none does (the call runs eager).
    """
    if not padded:
        return tuple(shapes)
    needed = dict.fromkeys((axis for axis, _ in padded), 0)
    for shape, names in zip(shapes, axes, strict=True):
        for size, axis in zip(shape, names, strict=True):
            if axis in needed:
                needed[axis] = max(needed[axis], size)
    chosen = {axis: bucket_for(needed[axis], sizes) for axis, sizes in padded}
    if None in chosen.values():
        return None
    return tuple(
        tuple(chosen.get(axis, size) for size, axis in zip(shape, names, strict=True))
        for shape, names in zip(shapes, axes, strict=True)
    )


def fill(static: torch.Tensor, tensor: torch.Tensor) -> None:
    """Copy ``tensor`` into ``static``, zeros past it on each axis where it is smaller (a padded rank adds 0)."""
    if tensor.shape == static.shape:
        static.copy_(tensor)
        return
    static.zero_()
    static[tuple(slice(0, size) for size in tensor.shape)].copy_(tensor)


class SharedInputs:
    """Static copies of a session's inputs without a batch axis at some shapes, read by every bucket at them."""

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self.tensors = list(tensors)
        self._sources: tuple[torch.Tensor, ...] = ()  # what they hold (kept: an id is never reused while held)

    def fill(self, tensors: Sequence[torch.Tensor]) -> None:
        """Hold ``tensors`` (each zero-padded to its static shape); nothing is copied when they are the last ones."""
        if len(self._sources) == len(tensors) and all(a is b for a, b in zip(self._sources, tensors, strict=True)):
            return
        for static, tensor in zip(self.tensors, tensors, strict=True):
            fill(static, tensor)
        self._sources = tuple(tensors)


class Bucket:
    """One bucket at some shapes: inputs copied into static rows, the module's call, outputs sliced back.

    ``inputs``: examples of the batched inputs (``rows`` rows); ``shared``: the static tensors of the others. On a
    GPU the call is a CUDA graph captured here, on ``stream`` and into ``pool`` (both the session's, on its device;
    the buckets share the pool: one runs at a time), reading the static tensors; elsewhere it is the eager call on
    them.
    """

    def __init__(
        self,
        call: Callable,
        rows: int,
        inputs: list[torch.Tensor],
        shared: SharedInputs | None = None,
        pool=None,
        stream=None,
    ) -> None:
        self.rows, self.shared = rows, shared
        self.static = [padded(tensor, rows).clone() for tensor in inputs]
        self.arguments = [*self.static, *(shared.tensors if shared else ())]
        self.graph = None
        self.outputs: tuple[torch.Tensor, ...] = ()
        self.call = call
        if self.static[0].is_cuda:
            self._capture(pool, stream)

    def _capture(self, pool, stream: torch.cuda.Stream) -> None:
        stream.wait_stream(torch.cuda.current_stream(stream.device))
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_CALLS):
                self.call(*self.arguments)
        torch.cuda.current_stream(stream.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool, stream=stream):  # not torch's process-wide capture stream
            self.outputs = self.call(*self.arguments)

    def __call__(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The outputs of ``inputs`` (at most :attr:`rows` rows, within the capture shapes), sliced to their rows."""
        count = len(inputs[0])
        for static, tensor in zip(self.static, inputs, strict=False):
            fill(static, padded(tensor, self.rows))
        if self.shared is not None:
            self.shared.fill(inputs[len(self.static) :])
        if self.graph is not None:
            self.graph.replay()
            outputs = self.outputs
        else:
            outputs = self.call(*self.arguments)
        return tuple(output[:count] for output in outputs)
