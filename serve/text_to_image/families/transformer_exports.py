"""The torch modules the flow-matching transformers (SD3, Flux) are exported from (export time only: torch).

:class:`FlowTransformerModule` takes the engine's inputs as SD3's diffusers transformer does;
:class:`FluxTransformerModule` packs Flux's latents, makes its position ids and scales its timestep inside the graph
(:mod:`serve.text_to_image.families.flux`). Both run their RMS norms in elementary ops for the ONNX exporter.
"""

from __future__ import annotations

import torch

from serve.text_to_image.families.flow import PATCH


class ExplicitRmsNorm(torch.nn.Module):
    """``torch.nn.RMSNorm`` in elementary ops (the TorchScript ONNX exporter has no ``aten::rms_norm`` at opset 17)."""

    def __init__(self, norm: torch.nn.RMSNorm) -> None:
        super().__init__()
        self.weight = norm.weight
        self.eps = norm.eps

    def forward(self, x):
        """``x`` over its root mean square (last axis), times the weight."""
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        return x * self.weight if self.weight is not None else x


def explicit_rms_norms(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every ``torch.nn.RMSNorm`` (Flux's and SD3.5's query/key norms) as :class:`ExplicitRmsNorm`."""
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.RMSNorm):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, ExplicitRmsNorm(module))
    return model


class FlowTransformerModule(torch.nn.Module):
    """A flow-matching transformer as its engine's module, its RMS norms in elementary ops (:func:`explicit_rms_norms`).

    SD3's and Flux's diffusers transformers take the same four inputs by keyword (Flux more). ``forward`` hands them
    the engine's inputs as they are (SD3); a subclass's makes them from the engine's inputs (Flux's packed latents).
    """

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.transformer = explicit_rms_norms(transformer)

    def forward(self, sample, timestep, encoder_hidden_states, pooled_projections):
        """The predicted velocity, in the latents' layout."""
        return self.velocity(sample, timestep, encoder_hidden_states, pooled_projections)

    def velocity(self, hidden_states, timestep, encoder_hidden_states, pooled_projections, **extra):
        """The transformer's predicted velocity (``extra``: a family's own inputs, such as Flux's position ids)."""
        return self.transformer(
            hidden_states=hidden_states,
            timestep=timestep,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
            return_dict=False,
            **extra,
        )[0]


class TracedFluxAttention:
    """diffusers' ``FluxAttnProcessor`` (without fused projections or IP-Adapter), its rotary embedding traceable.

    diffusers' ``apply_rotary_emb`` reshapes by ``x.shape[:-1]``, which the TorchScript tracer records as constants
    (the traced batch and token count); ``unflatten`` of the last axis keeps every size dynamic.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        """Joint attention over the text tokens (when given) and the image tokens."""

        def heads(projection, states):
            return projection(states).unflatten(-1, (-1, attn.head_dim))

        query = attn.norm_q(heads(attn.to_q, hidden_states))
        key = attn.norm_k(heads(attn.to_k, hidden_states))
        value = heads(attn.to_v, hidden_states)
        if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
            query = torch.cat([attn.norm_added_q(heads(attn.add_q_proj, encoder_hidden_states)), query], dim=1)
            key = torch.cat([attn.norm_added_k(heads(attn.add_k_proj, encoder_hidden_states)), key], dim=1)
            value = torch.cat([heads(attn.add_v_proj, encoder_hidden_states), value], dim=1)
        if image_rotary_emb is not None:
            query, key = _rotated(query, image_rotary_emb), _rotated(key, image_rotary_emb)
        attended = torch.nn.functional.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=attention_mask
        )
        attended = attended.transpose(1, 2).flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return attended
        text = encoder_hidden_states.shape[1]
        image = attn.to_out[1](attn.to_out[0](attended[:, text:].contiguous()))
        return image, attn.to_add_out(attended[:, :text].contiguous())


def _rotated(x, frequencies):
    """``apply_rotary_emb(x, frequencies, sequence_dim=1)`` of diffusers, for ``x`` ``[B, S, H, D]``."""
    cos, sin = (f[None, :, None, :] for f in frequencies)
    real, imaginary = x.unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack([-imaginary, real], dim=-1).flatten(3)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class FluxTransformerModule(FlowTransformerModule):
    """The Flux transformer on NCHW latents: packing, position ids and the timestep's scale inside the graph."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__(transformer)
        self.transformer.set_attn_processor(TracedFluxAttention())

    def forward(self, sample, timestep, encoder_hidden_states, pooled_projections, *guidance):
        """The predicted velocity, unpacked to the latents' layout."""
        batch, channels, height, width = sample.shape
        rows, columns = height // PATCH, width // PATCH
        packed = sample.view(batch, channels, rows, PATCH, columns, PATCH).permute(0, 2, 4, 1, 3, 5)
        packed = packed.reshape(batch, rows * columns, channels * PATCH * PATCH)
        row_ids = torch.arange(rows, dtype=sample.dtype).view(rows, 1).expand(rows, columns)
        column_ids = torch.arange(columns, dtype=sample.dtype).view(1, columns).expand(rows, columns)
        image_ids = torch.stack([torch.zeros_like(row_ids), row_ids, column_ids], dim=-1).reshape(rows * columns, 3)
        text_ids = torch.zeros(encoder_hidden_states.shape[1], 3, dtype=sample.dtype)
        guidance = guidance[0] if guidance else None
        velocity = self.velocity(
            packed,
            timestep / 1000,
            encoder_hidden_states,
            pooled_projections,
            guidance=guidance,
            txt_ids=text_ids,
            img_ids=image_ids,
        )
        velocity = velocity.view(batch, rows, columns, channels, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
        return velocity.reshape(batch, channels, height, width)
