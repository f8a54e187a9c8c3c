"""The models ``easel bench gpu`` measures, made and built fast enough for a lent GPU machine's few minutes.

A published model with random weights (:func:`~build_engines.text_to_image.published.create_random_model`) is
initialised on the benchmark's device: SDXL's 3.5 G parameters take minutes on a CPU, seconds on a GPU (the same
configs and initialisers: random fp32 weights, from that device's generator). :func:`build_unmeasured` builds the
torch engines without measuring each engine's memory in a fresh process (what admission and activation pools read,
which the bench uses neither of): a process per engine, tens of seconds per model on that machine.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def model_dir(name: str, device: str) -> Path:
    """The model's diffusers folder: a tiny model, or a published model with random weights (made once)."""
    from build_engines.text_to_image.build import default_model_dir
    from build_engines.text_to_image.published import create_random_model
    from serve.paths import easel_home

    if name.startswith("tiny"):  # tiny (the embedded default), tiny-svd: made locally, as the stack makes them
        return default_model_dir(name)
    folder = easel_home() / "models" / f"random-{name}"
    if (folder / "model_index.json").exists():
        return folder
    return create_random_model(name, folder, device=device)


def build_unmeasured(model: Path, repository: Path, prefix: str, precision: str, device: str):
    """The torch engines of ``model`` at ``precision`` on ``device``, installed in ``repository``: the engine folder."""
    from build_engines.text_to_image.build import build

    how = {"runtime": "torch", "precision": precision, "device": device, "measure_memory": False}
    return build(model, repository, prefix=prefix, **how)
