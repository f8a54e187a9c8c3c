"""TensorRT plans from the model spec: profiles from the API's limits and configs Triton parses; the build on a GPU."""

import pytest

from build_engines.tensorrt import build_plan, latent_range, plan_key, profile, tensorrt_available
from serve.protocol.sizes import MAX_SIDE, MIN_SIDE
from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.families import family_of_folder
from serve.triton.spec import Backend, read_model_config, write_model_config


def test_profiles_cover_every_request_the_api_admits(tiny_xl_model):
    family = family_of_folder(tiny_xl_model)
    dims = family.dims
    latent = latent_range(dims.native_size, dims.vae_scale_factor)
    shapes = {name: profile(spec, latent) for name, spec in family.specs.items()}
    scale, channels = dims.vae_scale_factor, dims.latent_channels
    smallest, largest = MIN_SIDE // scale, MAX_SIDE // scale
    unet = shapes["unet"]
    assert unet["sample"] == (
        (1, channels, smallest, smallest),
        (8, channels, dims.native_size // scale, dims.native_size // scale),  # the first preferred batch size
        (32, channels, largest, largest),
    )
    assert unet["timestep"] == ((1,), (8,), (32,))  # a per-row scalar: [batch] in the ONNX graph
    assert shapes["text_encoder"]["input_ids"] == ((1, dims.text_length), (2, dims.text_length), (16, dims.text_length))
    assert shapes["vae_decoder"]["latent"][2] == (8, channels, largest, largest)
    assert set(unet) == {t.name for t in family.specs["unet"].inputs}  # every input, SDXL's conditioning included


def test_tensorrt_configs_are_gpu_plans_that_triton_parses(default_model, tmp_path):
    family = family_of_folder(default_model)
    for spec in family.specs.values():
        config = read_model_config(write_model_config(spec, tmp_path, Backend.TENSORRT))
        assert config.platform == "tensorrt_plan" and config.instance_group[0].kind == config.instance_group[0].KIND_GPU
        assert config.max_batch_size == spec.max_batch_size
        assert [i.name for i in config.input] == [t.name for t in spec.inputs]


def test_the_plan_cache_key_follows_weights_profile_gpu_and_version(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"graph")
    shapes = {"sample": ((1, 4, 8, 8), (2, 4, 64, 64), (32, 4, 128, 128))}
    key = plan_key(tmp_path / "model.onnx", shapes, "H100", "10.9")
    assert key == plan_key(tmp_path / "model.onnx", shapes, "H100", "10.9")
    assert (
        len(
            {
                key,
                plan_key(tmp_path / "model.onnx", shapes, "A100", "10.9"),
                plan_key(tmp_path / "model.onnx", shapes, "H100", "10.10"),
            }
        )
        == 3
    )
    (tmp_path / "model.onnx.data").write_bytes(b"new weights")
    assert plan_key(tmp_path / "model.onnx", shapes, "H100", "10.9") != key


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is available here")
def test_without_tensorrt_the_build_says_what_it_needs(tmp_path):
    from click.testing import CliRunner

    from serve.cli.main import main

    result = CliRunner().invoke(main, ["build", "--backend", "tensorrt", "--repository", str(tmp_path)])
    assert result.exit_code == 1 and "needs TensorRT and an NVIDIA GPU" in result.output
    assert list(tmp_path.iterdir()) == []  # nothing built or installed


@pytest.mark.skipif(not tensorrt_available(), reason="needs the tensorrt package (gpu extra) and a CUDA GPU")
def test_a_plan_builds_deserialises_and_is_cached(engine_dir, tmp_path):
    import tensorrt as trt

    family = EngineFolder(engine_dir).family
    spec = family.specs["vae_decoder"]
    shapes = profile(spec, latent_range(family.dims.native_size, family.dims.vae_scale_factor))
    plan = build_plan(engine_dir / "vae_decoder" / "model.onnx", shapes, cache=tmp_path)
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
    assert engine is not None and engine.num_optimization_profiles == 1
    assert build_plan(engine_dir / "vae_decoder" / "model.onnx", shapes, cache=tmp_path) == plan  # cached
