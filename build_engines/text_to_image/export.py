"""Export a diffusers model's text encoder, UNet and VAE decoder to ONNX, each checked against PyTorch."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from serve.text_to_image.spec import TEXT_ENCODER, UNET, VAE_DECODER, PipelineDims, engine_specs
from serve.triton.onnx_backend import make_session
from serve.triton.spec import ModelSpec

logger = logging.getLogger(__name__)

OPSET = 17
# Bump when the exported graphs change, so cached engines are rebuilt.
EXPORTER_VERSION = 2
# Max |onnx - torch| / max(1, max |torch|) allowed on fresh random inputs.
PARITY_TOLERANCE = 1e-3


class ParityError(RuntimeError):
    """An exported engine disagrees with PyTorch beyond the tolerance."""


class _TextEncoder(torch.nn.Module):
    def __init__(self, text_encoder: torch.nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, return_dict=False)[0]


class _Unet(torch.nn.Module):
    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


class _VaeDecoder(torch.nn.Module):
    """Latents in, image in [0, 1] out: the scaling and denormalisation of diffusers' pipeline are folded in."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        image = self.vae.decode(latent / self.scaling_factor, return_dict=False)[0]
        return (image / 2 + 0.5).clamp(0, 1)


@dataclass(frozen=True)
class ParityReport:
    """Largest error of one engine against PyTorch on fresh random inputs."""

    engine: str
    max_abs_error: float
    relative_error: float


def _sample_inputs(spec: ModelSpec, dims: PipelineDims, batch: int, size: int, generator: torch.Generator) -> dict:
    """Random inputs of the right dtypes, with ``size`` for every dynamic axis."""
    feeds = {}
    for tensor in spec.inputs:
        shape = (batch, *(size if d == -1 else d for d in tensor.dims))
        if tensor.dtype == "int64":
            feeds[tensor.name] = torch.randint(0, 400, shape, generator=generator)
        elif tensor.name == "timestep":
            feeds[tensor.name] = torch.rand(shape, generator=generator) * 999
        else:
            feeds[tensor.name] = torch.randn(shape, generator=generator)
    return feeds


def _modules(model_dir: Path) -> dict[str, torch.nn.Module]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    return {
        TEXT_ENCODER: _TextEncoder(CLIPTextModel.from_pretrained(model_dir / "text_encoder")),
        UNET: _Unet(UNet2DConditionModel.from_pretrained(model_dir / "unet")),
        VAE_DECODER: _VaeDecoder(AutoencoderKL.from_pretrained(model_dir / "vae")),
    }


def export_engine(module: torch.nn.Module, spec: ModelSpec, dims: PipelineDims, out_path: Path) -> None:
    """Export ``module`` to ONNX at ``out_path`` with the names and dynamic axes of ``spec``."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # An odd latent side makes diffusers' UNet trace its explicit-upsample-size path, right for every size.
    example = _sample_inputs(
        spec, dims, batch=2, size=dims.sample_size // 2 + 1, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        torch.onnx.export(
            module.eval(),
            tuple(example.values()),
            str(out_path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs],
            dynamic_axes=spec.onnx_dynamic_axes(),
        )


def check_parity(
    module: torch.nn.Module, spec: ModelSpec, dims: PipelineDims, onnx_path: Path, seed: int
) -> ParityReport:
    """Compare ONNX Runtime with PyTorch on fresh random inputs (batch 3, an even size unlike the export's)."""
    feeds = _sample_inputs(
        spec, dims, batch=3, size=dims.sample_size // 2, generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        expected = module.eval()(*feeds.values()).numpy()
    actual = make_session(onnx_path).run(None, {k: v.numpy() for k, v in feeds.items()})[0]
    max_abs = float(np.max(np.abs(actual - expected)))
    relative = max_abs / max(1.0, float(np.max(np.abs(expected))))
    report = ParityReport(spec.name, max_abs, relative)
    logger.info(
        "parity %-12s max |onnx - torch| = %.2e (relative %.2e, bound %.0e)",
        spec.name,
        max_abs,
        relative,
        PARITY_TOLERANCE,
    )
    if not relative <= PARITY_TOLERANCE:
        raise ParityError(f"{spec.name}: ONNX differs from PyTorch by {relative:.2e} > {PARITY_TOLERANCE:.0e}")
    return report


def export_all(model_dir: Path, engine_dir: Path, seed: int = 1) -> list[ParityReport]:
    """Export every engine of ``model_dir`` into ``engine_dir/<name>/model.onnx`` and check each one."""
    dims = PipelineDims.from_diffusers(model_dir)
    specs = engine_specs(dims)
    modules = _modules(model_dir)
    reports = []
    for step, (name, module) in enumerate(modules.items(), start=1):
        started = time.perf_counter()
        logger.info("[%d/%d] exporting %s", step, len(modules), name)
        onnx_path = engine_dir / name / "model.onnx"
        export_engine(module, specs[name], dims, onnx_path)
        reports.append(check_parity(module, specs[name], dims, onnx_path, seed))
        logger.info("[%d/%d] %s done in %.1f s", step, len(modules), name, time.perf_counter() - started)
    return reports
