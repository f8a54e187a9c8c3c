"""The torch runtime: batch buckets (rows padded, outputs sliced back), its engines built and opened through the one
door, chosen by ``auto`` where a GPU is present. On a CPU in fp32; CUDA graphs where a GPU is."""

from pathlib import Path

import numpy as np
import pytest
import torch

from build_engines.text_to_image.adapters import AdapterBuild
from build_engines.text_to_image.build import build
from serve.errors import UnsupportedModel
from serve.text_to_image.engine_folder import EngineFolder
from serve.triton.engine_files import EngineFiles
from serve.triton.onnx_backend import open_engine
from serve.triton.runtimes import Runtime, RuntimeChoice, candidates, concrete_runtime
from serve.triton.spec import read_model_config
from serve.triton.torch_graphs import bucket_for, padded
from serve.triton.torch_runtime import TorchEngine, TorchSession

CALLS: list[int] = []
"""The row counts the toy module was called with, in order."""


class _RowWise(torch.nn.Module):
    """A row-independent module (each row's output depends on that row alone) that records its batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(6, 3)

    def forward(self, x, scale):
        CALLS.append(len(x))
        return torch.tanh(self.linear(x)) * scale[:, None], x.sum(dim=1)


def toy_module(folder: Path, engine: str, dtype: torch.dtype) -> torch.nn.Module:
    """The toy engine's loader (a :data:`serve.triton.torch_runtime.Loader`): same weights at every load."""
    torch.manual_seed(0)
    return _RowWise().to(dtype)


def _toy_engine(tmp_path: Path, buckets=(1, 2, 4)) -> EngineFiles:
    files = EngineFiles(tmp_path / "toy")
    files.folder.mkdir(parents=True)
    inputs = (("x", "float32", (6,)), ("scale", "float32", ()))
    TorchEngine("toy", f"{__name__}:toy_module", inputs, ("y", "total"), buckets=buckets).save(files)
    RuntimeChoice(Runtime.TORCH, "fp32").save(files)
    return files


def test_a_call_runs_in_the_smallest_bucket_holding_its_rows():
    assert [bucket_for(rows, (1, 2, 4, 8)) for rows in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, None]
    rows = torch.arange(6.0).reshape(3, 2)
    assert padded(rows, 5).tolist() == [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]]  # the last row repeated
    assert padded(rows, 2) is rows


def test_rows_are_padded_to_the_bucket_and_the_outputs_sliced_back(tmp_path):
    files = _toy_engine(tmp_path)
    session = open_engine(files, device="cpu")
    assert isinstance(session, TorchSession) and session.input_ranks == {"x": 2, "scale": 1}
    session.capture()
    assert session.buckets == (1, 2, 4)
    rng = np.random.default_rng(0)
    x, scale = rng.standard_normal((3, 6)).astype(np.float32), rng.uniform(1, 2, 3).astype(np.float32)
    expected = [
        o.detach().numpy() for o in toy_module(tmp_path, "toy", torch.float32)(torch.tensor(x), torch.tensor(scale))
    ]
    CALLS.clear()
    outputs = session.run({"x": x, "scale": scale, "unused": np.zeros(3)})
    assert CALLS == [4]  # 3 rows ran in bucket 4
    for got, want in zip(outputs, expected, strict=True):
        assert got.shape[0] == 3
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    CALLS.clear()
    session.run({"x": np.ones((5, 6), np.float32), "scale": np.ones(5, np.float32)})  # above the largest bucket
    session.run({"x": np.ones((2, 6), np.float32), "scale": np.ones(2, np.float32)})
    assert CALLS == [5, 2]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_each_bucket_is_a_cuda_graph_that_matches_the_eager_call(tmp_path):
    files = _toy_engine(tmp_path)
    session = TorchSession(files, "fp16", "cuda")
    session.capture()
    assert all(bucket.graph is not None for bucket in session._buckets.values())
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    replayed = session.run({"x": x, "scale": np.ones(3, np.float32)})  # bucket 4's graph, sliced to 3 rows
    module = toy_module(tmp_path, "toy", torch.float16).cuda()
    half = {"device": "cuda", "dtype": torch.float16}
    want = module(torch.tensor(x, **half), torch.ones(3, **half))
    np.testing.assert_allclose(replayed[0], want[0].float().cpu().numpy(), rtol=1e-2, atol=1e-2)


def test_auto_picks_the_torch_runtime_on_a_gpu_and_the_cpu_runtimes_elsewhere():
    assert candidates("auto", "fp16", "cuda") == (Runtime.TORCH,)
    assert concrete_runtime("auto", "fp32", "cuda") == "torch"
    assert Runtime.TORCH not in candidates("auto", "fp32", "cpu")
    assert concrete_runtime("auto", "fp16", "cpu") == "onnxruntime"  # as before the torch runtime
    assert concrete_runtime("auto", "int8", "cuda") == "openvino"  # int8 runs on OpenVINO alone


@pytest.fixture(scope="module")
def torch_engine_dir(default_model, tmp_path_factory) -> Path:
    repository = tmp_path_factory.mktemp("torch_repository")
    return build(default_model, repository, runtime="torch", precision="fp32", device="cpu").path, repository


def test_every_engine_of_the_default_runs_on_torch_as_on_onnx_runtime(torch_engine_dir, engine_dir):
    path, repository = torch_engine_dir
    folder, reference = EngineFolder(path), EngineFolder(engine_dir)
    assert {choice.runtime for choice in folder.runtimes().values()} == {Runtime.TORCH}
    assert set(folder.memory_models) == set(folder.specs)  # measured, as the ONNX engines are
    rng = np.random.default_rng(2)
    for name, spec in folder.specs.items():
        feeds = {}
        for tensor in spec.graph_inputs:
            shape = (2, *tensor.shape(8))
            feeds[tensor.name] = (
                rng.integers(0, 400, shape) if tensor.dtype == "int64" else rng.standard_normal(shape)
            ).astype(tensor.numpy_dtype)
        got = open_engine(folder.engine(name), device="cpu").run(feeds)
        want = open_engine(reference.engine(name), 1).run(feeds)
        for a, b in zip(got, want, strict=True):
            assert np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b))) < 1e-4, name
        config = read_model_config(repository / name / "config.pbtxt")
        assert config.backend == "python" and config.instance_group[0].kind == config.instance_group[0].KIND_CPU
    unet = TorchEngine.of(folder.engine("unet"))
    assert unet.buckets == (1, 2, 4, 8, 16, 32) and TorchEngine.of(folder.engine("vae_decoder")).buckets == ()


def test_the_torch_runtime_refuses_what_it_does_not_build_yet_in_one_line(default_model, tmp_path):
    adapters = AdapterBuild(lora=True, ip_adapters={"style": tmp_path})
    with pytest.raises(UnsupportedModel) as error:
        build(
            default_model,
            None,
            runtime="torch",
            precision="fp32",
            adapters=adapters,
            controlnets={"edges": tmp_path},
            vae_decoder=tmp_path,
            motion_adapters={"motion": tmp_path},
            device="cpu",
        )
    assert "not yet IP-Adapters, motion adapters:" in str(error.value) and "\n" not in str(error.value)
