"""The denoising loop with in-process ONNX Runtime engines against diffusers' own pipeline (no servers)."""

import asyncio
import json
import shutil

import numpy as np
import pytest

from build_engines.text_to_image.controlnets import controlnet_support
from loadtests.benchmarks.torch_runner import TorchRunner
from serve.contract.limits import unstated_limit
from serve.errors import InvalidInput
from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.generation import Control, Generation, SamplingParams
from serve.text_to_image.onnx_runner import OnnxRuntimeRunner
from serve.text_to_image.pipeline import TextToImagePipeline
from serve.text_to_image.samplers import NOISE_SAMPLERS
from serve.triton.coalesce import CoalescingRunner
from tests.conftest import TRANSFORMER_MODELS, diffusers_reference, psnr, reference_images


@pytest.fixture(scope="module", params=["default", "openvino"])
def pipeline(request, engine_dir):
    """The loop over the embedded default's engines as built by default, and all on OpenVINO (runtime.json says)."""
    folder = engine_dir if request.param == "default" else request.getfixturevalue("openvino_engine_dir")
    engines = EngineFolder(folder)
    if request.param == "openvino":
        assert {choice.runtime.value for choice in engines.runtimes().values()} == {"openvino"}
    return TextToImagePipeline(engines, OnnxRuntimeRunner(engines))


@pytest.mark.parametrize("scheduler", list(NOISE_SAMPLERS))
@pytest.mark.parametrize(("n", "guidance", "width", "height"), [(1, 7.5, 96, 64), (2, 1.0, 72, 56)])
def test_matches_diffusers(pipeline, diffusers_pipeline, scheduler, n, guidance, width, height):
    job = Generation(SamplingParams("a red fox", "blurry", n, width, height, 8, guidance, 11, scheduler))
    got = np.stack(asyncio.run(pipeline.generate(job)).images)
    want = reference_images(
        diffusers_pipeline,
        scheduler,
        prompt="a red fox",
        negative_prompt="blurry",
        num_images_per_prompt=n,
        width=width,
        height=height,
        num_inference_steps=8,
        guidance_scale=guidance,
        seed=11,
    )
    assert got.shape == want.shape == (n, height, width, 3)
    assert psnr(got, want) >= 40


def test_seeds_change_the_image_and_long_prompts_report_truncation(pipeline):
    a = asyncio.run(pipeline.generate(Generation(SamplingParams("x", "", 1, 64, 64, 2, 7.5, 1, "ddim")))).images[0]
    b = asyncio.run(pipeline.generate(Generation(SamplingParams("x", "", 1, 64, 64, 2, 7.5, 2, "ddim")))).images[0]
    assert psnr(a, b) < 30
    long = Generation(SamplingParams("word " * 300, "", 1, 64, 64, 1, 1.0, 1, "euler"))  # past the most chunks
    assert asyncio.run(pipeline.generate(long)).prompt_tokens_dropped > 0


@pytest.fixture(scope="module")
def xl_pipeline(tiny_xl_engine_dir):
    engines = EngineFolder(tiny_xl_engine_dir)
    return TextToImagePipeline(engines, OnnxRuntimeRunner(engines))


@pytest.mark.parametrize(
    ("scheduler", "negative", "n", "guidance", "width", "height"),
    [("euler", "", 1, 6.0, 192, 128), ("dpmpp_2m", "blurry", 2, 5.0, 128, 96), ("ddim", "", 1, 1.0, 96, 128)],
)
def test_sdxl_matches_diffusers(xl_pipeline, diffusers_xl_pipeline, scheduler, negative, n, guidance, width, height):
    job = Generation(SamplingParams("a red fox", negative, n, width, height, 6, guidance, 11, scheduler))
    got = np.stack(asyncio.run(xl_pipeline.generate(job)).images)
    want = reference_images(
        diffusers_xl_pipeline,
        scheduler,
        prompt="a red fox",
        negative_prompt=negative,
        num_images_per_prompt=n,
        width=width,
        height=height,
        num_inference_steps=6,
        guidance_scale=guidance,
        seed=11,
    )
    assert got.shape == want.shape == (n, height, width, 3)
    assert psnr(got, want) >= 40


@pytest.mark.parametrize(("family", "halvings"), [("sd", 0), ("sdxl", 0), ("sdxl", 1)])
def test_tiled_decoding_matches_diffusers_vae_tiling(
    family, halvings, pipeline, diffusers_pipeline, xl_pipeline, diffusers_xl_pipeline
):
    """diffusers' own tiles, and halves of them (what admission picks when a default tile does not fit)."""
    ours, theirs = (pipeline, diffusers_pipeline) if family == "sd" else (xl_pipeline, diffusers_xl_pipeline)
    tiling = ours.tiling.halved() if halvings else ours.tiling
    width = height = ours.tiling.sample_tile + 64  # one side past a default tile: diffusers tiles it too
    job = Generation(SamplingParams("a red fox", "", 1, width, height, 3, 5.0, 4, "ddim"))
    got = np.stack(asyncio.run(ours.generate(job, tiling=tiling)).images)
    theirs.vae.enable_tiling()
    theirs.vae.tile_sample_min_size = tiling.sample_tile
    theirs.vae.tile_latent_min_size = tiling.latent_tile
    try:
        want = reference_images(
            theirs,
            "ddim",
            prompt="a red fox",
            width=width,
            height=height,
            num_inference_steps=3,
            guidance_scale=5.0,
            seed=4,
        )
    finally:
        theirs.vae.disable_tiling()
        theirs.vae.tile_sample_min_size = ours.tiling.sample_tile
        theirs.vae.tile_latent_min_size = ours.tiling.latent_tile
    untiled = np.stack(asyncio.run(ours.generate(job)).images)
    assert got.shape == want.shape == (1, height, width, 3)
    assert psnr(got, want) >= 40
    assert psnr(got, untiled) < psnr(got, want)  # tiling changed the image, the way diffusers' does


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_the_torch_runner_draws_what_diffusers_draws(
    family, default_model, engine_dir, tiny_xl_model, tiny_xl_engine_dir, diffusers_pipeline, diffusers_xl_pipeline
):
    """The loop on PyTorch modules (fp32 on CPU here; fp16 on a GPU) against diffusers' own pipeline."""
    model, folder, reference = {
        "sd": (default_model, engine_dir, diffusers_pipeline),
        "sdxl": (tiny_xl_model, tiny_xl_engine_dir, diffusers_xl_pipeline),
    }[family]
    engines = EngineFolder(folder)
    torch_pipeline = TextToImagePipeline(engines, CoalescingRunner(TorchRunner(model, engines, device="cpu")))
    jobs = [Generation(SamplingParams("a red fox", "blurry", 1, 64, 64, 6, 6.0, seed, "euler")) for seed in (11, 12)]
    results = asyncio.run(_together(torch_pipeline, jobs))  # two at once: their steps merged into one call
    for job, result in zip(jobs, results, strict=True):
        want = reference_images(
            reference,
            "euler",
            prompt="a red fox",
            negative_prompt="blurry",
            width=64,
            height=64,
            num_inference_steps=6,
            guidance_scale=6.0,
            seed=job.sampling.seed,
        )
        assert psnr(result.images[0], want[0]) >= 40


async def _together(pipeline, jobs):
    return await asyncio.gather(*(pipeline.generate(job) for job in jobs))


@pytest.fixture(scope="module", params=TRANSFORMER_MODELS)
def transformer_case(request, transformer_models, transformer_engine_dirs):
    """(name, our pipeline on ONNX Runtime, diffusers' pipeline) of one embedded transformer model."""
    folder = EngineFolder(transformer_engine_dirs[request.param])
    ours = TextToImagePipeline(folder, OnnxRuntimeRunner(folder))
    return request.param, ours, diffusers_reference(transformer_models[request.param])


def _transformer_pair(ours, theirs, job: Generation) -> tuple[np.ndarray, np.ndarray]:
    got = np.stack(asyncio.run(ours.generate(job)).images)
    want = reference_images(
        theirs,
        job.sampling.scheduler,
        samplers=ours.family.samplers,
        prompt=job.sampling.prompt,
        negative_prompt=job.sampling.negative_prompt,
        num_images_per_prompt=job.sampling.n,
        width=job.sampling.width,
        height=job.sampling.height,
        num_inference_steps=job.sampling.steps,
        guidance_scale=job.sampling.guidance_scale,
        seed=job.sampling.seed,
    )
    return got, want


@pytest.mark.parametrize(
    ("scheduler", "negative", "n", "guidance", "width", "height"),
    [("euler", "", 1, 4.0, 128, 96), ("ddim", "blurry", 2, 3.0, 96, 128), ("euler", "", 1, 1.0, 64, 64)],
)
def test_transformer_families_match_diffusers(transformer_case, scheduler, negative, n, guidance, width, height):
    """SD3 (classifier-free guidance), Flux dev (guidance embedded, dynamic shift) and schnell, as diffusers draws."""
    _, ours, theirs = transformer_case
    job = Generation(SamplingParams("a red fox", negative, n, width, height, 4, guidance, 11, scheduler))
    got, want = _transformer_pair(ours, theirs, job)
    assert got.shape == want.shape == (n, height, width, 3)
    assert psnr(got, want) >= 40


def test_each_transformer_family_uses_guidance_as_its_pipeline_does(transformer_case):
    name, ours, _ = transformer_case
    jobs = [Generation(SamplingParams("a red fox", "", 1, 64, 64, 3, guidance, 5, "euler")) for guidance in (1.0, 5.0)]
    images = [asyncio.run(ours.generate(job)).images[0] for job in jobs]
    if name == "tiny-flux-schnell":  # no guidance at all
        np.testing.assert_array_equal(images[0], images[1])
    else:  # SD3: classifier-free; Flux dev: the embedded scale
        assert psnr(images[0], images[1]) < 40


def test_flow_families_refuse_samplers_and_sizes_they_cannot_run(transformer_case):
    _, ours, _ = transformer_case
    with pytest.raises(InvalidInput, match="dpmpp_2m") as sampler:
        ours.family.check(Generation(SamplingParams("x", "", 1, 64, 64, 2, 1.0, 1, "dpmpp_2m")).outline)
    with pytest.raises(InvalidInput, match="multiples of 16") as size:
        ours.family.check(Generation(SamplingParams("x", "", 1, 72, 64, 2, 1.0, 1, "euler")).outline)
    assert (sampler.value.field, size.value.field) == ("scheduler", "size")


def test_flow_families_take_text_only_and_refuse_images_by_field(transformer_case, transformer_models, controlnet_dirs):
    """SD3 and Flux declare no image input: an input image, a mask or a ControlNet is a 400 naming that field.

    A ControlNet folder given to their build is listed as not served.
    """
    name, ours, _ = transformer_case
    support = controlnet_support(ours.family, transformer_models[name], controlnet_dirs.for_sd)
    assert support.ready == () and all("take no ControlNets" in entry.error for entry in support.entries)
    text = Generation(SamplingParams("x", "", 1, 64, 64, 2, 1.0, 1, "euler"))
    ours.family.check(text.outline)
    picture = np.zeros((64, 64, 3), np.uint8)
    asked = {
        "image": text.replaced(images=(picture,)),
        "mask": text.replaced(mask=picture[:, :, 0]),
        "controlnets": text.replaced(controls=(Control("edges", picture),)),
    }
    for field, job in asked.items():
        with pytest.raises(InvalidInput, match="text only") as refused:
            ours.family.check(job.outline)
        assert refused.value.field == field
        limit = unstated_limit("post", "/v1/images/edits", 400, refused.value.body()["error"])
        assert limit.says == "take no input images"


def test_sd3_without_t5_matches_diffusers(transformer_models, tmp_path):
    """A folder without T5 (``text_encoder_3`` null, as diffusers allows): zeros stand for T5's states (its engines
    from the machine's engine cache, built there once, by content)."""
    from build_engines.text_to_image.build import build

    model = shutil.copytree(transformer_models["tiny-sd3"], tmp_path / "sd3-no-t5")
    for folder in ("text_encoder_3", "tokenizer_3"):
        shutil.rmtree(model / folder)
    index = json.loads((model / "model_index.json").read_text())
    without = {"text_encoder_3": [None, None], "tokenizer_3": [None, None]}
    (model / "model_index.json").write_text(json.dumps(index | without))
    folder = build(model, repository=tmp_path / "repository")
    assert "text_encoder_3" not in folder.specs and not folder.family.dims.t5
    ours = TextToImagePipeline(folder, OnnxRuntimeRunner(folder))
    job = Generation(SamplingParams("a red fox", "", 1, 96, 64, 4, 4.0, 3, "euler"))
    reference = diffusers_reference(model, text_encoder_3=None, tokenizer_3=None)
    got, want = _transformer_pair(ours, reference, job)
    assert psnr(got, want) >= 40


def test_a_tiny_vae_decoder_is_served_as_vae_decoder_and_draws_what_diffusers_draws_with_it(
    default_model, engine_dir, diffusers_pipeline, tmp_path
):
    """``--vae-decoder``: a random-weight AutoencoderTiny (TAESD's layout, the embedded model's latent scale).

    Only the decoder is exported: the other engines are linked from the same build without it (``engine_dir``).
    """
    from diffusers import AutoencoderTiny, StableDiffusionPipeline

    from build_engines.text_to_image.build import build

    blocks = len(diffusers_pipeline.vae.config.block_out_channels)
    tiny = AutoencoderTiny(
        encoder_block_out_channels=(8,) * blocks,
        decoder_block_out_channels=(8,) * blocks,
        num_encoder_blocks=(1,) * blocks,
        num_decoder_blocks=(1,) * blocks,
        latent_channels=diffusers_pipeline.vae.config.latent_channels,
    )
    tiny.save_pretrained(tmp_path / "taesd")
    folder = build(default_model, repository=None, vae_decoder=tmp_path / "taesd")
    assert "taesd" in folder.key
    assert folder.engine("unet").onnx.samefile(EngineFolder(engine_dir).engine("unet").onnx)
    ours = TextToImagePipeline(folder, OnnxRuntimeRunner(folder))
    job = Generation(SamplingParams("a red fox", "", 1, 64, 64, 4, 7.5, 3, "euler"))
    got = np.stack(asyncio.run(ours.generate(job)).images)
    theirs = StableDiffusionPipeline(**(diffusers_pipeline.components | {"vae": tiny}))
    theirs.set_progress_bar_config(disable=True)
    kwargs = {"prompt": "a red fox", "width": 64, "height": 64, "num_inference_steps": 4, "guidance_scale": 7.5}
    want = reference_images(theirs, "euler", seed=3, **kwargs)
    plain = reference_images(diffusers_pipeline, "euler", seed=3, **kwargs)
    assert psnr(got, want) >= 40
    assert psnr(got, plain) < 30  # the tiny decoder drew it, not the model's own
