"""The loop inside Triton (serve/text_to_image/triton_loop.py), without Triton: its requests' encoding, its config, the
requests it draws, its cancels, and concurrent generations on the torch runtime's engines (fp32, CPU), steps merged,
equal to the replica's loop."""

import asyncio

import numpy as np
import pytest

from build_engines.text_to_image.build import build
from serve.errors import Diverged, EaselError
from serve.priority import Priority
from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.generation import CachePolicy, Control, Generation, ImageInputs, Motion, SamplingParams
from serve.text_to_image.loop_client import _easel_error
from serve.text_to_image.loop_protocol import LoopRequest, draws_in_triton, loop_spec
from serve.text_to_image.onnx_runner import OnnxRuntimeRunner
from serve.text_to_image.pipeline import TextToImagePipeline
from serve.text_to_image.spec import UNET
from serve.text_to_image.triton_loop import Canceled, Cancels, LoopEngines
from serve.triton.graph_shapes import GraphShapes
from serve.triton.spec import read_model_config, write_model_config
from serve.triton.torch_runtime import DEFAULT_BUCKETS

CASES = (
    SamplingParams("a red heart icon", "", 1, 64, 64, 6, 7.5, 0, "ddim"),
    SamplingParams("a blue anchor icon", "blurry", 2, 96, 64, 5, 6.0, 3, "euler"),
    SamplingParams("a green cat icon", "", 1, 64, 64, 4, 1.0, 4, "dpmpp_2m"),
)


def test_a_request_is_its_generation_its_id_and_whether_it_merges_and_reports_steps():
    job = Generation(CASES[1], priority=Priority.HIGH, cache=CachePolicy(interval=3))
    request = LoopRequest.drawing(job, merge=False, progress=True)
    assert LoopRequest.decode(request.encode().tobytes()) == request and len(request.id) == 32
    assert LoopRequest.decode(LoopRequest(cancel=request.id).encode().tobytes()).cancel == request.id
    with pytest.raises(ValueError, match="^generation: not a generation"):
        LoopRequest.decode(b'{"generation": {"sampling": {"prompt": "x"}}}')


def test_the_loop_draws_text_to_image_and_leaves_images_adapters_videos_kept_latents_and_tiles_to_the_replica():
    plain = Generation(CASES[0])
    assert draws_in_triton(plain) and draws_in_triton(plain.replaced(interval=2, priority=Priority.LOW))
    image = np.zeros((64, 64, 3), np.uint8)
    for other in (
        plain.replaced(images=(image,), strength=0.5),
        plain.replaced(controls=(Control("edges", image),)),
        plain.replaced(loras=(("key", 0.8),)),
        plain.replaced(approximate=True),
        Generation(CASES[0], motion=Motion("motion", 8)),
        Generation(CASES[0], inputs=ImageInputs(mask=image[..., 0])),
    ):
        assert not draws_in_triton(other), other
    assert not draws_in_triton(plain, tiled=True)


def test_a_cancel_stops_its_generation_once_whenever_it_comes():
    cancels = Cancels()
    cancels.check("a")  # none asked: runs on
    cancels.ask("a")
    with pytest.raises(Canceled):
        cancels.check("a")
    cancels.check("a")  # asked once, stopped once


def test_an_easel_error_the_loop_sends_back_is_raised_again_as_itself():
    error = _easel_error({"type": "Diverged", "message": "the latents turned NaN at step 3 of 6", "field": None})
    assert type(error) is Diverged and error.message.startswith("the latents")
    assert type(_easel_error({"type": "ValueError", "message": "x"})) is EaselError  # not an Easel error: a 500


def test_the_loop_model_is_a_decoupled_python_model_naming_its_engines(tmp_path):
    config = read_model_config(write_model_config(loop_spec(tmp_path, "sdxl."), tmp_path))
    assert config.name == "sdxl.text_to_image_loop" and config.backend == "python"
    assert [output.name for output in config.output] == ["images", "event", "latents"]
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
    graphs = GraphShapes(((128, 96),), chunks=2)  # the stack's (easel up --graph-size 128x96 --graph-chunks 2)
    sized = LoopEngines(torch_folder, "cpu", (1,), graphs=graphs).sessions()[UNET]
    side, text = torch_folder.family.dims.sample_size, torch_folder.family.dims.text_length
    samples = {(shapes[0][1:], shapes[2][0]) for shapes in sized.shapes}  # (latent size, text tokens)
    assert samples == {((h, w), text * k) for h, w in ((side, side), (32, 24)) for k in (1, 2)}  # its VAE's factor: 4


def test_concurrent_generations_in_the_loop_equal_the_replicas_loop(default_model, engine_dir, tmp_path):
    torch_folder = build(default_model, None, runtime="torch", precision="fp32", device="cpu")
    loop = LoopEngines(torch_folder, "cpu")

    async def both():
        merged = [np.stack(r.images) for r in await asyncio.gather(*(loop.draw(Generation(p)) for p in CASES))]
        alone = np.stack((await loop.draw(Generation(CASES[0]), merge=False)).images)
        replica = TextToImagePipeline(EngineFolder(engine_dir), OnnxRuntimeRunner(EngineFolder(engine_dir)))
        expected = [np.stack((await replica.generate(Generation(params))).images) for params in CASES]
        return merged, alone, expected

    merged, alone, expected = asyncio.run(both())
    for got, want in zip([*merged, alone], [*expected, expected[0]], strict=True):
        assert got.shape == want.shape and got.dtype == np.uint8
        off = np.abs(got.astype(np.int16) - want.astype(np.int16))  # torch and ONNX Runtime round apart, rarely
        assert off.max() <= 1 and np.count_nonzero(off) <= off.size // 100, (off.max(), np.count_nonzero(off))
