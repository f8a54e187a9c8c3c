"""The denoising loop on PyTorch instead of Triton: to measure it on a GPU (``easel bench generate --device``).

The engines are the diffusers modules they are exported from (the family's export modules), fp16 on a CUDA GPU,
behind the same :class:`~serve.triton.spec.EngineRunner` interface, so the same loop, schedulers and step merging
(wrap it in a ``CoalescingRunner``) run without Triton.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from serve.text_to_image.engine_folder import EngineFolder
from serve.triton.spec import ModelSpec
from serve.triton.torch_runtime import CastIO


class TorchRunner:
    """In-process engines on PyTorch: the diffusers modules the engines are exported from, fp16 on a CUDA GPU.

    The same loop, schedulers and step merging (wrap it in a ``CoalescingRunner``) as the served stack, without
    Triton: for measuring on a GPU. On CPU it runs fp32 (the unit tests' parity check against ONNX Runtime).
    Calls run one at a time, in a thread, in the order they come.
    """

    def __init__(
        self, model_dir: Path, folder: EngineFolder, device: str = "cuda", dtype: torch.dtype = torch.float16
    ) -> None:
        self.device = torch.device(device)
        dtype = dtype if self.device.type == "cuda" else torch.float32
        self.modules: dict[str, torch.nn.Module] = {}
        for name, source in folder.family.export_modules(model_dir).items():
            engine_dtype = torch.float32 if source.keep_fp32 else dtype
            module = source.load(engine_dtype).to(device=self.device, dtype=engine_dtype).eval()
            self.modules[name] = CastIO(module, engine_dtype) if engine_dtype != torch.float32 else module
        self._lock = asyncio.Lock()

    async def infer(
        self, spec: ModelSpec, inputs: Mapping[str, np.ndarray], priority: int = 0
    ) -> dict[str, np.ndarray]:
        """Run ``spec``'s module on the inputs (float32 numpy in and out)."""
        module = self.modules[spec.name]

        def run() -> dict[str, np.ndarray]:
            feeds = [torch.from_numpy(np.asarray(inputs[t.name], t.numpy_dtype)).to(self.device) for t in spec.inputs]
            with torch.inference_mode():
                outputs = module(*feeds)
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            return {t.name: o.float().cpu().numpy() for t, o in zip(spec.outputs, outputs, strict=True)}

        async with self._lock:
            return await asyncio.to_thread(run)
