"""An IP-Adapter reference's weight as a request gives it: one number, or InstantStyle's per-block mapping."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, Strict, StringConstraints

MAX_IP_SCALE = 2.0

IpScale = Annotated[float, Strict(), Field(ge=0.0, le=MAX_IP_SCALE, allow_inf_nan=False)]
IpBlock = Annotated[str, StringConstraints(pattern=r"^block_[0-9]{1,2}$")]
IpScaleMap = dict[Literal["down", "mid", "up"], IpScale | list[IpScale] | dict[IpBlock, IpScale | list[IpScale]]]
"""InstantStyle's per-block scales, as ``set_ip_adapter_scale`` takes them: ``{"up": {"block_0": [0, 1, 0]}}``."""


def _check_ip_scale(value, where: str) -> None:
    at = f"{where}: " if where else ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{at}must be a number or a mapping like {{'up': {{'block_0': [0.0, 1.0, 0.0]}}}}")
    if not 0.0 <= value <= MAX_IP_SCALE:  # NaN fails this too
        raise ValueError(f"{at}scales must be finite numbers in [0, {MAX_IP_SCALE:g}], not {value}")


def checked_shape(value):
    """``value`` (a number or a mapping); a ValueError naming what is wrong (where, and the limit) if it does not fit.

    Run before the union's own, less readable, errors.
    """
    if not isinstance(value, dict):
        _check_ip_scale(value, "")
        return value
    for part, scales in value.items():
        if part not in ("down", "mid", "up"):
            raise ValueError(f"keys must be 'down', 'mid' or 'up', not {part!r}")
        blocks = scales.items() if isinstance(scales, dict) else [("", scales)]
        for block, values in blocks:
            if block and not re.fullmatch(r"block_[0-9]{1,2}", block):
                raise ValueError(f"{part}: keys must look like 'block_0', not {block!r}")
            where = f"{part}.{block}".rstrip(".")
            for item in values if isinstance(values, list) else [values]:
                _check_ip_scale(item, where)
    return value
