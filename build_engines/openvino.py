"""An exported ONNX engine given its runtime: converted to OpenVINO IR where asked, measured, ``runtime.json`` written.

``ov.convert_model`` reads the ONNX graph (weights included) and ``ov.save_model`` writes ``model.xml`` + ``model.bin``
beside it; ``int8`` compresses the IR's weights with NNCF (``compress_weights``, data-free, INT8_ASYM). Each candidate
runtime runs the parity check's inputs: its error against the fp32 reference (PyTorch's outputs) is logged and saved,
and with ``--runtime auto`` the fastest candidate within the bound is kept.
"""

from __future__ import annotations

import gc
import logging
import time

import numpy as np

from serve.adapters.lora import bank_names, load_slots
from serve.triton.engine_files import EngineFiles
from serve.triton.onnx_backend import open_engine
from serve.triton.runtimes import Runtime, RuntimeChoice, candidates

logger = logging.getLogger(__name__)

AUTO_FLOOR_S = 0.05
"""``auto``: an engine whose ONNX Runtime call at the check's size takes less than this stays there, not converted.

OpenVINO's calls cost more than ONNX Runtime's on small graphs (the embedded model's engines, docs/PERFORMANCE.md).
"""
TIMED_RUNS = 2
"""Calls timed per candidate when ``auto`` compares them (after a first call); the fastest counts."""


def convert(files: EngineFiles, precision: str) -> None:
    """Write the OpenVINO IR of ``files.onnx`` (int8: its weights compressed) beside it."""
    import openvino as ov

    model = ov.convert_model(str(files.onnx))
    if precision == "int8":
        import nncf

        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    ov.save_model(model, str(files.openvino), compress_to_fp16=False)
    del model
    gc.collect()


def error_against(actual: list[np.ndarray], expected: list[np.ndarray]) -> float:
    """Max |actual - expected| / max(1, max |expected|) over the outputs (the parity check's measure)."""
    worst = 0.0
    for got, want in zip(actual, expected, strict=True):
        worst = max(worst, float(np.max(np.abs(got - want))) / max(1.0, float(np.max(np.abs(want)))))
    return worst


def _split_banks(files: EngineFiles, feeds: dict) -> tuple[dict, dict]:
    """(the per-row inputs, the LoRA banks every row shares) of an engine's feeds, as the python backend gives them.

    A batch split across cores (:class:`serve.triton.onnx_backend.ShardedSession`) slices the first, not the banks.
    """
    if not files.lora_ready:
        return feeds, {}
    banks = {name for index in range(len(load_slots(files.lora_slots))) for name in bank_names(index)}
    return {k: v for k, v in feeds.items() if k not in banks}, {k: v for k, v in feeds.items() if k in banks}


def _measure(
    files: EngineFiles, choice: RuntimeChoice, feeds: dict, expected: list[np.ndarray], runs: int, check: bool = True
):
    """(error against ``expected``, fastest of ``runs`` timed calls) of the engine run as ``choice`` says.

    ``runs`` 0: the first call's time (nothing to compare it with); ``check`` False: no error (0.0).
    """
    choice.save(files)
    session = open_engine(files)
    rows, shared = _split_banks(files, feeds)
    seconds = []
    for _ in range(1 + runs):
        started = time.perf_counter()
        outputs = session.run(rows, shared)
        seconds.append(time.perf_counter() - started)
    del session
    gc.collect()
    return error_against(outputs, expected) if check else 0.0, min(seconds[1:] or seconds)


def _timed(files: EngineFiles, choice: RuntimeChoice, feeds: dict, runs: int) -> float:
    """The fastest of ``runs`` calls (after a first one) of the engine run as ``choice`` says, on ``feeds``."""
    return _measure(files, choice, feeds, [], runs, check=False)[1]


def _timed_at_serving_size(files: EngineFiles, precision: str, measured: dict, feeds: dict) -> dict:
    """``measured`` (runtime -> (error, seconds)) with each candidate's seconds taken on ``feeds`` instead."""
    timed = {}
    for option, (error, _) in measured.items():
        timed[option] = (error, _timed(files, RuntimeChoice(option, precision), feeds, TIMED_RUNS))
        logger.info(
            "  %-14s %-11s at the serving size: %.3f s per call", files.folder.name, option.value, timed[option][1]
        )
    return timed


def choose_runtime(
    files: EngineFiles,
    runtime: str,
    precision: str,
    feeds: dict[str, np.ndarray],
    expected: list[np.ndarray],
    bound: float,
    onnx_error: float | None = None,
    serving_feeds: dict[str, np.ndarray] | None = None,
) -> RuntimeChoice:
    """Give the engine in ``files`` its runtime (``auto``: the fastest candidate whose fp32 error is within ``bound``).

    ``auto`` measures ONNX Runtime first and keeps it without trying OpenVINO when its call takes less than
    :data:`AUTO_FLOOR_S`. ``expected``: the fp32 reference for ``feeds`` (PyTorch's outputs; for graphs reused from
    another build, ONNX Runtime's of the same graph); ``onnx_error``: ONNX Runtime's error against PyTorch, from the
    parity check (it is ONNX Runtime's recorded error). Candidates not kept leave no files behind; under ``auto``, one
    that fails to convert or run (OpenVINO on a graph it cannot compile) is logged and not kept. ``serving_feeds``: one
    row at the size the engine serves; where given, ``auto`` times the candidates on it, not on the check's small
    inputs (a full-size SDXL UNet is faster on ONNX Runtime at a 32 x 32 latent and on OpenVINO at its 128 x 128).
    """
    options = candidates(runtime, precision)
    if options == (Runtime.ONNXRUNTIME,):  # fp16 GPU engines cannot run on the CPU provider: nothing to measure
        choice = RuntimeChoice(Runtime.ONNXRUNTIME, precision, onnx_error)
        choice.save(files)
        return choice
    measured = {}
    for option in options:
        runs = TIMED_RUNS if len(options) > 1 else 0  # one candidate: its error, and its first call's time
        try:
            if option is Runtime.OPENVINO:
                convert(files, precision)
            measured[option] = _measure(files, RuntimeChoice(option, precision), feeds, expected, runs)
        except RuntimeError as error:  # auto: a graph OpenVINO cannot run is not a candidate; asked for, it fails
            if len(options) == 1 or option is not Runtime.OPENVINO or not measured:
                raise
            logger.warning("  %-14s openvino cannot run it, not kept: %s", files.folder.name, str(error)[:300])
            continue
        if option is Runtime.ONNXRUNTIME and onnx_error is not None:  # the parity check's, against PyTorch itself
            measured[option] = (onnx_error, measured[option][1])
        logger.info(
            "  %-14s %-11s %-4s error against fp32 %.2e, %.3f s per call",
            files.folder.name,
            option.value,
            precision,
            *measured[option],
        )
        if option is Runtime.ONNXRUNTIME and measured[option][1] < AUTO_FLOOR_S:
            break  # too small a call for OpenVINO to pay: not converted
    if serving_feeds is not None and len(measured) > 1:
        measured = _timed_at_serving_size(files, precision, measured, serving_feeds)
    within = {option: m for option, m in measured.items() if precision != "fp32" or m[0] <= bound} or measured
    best = min(within, key=lambda option: within[option][1])
    seconds = {option.value: round(m[1], 4) for option, m in measured.items()}
    choice = RuntimeChoice(best, precision, measured[best][0], seconds)
    choice.save(files)
    if best is not Runtime.OPENVINO:
        for path in (files.openvino, files.openvino.with_suffix(".bin")):
            path.unlink(missing_ok=True)
    return choice
