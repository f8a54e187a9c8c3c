"""Engines for the torch runtime: the model's diffusers folder linked into the engine folder, a ``torch.json`` each.

The outside folders some engines load from are linked beside it, by engine (``linked/``): each ready ControlNet's
(``--controlnet NAME=DIR``; the UNet then takes their residuals) and a tiny VAE decoder's (``--vae-decoder DIR``), so
the folder is self-contained, as its name (the cache key) already says what they hold. Built LoRA-ready (``--loras``),
the text encoders and the UNet take the ONNX path's LoRA inputs: each is loaded once here to write its slot table.

Nothing is exported: each engine runs the module its ONNX graph would be exported from
(:mod:`serve.text_to_image.torch_engines`), so its parity with diffusers is the module's own (fp32) or fp16's
rounding, which a GPU measures (``easel bench gpu``). The denoisers and ControlNets (every engine taking a
``timestep``) get batch buckets, captured as CUDA graphs when served on a GPU (:mod:`serve.triton.torch_runtime`);
a video's (SVD's UNet: a whole video per row) runs eager, its calls too large for launches to matter and too large
to capture at every bucket.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from build_engines.text_to_image.export import EngineReport, ParityReport, peak_rss_gb
from serve.adapters.lora import Slot, load_slots
from serve.errors import UnsupportedModel
from serve.text_to_image.engine_folder import DIFFUSERS
from serve.text_to_image.families import Family
from serve.text_to_image.families.exports import ExportModule
from serve.text_to_image.spec import CONTROLNET_PREFIX, VAE_DECODER, VIDEO_AXES
from serve.text_to_image.torch_engines import LINKED, LOADER, engine_modules, linked_engines, lora_fields
from serve.triton.engine_files import EngineFiles
from serve.triton.runtimes import Runtime, RuntimeChoice
from serve.triton.spec import ModelSpec
from serve.triton.torch_runtime import DEFAULT_BUCKETS, DTYPES, TorchEngine, dim_axes

logger = logging.getLogger(__name__)

NOT_EXPORTED = "the torch runtime runs the module itself: nothing exported, nothing to compare at build"


def check_torch_build(ip_adapters: bool, motion: bool) -> None:
    """Refuse (one line) what the torch runtime does not build yet: IP-Adapters, motion adapters."""
    asked = {"IP-Adapters": ip_adapters, "motion adapters": motion}
    named = [what for what, wanted in asked.items() if wanted]
    if named:
        raise UnsupportedModel(
            f"runtime torch serves a model's own engines (step caching's too), LoRAs, ControlNets and a tiny VAE "
            f"decoder, not yet {', '.join(named)}: build those with --runtime onnxruntime or openvino"
        )


def link_tree(source: Path, target: Path) -> None:
    """Every file of ``source`` hard-linked under ``target`` (copied where the two are on different file systems)."""
    for path in sorted(source.rglob("*")):
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path.resolve(), destination)
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.EPERM):
                raise
            shutil.copy2(path, destination)


def torch_engine(
    spec: ModelSpec, side: int, keep_fp32: bool, scale: int = 0, slots: Sequence[Slot] | None = None
) -> TorchEngine:
    """``spec``'s engine for the torch runtime: its inputs at the latent ``side`` (what its buckets capture).

    ``scale``: pixels per latent (the VAE's factor), which turns a stack's graph sizes into latent ones; ``slots``: a
    LoRA-ready engine's (its LoRA inputs after the others: :func:`serve.text_to_image.torch_engines.lora_fields`).
    """
    inputs = tuple((t.name, t.dtype, t.shape(side)) for t in spec.graph_inputs)
    axes = tuple(dim_axes(t.dims, t.axis_names) for t in spec.graph_inputs)  # what capture resizes
    denoiser = any(t.name == "timestep" for t in spec.inputs)
    video = any(VIDEO_AXES[0] in t.axis_names for t in spec.inputs)  # a video per row: compute-bound, run eager
    buckets = tuple(size for size in DEFAULT_BUCKETS if size <= spec.max_batch_size) if denoiser and not video else ()
    outputs = tuple(t.name for t in spec.outputs)
    engine = TorchEngine(spec.name, LOADER, inputs, outputs, keep_fp32, buckets, axes, side, scale)
    if slots is None:
        return engine
    lora = lora_fields(slots)
    inputs, axes = inputs + lora.pop("inputs"), axes + lora.pop("axes")
    return dataclasses.replace(engine, inputs=inputs, axes=axes, **lora)


def write_side_files(source: ExportModule, dtype: torch.dtype, folder: Path) -> None:
    """Load ``source`` once in ``dtype`` and write its side files into ``folder`` (a LoRA-ready one's slot table)."""
    module = source.load(dtype)
    for name, write in getattr(module, "side_files", {}).items():
        write(folder / name)
    del module


def torch_engines(
    family: Family, model_dir: Path, engine_dir: Path, precision: str, vae_decoder: Path | None = None
) -> list[EngineReport]:
    """Link ``model_dir`` into ``engine_dir`` and give each of ``family``'s engines its ``torch.json``; the reports.

    Each of ``family``'s ready ControlNets' folders, and the tiny ``vae_decoder`` (a diffusers ``AutoencoderTiny``
    folder, served as the model's ``vae_decoder``), are linked under ``linked/`` by engine, where the loader finds them.
    """
    link_tree(model_dir, engine_dir / DIFFUSERS)
    sources = {f"{CONTROLNET_PREFIX}{entry.name}": Path(entry.source) for entry in family.controlnets.entries}
    for engine in linked_engines(family):
        link_tree(sources[engine], engine_dir / LINKED / engine)
    if vae_decoder is not None:
        link_tree(vae_decoder, engine_dir / LINKED / VAE_DECODER)
    modules = engine_modules(family, engine_dir)  # what each engine loads: a LoRA-ready one's loaded for its slots
    lora_ready = family.lora_ready_engines if family.adapters.lora else ()
    reports = []
    for name, spec in family.specs.items():
        source = modules[name]
        engine_precision = "fp32" if source.keep_fp32 else precision
        files = EngineFiles(engine_dir / name)
        files.folder.mkdir(parents=True)
        slots = None
        if name in lora_ready:
            write_side_files(source, DTYPES[engine_precision], files.folder)
            slots = load_slots(files.lora_slots)
        dims = family.dims
        torch_engine(spec, dims.sample_size, source.keep_fp32, dims.vae_scale_factor, slots).save(files)
        choice = RuntimeChoice(Runtime.TORCH, engine_precision)
        choice.save(files)
        parity = ParityReport(name, None, None, NOT_EXPORTED)
        report = EngineReport(
            name, engine_precision, 0.0, round(peak_rss_gb(), 2), 0, parity, dataclasses.asdict(choice)
        )
        reports.append(report)
        logger.info("%s: torch runtime, %s", name, engine_precision)
    return reports
