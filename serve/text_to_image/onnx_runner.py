"""Engines run in-process, no Triton: the loop's engine runner for benchmarks, evaluation and tests.

Each engine runs on the runtime its folder names (ONNX Runtime, OpenVINO or torch, through ``open_engine``).

The served stack's runners are Triton's (:mod:`serve.triton.runners`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from serve.adapters.lora import ADAPTERS_INPUT, SCALE_INPUT, parse_row
from serve.adapters.registry import engine_banks
from serve.text_to_image.engine_folder import EngineFolder
from serve.triton.engine_files import LORAS_LINK
from serve.triton.onnx_backend import open_engine
from serve.triton.spec import ModelSpec, on_gpu


class OnnxRuntimeRunner:
    """In-process engines (no Triton), each with the runtime its folder names: the benchmark's baseline, unit tests.

    LoRA-ready engines take their adapters from ``loras_dir`` (a registry folder), as the served ones do; ``device``:
    where the torch runtime's engines run (default: the GPU where there is one).
    """

    def __init__(
        self, folder: EngineFolder, shards: int = 0, loras_dir: Path | None = None, device: str | None = None
    ) -> None:
        engines = {name: folder.engine(name) for name in folder.specs}
        self.sessions = {name: open_engine(files, shards, device=device) for name, files in engines.items()}
        registry = loras_dir or folder.path / LORAS_LINK
        self.banks = {
            name: engine_banks(files.lora_slots, name, registry) for name, files in engines.items() if files.lora_ready
        }

    async def infer(
        self, spec: ModelSpec, inputs: Mapping[str, np.ndarray], priority: int = 0
    ) -> dict[str, np.ndarray]:
        """Run the session for ``spec`` (as Triton's python backend does, batch split across cores) in a thread.

        Inputs that are all tensors on a session's GPU run there as they are, queued on it without a thread: the
        outputs are tensors there too (:meth:`TorchSession.run_tensors`; a LoRA-ready engine's rows read here, their
        banks copied to the GPU once per set of adapters).
        """
        session = self.sessions[spec.name]
        if on_gpu(inputs) and hasattr(session, "run_tensors"):
            feeds = {t.name: inputs[t.name] for t in spec.inputs}
            shared = self._banks(spec.name, feeds)
            if SCALE_INPUT in feeds:  # the rows' weights beside their tensors; the banks copied by the session
                import torch

                feeds[SCALE_INPUT] = torch.from_numpy(feeds[SCALE_INPUT]).to(session.device)
            outputs = session.run_tensors(feeds, shared)
            return dict(zip(session.output_names, outputs, strict=True))
        feeds = {t.name: np.asarray(inputs[t.name], dtype=t.numpy_dtype) for t in spec.inputs}
        shared = self._banks(spec.name, feeds)
        outputs = await asyncio.to_thread(session.run, feeds, shared)
        return dict(zip(session.output_names, outputs, strict=True))

    def _banks(self, engine: str, feeds: dict) -> dict[str, np.ndarray]:
        """A LoRA-ready engine's banks for ``feeds``' ``adapters`` rows (which become ``lora_scale``); else none."""
        if engine not in self.banks:
            return {}
        rows = [parse_row(text) for text in np.asarray(feeds.pop(ADAPTERS_INPUT), dtype=object)]
        feeds[SCALE_INPUT], shared, refused = self.banks[engine].feeds(rows)
        if refused:  # one caller's rows here: its call fails as a Triton request would
            raise next(iter(refused.values()))
        return shared
