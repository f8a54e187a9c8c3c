"""``easel up --upscaler NAME=FILE`` (``--face-restorer``, ``--interpolator``, ``--faces``): each read, installed.

A ``.pth``/``.safetensors`` file is read into the project's own module (:mod:`serve.finishing.recognise`), exported
at the engine's tile size with a dynamic batch axis, and checked against PyTorch on fresh random tiles. An ``.onnx``
file is taken as it is: its input and output are renamed to the engine's, and its scale is read from one run.
A file that cannot be served is listed with why (``GET /v1/upscalers``), not built; the others are served.
Engines are cached under ``$EASEL_HOME/engines/upscalers-<content hash>``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
import onnx
import torch

from build_engines.faces.build import EXPORT_VERSION as FACES_EXPORT_VERSION
from build_engines.faces.build import build_faces
from build_engines.finishing.checked_export import export_checked
from build_engines.finishing.interpolators import EXPORT_VERSION as INTERPOLATOR_EXPORT_VERSION
from build_engines.finishing.interpolators import build_interpolator
from build_engines.finishing.restorers import EXPORT_VERSION as RESTORER_EXPORT_VERSION
from build_engines.finishing.restorers import build_restorer
from build_engines.onnx_export import OPSET, rename_io
from build_engines.text_to_image.export import ParityError
from serve.faces.pack import DETECTOR, RECOGNIZER, Faces
from serve.files import files_hash
from serve.finishing.interpolators import INTERPOLATOR_PREFIX, Interpolators
from serve.finishing.recognise import UnrecognisedUpscaler, read_state, recognise
from serve.finishing.restorers import RESTORER_PREFIX, Restorers
from serve.finishing.upscalers import TILE, UPSCALER_PREFIX, UpscalerEntry, Upscalers, upscaler_spec
from serve.listing import ERROR
from serve.paths import easel_home
from serve.triton.engine_files import ONNX, EngineFiles
from serve.triton.onnx_backend import make_session
from serve.triton.repository import install_model, uninstall_model

logger = logging.getLogger(__name__)

EXPORT_VERSION = 1
FINISHING_PREFIXES = (UPSCALER_PREFIX, RESTORER_PREFIX, INTERPOLATOR_PREFIX, DETECTOR, RECOGNIZER)
"""The Triton names of the finishing engines (and face models) a start installs: an earlier start's are removed."""


def upscalers_dir(
    upscalers: Mapping[str, Path],
    tile: int = TILE,
    restorers: Mapping[str, Path] = MappingProxyType({}),
    interpolators: Mapping[str, Path] = MappingProxyType({}),
    face_models: Path | None = None,
) -> Path:
    """The cache folder of these finishing engines: named by their names, files' content, tile and versions."""
    listed, faces, frames = (
        {name: files_hash([Path(path)], Path(path).parent) for name, path in sorted(files.items())}
        for files in (upscalers, restorers, interpolators)
    )
    versions = [tile, EXPORT_VERSION, OPSET, torch.__version__.split("+")[0], onnx.__version__]
    more = [*([faces, RESTORER_EXPORT_VERSION] if faces else [])]
    more += [frames, INTERPOLATOR_EXPORT_VERSION] if frames else []
    if face_models is not None:
        onnx_files = sorted(Path(face_models).glob("*.onnx"))
        more += [Path(face_models).name, files_hash(onnx_files, Path(face_models)), FACES_EXPORT_VERSION]
    key = json.dumps([listed, *versions, *more])
    return easel_home() / "engines" / f"upscalers-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def build_upscalers(
    upscalers: Mapping[str, Path],
    repository: Path | None,
    tile: int = TILE,
    force: bool = False,
    restorers: Mapping[str, Path] = MappingProxyType({}),
    interpolators: Mapping[str, Path] = MappingProxyType({}),
    face_models: Path | None = None,
) -> Path | None:
    """Build (or reuse) the finishing engines (upscalers, face restorers, interpolators, face models), install them.

    Their folder; None when there are none. Finishing engines an earlier start installed, not this one, are removed.
    """
    if not upscalers and not restorers and not interpolators and face_models is None:
        _remove_stale(repository, set())
        return None
    folder = upscalers_dir(upscalers, tile, restorers, interpolators, face_models)
    if force or not (folder / "upscalers.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        entries = [_build_one(name, Path(path), folder, tile) for name, path in sorted(upscalers.items())]
        faces = [build_restorer(name, Path(path), folder) for name, path in sorted(restorers.items())]
        frames = [build_interpolator(name, Path(path), folder) for name, path in sorted(interpolators.items())]
        models = () if face_models is None else (build_faces(Path(face_models), folder),)
        finishing = Upscalers(tuple(entries), Restorers(tuple(faces)), Interpolators(tuple(frames)), Faces(models))
        finishing.write(folder)  # the upscalers' listing written last: a folder with it is complete
    built = Upscalers.read(folder)
    _remove_stale(repository, {spec.name for spec in built.specs})
    for spec in built.specs if repository is not None else ():
        install_model(spec, repository, EngineFiles(folder / spec.name).files())
    return folder


def _remove_stale(repository: Path | None, wanted: set[str]) -> None:
    """Remove from ``repository`` the finishing engines an earlier start installed that are not ``wanted`` now."""
    for prefix in FINISHING_PREFIXES if repository is not None else ():
        for stale in repository.glob(f"{prefix}*"):
            if stale.name not in wanted:
                uninstall_model(stale.name, repository)


def _build_one(name: str, path: Path, folder: Path, tile: int) -> UpscalerEntry:
    """Export one upscaler into ``folder``; an entry with its error when it cannot be served (logged)."""
    try:
        if path.suffix == ".onnx":
            architecture, scale = "onnx", _take_onnx(path, folder / f"upscaler_{name}", tile)
        else:
            state = read_state(path)
            recognised = recognise(state)
            if recognised.restores_faces:
                raise UnrecognisedUpscaler(
                    f"{path}: a {recognised.kind} face restorer (--face-restorer), not an upscaler"
                )
            module = recognised.module(state)
            architecture, scale = recognised.kind, recognised.scale
            export_upscaler(module, scale, folder / f"upscaler_{name}" / ONNX, tile)
    except (UnrecognisedUpscaler, OSError, onnx.checker.ValidationError, ParityError) as error:
        logger.warning("upscaler %s (%s) is not served: %s", name, path, error)
        return UpscalerEntry(name, str(path), ERROR, error=str(error))
    logger.info("upscaler %s: %s x%d from %s", name, architecture, scale, path)
    return UpscalerEntry(name, str(path), architecture=architecture, scale=scale, tile=tile)


def export_upscaler(module: torch.nn.Module, scale: int, out_path: Path, tile: int = TILE) -> float:
    """Export ``module`` at ``tile`` with a dynamic batch; its relative error against PyTorch on 2 random tiles."""
    spec = upscaler_spec("check", scale, tile)
    return export_checked(module, out_path, spec, tile, "upscaled", "upscaler")


def _take_onnx(path: Path, engine_dir: Path, tile: int) -> int:
    """Copy an ONNX upscaler with its I/O renamed to the engine's; its scale, from one run at ``tile``."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    if len(model.graph.input) != 1 or len(model.graph.output) != 1:
        raise UnrecognisedUpscaler(f"{path}: an ONNX upscaler takes one image and gives one (this one has more)")
    rename_io(model, {model.graph.input[0].name: "image", model.graph.output[0].name: "upscaled"})
    engine_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(engine_dir / ONNX))
    try:
        side = make_session(engine_dir / ONNX).run(None, {"image": np.zeros((1, 3, tile, tile), np.float32)})[0]
    except Exception as error:  # ONNX Runtime raises its own kinds for graphs it cannot run
        raise UnrecognisedUpscaler(f"{path}: does not run on a 1x3x{tile}x{tile} tile ({error})") from error
    scale = side.shape[-1] // tile
    if side.shape[1:] != (3, tile * scale, tile * scale) or scale < 1:
        raise UnrecognisedUpscaler(f"{path}: gives {side.shape[1:]} for a 3x{tile}x{tile} tile, not a scaled RGB tile")
    return scale
