"""The files of one engine's folder: in the engine cache, and linked into its Triton model's version folder.

Every name an engine's folder may hold is declared here, once; :class:`EngineFiles` gives their paths for one folder.
``easel build`` (``build_engines/``) writes them; the python-backend models and the replicas only read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ONNX = "model.onnx"  # beside it, model.onnx.data: the weights of a graph over 2 GB
PLAN = "model.plan"  # a TensorRT plan (the GPU path)
OPENVINO_IR = "model.xml"  # the OpenVINO IR converted from model.onnx at build; beside it, model.bin: its weights
TORCH_MODULE = "torch.json"  # the torch runtime's engine: its module's loader, tensors and buckets (torch_runtime)
RUNTIME = "runtime.json"  # which runtime and precision serve the engine (serve.triton.runtimes)
MEMORY = "memory.json"  # bytes and seconds per row, measured at build (serve.triton.memory)
LORA_SLOTS = "lora_slots.json"  # a LoRA-ready engine's layers (serve.adapters.lora)
LORAS_LINK = "loras"  # a LoRA-ready model's link to the stack's adapter registry folder
MODULE_CONFIG = "module_config.json"  # a motion UNet's diffusers config: what LoRA files are read against


class _FolderFile:
    """One of the names above as an attribute of :class:`EngineFiles`: that file's path in the instance's folder."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, files: EngineFiles | None, owner: type | None = None):
        return self if files is None else files.folder / self.name


@dataclass(frozen=True)
class EngineFiles:
    """Where one engine's files are in ``folder`` (an engine's cache folder or its Triton version folder)."""

    folder: Path
    onnx = _FolderFile(ONNX)
    openvino = _FolderFile(OPENVINO_IR)
    runtime = _FolderFile(RUNTIME)
    torch_module = _FolderFile(TORCH_MODULE)
    memory = _FolderFile(MEMORY)
    lora_slots = _FolderFile(LORA_SLOTS)
    loras = _FolderFile(LORAS_LINK)
    module_config = _FolderFile(MODULE_CONFIG)

    @property
    def lora_ready(self) -> bool:
        """Whether the engine takes LoRA banks."""
        return self.lora_slots.exists()

    def files(self) -> dict[str, Path]:
        """Every file of the folder (the graph and its external data, side files), by name."""
        return {path.name: path for path in sorted(self.folder.iterdir()) if path.is_file()}
