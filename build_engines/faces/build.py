"""``easel up --faces DIR``: an InsightFace model-zoo folder's detector and recognizer, found and installed as engines.

Each ``.onnx`` file of the folder is routed as InsightFace's ``ModelRouter`` routes it (by its inputs and outputs,
the first of each task by name): 5 outputs or more, a detector; a square input of 112 pixels or more (a multiple of
16), a recognizer; 192 (landmarks), 96 (gender and age) and two inputs (a face swapper) are not served. The two
files are copied with their tensors renamed to the engines' (:mod:`serve.faces.pack`) and run once to check their
shapes. A folder that cannot be served is listed with why (``faces.json``), not built.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from build_engines.onnx_export import rename_io
from serve.faces.pack import DETECTOR, OUTPUT_KINDS, RECOGNIZER, STRIDES, FaceEntry, detector_spec
from serve.listing import ERROR
from serve.triton.engine_files import ONNX
from serve.triton.onnx_backend import make_session

logger = logging.getLogger(__name__)

EXPORT_VERSION = 1


class UnservedFaces(ValueError):
    """A face model folder Easel cannot serve; the message says why."""


def _input_shape(model: onnx.ModelProto) -> list[int | str]:
    """The first input's dims: sizes, or their names where dynamic."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [dim.dim_value if dim.HasField("dim_value") else dim.dim_param for dim in dims]


def task_of(model: onnx.ModelProto) -> str | None:
    """``detection``, ``recognition`` or None (a model InsightFace uses for something else), as its router says."""
    shape = _input_shape(model)
    if len(model.graph.output) >= 5:
        return "detection"
    if len(shape) != 4 or shape[2] in (192, 96) or (len(model.graph.input) == 2 and shape[2] == 128):
        return None
    side = shape[2]
    return "recognition" if isinstance(side, int) and side == shape[3] and side >= 112 and side % 16 == 0 else None


def normalisation(model: onnx.ModelProto) -> tuple[float, float]:
    """The recognizer's ``(mean, std)``: 0 and 1 when its graph subtracts and multiplies first (MXNet's), else 127.5."""
    names = [node.name for node in model.graph.node[:8]]
    subtracts = any(name.startswith(("Sub", "_minus")) for name in names)
    multiplies = any(name.startswith(("Mul", "_mul")) for name in names)
    return (0.0, 1.0) if subtracts and multiplies else (127.5, 127.5)


def build_faces(source: Path, folder: Path) -> FaceEntry:
    """Install ``source``'s detector and recognizer into ``folder``; an entry with its error when it cannot serve."""
    name = source.name
    try:
        found: dict[str, tuple[Path, onnx.ModelProto]] = {}
        for path in sorted(source.glob("*.onnx")):
            model = onnx.load(str(path))
            task = task_of(model)
            if task is not None and task not in found:
                found[task] = (path, model)
        missing = [task for task in ("detection", "recognition") if task not in found]
        if missing:
            raise UnservedFaces(f"{source}: no {' and no '.join(missing)} model (.onnx) found")
        detector_path, detector = found["detection"]
        recognizer_path, recognizer = found["recognition"]
        _install_detector(detector_path, detector, folder / DETECTOR / ONNX)
        side = _input_shape(recognizer)[2]
        size = _install_recognizer(recognizer_path, recognizer, folder / RECOGNIZER / ONNX, side)
        mean, std = normalisation(recognizer)
    except (UnservedFaces, OSError, DecodeError, onnx.checker.ValidationError) as error:
        logger.warning("face models %s are not served: %s", source, error)
        return FaceEntry(name, str(source), ERROR, error=str(error))
    logger.info("face models %s: %s and %s", source, detector_path.name, recognizer_path.name)
    return FaceEntry(
        name,
        str(source),
        architecture="scrfd+arcface",
        detector=detector_path.name,
        recognizer=recognizer_path.name,
        face_side=side,
        embedding_size=size,
        input_mean=mean,
        input_std=std,
    )


def _install_detector(path: Path, model: onnx.ModelProto, out_path: Path) -> None:
    """Copy an SCRFD detector with the engine's tensor names; checked to give every output at DETECTION_SIDE."""
    spec = detector_spec()
    if len(model.graph.output) != len(spec.outputs):
        raise UnservedFaces(
            f"{path}: {len(model.graph.output)} outputs; a detector with 5 landmarks at strides {STRIDES} (SCRFD's "
            f"{', '.join(kind for kind, _ in OUTPUT_KINDS)}) has {len(spec.outputs)}"
        )
    renames = {model.graph.input[0].name: "image"}
    renames |= {value.name: tensor.name for value, tensor in zip(model.graph.output, spec.outputs, strict=True)}
    outputs = _run(rename_io(model, renames), out_path, "image", spec.inputs[0].dims)
    for tensor in spec.outputs:
        if outputs[tensor.name].shape != tensor.dims:
            raise UnservedFaces(
                f"{path}: gives {tensor.name} {outputs[tensor.name].shape} for a {spec.inputs[0].dims} image, not "
                f"{tensor.dims} (2 anchors per position; batched outputs are not served)"
            )


def _install_recognizer(path: Path, model: onnx.ModelProto, out_path: Path, side: int) -> int:
    """Copy an ArcFace recognizer with the engine's tensor names; its embedding's size, from one run."""
    if len(model.graph.output) != 1:
        raise UnservedFaces(f"{path}: a recognizer gives one embedding; this one has {len(model.graph.output)} outputs")
    rename_io(model, {model.graph.input[0].name: "face", model.graph.output[0].name: "embedding"})
    embedding = _run(model, out_path, "face", (2, 3, side, side))["embedding"]
    if embedding.ndim != 2 or embedding.shape[0] != 2:
        raise UnservedFaces(f"{path}: gives {embedding.shape} for 2 faces, not one embedding per face")
    return int(embedding.shape[1])


def _run(model: onnx.ModelProto, out_path: Path, name: str, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Save ``model`` at ``out_path`` and run it once on zeros of ``shape``: its outputs by name."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    session = make_session(out_path)
    try:
        values = session.run(None, {name: np.zeros(shape, np.float32)})
    except Exception as error:  # ONNX Runtime raises its own kinds for graphs it cannot run
        raise UnservedFaces(f"{out_path.parent.name}: does not run on {shape} ({error})") from error
    return dict(zip([output.name for output in session.get_outputs()], values, strict=True))
