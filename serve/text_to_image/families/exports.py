"""The torch modules a family's engines are exported from, as each engine's inputs and outputs lay them out.

Each wraps a diffusers or transformers model (loaded from a diffusers folder, one engine at a time) so that its
``forward`` takes the engine's inputs positionally and returns its outputs: the text encoders' hidden states, the UNet's
noise prediction (with its added conditioning and ControlNets' residuals), a ControlNet's scaled residuals, the VAE's
decoded image or latent distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from serve.adapters.lora_layers import inner_model, lora_ready, save_slots
from serve.triton.engine_files import LORA_SLOTS, MODULE_CONFIG


@dataclass(frozen=True)
class ExportModule:
    """How to get the torch module an engine is exported from: ``load(dtype)``, called for one engine at a time.

    ``keep_fp32``: the engine stays in fp32 in an fp16 export (SDXL's VAE, as diffusers' ``force_upcast``).
    """

    load: Callable[[torch.dtype], torch.nn.Module]
    keep_fp32: bool = False


def with_lora_slots(source: ExportModule) -> ExportModule:
    """``source`` LoRA-ready: ``forward(*inputs, lora_scale, *banks)``, its slot table a side file (``LORA_SLOTS``).

    What the ONNX path exports and the torch runtime runs (:func:`serve.adapters.lora_layers.lora_ready`); its
    ``graph_extras`` name the bank inputs.
    """

    def load(dtype: torch.dtype) -> torch.nn.Module:
        module = source.load(dtype)
        ready, slots, extras = lora_ready(module, inner_model(module))
        ready.graph_extras = extras
        ready.side_files = {**getattr(module, "side_files", {}), LORA_SLOTS: lambda path: save_slots(slots, path)}
        return ready

    return ExportModule(load, source.keep_fp32)


def diffusers_model(cls_name: str, folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The diffusers model class ``cls_name`` loaded from ``folder`` in ``dtype``."""
    import diffusers

    return getattr(diffusers, cls_name).from_pretrained(folder, torch_dtype=dtype).eval()


def transformers_model(cls_name: str, folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The transformers model class ``cls_name`` loaded from ``folder`` in ``dtype``."""
    import transformers

    return getattr(transformers, cls_name).from_pretrained(folder, dtype=dtype).eval()


class TextEncoderModule(torch.nn.Module):
    """A transformers text encoder as its engine's module; each subclass's ``forward`` says what the engine returns."""

    def __init__(self, text_encoder: torch.nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder


class LastHidden(TextEncoderModule):
    """Text encoder -> its last hidden state (SD's CLIP, what StableDiffusionPipeline conditions on; T5)."""

    def forward(self, input_ids):
        """The last hidden state."""
        return self.text_encoder(input_ids, return_dict=False)[0]


class ClipPooled(TextEncoderModule):
    """CLIP text encoder -> its pooled output (the end token's final hidden state), what Flux conditions on."""

    def forward(self, input_ids):
        """The pooled output."""
        return self.text_encoder(input_ids, return_dict=True).pooler_output


class ClipPenultimate(TextEncoderModule):
    """CLIP text encoder -> its penultimate hidden state (and, with a projection, the pooled ``text_embeds``)."""

    def __init__(self, text_encoder: torch.nn.Module, pooled: bool) -> None:
        super().__init__(text_encoder)
        self.pooled = pooled

    def forward(self, input_ids):
        """The penultimate hidden state (and ``text_embeds``)."""
        out = self.text_encoder(input_ids, output_hidden_states=True, return_dict=True)
        hidden = out.hidden_states[-2]
        return (hidden, out.text_embeds) if self.pooled else hidden


def text_encoder_export(
    model_dir: Path, engine: str, model_class: str, wrapper: Callable[[torch.nn.Module], torch.nn.Module] = LastHidden
) -> ExportModule:
    """The transformers ``model_class`` in ``model_dir``'s folder of ``engine``, as ``wrapper`` makes it an engine."""
    return ExportModule(lambda dtype: wrapper(transformers_model(model_class, model_dir / engine, dtype)))


def clip_penultimate_export(model_dir: Path, engine: str, projection: bool) -> ExportModule:
    """A CLIP encoder as :class:`ClipPenultimate`; ``projection``: a ``CLIPTextModelWithProjection`` (text_embeds)."""
    model_class = "CLIPTextModelWithProjection" if projection else "CLIPTextModel"
    return text_encoder_export(model_dir, engine, model_class, partial(ClipPenultimate, pooled=projection))


class UnetModule(torch.nn.Module):
    """The UNet with positional inputs: sample, timestep, encoder_hidden_states, then ``added`` conditioning.

    An added ``image_embeds`` (IP-Adapters') goes to the UNet as diffusers' pipelines pass it: a list, a tensor each.
    ``residuals``, when set for a call (a ControlNet-ready UNet's wrapper sets them), are ControlNets' down-block
    residuals then the mid-block one, added as diffusers' ControlNet pipelines add them.
    """

    def __init__(self, unet: torch.nn.Module, added: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.unet = unet
        self.added = added
        self.residuals: tuple[torch.Tensor, ...] | None = None

    def forward(self, sample, timestep, encoder_hidden_states, *added):
        """The noise prediction."""
        extra = dict(zip(self.added, added, strict=True)) or None
        if extra and "image_embeds" in extra:
            embeds = extra["image_embeds"]
            extra["image_embeds"] = list(embeds) if isinstance(embeds, list | tuple) else [embeds]
        control = {}
        if self.residuals is not None:
            *down, mid = self.residuals
            control = {"down_block_additional_residuals": tuple(down), "mid_block_additional_residual": mid}
        return self.unet(
            sample, timestep, encoder_hidden_states, added_cond_kwargs=extra, return_dict=False, **control
        )[0]


def motion_unet_export(unet_folder: Path, adapter_folder: Path) -> ExportModule:
    """Diffusers' ``UNetMotionModel``: the UNet in ``unet_folder`` with the ``MotionAdapter`` in ``adapter_folder``."""

    def load(dtype: torch.dtype) -> torch.nn.Module:
        import diffusers

        unet = diffusers_model("UNet2DConditionModel", unet_folder, dtype)
        adapter = diffusers_model("MotionAdapter", adapter_folder, dtype)
        module = MotionUnetModule(diffusers.UNetMotionModel.from_unet2d(unet, adapter).to(dtype).eval())
        config = module.unet.to_json_string()  # what LoRA files for it are read against (before any IP-Adapter)
        module.side_files = {MODULE_CONFIG: lambda path: Path(path).write_text(config)}
        return module

    return ExportModule(load)


class MotionUnetModule(UnetModule):
    """A ``UNetMotionModel`` taking one row of conditioning per video, repeated per frame as AnimateDiff's pipeline."""

    def forward(self, sample, timestep, encoder_hidden_states, *added):
        """The noise prediction of every frame: (videos, channels, frames, height, width)."""
        frames = sample.shape[2]
        return super().forward(sample, timestep, encoder_hidden_states.repeat_interleave(frames, dim=0), *added)


class ControlNetModule(torch.nn.Module):
    """A ``ControlNetModel`` with positional inputs; out, its residuals scaled per row.

    In: sample, timestep, encoder_hidden_states, ``added`` conditioning, the control image (``[0, 1]``), a scale.
    Scaled here rather than by the model's ``conditioning_scale`` (a number), so rows of several requests with
    different scales are one execution; the products are diffusers' (``sample * conditioning_scale``).
    """

    def __init__(self, controlnet: torch.nn.Module, added: tuple[str, ...]) -> None:
        super().__init__()
        self.controlnet = controlnet
        self.added = added

    def forward(self, sample, timestep, encoder_hidden_states, *rest):
        """The residuals, down blocks' then the mid block's."""
        *added, image, scale = rest
        extra = dict(zip(self.added, added, strict=True)) or None
        down, mid = self.controlnet(
            sample, timestep, encoder_hidden_states, image, added_cond_kwargs=extra, return_dict=False
        )
        scale = scale.view(-1, 1, 1, 1)
        return (*(residual * scale for residual in down), mid * scale)


class _VaeModule(torch.nn.Module):
    """The VAE with the pipelines' latent scaling (and, where its config has them, ``latents_mean``/``latents_std``)."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae
        config = vae.config
        self.scaling_factor = float(config.scaling_factor)
        self.shift_factor = getattr(config, "shift_factor", None)  # SD3's and Flux's VAEs
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        self.normalised = mean is not None and std is not None
        if self.normalised:
            self.register_buffer("latents_mean", torch.tensor(mean).view(1, -1, 1, 1))
            self.register_buffer("latents_std", torch.tensor(std).view(1, -1, 1, 1))


class VaeDecoderModule(_VaeModule):
    """Latents in, image out (``[0, 1]`` once clamped): the pipeline's unscaling, shift and denormalising folded in.

    The clamp is left to the pipeline, after tiles are blended, as diffusers blends raw tiles.
    """

    def forward(self, latent):
        """The decoded image in [0, 1]."""
        if self.normalised:
            latent = latent * self.latents_std / self.scaling_factor + self.latents_mean
        else:
            latent = latent / self.scaling_factor
        if self.shift_factor is not None:
            latent = latent + self.shift_factor
        image = self.vae.decode(latent, return_dict=False)[0]
        return image / 2 + 0.5


class VaeEncoderModule(_VaeModule):
    """Image in (``[-1, 1]``, as diffusers' image processor makes it), the latent distribution out.

    Its mean and standard deviation, scaled (and normalised) as the decoder unscales them. The pipeline samples
    ``mean + std * noise`` with the generation's generator, as ``latent_dist.sample`` does.
    """

    def forward(self, image):
        """The scaled mean and standard deviation of the image's latents."""
        distribution = self.vae.encode(image, return_dict=False)[0]
        if self.normalised:
            scale = self.scaling_factor / self.latents_std
            return (distribution.mean - self.latents_mean) * scale, distribution.std * scale
        return distribution.mean * self.scaling_factor, distribution.std * self.scaling_factor


def vae_export(wrapper: type[_VaeModule], model_dir: Path, keep_fp32: bool) -> ExportModule:
    """The VAE of ``model_dir`` as ``wrapper`` (its decoder or encoder) sees it."""
    return ExportModule(lambda dtype: wrapper(diffusers_model("AutoencoderKL", model_dir / "vae", dtype)), keep_fp32)


class DeepUnetModule(torch.nn.Module):
    """The whole UNet (a :class:`~serve.text_to_image.families.exports.UnetModule`), also returning its deep features.

    The features are the output of the final up block's second-to-last layer (its attention where it has them, else
    its resnet): what DeepCache's shallowest branch keeps.
    """

    def __init__(self, unet_module: torch.nn.Module) -> None:
        super().__init__()
        self.unet_module = unet_module
        final = unet_module.unet.up_blocks[-1]
        layers = getattr(final, "attentions", None) or final.resnets
        self._kept: torch.Tensor | None = None
        layers[-2].register_forward_hook(self._keep)

    def _keep(self, _module, _inputs, output) -> None:
        self._kept = output[0] if isinstance(output, tuple) else output

    def forward(self, *inputs):
        """The noise prediction and the deep features."""
        noise = self.unet_module(*inputs)
        return noise, self._kept


class ShallowUnetModule(torch.nn.Module):
    """The UNet's shallow branch on kept deep features: what a cached step of DeepCache computes.

    Inputs: the UNet's (sample, timestep, encoder_hidden_states, then ``added`` conditioning) and ``deep_features``.
    """

    def __init__(self, unet: torch.nn.Module, added: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.unet, self.added = unet, added

    def forward(self, sample, timestep, encoder_hidden_states, *rest):
        """The noise prediction."""
        *added, deep = rest
        unet = self.unet
        extra = dict(zip(self.added, added, strict=True)) or None
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
        augmented = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=extra)
        emb = emb + augmented if augmented is not None else emb
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        final = unet.up_blocks[-1]
        hidden = final.resnets[-1](torch.cat([deep, unet.conv_in(sample)], dim=1), emb)
        if getattr(final, "attentions", None):
            hidden = final.attentions[-1](hidden, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
        if unet.conv_norm_out is not None:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        return unet.conv_out(hidden)
