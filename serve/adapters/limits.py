"""What a LoRA may be and how long a replaced one's files stay: the operator's settings, declared once.

:class:`LoraSettings` holds the fields ``easel up`` takes (``--lora-max-rank``, ``--lora-max-norm``,
``--lora-files-kept-s``; :class:`serve.settings.AppSettings` is one), :class:`LoraLimits` the values the code carries.
A file read for the engines (``--loras`` folders at start-up, ``POST``/``PUT /v1/loras``) is refused past them
(:func:`serve.adapters.lora_files.prepare`): NaN or Inf weights, a rank over ``max_rank``, or a layer whose
``||B x scaling|| x ||A||`` (Frobenius norms: a bound on the layer's change ``||B A||``) is over ``max_norm``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field

DEFAULT_MAX_RANK = 128
"""Ranks of LoRAs as published run 4 to 128; a rank-512 one slowed the rows batched with it by ~40 % (issue 65)."""
DEFAULT_MAX_NORM = 1000.0
"""The test LoRAs measure under 20; 3e38 weights (which overflow in fp32 math) measure over 1e38."""
DEFAULT_FILES_KEPT_S = 3600.0
"""An hour: longer than a generation runs, so requests that resolved a replaced LoRA finish on its files."""


@dataclass(frozen=True)
class LoraLimits:
    """The bounds a LoRA file is checked against, and how long unused prepared files stay (see the module)."""

    max_rank: int = DEFAULT_MAX_RANK
    max_norm: float = DEFAULT_MAX_NORM
    files_kept_s: float = DEFAULT_FILES_KEPT_S


class LoraSettings(BaseModel):
    """The LoRA fields of the stack's settings (a base of :class:`serve.settings.AppSettings`)."""

    lora_max_rank: int = Field(
        DEFAULT_MAX_RANK,
        ge=1,
        description="The largest rank a LoRA may have (a higher one is refused: its rows slow every row batched "
        "with them); a request's LoRA rows are priced by their rank.",
    )
    lora_max_norm: float = Field(
        DEFAULT_MAX_NORM,
        gt=0,
        description="The largest ||B x scaling|| x ||A|| (Frobenius norms) a layer of a LoRA may have; a larger one, "
        "or NaN or Inf weights, is refused.",
    )
    lora_files_kept_s: float = Field(
        DEFAULT_FILES_KEPT_S,
        ge=0,
        description="Seconds a replaced or removed LoRA's files stay for the requests that resolved it, then go.",
    )

    @property
    def lora_limits(self) -> LoraLimits:
        """These fields as the code carries them."""
        return LoraLimits(self.lora_max_rank, self.lora_max_norm, self.lora_files_kept_s)
