"""What ``easel bench gpu`` measures to decide the loop's next defaults: each variant beside the default, same run.

- **Tensors via the host**: a second loop model with ``resident`` off (every step's inputs and outputs cross the
  host, as they did before issue 74), timed at c=1 and c=16 beside the default, and each image's PSNR against the
  default's (the same generation: only where its tensors live differs).
- **Finer buckets**: a third loop model capturing :data:`FINE_BUCKETS` (multiples of 4 rows) instead of the build's
  powers of two, timed where a request's rows fall between two of those (c=12: 24 rows, in the 32-row bucket by
  default) and at c=16.

The engine checks measure one more variant: SDXL's VAE in bf16 (``gpu_engines.vae_bf16_row``).
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

LOOP_HOST = "easel, loop in Triton, merged, tensors via the host"
LOOP_FINE = "easel, loop in Triton, merged, buckets of 4 rows"
HOST_PREFIX = "host."
FINE_PREFIX = "fine."
FINE_BUCKETS = (1, 2, 4, 8, 12, 16, 20, 24, 28, 32)
HOST_CONCURRENCY = (1, 16)
FINE_CONCURRENCY = (12, 16)
AB_IMAGES = 2


def variant_specs(folder_path, prefix: str) -> dict:
    """The variants' loop models (by name: ``host``, ``fine``) of the engine folder at ``folder_path``."""
    from serve.text_to_image.loop_protocol import loop_spec

    return {
        "host": loop_spec(folder_path, f"{prefix}{HOST_PREFIX}", resident=False),
        "fine": loop_spec(folder_path, f"{prefix}{FINE_PREFIX}", FINE_BUCKETS),
    }


async def variant_rows(run, default, callers: dict, c1_repeats: int) -> None:
    """The variants' rows; ``default`` and each of ``callers`` (by variant) call one loop model (``LoopCaller``)."""
    from loadtests.benchmarks.gpu_accept import LOOP_MERGED
    from loadtests.benchmarks.gpu_engines import psnr

    host, fine = callers["host"], callers["fine"]
    for concurrency in HOST_CONCURRENCY:
        repeats = c1_repeats if concurrency == 1 else None
        await run.timed(LOOP_HOST, concurrency, lambda i: host.images(run.sampling(i)), repeats=repeats)
    if not run.deadline.expired():
        values = []
        for index in range(AB_IMAGES):
            ours, theirs = await default.images(run.sampling(index)), await host.images(run.sampling(index))
            values += [psnr(a, b) for a, b in zip(ours, theirs, strict=True)]
        entry = {"model": run.model.name, "against": "the loop with its tensors via the host", "images": len(values)}
        run.report.add("psnr", entry | {"min_db": min(values), "mean_db": float(np.mean(values))})
    for concurrency in FINE_CONCURRENCY:
        await run.timed(LOOP_FINE, concurrency, lambda i: fine.images(run.sampling(i)))
        if concurrency not in run.model.concurrency:  # the default at the same concurrency, beside it
            await run.timed(LOOP_MERGED, concurrency, lambda i: default.images(run.sampling(i)))
