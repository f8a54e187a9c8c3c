"""The loop inside Triton (serve/text_to_image/triton_loop.py), without Triton: its request's encoding, its config, and
concurrent generations on the torch runtime's engines (fp32, CPU), steps merged, equal to the replica's loop."""

import asyncio

import numpy as np
import pytest

from build_engines.text_to_image.build import build
from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.generation import Generation, SamplingParams
from serve.text_to_image.onnx_runner import OnnxRuntimeRunner
from serve.text_to_image.pipeline import TextToImagePipeline
from serve.text_to_image.spec import UNET
from serve.text_to_image.triton_loop import LoopEngines, decode_request, encode_request, loop_spec
from serve.triton.spec import read_model_config, write_model_config
from serve.triton.torch_runtime import DEFAULT_BUCKETS

CASES = (
    SamplingParams("a red heart icon", "", 1, 64, 64, 6, 7.5, 0, "ddim"),
    SamplingParams("a blue anchor icon", "blurry", 2, 96, 64, 5, 6.0, 3, "euler"),
    SamplingParams("a green cat icon", "", 1, 64, 64, 4, 1.0, 4, "dpmpp_2m"),
)


def test_a_request_is_its_sampling_and_whether_its_steps_merge():
    job, merge = decode_request(encode_request(CASES[1], merge=False).tobytes())
    assert job == Generation(CASES[1]) and merge is False
    with pytest.raises(ValueError, match="^generation: not a generation"):
        decode_request(b'{"sampling": {"prompt": "x"}}')


def test_the_loop_model_is_a_decoupled_python_model_naming_its_engines(tmp_path):
    config = read_model_config(write_model_config(loop_spec(tmp_path, "sdxl."), tmp_path))
    assert config.name == "sdxl.text_to_image_loop" and config.backend == "python"
    assert config.model_transaction_policy.decoupled and config.max_batch_size == 0
    assert config.parameters["engine_dir"].string_value == str(tmp_path)
    assert "buckets" not in config.parameters
    config = read_model_config(write_model_config(loop_spec(tmp_path, "", (1, 12, 24)), tmp_path))
    assert config.parameters["buckets"].string_value == "1,12,24"


def test_the_loop_captures_the_buckets_it_is_given_within_each_denoiser_s_limit(default_model):
    torch_folder = build(default_model, None, runtime="torch", precision="fp32", device="cpu")
    limit = torch_folder.specs[UNET].max_batch_size
    built = LoopEngines(torch_folder, "cpu").sessions()[UNET]
    assert built.buckets == tuple(size for size in DEFAULT_BUCKETS if size <= limit)
    given = LoopEngines(torch_folder, "cpu", (1, limit, limit + 1)).sessions()[UNET]
    assert given.buckets == (1, limit)


def test_concurrent_generations_in_the_loop_equal_the_replicas_loop(default_model, engine_dir, tmp_path):
    torch_folder = build(default_model, None, runtime="torch", precision="fp32", device="cpu")
    loop = LoopEngines(torch_folder, "cpu")

    async def both():
        merged = await asyncio.gather(*(loop.generate(Generation(params)) for params in CASES))
        alone = await loop.generate(Generation(CASES[0]), merge=False)
        replica = TextToImagePipeline(EngineFolder(engine_dir), OnnxRuntimeRunner(EngineFolder(engine_dir)))
        expected = [np.stack((await replica.generate(Generation(params))).images) for params in CASES]
        return merged, alone, expected

    merged, alone, expected = asyncio.run(both())
    for got, want in zip([*merged, alone], [*expected, expected[0]], strict=True):
        assert got.shape == want.shape and got.dtype == np.uint8
        off = np.abs(got.astype(np.int16) - want.astype(np.int16))  # torch and ONNX Runtime round apart, rarely
        assert off.max() <= 1 and np.count_nonzero(off) <= off.size // 100, (off.max(), np.count_nonzero(off))
