"""Adaptive guidance: classifier-free guidance for the first part of a generation's steps only.

Guidance shapes an image early, while its layout and colours form; late steps refine detail that the guided and
unguided predictions mostly agree on. A job with ``guidance_cutoff`` ``c`` (in (0, 1]) runs its first
``ceil(c x steps)`` steps guided (two UNet rows per image: negative and prompt) and the rest on the prompt's row
alone (one row, the prediction used as is), as diffusers' "dynamic classifier-free guidance" recipe does from a
``callback_on_step_end`` (the guidance scale set to 0 and the prompt embeddings halved). At 1 (the default) every
step is guided: today's loop. Unguided rows are ordinary UNet rows: they merge with other requests' in Triton.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

NO_CUTOFF = 1.0
"""Guidance on every step."""


def guided_steps(total: int, cutoff: float) -> int:
    """How many of ``total`` steps run guided under ``cutoff``: the first ``ceil(cutoff x total)``, at least one."""
    return min(total, max(1, math.ceil(round(cutoff * total, 9))))


def prompt_rows(rows: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The prompt's half of guided per-row inputs (laid out ``[negative..., prompt...]``)."""
    return {name: values[len(values) // 2 :] for name, values in rows.items()}
