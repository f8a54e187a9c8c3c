"""The torch runtime's graphs: captured under the session's device, at the sizes and chunk counts asked, a call without
one logged once per shape and counted, and the timestep handed to the module in fp32 whatever the engine's dtype.

On a CPU a bucket is the eager call on padded rows (bf16 is the reduced precision a CPU runs); what needs CUDA is
marked ``gpu`` and skipped without one.
"""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from build_engines.text_to_image.build import default_model_dir
from build_engines.text_to_image.torch_engines import torch_engine
from serve.text_to_image.families import family_of_folder
from serve.text_to_image.spec import TEXT_AXIS
from serve.triton import torch_runtime
from serve.triton.engine_files import EngineFiles
from serve.triton.runtimes import Runtime, RuntimeChoice
from serve.triton.torch_runtime import (
    TEXT_TOKENS,
    CaptureShape,
    CastIO,
    TorchEngine,
    TorchSession,
    dim_axes,
    on_device,
)

CALLS: list[tuple] = []
"""Each call of the toy denoiser: its rows, latent shape, text states' shape and the timestep's dtype."""
NATIVE = ((2, 8, 8), (), (4, 3))
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")


class _Denoiser(torch.nn.Module):
    """A row-wise toy denoiser at any latent size and text length; its output is the timestep where the rest is 0."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, sample, timestep, encoder_hidden_states):
        CALLS.append((len(sample), tuple(sample.shape[1:]), tuple(encoder_hidden_states.shape[1:]), timestep.dtype))
        text = encoder_hidden_states.mean(dim=(1, 2)) * self.weight
        return (sample * self.weight + text[:, None, None, None]).float() + timestep[:, None, None, None].float()


def toy_denoiser(folder: Path, engine: str, dtype: torch.dtype) -> torch.nn.Module:
    """The toy engine's loader (a :data:`serve.triton.torch_runtime.Loader`)."""
    return _Denoiser().to(dtype)


def _engine(tmp_path: Path, precision: str = "fp32", axes: bool = True, buckets=(1, 2, 4)) -> EngineFiles:
    files = EngineFiles(tmp_path / "denoiser")
    files.folder.mkdir(parents=True)
    inputs = (
        ("sample", "float32", (2, 8, 8)),
        ("timestep", "float32", ()),
        ("encoder_hidden_states", "float32", (4, 3)),
    )
    named = (("", "latent_height", "latent_width"), (), (TEXT_TOKENS, "")) if axes else ()
    engine = TorchEngine("denoiser", f"{__name__}:toy_denoiser", inputs, ("noise_pred",), False, buckets)
    TorchEngine(**vars(engine) | {"axes": named, "side": 8 if axes else 0}).save(files)
    RuntimeChoice(Runtime.TORCH, precision).save(files)
    return files


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == torch_runtime.__name__]


def _feeds(rows: int, side=(8, 8), tokens: int = 4, timestep: float = 981.37) -> dict[str, np.ndarray]:
    return {
        "sample": np.zeros((rows, 2, *side), np.float32),
        "timestep": np.full(rows, timestep, np.float32),
        "encoder_hidden_states": np.zeros((rows, tokens, 3), np.float32),
    }


def test_loading_capture_and_calls_run_under_the_session_s_device(tmp_path, monkeypatch):
    entered = []
    real = torch_runtime.on_device
    monkeypatch.setattr(torch_runtime, "on_device", lambda device: entered.append(device) or real(device))
    session = TorchSession(_engine(tmp_path), "fp32", "cpu")
    session.capture()
    session.run(_feeds(3))
    assert len(entered) == 3 and set(entered) == {session.device}  # load, capture, call
    guard = on_device(torch.device("cuda", 1))  # made, not entered: no CUDA needed to see which device it sets
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1


def test_a_fractional_timestep_reaches_a_reduced_precision_module_unrounded(tmp_path):
    session = TorchSession(_engine(tmp_path), "bf16", "cpu")  # bf16 runs on a CPU (fp16 falls back to fp32 there)
    assert session.dtype == torch.bfloat16
    session.capture()
    CALLS.clear()
    (eager,) = session.run(_feeds(5))  # above the largest bucket
    (bucketed,) = session.run(_feeds(3))  # bucket 4
    assert [call[3] for call in CALLS] == [torch.float32, torch.float32]
    assert set(eager.flatten()) == set(bucketed.flatten()) == {np.float32(981.37)}  # bf16 would make it 980
    rounded = CastIO(toy_denoiser(tmp_path, "", torch.bfloat16), torch.bfloat16)  # every input cast: the old way
    assert rounded(*(torch.from_numpy(x) for x in _feeds(1).values())).flatten()[0] == 980.0


@pytest.mark.parametrize(
    ("model", "engine"),
    [
        ("tiny", "unet"),
        ("tiny-xl", "unet"),
        ("tiny-sd3", "transformer"),
        pytest.param(
            "tiny-flux",
            "transformer",
            marks=pytest.mark.xfail(
                strict=True,
                reason="diffusers' FluxTransformer2DModel casts timestep and guidance to the latents' dtype itself "
                "(timestep.to(hidden_states.dtype) * 1000): 981.37 is embedded as 981.5 in fp16",
            ),
        ),
    ],
)
def test_the_families_denoisers_embed_an_fp32_timestep_beside_fp16_tensors(model, engine):
    model_dir = default_model_dir(model)
    family = family_of_folder(model_dir)
    spec = family.specs[engine]
    module = family.export_modules(model_dir)[engine].load(torch.float16).to(torch.float16).eval()
    embedded = []
    for layer in module.modules():
        if type(layer).__name__ == "Timesteps":  # diffusers' sinusoidal projection: what a timestep becomes
            layer.register_forward_pre_hook(lambda _, args: embedded.append(args[0]))
    side, generator = family.dims.sample_size, torch.Generator().manual_seed(0)
    feeds = []
    for tensor in spec.graph_inputs:
        shape = (2, *tensor.shape(side))
        if tensor.name == "timestep":
            feeds.append(torch.full(shape, 981.37))
        elif tensor.name in ("time_ids", "guidance"):
            feeds.append(torch.full(shape, 8.0 * side if tensor.name == "time_ids" else 3.5))
        else:
            feeds.append(torch.randn(shape, generator=generator))
    full = {i for i, t in enumerate(spec.graph_inputs) if t.name in torch_runtime.FULL_PRECISION_INPUTS}
    with torch.inference_mode():
        output = CastIO(module, torch.float16, full)(*feeds)
    assert output.dtype == torch.float32 and torch.isfinite(output).all()
    assert embedded[0].dtype == torch.float32 and embedded[0][0].item() == torch.tensor(981.37).item()


def test_a_call_without_a_graph_is_logged_once_per_shape_and_counted(tmp_path, caplog):
    session = TorchSession(_engine(tmp_path), "fp32", "cpu")
    session.capture()
    session.run(_feeds(3))  # bucket 4: no miss
    assert session.eager_total == 0 and not _warnings(caplog)
    session.run(_feeds(5))
    session.run(_feeds(6))  # more rows than the largest bucket, twice: one line
    session.run(_feeds(2, side=(12, 12)))  # a size not captured
    larger = ((2, 12, 12), (), (4, 3))
    assert session.eager_calls == {NATIVE: 2, larger: 1} and session.eager_total == 3
    lines = _warnings(caplog)
    assert len(lines) == 2
    assert "5 rows at sample [2, 8, 8]" in lines[0] and "sample [2, 12, 12]" in lines[1]
    assert all(
        "captured: rows [1, 2, 4] at sample [2, 8, 8], timestep [], encoder_hidden_states [4, 3]" in line
        for line in lines
    )


def test_an_engine_without_buckets_runs_eager_without_a_miss(tmp_path, caplog):
    session = TorchSession(_engine(tmp_path, buckets=()), "fp32", "cpu")
    session.capture()
    session.run(_feeds(3))
    assert session.buckets == () and session.eager_total == 0 and not _warnings(caplog)


def test_buckets_are_captured_at_each_size_and_chunk_count_asked(tmp_path):
    session = TorchSession(_engine(tmp_path), "fp32", "cpu")
    session.capture([1, 4], [CaptureShape(8, 8), CaptureShape(12, 16, chunks=2)])
    assert session.buckets == (1, 4)
    assert set(session.shapes) == {NATIVE, ((2, 12, 16), (), (8, 3))}
    CALLS.clear()
    rng = np.random.default_rng(0)
    feeds = {name: rng.standard_normal(x.shape).astype(np.float32) for name, x in _feeds(3, (12, 16), 8).items()}
    (got,) = session.run(feeds)
    assert [call[:3] for call in CALLS] == [(4, (2, 12, 16), (8, 3))]  # 3 rows in bucket 4 at that size
    assert session.eager_total == 0
    want = toy_denoiser(tmp_path, "", torch.float32)(*(torch.from_numpy(x) for x in feeds.values()))
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-6, atol=1e-6)


def test_input_shapes_follow_the_latent_size_at_each_axis_scale_and_the_text_at_its_chunks():
    inputs = (
        ("sample", "float32", (4, 8, 8)),
        ("timestep", "float32", ()),
        ("encoder_hidden_states", "float32", (77, 768)),
        ("residual_down_1", "float32", (320, 4, 4)),  # a ControlNet residual at half the latents' side
        ("controlnet_cond", "float32", (3, 64, 64)),  # an image at the VAE's factor
        ("time_ids", "float32", (6,)),
    )
    axes = (
        dim_axes((4, -1, -1), ("latent_height", "latent_width")),
        (),
        dim_axes((-1, 768), (TEXT_TOKENS,)),
        dim_axes((320, -1, -1), ("latent_height_2", "latent_width_2")),
        dim_axes((3, -1, -1), ("height", "width")),
        ("",),
    )
    engine = TorchEngine("unet", "x:y", inputs, ("noise_pred",), axes=axes, side=8)
    assert engine.input_shapes() == tuple(shape for _, _, shape in inputs)
    assert engine.input_shapes(CaptureShape(12, 20, 3)) == (
        (4, 12, 20),
        (),
        (231, 768),
        (320, 6, 10),
        (3, 96, 160),
        (6,),
    )
    assert TEXT_TOKENS == TEXT_AXIS
    with pytest.raises(ValueError, match="built without its axes"):
        TorchEngine("unet", "x:y", inputs, ("noise_pred",)).input_shapes(CaptureShape(12, 12))


def test_an_engine_built_without_axes_captures_its_native_size_and_says_so(tmp_path, caplog):
    session = TorchSession(_engine(tmp_path, axes=False), "fp32", "cpu")
    session.capture(None, [CaptureShape(12, 12, 2)])
    assert session.shapes == (NATIVE,) and any("rebuild it" in line for line in _warnings(caplog))


def test_chunk_counts_capture_once_for_an_engine_without_text_states(tmp_path):
    files = EngineFiles(tmp_path / "vae")
    files.folder.mkdir(parents=True)
    axes = (("", "latent_height", "latent_width"), (), ("", ""))  # fixed text states (SD3's, Flux's)
    inputs = (
        ("sample", "float32", (2, 8, 8)),
        ("timestep", "float32", ()),
        ("encoder_hidden_states", "float32", (4, 3)),
    )
    TorchEngine("t", f"{__name__}:toy_denoiser", inputs, ("y",), buckets=(1,), axes=axes, side=8).save(files)
    RuntimeChoice(Runtime.TORCH, "fp32").save(files)
    session = TorchSession(files, "fp32", "cpu")
    session.capture(None, [CaptureShape(8, 8, 1), CaptureShape(8, 8, 2)])
    assert session.shapes == (NATIVE,)


def test_a_video_s_denoiser_runs_eager_an_image_s_gets_buckets():
    """SVD's UNet takes a whole video per row: compute-bound calls, too large to capture at every bucket."""
    image = family_of_folder(default_model_dir("tiny"))
    video = family_of_folder(default_model_dir("tiny-svd"))
    assert torch_engine(image.specs["unet"], image.dims.sample_size, keep_fp32=False).buckets == (1, 2, 4, 8, 16, 32)
    assert torch_engine(video.specs["unet"], video.dims.sample_size, keep_fp32=False).buckets == ()


def test_the_build_records_each_input_s_axes_and_its_latent_side(tmp_path):
    family = family_of_folder(default_model_dir("tiny"))
    side = family.dims.sample_size
    engine = torch_engine(family.specs["unet"], side, keep_fp32=False)
    assert engine.side == side
    assert dict(zip((name for name, _, _ in engine.inputs), engine.axes, strict=True)) == {
        "sample": ("", "latent_height", "latent_width"),
        "timestep": (),
        "encoder_hidden_states": (TEXT_TOKENS, ""),
    }
    files = EngineFiles(tmp_path)
    engine.save(files)
    assert TorchEngine.of(files) == engine
    legacy = {k: v for k, v in json.loads(files.torch_module.read_text()).items() if k not in ("axes", "side")}
    files.torch_module.write_text(json.dumps(legacy))
    assert TorchEngine.of(files).axes == () and TorchEngine.of(files).side == 0


@pytest.mark.gpu
@NEEDS_CUDA
def test_on_a_gpu_the_replayed_graph_keeps_the_fractional_timestep(tmp_path):
    session = TorchSession(_engine(tmp_path), "fp16", "cuda")
    assert session.dtype == torch.float16 and session.device.index == torch.cuda.current_device()
    session.capture()
    assert all(bucket.graph is not None for bucket in session._buckets.values())
    (out,) = session.run(_feeds(3))
    assert out.reshape(3, -1)[:, 0].tolist() == [np.float32(981.37)] * 3  # fp16 would make it 981.5


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_a_session_on_the_second_gpu_captures_and_replays_there(tmp_path):
    torch.cuda.set_device(0)
    session = TorchSession(_engine(tmp_path), "fp16", "cuda:1")
    session.capture()
    on_the_second = [
        bucket.graph is not None and bucket.static[0].device == torch.device("cuda", 1)
        for bucket in session._buckets.values()
    ]
    assert all(on_the_second)
    rng = np.random.default_rng(0)
    feeds = {name: rng.standard_normal(x.shape).astype(np.float32) for name, x in _feeds(3).items()}
    (replayed,) = session.run(feeds)
    module = toy_denoiser(tmp_path, "", torch.float16).to("cuda:1")
    want = CastIO(module, torch.float16, {1})(*(torch.from_numpy(x).to("cuda:1") for x in feeds.values()))
    np.testing.assert_allclose(replayed, want.cpu().numpy(), rtol=1e-3, atol=1e-3)
    assert torch.cuda.current_device() == 0  # the caller's device is left as it was


def test_a_stack_s_graph_sizes_in_pixels_become_each_engine_s_latent_shapes_at_each_chunk_count(tmp_path):
    from serve.triton.graph_shapes import GraphShapes, parse_size

    engine = TorchEngine.of(_engine(tmp_path))  # native: an 8 x 8 latent
    scaled = TorchEngine(**vars(engine) | {"scale": 8})
    assert scaled.capture_shapes((), 1) is None  # nothing asked: the native size, one chunk
    assert scaled.capture_shapes(((96, 128), (64, 64)), 2) == [
        CaptureShape(8, 8, 1),
        CaptureShape(8, 8, 2),
        CaptureShape(12, 16, 1),
        CaptureShape(12, 16, 2),
    ]  # the native size once, though asked again (64 x 64 pixels)
    assert engine.capture_shapes(((96, 128),), 1) is None  # built without its scale: its native size alone
    GraphShapes(((96, 128),), 2).write(tmp_path)
    assert GraphShapes.read(tmp_path) == GraphShapes(((96, 128),), 2)
    assert GraphShapes.read(tmp_path / "none") == GraphShapes()
    assert parse_size("768x512") == (768, 512)
    with pytest.raises(ValueError, match="is not HEIGHTxWIDTH"):
        parse_size("768")
    session = TorchSession(_engine(tmp_path / "captured"), "fp32", "cpu")
    session.engine = scaled
    session.capture([2], scaled.capture_shapes(((96, 128),), 2))
    session.run(_feeds(2, (12, 16), 8))  # 96 x 128 pixels, two chunks: captured
    assert session.eager_total == 0
    session.run(_feeds(2, (16, 16), 4))  # 128 x 128: not asked, eager and counted
    assert session.eager_total == 1


def test_the_build_records_the_vae_s_scale_for_the_stack_s_graph_sizes():
    family = family_of_folder(default_model_dir("tiny"))
    engine = torch_engine(family.specs["unet"], family.dims.sample_size, False, family.dims.vae_scale_factor)
    assert engine.scale == family.dims.vae_scale_factor == 4  # the embedded model's VAE halves twice
