"""Export a model family's engines to ONNX, one at a time, each checked against PyTorch.

Engines over ONNX's 2 GB protobuf limit keep their weights in one external-data file beside the graph
(``model.onnx.data``, tensors 4 KiB-aligned). Only one engine's torch module is loaded at a time, and it is freed
before the next; its PyTorch reference outputs are computed before ONNX Runtime loads the exported copy, so the two
copies of the weights are never held together.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from build_engines.onnx_export import OPSET
from build_engines.openvino import choose_runtime
from build_engines.text_to_image.adapters import AdapterBuild, adapter_modules
from build_engines.text_to_image.controlnets import controlnet_modules
from serve.text_to_image.families import Family
from serve.text_to_image.families.exports import ExportModule
from serve.text_to_image.spec import VAE_DECODER, sampled_sides
from serve.text_to_image.torch_engines import tiny_vae_decoder
from serve.triton.engine_files import LORA_SLOTS, MODULE_CONFIG, EngineFiles
from serve.triton.onnx_backend import ShardedSession, make_session
from serve.triton.runtimes import PRECISIONS as RUNTIME_PRECISIONS
from serve.triton.runtimes import Runtime
from serve.triton.spec import ModelSpec
from serve.triton.torch_runtime import CastIO

logger = logging.getLogger(__name__)

# Bump when the exported graphs change, so cached engines are rebuilt.
EXPORTER_VERSION = 6
# Max |onnx - torch| / max(1, max |torch|) allowed on fresh random inputs.
PARITY_TOLERANCE = 1e-3
PRECISIONS = {name: getattr(torch, p.graph_dtype) for name, p in RUNTIME_PRECISIONS.items()}
"""Each ``--precision``'s dtype of the exported graph (bf16 and int8 are the CPU runtime's business: fp32 graphs)."""
# The largest latent side traced and checked: a full-size UNet at its native size would take minutes per call here.
MAX_CHECK_SIDE = 32
EXTERNAL_DATA_SUFFIX = ".data"
_ALIGN = 4096


class ParityError(RuntimeError):
    """An exported engine disagrees with PyTorch beyond the tolerance."""


@dataclass(frozen=True)
class ParityReport:
    """Largest error of one engine against PyTorch on fresh random inputs (None: not checked, see ``note``)."""

    engine: str
    max_abs_error: float | None
    relative_error: float | None
    note: str = ""


@dataclass(frozen=True)
class EngineReport:
    """What exporting one engine took and gave.

    ``peak_rss_gb`` is the build process's peak resident memory up to this engine's end; memory-mapped weights
    (file pages, reclaimable) count in it.
    """

    engine: str
    precision: str
    export_s: float
    peak_rss_gb: float
    bytes: int
    parity: ParityReport
    runtime: dict = dataclasses.field(default_factory=dict)  # serve.triton.runtimes.RuntimeChoice, as saved


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _check_side(family: Family) -> int:
    """The latent side of the parity check: whole patches, at most :data:`MAX_CHECK_SIDE`."""
    side = min(family.dims.sample_size // 2, MAX_CHECK_SIDE)
    return side - side % family.latent_multiple


def sample_inputs(
    spec: ModelSpec,
    batch: int,
    size: int,
    generator: torch.Generator,
    module: torch.nn.Module | None = None,
    chunks: int = 1,
) -> dict[str, torch.Tensor]:
    """Random inputs of the right dtypes, ``size`` the reference side of dynamic axes (and ``module``'s extras).

    ``chunks``: a prompt's chunks, where an input's text takes whole chunks.
    """
    feeds = {}
    for tensor in spec.graph_inputs:
        shape = (batch, *tensor.shape(*sampled_sides(tensor, size), chunks=chunks))
        if tensor.dtype == "int64":
            feeds[tensor.name] = torch.randint(0, 400, shape, generator=generator)
        elif tensor.name in ("timestep", "time_ids"):
            feeds[tensor.name] = torch.rand(shape, generator=generator) * 999
        else:
            feeds[tensor.name] = torch.randn(shape, generator=generator)
    extras = getattr(module, "graph_extras", None)
    if extras is not None:
        feeds.update(extras.sample(batch, generator))
    return feeds


def export_engine(module: torch.nn.Module, spec: ModelSpec, family: Family, out_path: Path) -> None:
    """Export ``module`` (an engine of ``family``) to ONNX at ``out_path`` with the names and dynamic axes of ``spec``.

    Traced at one patch more than the parity check's side: a size the check does not see, odd for a UNet (it then
    traces diffusers' explicit-upsample-size path, right for every size); a prompt's text as two chunks (the check
    sees one).
    """
    out_path.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    side = _check_side(family) + family.latent_multiple
    example = sample_inputs(spec, batch=2, size=side, generator=generator, module=module, chunks=2)
    extras = getattr(module, "graph_extras", None)
    with torch.no_grad():
        torch.onnx.export(
            module.eval(),
            tuple(example.values()),
            str(out_path),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(example),
            output_names=[t.name for t in spec.outputs],
            dynamic_axes=spec.onnx_dynamic_axes() | (extras.dynamic_axes if extras else {}),
        )
    gather_external_data(out_path)
    for name, write in getattr(module, "side_files", {}).items():  # e.g. the LoRA slot table, read when served
        write(out_path.parent / name)


def _tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        tensors += [a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
    return tensors


def gather_external_data(onnx_path: Path) -> None:
    """Move the weights an export wrote as one file per tensor into one ``model.onnx.data`` (no-op if none).

    Streams file by file: only the graph (without weights) is ever in memory.
    """
    model = onnx.load(str(onnx_path), load_external_data=False)
    external = [t for t in _tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]
    if not external:
        return
    data_path = onnx_path.with_name(onnx_path.name + EXTERNAL_DATA_SUFFIX)
    sources = set()
    with data_path.open("wb") as out:
        for tensor in external:
            info = {entry.key: entry.value for entry in tensor.external_data}
            source = onnx_path.parent / info["location"]
            out.write(b"\0" * (-out.tell() % _ALIGN))
            start = out.tell()
            with source.open("rb") as handle:
                handle.seek(int(info.get("offset", 0)))
                length = int(info["length"]) if "length" in info else None
                _copy(handle, out, length)
            del tensor.external_data[:]
            for key, value in (("location", data_path.name), ("offset", start), ("length", out.tell() - start)):
                tensor.external_data.add(key=key, value=str(value))
            if source != data_path:
                sources.add(source)
    onnx.save(model, str(onnx_path))
    for source in sources:
        source.unlink()
    logger.info("  weights gathered into %s (%d tensors)", data_path.name, len(external))


def _copy(source, target, length: int | None, chunk: int = 64 << 20) -> None:
    if length is None:
        shutil.copyfileobj(source, target, chunk)
        return
    while length > 0:
        block = source.read(min(chunk, length))
        if not block:
            raise OSError("external data file is shorter than its tensor")
        target.write(block)
        length -= len(block)


def reference_outputs(module: torch.nn.Module, feeds: dict[str, torch.Tensor]) -> list[np.ndarray]:
    """PyTorch's outputs for ``feeds``, as numpy arrays."""
    with torch.no_grad():
        outputs = module.eval()(*feeds.values())
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return [o.float().numpy() for o in outputs]


def parity_feeds(
    spec: ModelSpec, family: Family, seed: int, module: torch.nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """Fresh random inputs for the parity check (batch 3, a size unlike the export's)."""
    generator = torch.Generator().manual_seed(seed)
    return sample_inputs(spec, batch=3, size=_check_side(family), generator=generator, module=module)


def serving_feeds(
    spec: ModelSpec, family: Family, seed: int, module: torch.nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """One row at the model's native size: what ``--runtime auto`` times the candidate runtimes on."""
    generator = torch.Generator().manual_seed(seed)
    side = family.dims.sample_size - family.dims.sample_size % family.latent_multiple
    return sample_inputs(spec, batch=1, size=side, generator=generator, module=module)


def check_parity(
    spec: ModelSpec, onnx_path: Path, feeds: dict[str, torch.Tensor], expected: list[np.ndarray]
) -> ParityReport:
    """Compare ONNX Runtime's outputs for ``feeds`` with PyTorch's ``expected``, output by output."""
    session = make_session(onnx_path)
    taken = {i.name for i in session.get_inputs()}  # unused layers' bank inputs are dropped by the exporter
    actual = session.run(None, {k: v.numpy() for k, v in feeds.items() if k in taken})
    max_abs = relative = 0.0
    for got, want in zip(actual, expected, strict=True):
        error = float(np.max(np.abs(got - want)))
        max_abs = max(max_abs, error)
        relative = max(relative, error / max(1.0, float(np.max(np.abs(want)))))
    report = ParityReport(spec.name, max_abs, relative)
    logger.info(
        "  parity %-14s max |onnx - torch| = %.2e (relative %.2e, bound %.0e)",
        spec.name,
        max_abs,
        relative,
        PARITY_TOLERANCE,
    )
    if not relative <= PARITY_TOLERANCE:
        raise ParityError(f"{spec.name}: ONNX differs from PyTorch by {relative:.2e} > {PARITY_TOLERANCE:.0e}")
    return report


def _check_graph(spec: ModelSpec, onnx_path: Path) -> ParityReport:
    """For engines ONNX Runtime's CPU provider cannot run (fp16): the graph is valid and has the spec's I/O."""
    onnx.checker.check_model(str(onnx_path))
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    if [i.name for i in graph.input][: len(spec.graph_inputs)] != [t.name for t in spec.graph_inputs]:
        raise ParityError(f"{spec.name}: inputs {[i.name for i in graph.input]} differ from the spec")
    note = "fp16: graph checked; parity needs a GPU execution provider"
    logger.info("  %s: %s", spec.name, note)
    return ParityReport(spec.name, None, None, note)


def export_all(
    family: Family,
    model_dir: Path,
    engine_dir: Path,
    precision: str = "fp32",
    seed: int = 1,
    adapters: AdapterBuild | None = None,
    runtime: str = Runtime.ONNXRUNTIME.value,
    vae_decoder: Path | None = None,
    only: set[str] | None = None,
) -> list[EngineReport]:
    """Export every engine of ``model_dir`` into ``engine_dir/<name>/model.onnx``, check each one, give it its runtime.

    ``adapters``: what the family's adapter-ready engines are built with (its IP-Adapter's folder); the family's
    ControlNets (ready ones) are exported too, and the UNet takes their residuals. ``runtime``: one of
    :data:`serve.triton.runtimes.RUNTIME_CHOICES` (:func:`build_engines.openvino.choose_runtime`); ``vae_decoder``: a
    diffusers ``AutoencoderTiny`` folder (TAESD's layout) exported as the ``vae_decoder`` engine instead of the model's;
    ``only``: these engines (default: all).
    """
    dtype = PRECISIONS[precision]
    modules = adapter_modules(
        family.export_modules(model_dir),
        adapters or AdapterBuild(),
        family.adapters,
        family.lora_ready_engines,
        between=lambda ready: controlnet_modules(ready, family, family.controlnets),
    )
    if vae_decoder is not None:
        modules[VAE_DECODER] = tiny_vae_decoder(vae_decoder)
    modules = {name: module for name, module in modules.items() if only is None or name in only}
    total = len(modules)
    return [
        _export_one(family, engine_dir, name, source, (step, total), dtype, precision, seed, runtime)
        for step, (name, source) in enumerate(modules.items(), start=1)
    ]


def _export_one(
    family: Family,
    engine_dir: Path,
    name: str,
    source: ExportModule,
    position: tuple[int, int],
    dtype: torch.dtype,
    precision: str,
    seed: int,
    runtime: str,
) -> EngineReport:
    """Export one engine (``position``: its step and the count, for the log), check it, give it its runtime."""
    step, total = position
    spec = family.specs[name]
    engine_dtype = torch.float32 if source.keep_fp32 else dtype
    engine_precision = "fp32" if precision == "fp16" and engine_dtype == torch.float32 else precision
    files = EngineFiles(engine_dir / name)
    started = time.perf_counter()
    logger.info("[%d/%d] %s: loading weights (%s)", step, total, name, engine_dtype)
    module = source.load(engine_dtype).to(engine_dtype)
    if engine_dtype != torch.float32:
        module = CastIO(module, engine_dtype)
    onnx_path = files.onnx
    logger.info("[%d/%d] %s: tracing and writing ONNX (peak RSS %.1f GB)", step, total, name, peak_rss_gb())
    export_engine(module, spec, family, onnx_path)
    if engine_dtype == torch.float32:
        logger.info("[%d/%d] %s: PyTorch reference outputs", step, total, name)
        feeds = parity_feeds(spec, family, seed, module)
        serving = {k: v.numpy() for k, v in serving_feeds(spec, family, seed, module).items()}
        expected = reference_outputs(module, feeds)
        del module
        gc.collect()
        logger.info("[%d/%d] %s: ONNX Runtime parity check", step, total, name)
        parity = check_parity(spec, onnx_path, feeds, expected)
        numpy_feeds = {k: v.numpy() for k, v in feeds.items()}
        choice = choose_runtime(
            files, runtime, engine_precision, numpy_feeds, expected, PARITY_TOLERANCE, parity.relative_error, serving
        )
    else:
        del module
        gc.collect()
        parity = _check_graph(spec, onnx_path)
        choice = choose_runtime(files, Runtime.ONNXRUNTIME.value, engine_precision, {}, [], PARITY_TOLERANCE)
    size = sum(p.stat().st_size for p in onnx_path.parent.iterdir())
    elapsed, rss = round(time.perf_counter() - started, 1), round(peak_rss_gb(), 2)
    report = EngineReport(name, engine_precision, elapsed, rss, size, parity, dataclasses.asdict(choice))
    logger.info(
        "[%d/%d] %s done in %.1f s, %.2f GB on disk, peak RSS %.1f GB",
        step,
        total,
        name,
        report.export_s,
        size / 1e9,
        report.peak_rss_gb,
    )
    return report


LINKED = ("model.onnx", "model.onnx" + EXTERNAL_DATA_SUFFIX)


def reuse_graphs(exported, engine_dir: Path, runtime: str, precision: str, seed: int = 1) -> list[EngineReport]:
    """Give the ONNX graphs of ``exported`` (a built :class:`EngineFolder` of another runtime) ``runtime``.

    The graphs (and side files) are hard-linked into ``engine_dir``, not exported again; the fp32 reference is ONNX
    Runtime's output of the same graph (within the parity bound of PyTorch's, the parity report kept from the export).
    """
    manifest = json.loads((exported.path / "manifest.json").read_text())
    kept = {report["engine"]: report for report in manifest["engines"]}
    reports = []
    for name, spec in exported.specs.items():
        started = time.perf_counter()
        source, files = exported.engine(name), EngineFiles(engine_dir / name)
        files.folder.mkdir(parents=True)
        for path in source.folder.iterdir():
            if path.name in (*LINKED, LORA_SLOTS, MODULE_CONFIG):
                os.link(path, files.folder / path.name)
        feeds = {k: v.numpy() for k, v in parity_feeds(spec, exported.family, seed).items()}
        expected = ShardedSession(files.onnx).run(feeds)
        parity = ParityReport(**kept[name]["parity"])
        serving = {k: v.numpy() for k, v in serving_feeds(spec, exported.family, seed).items()}
        error = parity.relative_error
        choice = choose_runtime(files, runtime, precision, feeds, expected, PARITY_TOLERANCE, error, serving)
        size = sum(p.stat().st_size for p in files.folder.iterdir())
        elapsed = round(time.perf_counter() - started, 1)
        runtime_report = dataclasses.asdict(choice)
        reports.append(EngineReport(name, precision, elapsed, round(peak_rss_gb(), 2), size, parity, runtime_report))
    return reports
