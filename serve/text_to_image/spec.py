"""I/O of the text-to-image engines (text_encoder, unet, vae_decoder), declared once for export, configs and clients."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from serve.triton.spec import DynamicBatching, ModelSpec, TensorSpec

TEXT_ENCODER = "text_encoder"
UNET = "unet"
VAE_DECODER = "vae_decoder"
ENGINE_NAMES = (TEXT_ENCODER, UNET, VAE_DECODER)

# A request with classifier-free guidance sends 2 rows per UNet call; 16 such requests fit one batch. No queue delay:
# under load the UNet is busy and its queue fills anyway (8 requests: 7 rows per batch on average either way), while
# a wait would delay every step of a lone request (0.66 ms per step in Triton's queue stats at 500 us).
UNET_MAX_BATCH = 32
UNET_BATCHING = DynamicBatching(max_queue_delay_us=0, preferred_batch_sizes=(8, 16, 32))


@dataclass(frozen=True)
class PipelineDims:
    """Shape facts of one diffusers model, read from its configs; saved as ``pipeline.json`` beside its engines."""

    text_length: int
    text_hidden: int
    latent_channels: int
    vae_scale_factor: int
    vae_scaling_factor: float
    sample_size: int

    @property
    def native_size(self) -> int:
        """Image side the model was built for, in pixels."""
        return self.sample_size * self.vae_scale_factor

    @classmethod
    def from_diffusers(cls, model_dir: Path) -> PipelineDims:
        """Read the dims from a diffusers-format model directory (configs only, no weights)."""
        text = json.loads((model_dir / "text_encoder" / "config.json").read_text())
        unet = json.loads((model_dir / "unet" / "config.json").read_text())
        vae = json.loads((model_dir / "vae" / "config.json").read_text())
        tokenizer = json.loads((model_dir / "tokenizer" / "tokenizer_config.json").read_text())
        sample_size = unet["sample_size"]
        return cls(
            text_length=int(tokenizer.get("model_max_length", text["max_position_embeddings"])),
            text_hidden=int(text["hidden_size"]),
            latent_channels=int(unet["in_channels"]),
            vae_scale_factor=2 ** (len(vae["block_out_channels"]) - 1),
            vae_scaling_factor=float(vae.get("scaling_factor", 0.18215)),
            sample_size=int(sample_size[0] if isinstance(sample_size, list) else sample_size),
        )

    def save(self, path: Path) -> None:
        """Write the dims as JSON."""
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> PipelineDims:
        """Read dims written by :meth:`save`."""
        return cls(**json.loads(path.read_text()))


def engine_specs(dims: PipelineDims) -> dict[str, ModelSpec]:
    """The three engines' Triton/ONNX specs for a model with ``dims``."""
    latent = TensorSpec("sample", "float32", (dims.latent_channels, -1, -1), ("latent_height", "latent_width"))
    return {
        TEXT_ENCODER: ModelSpec(
            name=TEXT_ENCODER,
            inputs=(TensorSpec("input_ids", "int64", (dims.text_length,)),),
            outputs=(TensorSpec("last_hidden_state", "float32", (dims.text_length, dims.text_hidden)),),
            max_batch_size=16,
            dynamic_batching=DynamicBatching(),
        ),
        UNET: ModelSpec(
            name=UNET,
            inputs=(
                latent,
                TensorSpec("timestep", "float32", ()),
                TensorSpec("encoder_hidden_states", "float32", (dims.text_length, dims.text_hidden)),
            ),
            outputs=(TensorSpec("noise_pred", "float32", latent.dims, latent.axis_names),),
            max_batch_size=UNET_MAX_BATCH,
            dynamic_batching=UNET_BATCHING,
        ),
        VAE_DECODER: ModelSpec(
            name=VAE_DECODER,
            inputs=(TensorSpec("latent", "float32", latent.dims, latent.axis_names),),
            outputs=(TensorSpec("image", "float32", (3, -1, -1), ("height", "width")),),
            max_batch_size=8,
            dynamic_batching=DynamicBatching(),
        ),
    }
