"""``easel build``: diffusers model -> parity-checked ONNX engines (cached by content hash) -> Triton repository."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import onnx
import torch

from build_engines.memory import measure as measure_memory
from build_engines.repository import engine_files, install_model
from build_engines.text_to_image.default_model import TRAINED, create_default_model
from build_engines.text_to_image.export import EXPORTER_VERSION, OPSET, export_all
from serve.paths import MODEL_REPOSITORY, easel_home
from serve.text_to_image.spec import PipelineDims, engine_specs
from serve.triton.memory import MEMORY_FILE
from serve.triton.spec import Backend

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PIPELINE_FILES = ("tokenizer", "scheduler", "model_index.json")


def content_hash(model_dir: Path) -> str:
    """SHA-256 over every file's relative path and bytes under ``model_dir``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(model_dir).as_posix().encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def default_model_dir(variant: str = "tiny") -> Path:
    """The embedded model ``variant``: a trained one's committed folder, else created under ``$EASEL_HOME/models``."""
    if variant in TRAINED:
        return TRAINED[variant]
    model_dir = easel_home() / "models" / variant
    if not (model_dir / "model_index.json").exists():
        shutil.rmtree(model_dir, ignore_errors=True)
        create_default_model(model_dir, variant)
    return model_dir


def engine_dir_for(model_dir: Path) -> Path:
    """Cache folder named by model hash, precision, exporter and backend versions."""
    versions = f"opset{OPSET}-export{EXPORTER_VERSION}-torch{torch.__version__.split('+')[0]}-onnx{onnx.__version__}"
    key = f"{content_hash(model_dir)[:16]}-fp32-{versions}"
    return easel_home() / "engines" / key


def build(
    model_dir: Path | None = None,
    repository: Path = MODEL_REPOSITORY,
    force: bool = False,
    backend: Backend = Backend.PYTHON_ONNX,
) -> Path:
    """Build (or reuse) the engines of ``model_dir`` (default: the embedded model) and install them in ``repository``.

    Returns the engine folder, which also holds the tokenizer, scheduler config and ``pipeline.json``.
    """
    model_dir = default_model_dir() if model_dir is None else model_dir
    if not (model_dir / "model_index.json").exists():
        raise FileNotFoundError(f"{model_dir} is not a diffusers model directory (no model_index.json)")
    engine_dir = engine_dir_for(model_dir)
    if (engine_dir / MANIFEST).exists() and not force:
        logger.info("engines up to date in %s (use --force to rebuild)", engine_dir)
    else:
        shutil.rmtree(engine_dir, ignore_errors=True)
        reports = export_all(model_dir, engine_dir)
        for name in PIPELINE_FILES:
            source = model_dir / name
            copy = shutil.copytree if source.is_dir() else shutil.copy2
            copy(source, engine_dir / name)
        PipelineDims.from_diffusers(model_dir).save(engine_dir / "pipeline.json")
        manifest = {"model_dir": str(model_dir.resolve()), "parity": [asdict(r) for r in reports]}
        (engine_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    dims = PipelineDims.load(engine_dir / "pipeline.json")
    for name, spec in engine_specs(dims).items():
        if not (engine_dir / name / MEMORY_FILE).exists():  # measured once per engine, in a fresh process
            measure_memory(engine_dir / name, spec)
        install_model(spec, repository, engine_files(engine_dir / name), backend)
    return engine_dir
