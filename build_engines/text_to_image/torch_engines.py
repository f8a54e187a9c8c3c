"""Engines for the torch runtime: the model's diffusers folder linked into the engine folder, a ``torch.json`` each.

The outside folders some engines load from are linked beside it, by engine (``linked/``): each ready ControlNet's
(``--controlnet NAME=DIR``; the UNet then takes their residuals) and a tiny VAE decoder's (``--vae-decoder DIR``), so
the folder is self-contained, as its name (the cache key) already says what they hold.

Nothing is exported: each engine runs the module its ONNX graph would be exported from
(:mod:`serve.text_to_image.torch_engines`), so its parity with diffusers is the module's own (fp32) or fp16's
rounding, which a GPU measures (``easel bench gpu``). The denoisers and ControlNets (every engine taking a
``timestep``) get batch buckets, captured as CUDA graphs when served on a GPU (:mod:`serve.triton.torch_runtime`).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
from pathlib import Path

from build_engines.text_to_image.export import EngineReport, ParityReport, peak_rss_gb
from serve.errors import UnsupportedModel
from serve.text_to_image.engine_folder import DIFFUSERS
from serve.text_to_image.families import Family
from serve.text_to_image.spec import CONTROLNET_PREFIX, VAE_DECODER
from serve.text_to_image.torch_engines import LINKED, LOADER, engine_modules, linked_engines
from serve.triton.engine_files import EngineFiles
from serve.triton.runtimes import Runtime, RuntimeChoice
from serve.triton.spec import ModelSpec
from serve.triton.torch_runtime import DEFAULT_BUCKETS, TorchEngine, dim_axes

logger = logging.getLogger(__name__)

NOT_EXPORTED = "the torch runtime runs the module itself: nothing exported, nothing to compare at build"


def check_torch_build(lora: bool, ip_adapters: bool, motion: bool) -> None:
    """Refuse (one line) what the torch runtime does not build yet: LoRA-ready engines, IP-Adapters, motion adapters."""
    asked = {"LoRAs": lora, "IP-Adapters": ip_adapters, "motion adapters": motion}
    named = [what for what, wanted in asked.items() if wanted]
    if named:
        raise UnsupportedModel(
            f"runtime torch serves a model's own engines (step caching's too), ControlNets and a tiny VAE decoder, "
            f"not yet {', '.join(named)}: build those with --runtime onnxruntime or openvino"
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


def torch_engine(spec: ModelSpec, side: int, keep_fp32: bool, scale: int = 0) -> TorchEngine:
    """``spec``'s engine for the torch runtime: its inputs at the latent ``side`` (what its buckets capture).

    ``scale``: pixels per latent (the VAE's factor), which turns a stack's graph sizes into latent ones.
    """
    inputs = tuple((t.name, t.dtype, t.shape(side)) for t in spec.graph_inputs)
    axes = tuple(dim_axes(t.dims, t.axis_names) for t in spec.graph_inputs)  # what capture resizes
    denoiser = any(t.name == "timestep" for t in spec.inputs)
    buckets = tuple(size for size in DEFAULT_BUCKETS if size <= spec.max_batch_size) if denoiser else ()
    outputs = tuple(t.name for t in spec.outputs)
    return TorchEngine(spec.name, LOADER, inputs, outputs, keep_fp32, buckets, axes, side, scale)


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
    modules = engine_modules(family, engine_dir)  # what each engine loads: only its keep_fp32 is read here
    reports = []
    for name, spec in family.specs.items():
        source = modules[name]
        engine_precision = "fp32" if source.keep_fp32 else precision
        files = EngineFiles(engine_dir / name)
        files.folder.mkdir(parents=True)
        torch_engine(spec, family.dims.sample_size, source.keep_fp32, family.dims.vae_scale_factor).save(files)
        choice = RuntimeChoice(Runtime.TORCH, engine_precision)
        choice.save(files)
        parity = ParityReport(name, None, None, NOT_EXPORTED)
        report = EngineReport(
            name, engine_precision, 0.0, round(peak_rss_gb(), 2), 0, parity, dataclasses.asdict(choice)
        )
        reports.append(report)
        logger.info("%s: torch runtime, %s", name, engine_precision)
    return reports
