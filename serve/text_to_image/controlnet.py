"""ControlNets: what a built folder has, a request's choices checked, and each step's residuals for the UNet.

``easel up --controlnet NAME=DIR`` builds, beside the model's engines, an engine ``controlnet_<NAME>`` per diffusers
``ControlNetModel`` folder that fits the model, and a UNet that takes the residuals as inputs (zeros for rows
without control), so requests with different ControlNets, scales or none still share UNet executions. A folder that
does not fit (made for another family, another UNet) is listed with why, and naming it is a 400. Several ControlNets
in one request add up their residuals, as diffusers' ``MultiControlNetModel`` does; ``start`` and ``end`` are its
``control_guidance_start`` / ``control_guidance_end``. An InstantID's IdentityNet (``--ip-adapter MODEL:NAME=DIR`` of
InstantX's layout) is a ControlNet ``NAME`` that reads the face's embedding where the others read the prompt; a
request reaches it through ``identity``, never by name.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from serve.errors import InvalidInput
from serve.text_to_image.generation import Control, Generation
from serve.text_to_image.spec import (
    CONTROLNET_PREFIX,
    FACE_EMBEDS,
    RESIDUAL_PREFIX,
    UNET,
    controlnet_spec,
    residual_inputs,
)
from serve.triton.spec import EngineRunner, ModelSpec

if TYPE_CHECKING:
    import torch

READY = "ready"
ERROR = "error"


class Residual(NamedTuple):
    """One residual a ControlNet adds to the UNet: its channels, and its side's divisor from the latent side."""

    channels: int
    downscale: int


def residual_layout(config: Mapping) -> tuple[Residual, ...]:
    """The residuals a UNet (or ControlNet) config's down blocks make, then its mid block's, as diffusers orders them.

    The input convolution's output, each down block's layers (and its downsampler's, all blocks but the last), then
    the mid block at the lowest resolution.
    """
    channels = list(config["block_out_channels"])
    layers = config.get("layers_per_block", 2)
    layers = list(layers) if isinstance(layers, list | tuple) else [layers] * len(channels)
    residuals = [Residual(channels[0], 1)]
    for index, width in enumerate(channels):
        residuals += [Residual(width, 2**index)] * layers[index]
        if index < len(channels) - 1:
            residuals.append(Residual(width, 2 ** (index + 1)))
    return (*residuals, Residual(channels[-1], 2 ** (len(channels) - 1)))


@dataclass(frozen=True)
class ControlNetEntry:
    """One ``--controlnet NAME=DIR``: ready (its engine was built), or the error that keeps it out."""

    name: str
    source: str
    status: str = READY
    family: str | None = None  # the model family it was made for, where known
    error: str | None = None
    face: int = 0  # an InstantID's IdentityNet: the face embedding's width it reads (0: it reads the prompt)

    def public(self) -> dict:
        """Its ``GET /v1/controlnets`` entry."""
        entry = {"name": self.name, "status": self.status, "family": self.family}
        entry |= {"identity": True} if self.face else {}
        return entry | ({"error": self.error} if self.error else {})


@dataclass(frozen=True)
class ControlNetSupport:
    """The ControlNets a folder was built with (``controlnets.json``); the family's specs gain their engines."""

    entries: tuple[ControlNetEntry, ...] = ()

    def to_json(self) -> list[dict]:
        """What ``easel build`` saves beside the engines."""
        return [dataclasses.asdict(entry) for entry in self.entries]

    @classmethod
    def from_json(cls, raw: list[dict]) -> ControlNetSupport:
        """Read what :meth:`to_json` wrote."""
        return cls(tuple(ControlNetEntry(**entry) for entry in raw))

    @property
    def ready(self) -> tuple[str, ...]:
        """The names whose engines were built."""
        return tuple(entry.name for entry in self.entries if entry.status == READY)

    def get(self, name: str) -> ControlNetEntry | None:
        """The entry called ``name``."""
        return next((entry for entry in self.entries if entry.name == name), None)

    def specs(self, specs: dict[str, ModelSpec], plain_unet: ModelSpec, dims) -> dict[str, ModelSpec]:
        """``specs`` with the residual inputs on the UNet and an engine per ready ControlNet (none: unchanged).

        ``plain_unet``: the family's UNet before adapters (a ControlNet takes its conditioning, not an adapter's).
        """
        if not self.ready:
            return specs
        unet = specs[UNET]
        specs = {**specs, UNET: dataclasses.replace(unet, inputs=(*unet.inputs, *residual_inputs(dims.residuals)))}
        for name in self.ready:
            face = self.get(name).face
            spec = controlnet_spec(name, plain_unet, dims.latent_channels, dims.vae_scale_factor, dims.residuals, face)
            specs[spec.name] = spec
        return specs

    def listing(self) -> list[dict]:
        """``GET /v1/controlnets``: every ControlNet the stack was started with, ready or with its error."""
        return [entry.public() for entry in self.entries]

    def check(self, controls) -> None:
        """Refuse (400 naming ``controlnets.N.name``) a ControlNet this stack cannot apply."""
        for index, choice in enumerate(controls):
            field = f"controlnets.{index}.name"
            entry = self.get(choice.name)
            if entry is None:
                ready = ", ".join(self.ready) or "none: start the stack with --controlnet [MODEL:]NAME=DIR"
                raise InvalidInput(f"{field}: unknown ControlNet {choice.name!r} (ready: {ready})", field)
            if entry.status != READY:
                raise InvalidInput(f"{field}: ControlNet {choice.name!r} cannot be served: {entry.error}", field)
            if entry.face:
                why = f"{choice.name!r} is InstantID's IdentityNet: send a face as identity"
                raise InvalidInput(f"{field}: {why}", field)


def control_weight(control: Control, index: int, total: int) -> float:
    """``control``'s scale at step ``index`` of ``total``: 0 outside [start, end], as diffusers' ``controlnet_keep``."""
    keep = 1.0 - float(index / total < control.start or (index + 1) / total > control.end)
    return control.scale * keep


class JobControls:
    """One job's ControlNets in the loop: the residuals each step's engine takes (zeros for a job without control).

    ``images``: each control's image as diffusers' ``control_image_processor`` makes it (NCHW in ``[0, 1]``, one
    row), repeated here for the job's rows as the ControlNet pipelines repeat it. ``step_engine``: the engine each
    step calls; one that takes no residuals (a motion UNet, a distilled UNet) gets none, whatever the stack serves.
    """

    def __init__(
        self,
        specs: Mapping[str, ModelSpec],
        job: Generation,
        images: list[torch.Tensor],
        guided: bool,
        step_engine: str = UNET,
    ) -> None:
        self.specs, self.controls = specs, job.inputs.controls
        self.residual_inputs = [t for t in specs[step_engine].inputs if t.name.startswith(RESIDUAL_PREFIX)]
        self.ready = bool(self.residual_inputs)
        factor = 2 if guided else 1
        self.images = [
            np.concatenate([image.repeat_interleave(job.sampling.n, dim=0).numpy()] * factor) for image in images
        ]
        self.faces = [None if c.face is None else _face_rows(c.face, job.sampling.n, guided) for c in self.controls]
        self._zeros: dict[str, np.ndarray] | None = None

    async def residuals(
        self,
        engines: EngineRunner,
        index: int,
        total: int,
        model_input: np.ndarray,
        timestep: np.ndarray,
        conditioning: Mapping[str, np.ndarray],
    ) -> dict[str, np.ndarray]:
        """The UNet's residual inputs at step ``index`` of ``total`` ({} when the UNet takes none)."""
        if not self.ready:
            return {}
        weights = [control_weight(control, index, total) for control in self.controls]
        calls = [
            self._run(engines, control, image, face, weight, model_input, timestep, conditioning)
            for control, image, face, weight in zip(self.controls, self.images, self.faces, weights, strict=True)
            if weight != 0.0  # a ControlNet off at this step adds exactly nothing
        ]
        if not calls:
            return self.zeros(model_input)
        outputs = await asyncio.gather(*calls)
        total_residuals = dict(outputs[0])
        for more in outputs[1:]:
            for name, residual in more.items():
                total_residuals[name] = total_residuals[name] + residual
        return total_residuals

    async def _run(self, engines, control, image, face, weight, model_input, timestep, conditioning) -> dict:
        spec = self.specs[f"{CONTROLNET_PREFIX}{control.name}"]
        taken = {t.name for t in spec.inputs}
        inputs = {name: rows for name, rows in conditioning.items() if name in taken}
        if face is not None:  # an IdentityNet: the face's rows where a ControlNet reads the prompt's
            inputs[FACE_EMBEDS] = _on_device(face, model_input)
        rows = len(model_input)
        inputs |= {
            "sample": model_input,
            "timestep": timestep,
            "controlnet_cond": image,
            "conditioning_scale": np.full(rows, weight, dtype=np.float32),
        }
        return await engines.infer(spec, inputs)

    def zeros(self, model_input: np.ndarray) -> dict[str, np.ndarray]:
        """Zero residuals for the rows of ``model_input`` (kept: the same every step); its last axes are its side.

        Where ``model_input`` is a tensor on a GPU (the loop inside Triton keeps its tensors there), they are made
        there too: an engine call's inputs are all on the host or all on the GPU.
        """
        if self._zeros is None:
            rows, (height, width) = len(model_input), model_input.shape[-2:]
            shapes = {t.name: (rows, *t.shape(height, width)) for t in self.residual_inputs}
            if getattr(model_input, "is_cuda", False):
                import torch

                self._zeros = {name: torch.zeros(shape, device=model_input.device) for name, shape in shapes.items()}
            else:
                self._zeros = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
        return self._zeros


def _face_rows(face: tuple[float, ...], n: int, guided: bool) -> np.ndarray:
    """An IdentityNet's ``face_embeds`` rows, ``[rows, 1, width]``.

    Zeros for the negative's (as InstantID's pipeline), the face for each image's.
    """
    rows = np.repeat(np.asarray(face, np.float32)[None, None], n, axis=0)
    return np.concatenate([np.zeros_like(rows), rows]) if guided else rows


def _on_device(rows: np.ndarray, model_input):
    """``rows`` where ``model_input`` is: on its GPU for the loop inside Triton, else as they are."""
    if not getattr(model_input, "is_cuda", False):
        return rows
    import torch

    return torch.from_numpy(rows).to(model_input.device)
