"""IP-Adapter at build time: the adapter folder, and the UNet and image encoder exported to take references per row.

``easel up --ip-adapter DIR`` names the adapter: ``DIR`` holds its weights as ``load_ip_adapter`` reads them (one
``*.safetensors`` with ``image_proj.*`` and ``ip_adapter.*`` tensors, or a ``*.bin`` with those two dicts) and its CLIP
image encoder in ``DIR/image_encoder``. The UNet is exported with the adapter loaded by diffusers itself
(``_load_ip_adapter_weights``: the image projection and each cross-attention's ``to_k_ip``/``to_v_ip``), its attention
processors replaced by :class:`RowScaledIPAttnProcessor`, which weighs the image tokens' attention by an input
``ip_scale[row, layer]`` instead of a number held by the processor. What the served engines then take is
:class:`serve.adapters.ip_adapter.IpAdapterInfo`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from serve.adapters.ip_adapter import FACEID, FACEID_PLUS, FACEID_PLUSV2, IDENTITY_NET, IMAGE, IMAGE_ENCODER, INSTANTID
from serve.text_to_image.families.folder import WEIGHT_SUFFIXES


class IpAdapterError(ValueError):
    """An ``--ip-adapter`` folder that cannot be served (one line: what is wrong)."""


@dataclass(frozen=True)
class IpAdapterFolder:
    """An IP-Adapter on disk: its weights file, its image encoder folder (None: a FaceID's) and what it reads.

    ``kind`` (:data:`serve.adapters.ip_adapter.KINDS`) as diffusers tells the weights apart; a FaceID Plus is v2 (its
    tokens' shortcut on) when its file is named so, as h94 names them (``ip-adapter-faceid-plusv2_sd15.bin``). An
    InstantID (InstantX's layout: ``ip-adapter.bin`` beside ``ControlNetModel/``, its IdentityNet) has no encoder.
    """

    weights: Path
    image_encoder: Path | None
    kind: str = IMAGE

    @classmethod
    def read(cls, folder: Path) -> IpAdapterFolder:
        """Check ``folder``'s layout; :class:`IpAdapterError` names what is missing."""
        if not folder.is_dir():
            raise IpAdapterError(f"--ip-adapter {folder}: not a folder")
        weights = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        if len(weights) != 1:
            found = ", ".join(p.name for p in weights) or "none"
            raise IpAdapterError(
                f"--ip-adapter {folder}: needs exactly one weights file (*.safetensors or *.bin), found {found}"
            )
        kind = kind_of(cls(weights[0], None).state_dict(), weights[0].name)
        if kind == IMAGE and (folder / IDENTITY_NET / "config.json").is_file():
            kind = INSTANTID
        if kind in (FACEID, INSTANTID):
            return cls(weights[0], None, kind)
        encoder = folder / IMAGE_ENCODER
        if not (encoder / "config.json").is_file():
            raise IpAdapterError(f"--ip-adapter {folder}: has no image encoder ({IMAGE_ENCODER}/config.json)")
        return cls(weights[0], encoder, kind)

    @property
    def face_id(self) -> bool:
        """Whether it is an IP-Adapter FaceID (Plus or not): its references are faces' ArcFace embeddings."""
        return self.kind != IMAGE

    @property
    def identity_net(self) -> Path | None:
        """An InstantID's IdentityNet folder (a diffusers ``ControlNetModel``); None for the other kinds."""
        return self.weights.parent / IDENTITY_NET if self.kind == INSTANTID else None

    @property
    def face_width(self) -> int:
        """A FaceID's or InstantID's face embedding width (ArcFace's 512): what its projection's first layer reads."""
        projection = self.state_dict()["image_proj"]
        return int(projection["proj_in.weight" if self.kind == INSTANTID else "proj.0.weight"].shape[1])

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{"image_proj": ..., "ip_adapter": ...}`` as ``load_ip_adapter`` reads the weights file."""
        if self.weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
            for key, value in load_file(self.weights).items():
                part, _, rest = key.partition(".")
                if part in state:
                    state[part][rest] = value
        else:
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not state.get("image_proj") or not state.get("ip_adapter"):
            raise IpAdapterError(f"{self.weights}: no image_proj and ip_adapter weights (not an IP-Adapter file)")
        return state

    def lora(self, attention_processors: list[str]) -> dict[str, torch.Tensor]:
        """The LoRA a FaceID ships with, keyed as ``load_ip_adapter`` hands it to ``load_lora_weights`` ({}: none).

        ``attention_processors``: the UNet's, in order (the weights number them).
        """
        ip = self.state_dict()["ip_adapter"]
        lora = {}
        for key_id, name in enumerate(attention_processors):
            for part in ("to_q", "to_k", "to_v", "to_out"):
                for end in ("down", "up"):
                    found = ip.get(f"{key_id}.{part}_lora.{end}.weight")
                    if found is not None:
                        lora[f"unet.{name}.{part}_lora.{end}.weight"] = found.contiguous()
        return lora


def kind_of(state: dict[str, dict[str, torch.Tensor]], file_name: str) -> str:
    """What IP-Adapter weights read (:data:`serve.adapters.ip_adapter.KINDS`), as diffusers tells them apart."""
    projection = state["image_proj"]
    if "perceiver_resampler.proj_in.weight" in projection:
        return FACEID_PLUSV2 if "plusv2" in file_name.lower() else FACEID_PLUS
    if "norm.weight" in projection and not any(key in projection for key in ("proj.weight", "proj.3.weight")):
        return FACEID
    return IMAGE


class _IpInputs:
    """The IP inputs of the forward being traced, read by every :class:`RowScaledIPAttnProcessor`.

    ``ip_scale``, ``ip_references``, ``ip_masked``, and the masks by resolution level.
    """

    scale: torch.Tensor | None = None
    references: torch.Tensor | None = None
    masked: torch.Tensor | None = None
    masks: dict[int, torch.Tensor] = {}


class RowScaledIPAttnProcessor(torch.nn.Module):
    """diffusers' ``IPAdapterAttnProcessor2_0`` for several adapters, its scales and masks read per row.

    Per adapter ``a``: a row whose ``ip_masked[a]`` is 0 attends to all its references' tokens at once (padding
    references, ``ip_references[a, i]`` 0, are kept out by the attention bias), as diffusers without a mask; one
    whose ``ip_masked[a]`` is 1 attends to each reference apart and weighs it by its region mask, as diffusers with
    ``ip_adapter_masks``. Either is added times ``ip_scale[a, layer]``.
    """

    def __init__(self, to_k_ip, to_v_ip, index: int, level: int, inputs: _IpInputs) -> None:
        super().__init__()
        self.to_k_ip, self.to_v_ip, self.index, self.level, self.inputs = to_k_ip, to_v_ip, index, level, inputs

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
        """Text attention plus each adapter's scaled attention over its image tokens, then diffusers' tail."""
        residual = hidden_states
        encoder_hidden_states, ip_hidden_states = encoder_hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size = encoder_hidden_states.shape[0]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, encoder_hidden_states.shape[1], batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        def merged(x: torch.Tensor) -> torch.Tensor:
            return x.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)

        query = heads(query)
        hidden_states = merged(
            F.scaled_dot_product_attention(query, heads(key), heads(value), attn_mask=attention_mask)
        )
        adapters = zip(self.to_k_ip, self.to_v_ip, ip_hidden_states, strict=True)
        for a, (to_k_ip, to_v_ip, ip_states) in enumerate(adapters):
            key, value = heads(to_k_ip(ip_states)), heads(to_v_ip(ip_states))
            hidden_states = hidden_states + self._adapter(a, query, key, value, merged)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _adapter(self, a: int, query, ip_key, ip_value, merged) -> torch.Tensor:
        """Adapter ``a``'s scaled addition: its references together, or each apart within its region mask.

        One product of the queries with every reference's keys serves both: softmax over all the tokens (padding
        biased out) for the first, over each reference's own tokens for the second.
        """
        inputs = self.inputs
        references = inputs.references[:, a].to(query.dtype)  # [B, R]
        batch, heads, _, depth = query.shape
        count = references.shape[1]
        tokens = ip_key.shape[2] // count
        scores = query @ ip_key.transpose(-1, -2) * depth**-0.5  # [B, heads, queries, R * tokens]
        bias = ((references - 1) * 1e4)[:, :, None].expand(-1, -1, tokens).reshape(batch, 1, 1, count * tokens)
        together = (scores + bias).softmax(-1) @ ip_value  # [B, heads, queries, depth]
        each = scores.reshape(batch, heads, -1, count, tokens).softmax(-1).transpose(2, 3)  # [B, h, R, queries, t]
        each = each @ ip_value.reshape(batch, heads, count, tokens, depth)  # [B, heads, R, queries, depth]
        masks = inputs.masks[self.level][:, a].to(query.dtype).flatten(2)  # [B, R, queries]
        apart = (each * masks[:, None, :, :, None]).sum(2)
        masked = inputs.masked[:, a].to(query.dtype).view(-1, 1, 1, 1)
        scale = inputs.scale[:, a, self.index].to(query.dtype).view(-1, 1, 1)
        return scale * merged(masked * apart + (1 - masked) * together)


class IpReadyUnet(torch.nn.Module):
    """The export UNet (``UnetModule`` taking ``image_embeds``) with the IP inputs after the UNet's own.

    In: the UNet's inputs, ``ip_embeds_i`` per adapter, ``ip_scale``, ``ip_references``, ``ip_masked``,
    ``ip_mask_l`` per resolution level, then ``ip_clip_i`` per FaceID Plus (its projection's ``clip_embeds``, as
    diffusers' users set them) (:class:`serve.adapters.ip_adapter.IpAdapterInfo`).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        inputs: _IpInputs,
        adapters: int,
        levels: tuple[int, ...],
        info=None,
        video: bool = False,
    ) -> None:
        super().__init__()
        self.module, self.inputs, self.adapters, self.levels = module, inputs, adapters, levels
        self.video = video  # a motion UNet's: a row is a video, its attention's rows are its frames'
        self.face_states = info.face_states if info is not None else ()
        projections = module.unet.encoder_hid_proj.image_projection_layers if self.face_states else ()
        for index in self.face_states:  # v2: the face's tokens added to the resampler's
            projections[index].shortcut = info.kind(index) == FACEID_PLUSV2

    def forward(self, *args):
        """The noise prediction with each row's image tokens weighed by its scales and masks."""
        clips = len(self.face_states)
        if clips:
            args, states = args[:-clips], args[-clips:]
            projections = self.module.unet.encoder_hid_proj.image_projection_layers
            for index, clip in zip(self.face_states, states, strict=True):
                projections[index].clip_embeds = clip
        count = self.adapters + 3 + len(self.levels)
        base, ip = args[: len(args) - count], args[len(args) - count :]
        embeds, (scale, references, masked), masks = (
            ip[: self.adapters],
            ip[self.adapters : self.adapters + 3],
            ip[self.adapters + 3 :],
        )
        if self.video:  # each row's scales and masks for each of its frames (the UNet repeats the tokens so)
            frames = base[0].shape[2]
            scale, references, masked = (x.repeat_interleave(frames, dim=0) for x in (scale, references, masked))
            masks = tuple(mask.repeat_interleave(frames, dim=0) for mask in masks)
        inputs = self.inputs
        inputs.scale, inputs.references, inputs.masked = scale, references, masked
        inputs.masks = dict(zip(self.levels, masks, strict=True))
        try:
            return self.module(*base, list(embeds))
        finally:
            inputs.scale = inputs.references = inputs.masked = None
            inputs.masks = {}


def ip_layers(unet) -> tuple[str, ...]:
    """The attention processors an IP-Adapter adds image tokens to (every one but self-attention), in order."""
    own = (name for name in unet.attn_processors if not name.startswith("encoder_hid_proj."))  # not a resampler's
    spatial = (name for name in own if ".motion_modules." not in name)  # a motion UNet's temporal attention reads none
    return tuple(name for name in spatial if not name.endswith("attn1.processor"))


def layer_level(unet, name: str) -> int:
    """The resolution level of attention processor ``name``: how many downsamplers its queries are below."""
    deepest = len(unet.down_blocks) - 1
    part, _, rest = name.partition(".")
    if part == "mid_block":
        return deepest
    block = int(rest.split(".")[0])
    return block if part == "down_blocks" else deepest - block


def load_into_unet(unet, folders: list[IpAdapterFolder]) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    """Load the adapters into ``unet`` as ``load_ip_adapter`` with lists does; make scales and masks per row.

    Returns (layers, hidden_states per adapter).

    After this the UNet takes ``added_cond_kwargs["image_embeds"]`` (a list: a tensor per adapter) and reads each
    row's scales and masks from the :class:`_IpInputs` its processors share (``unet.ip_inputs``).
    """
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
    from diffusers.models.embeddings import ImageProjection

    try:
        unet._load_ip_adapter_weights([folder.state_dict() for folder in folders], low_cpu_mem_usage=False)
    except (KeyError, RuntimeError, ValueError) as error:
        weights = ", ".join(str(folder.weights) for folder in folders)
        raise IpAdapterError(f"{weights}: does not fit this UNet ({type(error).__name__}: {error})") from error
    inputs = _IpInputs()
    layers = ip_layers(unet)
    processors = {}
    for name, processor in unet.attn_processors.items():
        if isinstance(processor, IPAdapterAttnProcessor2_0):
            index, level = layers.index(name), layer_level(unet, name)
            processor = RowScaledIPAttnProcessor(processor.to_k_ip, processor.to_v_ip, index, level, inputs)
        processors[name] = processor
    unet.set_attn_processor(processors)
    unet.ip_inputs = inputs
    projections = unet.encoder_hid_proj.image_projection_layers
    return layers, tuple(not isinstance(projection, ImageProjection) for projection in projections)


def face_projection(folder: IpAdapterFolder, dtype: torch.dtype) -> torch.nn.Module:
    """An InstantID's resampler (face embedding -> tokens), as ``load_ip_adapter`` makes it from the weights."""
    from diffusers import UNet2DConditionModel

    convert = UNet2DConditionModel._convert_ip_adapter_image_proj_to_diffusers  # reads no UNet state
    return convert(None, folder.state_dict()["image_proj"], low_cpu_mem_usage=False).to(dtype).eval()


class IdentityNetModule(torch.nn.Module):
    """InstantID's IdentityNet as one engine: the face's tokens made by the adapter's resampler, then the ControlNet.

    In: a ControlNet engine's inputs with ``face_embeds`` (``[rows, 1, width]``) where the prompt's states were: its
    pipeline feeds the ControlNet the face's tokens (``encoder_hidden_states=prompt_image_emb``), not the prompt's.
    """

    def __init__(self, projection: torch.nn.Module, controlnet: torch.nn.Module) -> None:
        super().__init__()
        self.projection, self.controlnet = projection, controlnet

    def forward(self, sample, timestep, face_embeds, *rest):
        """The residuals, steered by the face's tokens and its drawn landmarks."""
        return self.controlnet(sample, timestep, self.projection(face_embeds), *rest)


class ImageEncoderModule(torch.nn.Module):
    """CLIP vision model -> what the UNet's image projection reads (embeddings, or penultimate hidden states)."""

    def __init__(self, encoder: torch.nn.Module, hidden_states: bool) -> None:
        super().__init__()
        self.encoder, self.hidden_states = encoder, hidden_states

    def forward(self, pixel_values):
        """``image_embeds`` of the images."""
        if self.hidden_states:
            return self.encoder(pixel_values, output_hidden_states=True).hidden_states[-2]
        return self.encoder(pixel_values).image_embeds


def load_image_encoder(folder: Path, dtype: torch.dtype, hidden_states: bool) -> ImageEncoderModule:
    """The CLIP vision model of an IP-Adapter folder as an engine module."""
    from transformers import CLIPVisionModelWithProjection

    encoder = CLIPVisionModelWithProjection.from_pretrained(folder, dtype=dtype).eval()
    return ImageEncoderModule(encoder, hidden_states)
