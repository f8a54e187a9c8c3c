import math
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from serve.finishing.upscalers import UPSCALER_PREFIX
from serve.paths import MODEL_REPOSITORY
from serve.text_to_image.families import family_of_folder
from serve.text_to_image.families.sd import SDDims, StableDiffusion
from serve.triton.spec import (
    AXIS_SCALE,
    Backend,
    ModelSpec,
    TensorSpec,
    read_model_config,
    triton_dtype_name,
    write_model_config,
)
from serve.vectorize.spec import ENSEMBLE, FEATURES, POLICY, QUALITY


def test_committed_configs_match_the_spec(default_model):
    specs = dict(family_of_folder(default_model).specs)
    specs.update({spec.name: spec for spec in (QUALITY, POLICY, FEATURES, ENSEMBLE)})
    installed = {p.parent.name for p in MODEL_REPOSITORY.glob("*/config.pbtxt")}
    assert {name for name in installed if not name.startswith(UPSCALER_PREFIX)} == set(specs)  # a stack's own
    for name in specs:
        parsed = read_model_config(MODEL_REPOSITORY / name / "config.pbtxt")
        assert parsed == specs[name].to_model_config(), f"{name}/config.pbtxt is out of date: run `easel build`"


def test_every_committed_config_parses_with_tritons_schema():
    paths = sorted(MODEL_REPOSITORY.glob("*/config.pbtxt"))
    assert {p.parent.name for p in paths} >= {"text_encoder", "unet", "vae_decoder"}
    for path in paths:
        config = read_model_config(path)
        assert config.name == path.parent.name
        assert config.input and config.output


def test_unet_batches_dynamically_with_a_per_sample_timestep(default_model):
    unet = family_of_folder(default_model).specs["unet"].to_model_config()
    assert unet.max_batch_size >= 16
    assert unet.HasField("dynamic_batching")
    timestep = next(i for i in unet.input if i.name == "timestep")
    assert list(timestep.dims) == [1] and timestep.HasField("reshape") and list(timestep.reshape.shape) == []


def test_round_trip_for_sd15_dims_and_native_onnxruntime(tmp_path: Path):
    dims = SDDims(
        text_length=77,
        text_hidden=768,
        latent_channels=4,
        vae_scale_factor=8,
        vae_scaling_factor=0.18215,
        sample_size=64,
        vae_sample_size=512,
    )
    for spec in StableDiffusion(dims).specs.values():
        path = write_model_config(spec, tmp_path, Backend.ONNXRUNTIME)
        parsed = read_model_config(path)
        assert parsed == spec.to_model_config(Backend.ONNXRUNTIME)
        assert parsed.platform == "onnxruntime_onnx" and not parsed.backend
    assert read_model_config(tmp_path / "unet" / "config.pbtxt").input[2].dims == [-1, 768]  # chunks of 77


def test_dynamic_axes_name_the_batch_and_every_free_dimension():
    spec = ModelSpec(
        "m", (TensorSpec("x", "float32", (4, -1, -1), ("h", "w")),), (TensorSpec("y", "float32", ()),), max_batch_size=8
    )
    assert spec.onnx_dynamic_axes() == {"x": {0: "batch", 2: "h", 3: "w"}, "y": {0: "batch"}}


def test_tensor_spec_rejects_bad_declarations():
    with pytest.raises(ValueError, match="dtype"):
        TensorSpec("x", "complex64", (1,))
    with pytest.raises(ValueError, match="axis name"):
        TensorSpec("x", "float32", (-1,))


def test_kserve_dtype_names():
    assert triton_dtype_name("float32") == "FP32"
    assert triton_dtype_name("int64") == "INT64"
    assert triton_dtype_name("bytes") == "BYTES"
    assert mc.DataType.Name(mc.TYPE_FP32) == "TYPE_FP32"


def test_vectorize_ensemble_wires_existing_tensors():
    config = ENSEMBLE.to_model_config()
    assert config.platform == "ensemble" and not config.instance_group
    produced = {"image"}
    for step in config.ensemble_scheduling.step:
        assert set(step.input_map.values()) <= produced, step.model_name
        produced |= set(step.output_map.values())
    assert {o.name for o in config.output} <= produced


def test_an_input_off_the_reference_length_names_its_scale_in_the_config_for_clients_of_triton_alone():
    """A ControlNet-ready UNet's residuals are ``-1`` in Triton's metadata: the config says each one's scale."""
    from serve.text_to_image.spec import residual_inputs

    residuals = residual_inputs(((32, 1), (64, 2), (64, 4)))
    sample = TensorSpec("sample", "float32", (4, -1, -1), ("latent_height", "latent_width"))
    spec = ModelSpec("unet", inputs=(sample, *residuals), outputs=(sample,), max_batch_size=8)
    parameters = {key: value.string_value for key, value in spec.to_model_config().parameters.items()}
    assert parameters == {f"{AXIS_SCALE}residual_down_1": "0.5", f"{AXIS_SCALE}residual_mid": "0.25"}
    for tensor in residuals:  # what the locust Triton user makes of it: each residual's shape at a latent side
        scale = float(parameters.get(f"{AXIS_SCALE}{tensor.name}", 1))
        assert tuple(math.ceil(9 * scale) if d == -1 else d for d in tensor.dims) == tensor.shape(9)
