"""Fewer UNet rows per image, in-process (ONNX Runtime), against diffusers and against the loop before them.

Few-step samplers (``lcm``, ``tcd``) on the embedded default's distilled UNet and on a UNet with an LCM-LoRA;
adaptive guidance (``guidance_cutoff``) against diffusers' dynamic guidance; step caching (``cache_interval``)
against the DeepCache package's own helper.
"""

import asyncio
import copy

import diffusers
import numpy as np
import pytest
from pydantic import ValidationError

from serve.errors import InvalidInput, invalid_input
from serve.protocol.schema import FEW_STEP_SCHEDULERS, MAX_FEW_STEPS, SCHEDULER_NAMES, GenerationRequest
from serve.text_to_image import step_cache
from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.generation import AdapterInputs, CachePolicy, Control, Generation, ImageInputs, SamplingParams
from serve.text_to_image.guidance import guided_steps
from serve.text_to_image.onnx_runner import OnnxRuntimeRunner
from serve.text_to_image.pipeline import TextToImagePipeline
from serve.text_to_image.samplers import FEW_STEP_SAMPLERS, UNET_SAMPLERS
from serve.text_to_image.spec import DEEP_FEATURES, DISTILLED_UNET, UNET, UNET_DEEP, UNET_SHALLOW
from tests.conftest import psnr, reference_images
from tests.controls import box_mask, edges_image, input_image
from tests.loop_cases import assert_recorded_bytes, cases

PROMPT = "a green heart icon"


class Counting:
    """An engine runner that counts each engine's rows."""

    def __init__(self, runner) -> None:
        self.runner, self.rows = runner, {}

    async def infer(self, spec, inputs, priority=0):
        self.rows[spec.name] = self.rows.get(spec.name, 0) + len(next(iter(inputs.values())))
        return await self.runner.infer(spec, inputs, priority)


def _counting(pipeline: TextToImagePipeline) -> tuple[TextToImagePipeline, Counting]:
    counted = copy.copy(pipeline)
    counted.engines = Counting(pipeline.engines)
    return counted, counted.engines


def _run(pipeline: TextToImagePipeline, job: Generation) -> np.ndarray:
    return np.stack(asyncio.run(pipeline.generate(job)).images)


@pytest.fixture(scope="module")
def plain(engine_dir):
    folder = EngineFolder(engine_dir)
    return TextToImagePipeline(folder, OnnxRuntimeRunner(folder))


@pytest.fixture(scope="module")
def controlled(control_engine_dir):
    folder = EngineFolder(control_engine_dir)
    return TextToImagePipeline(folder, OnnxRuntimeRunner(folder))


@pytest.fixture(scope="module")
def distilled_model(default_model, tmp_path_factory):
    """The default with a distilled UNet beside its own (``unet_lcm/``): its UNet's weights, seeded noise added.

    A stand-in student of the same architecture (the committed one, from `easel train lcm`, is left out): what is
    tested is where its rows go and that they run as diffusers runs an LCM, not what it learned.
    """
    import shutil

    import torch

    folder = tmp_path_factory.mktemp("distilled") / "model"
    shutil.copytree(default_model, folder, ignore=shutil.ignore_patterns(DISTILLED_UNET))
    unet = diffusers.UNet2DConditionModel.from_pretrained(default_model / UNET)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(0.02 * parameter.std().nan_to_num() * torch.randn(parameter.shape, generator=generator))
    unet.save_pretrained(folder / DISTILLED_UNET)
    return folder


@pytest.fixture(scope="module")
def distilled(distilled_model, tmp_path_factory):
    from build_engines.text_to_image.build import build

    folder = build(distilled_model, repository=tmp_path_factory.mktemp("repository-distilled"))
    return TextToImagePipeline(folder, OnnxRuntimeRunner(folder))


@pytest.fixture(scope="module")
def distilled_reference(distilled_model):
    """diffusers' pipeline over the model with its distilled UNet as the UNet: how diffusers runs an LCM."""
    unet = diffusers.UNet2DConditionModel.from_pretrained(distilled_model / DISTILLED_UNET)
    pipeline = diffusers.StableDiffusionPipeline.from_pretrained(distilled_model, unet=unet)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_the_api_s_samplers_are_the_unet_families_and_few_step_limits_are_the_schedulers():
    assert set(SCHEDULER_NAMES) == set(UNET_SAMPLERS) and set(FEW_STEP_SCHEDULERS) == set(FEW_STEP_SAMPLERS)
    for sampler in FEW_STEP_SAMPLERS.values():
        scheduler = sampler.cls(**sampler.overrides)
        assert scheduler.config.original_inference_steps == MAX_FEW_STEPS
        scheduler.set_timesteps(MAX_FEW_STEPS)
        with pytest.raises(ValueError, match="num_inference_steps"):
            scheduler.set_timesteps(MAX_FEW_STEPS + 1)


@pytest.mark.parametrize("scheduler", FEW_STEP_SCHEDULERS)
def test_a_few_step_sampler_over_its_steps_is_refused_naming_num_inference_steps(scheduler):
    GenerationRequest(prompt="x", scheduler=scheduler, num_inference_steps=MAX_FEW_STEPS)
    GenerationRequest(prompt="x", scheduler="ddim", num_inference_steps=MAX_FEW_STEPS + 1)
    with pytest.raises(ValidationError) as refused:
        GenerationRequest(prompt="x", scheduler=scheduler, num_inference_steps=MAX_FEW_STEPS + 1)
    error = invalid_input(refused.value)
    assert error.field == "num_inference_steps" and f"at most {MAX_FEW_STEPS} steps" in error.message


@pytest.mark.parametrize("scheduler", FEW_STEP_SCHEDULERS)
@pytest.mark.parametrize(("n", "steps", "width", "height"), [(1, 4, 64, 64), (2, 2, 96, 64)])
def test_few_step_samplers_run_the_distilled_unet_as_diffusers_runs_an_lcm(
    distilled, distilled_reference, scheduler, n, steps, width, height
):
    """One unguided row per image and step, on the distilled UNet: diffusers' pipeline with it as its UNet."""
    counted, counter = _counting(distilled)
    job = Generation(SamplingParams(PROMPT, "blurry", n, width, height, steps, 7.5, 5, scheduler))
    got = _run(counted, job)
    assert counter.rows.get(DISTILLED_UNET) == n * steps and UNET not in counter.rows
    kwargs = {"prompt": PROMPT, "num_images_per_prompt": n, "width": width, "height": height}
    want = reference_images(
        distilled_reference,
        scheduler,
        FEW_STEP_SAMPLERS,
        num_inference_steps=steps,
        guidance_scale=1.0,
        seed=5,
        **kwargs,
    )
    assert psnr(got, want) >= 40
    np.testing.assert_array_equal(_run(distilled, job), got)  # deterministic for a seed


@pytest.fixture(scope="module")
def lora_pipeline(default_model, tmp_path_factory):
    """The default's LoRA-ready engines and a registry with a random ``lcm`` LoRA (an LCM-LoRA's format)."""
    from build_engines.text_to_image.adapters import AdapterBuild
    from build_engines.text_to_image.build import build
    from build_engines.text_to_image.loras import build_registry, save_registry
    from build_engines.text_to_image.random_adapters import make_lora

    folder = tmp_path_factory.mktemp("lcm-lora")
    make_lora(default_model, folder / "loras" / "lcm.safetensors", rank=8, seed=11, text_encoder=False, strength=0.5)
    engines = build(default_model, folder / "repository", adapters=AdapterBuild(lora=True))
    save_registry(build_registry(folder / "loras", engines, default_model), folder / "registry")
    return TextToImagePipeline(engines, OnnxRuntimeRunner(engines, loras_dir=folder / "registry")), folder / "loras"


@pytest.mark.parametrize("scheduler", FEW_STEP_SCHEDULERS)
@pytest.mark.parametrize("guidance", [1.0, 1.5])
def test_an_lcm_lora_matches_diffusers_lcm_scheduler_and_load_lora_weights(
    lora_pipeline, default_model, scheduler, guidance
):
    """A few-step job with a LoRA runs the UNet with it (not the distilled UNet), guided as diffusers guides it."""
    ours, loras = lora_pipeline
    counted, counter = _counting(ours)
    job = Generation(
        SamplingParams(PROMPT, "", 1, 64, 64, 4, guidance, 3, scheduler), adapters=AdapterInputs(loras=(("lcm", 1.0),))
    )
    got = _run(counted, job)
    assert counter.rows.get(UNET) == 4 * (2 if guidance > 1 else 1) and DISTILLED_UNET not in counter.rows
    reference = diffusers.StableDiffusionPipeline.from_pretrained(default_model)
    reference.set_progress_bar_config(disable=True)
    reference.load_lora_weights(str(loras), weight_name="lcm.safetensors", adapter_name="lcm")
    want = reference_images(
        reference,
        scheduler,
        FEW_STEP_SAMPLERS,
        prompt=PROMPT,
        num_inference_steps=4,
        guidance_scale=guidance,
        seed=3,
    )
    assert psnr(got, want) >= 40
    without = _run(
        ours,
        Generation(
            SamplingParams(PROMPT, "", 1, 64, 64, 4, guidance, 3, "ddim"), adapters=AdapterInputs(loras=(("lcm", 1.0),))
        ),
    )
    assert not np.array_equal(without, got)  # the sampler is the few-step one, not DDIM under its name


def test_requests_without_a_few_step_sampler_never_touch_the_distilled_unet(distilled):
    counted, counter = _counting(distilled)
    _run(counted, Generation(SamplingParams(PROMPT, "", 1, 64, 64, 3, 7.5, 0, "euler")))
    assert counter.rows.get(UNET) == 6 and DISTILLED_UNET not in counter.rows


def test_every_technique_off_gives_the_bytes_of_the_loop_before_them(plain):
    """Images recorded with main's loop before issue 33 (``tests/loop_cases.py``), regenerated: the same bytes."""
    for name, job in cases().items():
        assert_recorded_bytes(_run(plain, job), name)


def _dynamic_guidance(guided: int):
    """diffusers' dynamic classifier-free guidance recipe: guidance off after step ``guided - 1``."""

    def cut(pipeline, index, _timestep, tensors):
        if index == guided - 1:
            pipeline._guidance_scale = 0.0
            tensors["prompt_embeds"] = tensors["prompt_embeds"].chunk(2)[-1]
        return tensors

    return {"callback_on_step_end": cut, "callback_on_step_end_tensor_inputs": ["prompt_embeds"]}


@pytest.mark.parametrize(("scheduler", "steps", "cutoff", "guided"), [("ddim", 10, 0.4, 4), ("euler", 7, 0.5, 4)])
def test_a_guidance_cutoff_is_diffusers_dynamic_guidance(plain, diffusers_pipeline, scheduler, steps, cutoff, guided):
    assert guided_steps(steps, cutoff) == guided
    counted, counter = _counting(plain)
    job = Generation(SamplingParams(PROMPT, "blurry", 2, 64, 64, steps, 7.5, 9, scheduler, guidance_cutoff=cutoff))
    got = _run(counted, job)
    assert counter.rows[UNET] == 2 * (2 * guided + (steps - guided))
    want = reference_images(
        diffusers_pipeline,
        scheduler,
        prompt=PROMPT,
        negative_prompt="blurry",
        num_images_per_prompt=2,
        num_inference_steps=steps,
        guidance_scale=7.5,
        seed=9,
        **_dynamic_guidance(guided),
    )
    assert psnr(got, want) >= 40
    np.testing.assert_array_equal(_run(plain, job), got)  # deterministic for a seed
    full = _run(plain, job.replaced(guidance_cutoff=1.0))
    assert psnr(full, got) < 60  # the cut-off changed the images (a little)


def test_a_guidance_cutoff_composes_with_images_and_controlnets(controlled, inpaint_model, tmp_path_factory):
    """img2img, a 9-channel inpainting UNet and a ControlNet lose their negative rows at the cut-off too."""
    from build_engines.text_to_image.build import build

    image, mask = input_image(64), box_mask(64)
    counted, counter = _counting(controlled)
    job = Generation(
        SamplingParams(PROMPT, "", 1, 64, 64, 8, 7.5, 2, "ddim"),
        inputs=ImageInputs(controls=(Control("edges", edges_image(64)),)),
    )
    _run(counted, job.replaced(guidance_cutoff=0.5, images=(image,), strength=0.5))
    assert counter.rows[UNET] == 2 * 2 + 2 and counter.rows["controlnet_edges"] == 2 * 2 + 2
    folder = build(inpaint_model, repository=tmp_path_factory.mktemp("repository-inpaint"))
    inpainting, counter = _counting(TextToImagePipeline(folder, OnnxRuntimeRunner(folder)))
    inpaint = Generation(
        SamplingParams(PROMPT, "", 1, 64, 64, 6, 7.5, 2, "ddim", guidance_cutoff=0.5),
        inputs=ImageInputs(images=(image,), mask=mask),
    )
    _run(inpainting, inpaint)
    assert counter.rows[UNET] == 3 * 2 + 3


@pytest.fixture(scope="module")
def cached(default_model, tmp_path_factory):
    """The default's engines with step caching's pair."""
    from build_engines.text_to_image.build import build

    folder = build(default_model, tmp_path_factory.mktemp("repository-step-cache"), step_cache=True)
    assert {UNET_DEEP, UNET_SHALLOW} <= set(folder.specs)
    return TextToImagePipeline(folder, OnnxRuntimeRunner(folder))


def test_the_shallow_unet_on_a_step_s_own_deep_features_is_the_whole_unet(cached):
    """The split is exact: the shallow branch given the features the whole UNet kept for the same input."""
    specs, rng = cached.specs, np.random.default_rng(0)
    inputs = {
        "sample": rng.standard_normal((3, 4, 16, 12)).astype(np.float32),
        "timestep": np.array([999.0, 500.0, 1.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((3, *specs[UNET].input("encoder_hidden_states").shape())),
    }
    inputs["encoder_hidden_states"] = inputs["encoder_hidden_states"].astype(np.float32)
    run = lambda name, feeds: asyncio.run(cached.engines.infer(specs[name], feeds))  # noqa: E731
    deep, whole = run(UNET_DEEP, inputs), run(UNET, inputs)
    np.testing.assert_allclose(deep["noise_pred"], whole["noise_pred"], atol=1e-5)
    shallow = run(UNET_SHALLOW, inputs | {DEEP_FEATURES: deep[DEEP_FEATURES]})
    np.testing.assert_allclose(shallow["noise_pred"], whole["noise_pred"], atol=1e-4)


def _deep_cache_reference(pipeline, interval: int, **kwargs) -> np.ndarray:
    """diffusers' pipeline under DeepCache's own helper (``DeepCacheSDHelper``, shallowest branch)."""
    from DeepCache import DeepCacheSDHelper

    helper = DeepCacheSDHelper(pipe=pipeline)
    helper.set_params(cache_interval=interval, cache_branch_id=0)
    helper.enable()
    try:
        return reference_images(pipeline, **kwargs)
    finally:
        helper.disable()


@pytest.mark.parametrize(("scheduler", "steps", "interval", "n"), [("ddim", 10, 3, 1), ("euler", 8, 2, 2)])
def test_step_caching_is_deepcache(cached, diffusers_pipeline, scheduler, steps, interval, n):
    counted, counter = _counting(cached)
    job = Generation(
        SamplingParams(PROMPT, "blurry", n, 64, 64, steps, 7.5, 4, scheduler), cache=CachePolicy(interval=interval)
    )
    got = _run(counted, job)
    whole = -(-steps // interval)
    assert counter.rows[UNET_DEEP] == 2 * n * whole and counter.rows[UNET_SHALLOW] == 2 * n * (steps - whole)
    assert UNET not in counter.rows
    kwargs = {"prompt": PROMPT, "negative_prompt": "blurry", "num_images_per_prompt": n, "seed": 4}
    want = _deep_cache_reference(
        diffusers_pipeline, interval, scheduler=scheduler, num_inference_steps=steps, guidance_scale=7.5, **kwargs
    )
    assert psnr(got, want) >= 40
    np.testing.assert_array_equal(_run(cached, job), got)  # deterministic for a seed


def test_step_caching_with_a_guidance_cutoff_is_both_recipes_at_once(cached, diffusers_pipeline):
    """Guidance ends on a whole-UNet step (DeepCache's helper keeps guided rows otherwise); ending between them, the
    kept features' prompt rows serve the unguided steps."""
    job = Generation(
        SamplingParams(PROMPT, "", 1, 64, 64, 10, 7.5, 6, "ddim", guidance_cutoff=0.6), cache=CachePolicy(interval=2)
    )
    want = _deep_cache_reference(
        diffusers_pipeline,
        2,
        scheduler="ddim",
        prompt=PROMPT,
        num_inference_steps=10,
        guidance_scale=7.5,
        seed=6,
        **_dynamic_guidance(6),
    )
    assert psnr(_run(cached, job), want) >= 40
    counted, counter = _counting(cached)
    between = _run(counted, job.replaced(guidance_cutoff=0.5))  # guided steps 0-4, whole UNet 0, 2, 4...
    assert counter.rows[UNET_DEEP] == 2 + 2 + 2 + 1 + 1 and counter.rows[UNET_SHALLOW] == 2 + 2 + 1 + 1 + 1
    assert psnr(between, want) >= 25  # near the cut-off at 6


def test_interval_1_on_a_stack_with_step_caching_is_the_loop_before_it(cached):
    for name, job in cases().items():
        assert_recorded_bytes(_run(cached, job), name)


def test_cached_jobs_the_engines_cannot_run_are_refused_naming_cache_interval(cached, plain):
    job = Generation(SamplingParams(PROMPT, "", 1, 64, 64, 4, 7.5, 0, "ddim"), cache=CachePolicy(interval=2))
    step_cache.check(job.outline, cached.specs, UNET)
    refusals = [
        (plain.specs, job, "--step-cache"),
        (cached.specs, job.replaced(loras=(("style", 1.0),)), "LoRAs"),
        (cached.specs, job.replaced(controls=(Control("edges", edges_image(64)),)), "ControlNets"),
    ]
    if DISTILLED_UNET in cached.specs:
        lcm = job.replaced(scheduler="lcm")
        refusals.append((cached.specs, lcm, "distilled UNet"))
    for specs, refused, says in refusals:
        with pytest.raises(InvalidInput, match=says) as error:
            step_cache.check(refused.outline, specs, cached.family.step_engine(refused.outline))
        assert error.value.field == "cache_interval"
    for interval in (0, 11):
        with pytest.raises(ValidationError) as error:
            GenerationRequest(prompt="x", cache_interval=interval)
        assert invalid_input(error.value).field == "cache_interval"
