"""Images into the loop, in-process (ONNX Runtime), against diffusers' own pipelines on the same weights.

img2img (StableDiffusion[XL]Img2ImgPipeline), inpainting with a 4-channel UNet (the pipelines' latent blending) and
a 9-channel one (StableDiffusion[XL]InpaintPipeline), ControlNets single and stacked
(StableDiffusion[XL]ControlNetPipeline with a ControlNetModel and a MultiControlNetModel); DDIM and Euler.
"""

import asyncio
import copy

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.generation import (
    AdapterInputs,
    Control,
    Generation,
    ImageInputs,
    IpReferences,
    SamplingParams,
)
from serve.text_to_image.onnx_runner import OnnxRuntimeRunner
from serve.text_to_image.pipeline import TextToImagePipeline
from serve.text_to_image.spec import UNET, VAE_ENCODER
from tests.conftest import psnr, reference_images
from tests.controls import box_mask, edges_image, input_image

PROMPT = "a red heart icon"


class Counting:
    """An engine runner that counts the calls of each engine."""

    def __init__(self, runner) -> None:
        self.runner, self.calls = runner, {}

    async def infer(self, spec, inputs, priority=0):
        self.calls[spec.name] = self.calls.get(spec.name, 0) + 1
        return await self.runner.infer(spec, inputs, priority)


def _counting(pipeline: TextToImagePipeline) -> tuple[TextToImagePipeline, Counting]:
    """``pipeline`` on the same engines, its calls counted."""
    counted = copy.copy(pipeline)
    counted.engines = Counting(pipeline.engines)
    return counted, counted.engines


def _pipeline(engine_dir) -> TextToImagePipeline:
    folder = EngineFolder(engine_dir)
    return TextToImagePipeline(folder, OnnxRuntimeRunner(folder))


def _run(pipeline: TextToImagePipeline, job: Generation) -> np.ndarray:
    return np.stack(asyncio.run(pipeline.generate(job)).images)


@pytest.fixture(scope="module")
def controlled(control_engine_dir):
    return _pipeline(control_engine_dir)


@pytest.fixture(scope="module")
def plain(engine_dir):
    return _pipeline(engine_dir)


@pytest.fixture(scope="module")
def inpainting(inpaint_model, tmp_path_factory):
    from build_engines.text_to_image.build import build

    return _pipeline(build(inpaint_model, repository=tmp_path_factory.mktemp("repository-inpaint")).path)


@pytest.fixture(scope="module")
def xl_controlled(xl_control_engine_dir):
    return _pipeline(xl_control_engine_dir)


@pytest.fixture(scope="module")
def xl_inpainting(xl_inpaint_model, tmp_path_factory):
    from build_engines.text_to_image.build import build

    return _pipeline(build(xl_inpaint_model, repository=tmp_path_factory.mktemp("repository-xl-inpaint")).path)


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
@pytest.mark.parametrize(("strength", "n"), [(0.5, 1), (0.8, 2)])
def test_img2img_matches_diffusers(plain, diffusers_pipeline, scheduler, strength, n):
    image = input_image(64)
    job = Generation(
        SamplingParams(PROMPT, "", n, 64, 64, 10, 7.5, 3, scheduler),
        inputs=ImageInputs(images=(image,), strength=strength),
    )
    want = reference_images(
        diffusers.StableDiffusionImg2ImgPipeline.from_pipe(diffusers_pipeline),
        scheduler,
        prompt=PROMPT,
        image=Image.fromarray(image),
        strength=strength,
        num_inference_steps=10,
        guidance_scale=7.5,
        num_images_per_prompt=n,
        seed=3,
    )
    got = _run(plain, job)
    assert got.shape == want.shape == (n, 64, 64, 3)
    assert psnr(got, want) >= 40


def test_several_input_images_are_diffusers_batch_of_images(plain, diffusers_pipeline):
    images = (input_image(64), np.ascontiguousarray(input_image(64)[::-1]))
    job = Generation(
        SamplingParams(PROMPT, "", 4, 64, 64, 8, 7.5, 5, "euler"), inputs=ImageInputs(images=images, strength=0.7)
    )
    want = reference_images(
        diffusers.StableDiffusionImg2ImgPipeline.from_pipe(diffusers_pipeline),
        "euler",
        prompt=[PROMPT] * 2,
        image=[Image.fromarray(image) for image in images],
        strength=0.7,
        num_inference_steps=8,
        guidance_scale=7.5,
        num_images_per_prompt=2,
        seed=5,
    )
    assert psnr(_run(plain, job), want) >= 40


def test_a_strength_too_small_for_a_step_returns_the_image_through_the_vae(plain, diffusers_pipeline):
    pipeline, counting = _counting(plain)
    image = input_image(64)
    job = Generation(
        SamplingParams(PROMPT, "", 1, 64, 64, 10, 7.5, 3, "ddim"), inputs=ImageInputs(images=(image,), strength=0.05)
    )
    result = asyncio.run(pipeline.generate(job))
    assert UNET not in counting.calls and counting.calls[VAE_ENCODER] == 1
    vae = diffusers_pipeline.vae
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.sample(torch.Generator().manual_seed(3))
        decoded = vae.decode(latents).sample[0].permute(1, 2, 0)
    round_trip = ((decoded / 2 + 0.5).clamp(0, 1) * 255).round().byte().numpy()
    assert psnr(result.images[0], round_trip) >= 40


@pytest.mark.parametrize(("scheduler", "strength"), [("ddim", 1.0), ("euler", 1.0), ("euler", 0.7)])
def test_inpainting_with_a_4_channel_unet_matches_diffusers_blending(plain, diffusers_pipeline, scheduler, strength):
    image, mask = input_image(64), box_mask(64)
    job = Generation(
        SamplingParams(PROMPT, "", 1, 64, 64, 10, 7.5, 3, scheduler),
        inputs=ImageInputs(images=(image,), mask=mask, strength=strength),
    )
    want = reference_images(
        diffusers.StableDiffusionInpaintPipeline.from_pipe(diffusers_pipeline),
        scheduler,
        prompt=PROMPT,
        image=Image.fromarray(image),
        mask_image=Image.fromarray(mask),
        strength=strength,
        num_inference_steps=10,
        guidance_scale=7.5,
        height=64,
        width=64,
        seed=3,
    )
    got = _run(plain, job)
    assert psnr(got, want) >= 40
    kept = box_mask(64) == 0
    assert psnr(got[0][kept], image[kept]) > psnr(got[0][~kept], image[~kept])  # the unmasked area is the image's


@pytest.fixture(scope="module")
def diffusers_inpaint(inpaint_model):
    pipeline = diffusers.StableDiffusionInpaintPipeline.from_pretrained(inpaint_model)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.mark.parametrize(("scheduler", "strength", "n"), [("ddim", 1.0, 2), ("euler", 1.0, 1), ("euler", 0.6, 1)])
def test_inpainting_with_a_9_channel_unet_matches_diffusers(inpainting, diffusers_inpaint, scheduler, strength, n):
    assert inpainting.dims.inpainting and inpainting.specs[UNET].input("sample").dims[0] == 9
    image, mask = input_image(64), box_mask(64)
    job = Generation(
        SamplingParams(PROMPT, "", n, 64, 64, 10, 7.5, 3, scheduler),
        inputs=ImageInputs(images=(image,), mask=mask, strength=strength),
    )
    want = reference_images(
        diffusers_inpaint,
        scheduler,
        prompt=PROMPT,
        image=Image.fromarray(image),
        mask_image=Image.fromarray(mask),
        strength=strength,
        num_inference_steps=10,
        guidance_scale=7.5,
        height=64,
        width=64,
        num_images_per_prompt=n,
        seed=3,
    )
    assert psnr(_run(inpainting, job), want) >= 40


def test_text_on_an_inpainting_checkpoint_is_its_pipeline_with_a_white_mask(inpainting, diffusers_inpaint):
    want = reference_images(
        diffusers_inpaint,
        "ddim",
        prompt=PROMPT,
        image=Image.fromarray(input_image(64)),  # any image: all of it is masked, at strength 1
        mask_image=Image.new("L", (64, 64), 255),
        num_inference_steps=8,
        guidance_scale=7.5,
        height=64,
        width=64,
        seed=4,
    )
    assert psnr(_run(inpainting, Generation(SamplingParams(PROMPT, "", 1, 64, 64, 8, 7.5, 4, "ddim"))), want) >= 40


def _controlnet_reference(pipeline, folders, names, controls, scheduler, size, steps, guidance):
    nets = [diffusers.ControlNetModel.from_pretrained(folders[name]) for name in names]
    single = len(nets) == 1
    reference = (
        diffusers.StableDiffusionXLControlNetPipeline
        if isinstance(pipeline, diffusers.StableDiffusionXLPipeline)
        else diffusers.StableDiffusionControlNetPipeline
    ).from_pipe(pipeline, controlnet=nets[0] if single else nets)
    pick = (lambda values: values[0]) if single else list
    return reference_images(
        reference,
        scheduler,
        prompt=PROMPT,
        image=pick([Image.fromarray(c.image) for c in controls]),
        controlnet_conditioning_scale=pick([c.scale for c in controls]),
        control_guidance_start=pick([c.start for c in controls]),
        control_guidance_end=pick([c.end for c in controls]),
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=size,
        width=size,
        seed=3,
    )


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
@pytest.mark.parametrize("stacked", [False, True], ids=["one", "two-stacked"])
def test_controlnets_match_diffusers(controlled, plain, diffusers_pipeline, controlnet_dirs, scheduler, stacked):
    controls = (Control("edges", edges_image(64), 0.8),)
    if stacked:
        controls += (Control("depth", input_image(48), 0.6, 0.1, 0.7),)  # another size: resized as diffusers does
    job = Generation(
        SamplingParams(PROMPT, "", 1, 64, 64, 10, 7.5, 3, scheduler), inputs=ImageInputs(controls=controls)
    )
    names = [c.name for c in controls]
    want = _controlnet_reference(diffusers_pipeline, controlnet_dirs.sd, names, controls, scheduler, 64, 10, 7.5)
    got = _run(controlled, job)
    assert psnr(got, want) >= 40
    uncontrolled = _run(plain, Generation(SamplingParams(PROMPT, "", 1, 64, 64, 10, 7.5, 3, scheduler)))
    assert psnr(got, uncontrolled) < 35  # the ControlNets steer the image


def test_without_controls_a_controlnet_ready_unet_draws_the_plain_image(controlled, plain):
    job = Generation(SamplingParams(PROMPT, "blurry", 2, 72, 56, 6, 7.5, 9, "euler"))
    pipeline, counting = _counting(controlled)
    assert psnr(np.stack(asyncio.run(pipeline.generate(job)).images), _run(plain, job)) >= 60
    assert set(counting.calls) == {"text_encoder", UNET, "vae_decoder"}  # zero residuals, no ControlNet call


def test_a_controlnet_off_for_part_of_the_steps_is_not_called_then(controlled):
    pipeline, counting = _counting(controlled)
    controls = (Control("edges", edges_image(64), 1.0, 0.5, 1.0),)
    asyncio.run(
        pipeline.generate(
            Generation(SamplingParams(PROMPT, "", 1, 64, 64, 10, 7.5, 3, "ddim"), inputs=ImageInputs(controls=controls))
        )
    )
    assert counting.calls["controlnet_edges"] == 5 and counting.calls[UNET] == 10


@pytest.fixture(scope="module")
def diffusers_xl_inpaint(xl_inpaint_model):
    pipeline = diffusers.StableDiffusionXLInpaintPipeline.from_pretrained(xl_inpaint_model)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_sdxl_img2img_inpainting_and_controlnets_match_diffusers(
    xl_controlled, xl_inpainting, diffusers_xl_pipeline, diffusers_xl_inpaint, controlnet_dirs, scheduler
):
    image, mask = input_image(128), box_mask(128)
    common = {"prompt": PROMPT, "num_inference_steps": 6, "guidance_scale": 6.0, "seed": 3}
    img2img = Generation(
        SamplingParams(PROMPT, "", 1, 128, 128, 6, 6.0, 3, scheduler), inputs=ImageInputs(images=(image,), strength=0.6)
    )
    want = reference_images(
        diffusers.StableDiffusionXLImg2ImgPipeline.from_pipe(diffusers_xl_pipeline),
        scheduler,
        image=Image.fromarray(image),
        strength=0.6,
        **common,
    )
    assert psnr(_run(xl_controlled, img2img), want) >= 40
    inpaint = Generation(
        SamplingParams(PROMPT, "", 1, 128, 128, 6, 6.0, 3, scheduler), inputs=ImageInputs(images=(image,), mask=mask)
    )
    kwargs = {"image": Image.fromarray(image), "mask_image": Image.fromarray(mask), "strength": 1.0}
    kwargs |= {"height": 128, "width": 128} | common
    blending = diffusers.StableDiffusionXLInpaintPipeline.from_pipe(diffusers_xl_pipeline)
    assert psnr(_run(xl_controlled, inpaint), reference_images(blending, scheduler, **kwargs)) >= 40
    assert psnr(_run(xl_inpainting, inpaint), reference_images(diffusers_xl_inpaint, scheduler, **kwargs)) >= 40
    controls = (Control("edges", edges_image(128), 0.8), Control("depth", image, 0.5, 0.2, 0.9))
    job = Generation(
        SamplingParams(PROMPT, "", 1, 128, 128, 6, 6.0, 3, scheduler), inputs=ImageInputs(controls=controls)
    )
    want = _controlnet_reference(
        diffusers_xl_pipeline, controlnet_dirs.sdxl, ["edges", "depth"], controls, scheduler, 128, 6, 6.0
    )
    assert psnr(_run(xl_controlled, job), want) >= 40


def test_loras_an_ip_adapter_and_controlnets_compose_in_one_engine_folder(
    default_model, controlnet_dirs, tmp_path_factory
):
    """LoRA slots wrap the ControlNet-ready UNet, which wraps the IP-Adapter's: all three in one request, and img2img
    with a LoRA (the style-transfer recipe), against diffusers with the same adapters loaded."""
    from build_engines.text_to_image.adapters import AdapterBuild
    from build_engines.text_to_image.build import build
    from build_engines.text_to_image.loras import build_registry, save_registry
    from tests.adapters import make_adapters, reference_image

    folder = tmp_path_factory.mktemp("composed")
    adapters = make_adapters(default_model, folder / "adapters")
    built_for = AdapterBuild(lora=True, ip_adapters={"ip": adapters.ip_adapter})
    engines = build(default_model, folder / "repository", adapters=built_for, controlnets=controlnet_dirs.sd)
    save_registry(build_registry(adapters.loras, engines, default_model), folder / "registry")
    ours = TextToImagePipeline(engines, OnnxRuntimeRunner(engines, loras_dir=folder / "registry"))
    reference = diffusers.StableDiffusionPipeline.from_pretrained(default_model)
    reference.set_progress_bar_config(disable=True)
    reference.load_lora_weights(str(adapters.loras), weight_name=adapters.lora_file("style"), adapter_name="style")
    reference.load_ip_adapter(str(adapters.ip_adapter), subfolder="", weight_name="ip_adapter.safetensors")
    reference.set_adapters(["style"], [0.8])
    reference.set_ip_adapter_scale(0.6)
    picture, _ = reference_image(seed=4)
    control = Control("edges", edges_image(64), 0.7)
    job = Generation(
        SamplingParams(PROMPT, "", 1, 64, 64, 8, 7.5, 3, "euler"),
        adapters=AdapterInputs(loras=(("style", 0.8),), ip=(IpReferences(images=(np.asarray(picture),), scale=0.6),)),
        inputs=ImageInputs(controls=(control,)),
    )
    want = reference_images(
        diffusers.StableDiffusionControlNetPipeline.from_pipe(
            reference, controlnet=diffusers.ControlNetModel.from_pretrained(controlnet_dirs.sd["edges"])
        ),
        "euler",
        prompt=PROMPT,
        image=Image.fromarray(control.image),
        controlnet_conditioning_scale=0.7,
        ip_adapter_image=picture,
        num_inference_steps=8,
        height=64,
        width=64,
        seed=3,
    )
    assert psnr(_run(ours, job), want) >= 40
    reference.set_ip_adapter_scale(0.0)
    image = input_image(64)
    job = Generation(
        SamplingParams(PROMPT, "", 1, 64, 64, 8, 7.5, 3, "ddim"),
        adapters=AdapterInputs(loras=(("style", 0.8),)),
        inputs=ImageInputs(images=(image,), strength=0.6),
    )
    want = reference_images(
        diffusers.StableDiffusionImg2ImgPipeline.from_pipe(reference),
        "ddim",
        prompt=PROMPT,
        image=Image.fromarray(image),
        strength=0.6,
        ip_adapter_image=picture,  # at scale 0: as Easel's rows without a reference
        num_inference_steps=8,
        seed=3,
    )
    assert psnr(_run(ours, job), want) >= 40
