"""A request's images and ControlNets: the schema's checks, decoding, masks, outpainting, Canny, the edits form."""

import asyncio
import base64
import json

import httpx
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError
from starlette.requests import Request

from serve.adapters.support import AdapterSupport
from serve.errors import InvalidInput, invalid_input
from serve.http.forms import FILE_FIELDS, read_edit_form
from serve.protocol.schema import GenerationRequest
from serve.text_to_image.controlnet import (
    ControlNetEntry,
    ControlNetSupport,
    JobControls,
    control_weight,
    residual_layout,
)
from serve.text_to_image.families import family_of_folder
from serve.text_to_image.generation import Control, Generation, Motion, SamplingParams
from serve.text_to_image.images import ImageSources, canny, decode_images, edit_mask, output_size
from serve.text_to_image.spec import RESIDUAL_PREFIX, UNET
from tests.controls import b64, box_mask, input_image, openai_mask
from tests.images import encode, png_header_only


def decoded_images(request: GenerationRequest, native_size: int):
    """``request``'s images decoded as its replica decodes them, at the size its admission read."""
    return decode_images(ImageSources.of(request), *output_size(request, native_size))


def _refused(**body) -> InvalidInput:
    with pytest.raises(ValidationError) as error:
        GenerationRequest.model_validate({"prompt": "x", **body})
    return invalid_input(error.value)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mask": b64(box_mask())}, "mask"),  # a mask without an image
        ({"strength": 0.5}, "strength"),
        ({"image": ["aGk="], "strength": 1.5}, "strength"),
        ({"image": ["aGk="], "strength": float("nan")}, "strength"),
        ({"image": ["aGk="], "strength": -0.1}, "strength"),
        ({"image": ["aGk="], "strength": "0.5"}, "strength"),  # strict: no strings for numbers
        ({"image": ["@@@@"]}, "image"),
        ({"image": ["aGk="] * 3, "n": 2}, "n"),  # 6 images
        ({"image": ["aGk="], "outpaint": {"left": 12}}, "outpaint.left"),
        ({"image": ["aGk="], "outpaint": {}}, "outpaint"),
        ({"controlnets": [{"name": "edges", "image": "aGk=", "start": 0.6, "end": 0.4}]}, "controlnets.0.start"),
        ({"controlnets": [{"name": "edges", "image": "aGk=", "scale": float("inf")}]}, "controlnets.0.scale"),
        (
            {"controlnets": [{"name": "e", "image": "aGk=", "preprocess": "canny", "low_threshold": 300.0}]},
            "controlnets.0.low_threshold",
        ),
    ],
)
def test_bad_image_fields_are_400s_naming_the_field(body, field):
    assert _refused(**body).field == field


def test_strength_defaults_as_diffusers_and_counts_the_steps_that_run():
    image = b64(input_image())
    assert GenerationRequest(prompt="x", image=[image]).effective_strength == 0.8
    assert GenerationRequest(prompt="x", image=[image], mask=image).effective_strength == 1.0
    request = GenerationRequest(prompt="x", image=[image, image], n=2, strength=0.45, num_inference_steps=10)
    assert (request.rows, request.denoising_steps) == (4, 4)
    assert GenerationRequest(prompt="x", controlnets=[{"name": "a", "image": image}] * 2).passes == 3


def test_an_image_s_record_names_input_images_by_their_content():
    one, other = b64(input_image()), b64(box_mask())
    hashed = GenerationRequest(prompt="x", image=[one], mask=other).images_hashed()
    assert hashed["image"][0].startswith("sha256:") and one not in json.dumps(hashed)
    assert hashed != GenerationRequest(prompt="x", image=[other], mask=other).images_hashed()


def test_images_decode_at_the_output_size_with_the_openai_mask_read_from_its_alpha():
    mask = box_mask(64)
    transparent = base64.b64encode(openai_mask(mask)).decode()
    request = GenerationRequest(prompt="x", image=[b64(input_image(64))], mask=transparent)
    decoded = decoded_images(request, 512)
    assert (decoded.width, decoded.height) == (64, 64) and decoded.images[0].shape == (64, 64, 3)
    assert np.array_equal(decoded.mask, mask)  # transparent = draw = white
    grey = edit_mask(encode(Image.fromarray(mask)))  # no alpha: diffusers' convention, white draws
    assert np.array_equal(grey, mask)


def test_outpainting_pads_the_image_and_masks_the_new_area():
    request = GenerationRequest(prompt="x", image=[b64(input_image(64))], outpaint={"left": 16, "bottom": 8})
    assert output_size(request, 512) == (80, 72)
    decoded = decoded_images(request, 512)
    assert decoded.images[0].shape == (72, 80, 3)
    assert (decoded.mask[:, :16] == 255).all() and (decoded.mask[64:] == 255).all()
    assert (decoded.mask[:64, 16:] == 0).all()
    assert np.array_equal(decoded.images[0][:64, 16:], input_image(64))
    assert np.array_equal(decoded.images[0][:64, 0], decoded.images[0][:64, 16])  # edge pixels repeated


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"image": [base64.b64encode(b"not an image").decode()]}, "image"),
        ({"image": [base64.b64encode(png_header_only(5000, 5000)).decode()]}, "image"),  # over 4096 a side
        ({"image": [b64(input_image(64)), b64(input_image(72))]}, "image"),  # two sizes
        ({"image": [b64(input_image(64))], "mask": b64(box_mask(72))}, "mask"),
        ({"image": [b64(input_image(64))], "mask": base64.b64encode(b"\x89PNG broken").decode()}, "mask"),
        ({"image": [b64(input_image(40))]}, "size"),  # under the API's smallest side, and no size given
        ({"controlnets": [{"name": "edges", "image": base64.b64encode(b"junk").decode()}]}, "controlnets.0.image"),
    ],
)
def test_images_that_do_not_decode_or_fit_are_400s_naming_the_field(body, field):
    with pytest.raises(InvalidInput) as error:
        decoded_images(GenerationRequest(prompt="x", **body), 512)
    assert error.value.field == field


def test_canny_finds_thin_edges_where_the_image_changes_and_none_above_the_thresholds():
    pixels = np.full((32, 32, 3), 255, np.uint8)
    pixels[8:24, 8:24] = (200, 30, 30)
    edges = canny(pixels, 100, 200)
    assert edges.shape == (32, 32, 3) and set(np.unique(edges)) == {0, 255}
    row = edges[16, :, 0] > 0
    assert row.sum() == 2 and row[8] and row[24]  # one pixel wide at each side of the square
    assert not edges[:6].any() and not edges[12:20, 12:20].any()  # flat areas: no edge
    assert not canny(pixels, 5000, 6000).any()
    request = GenerationRequest(
        prompt="x", controlnets=[{"name": "edges", "image": b64(pixels), "preprocess": "canny"}]
    )
    assert np.array_equal(decoded_images(request, 64).controls[0].image, edges)


def test_a_controlnet_guides_the_steps_between_start_and_end_as_diffusers_keeps_it():
    control = Control("edges", np.zeros((8, 8, 3), np.uint8), 0.5, 0.2, 0.6)
    assert [control_weight(control, i, 10) for i in range(10)] == [0, 0, 0.5, 0.5, 0.5, 0.5, 0, 0, 0, 0]


class _NoEngines:
    """An engine runner a step without ControlNet work must not call."""

    async def infer(self, spec, inputs):
        raise AssertionError(f"{spec.name} called")


def test_residuals_fit_the_step_engine_a_still_s_zeros_and_a_video_s_none(default_model):
    """On a stack with a ControlNet and a motion adapter: a still's UNet takes zero residuals, a video's motion UNet
    (5-D latents, frames on the third axis) takes none, so a video runs there (it never finished before)."""
    controlnets = ControlNetSupport((ControlNetEntry("edges", "/x", family="sd"),))
    family = family_of_folder(default_model).with_engines(AdapterSupport(), controlnets, False, {"wave": "/m"})
    specs, (motion,) = family.specs, family.motion_engines
    scale = family.dims.vae_scale_factor
    cases = (
        (Generation(SamplingParams("x", None, 2, 64, 48, 3, 7.5, 1, "ddim")), UNET, (4, 4, 48 // scale, 64 // scale)),
        (Generation(SamplingParams("x", None, 1, 64, 48, 3, 7.5, 1, "ddim"), motion=Motion("wave", 6)), motion, None),
    )
    for job, engine, shape in cases:
        sample = np.zeros(shape or (2, 4, 6, 48 // scale, 64 // scale), np.float32)
        controls = JobControls(specs, job, [], True, engine)
        got = asyncio.run(controls.residuals(_NoEngines(), 0, 3, sample, np.zeros(len(sample), np.float32), {}))
        taken = {t.name: t for t in specs[engine].inputs if t.name.startswith(RESIDUAL_PREFIX)}
        assert set(got) == set(taken) and bool(taken) == (engine == UNET)
        for name, residual in got.items():
            assert residual.shape == (4, *taken[name].shape(48 // scale, 64 // scale)) and not residual.any()


def test_unknown_controlnets_and_ones_made_for_another_family_are_400s_naming_the_field():
    support = ControlNetSupport(
        (
            ControlNetEntry("edges", "/x", family="sd"),
            ControlNetEntry("xl", "/y", "error", "sdxl", "made for StableDiffusionXLPipeline models"),
        )
    )
    support.check([Control("edges", None)])
    for name, words in (("nope", "unknown ControlNet 'nope' (ready: edges)"), ("xl", "made for StableDiffusionXL")):
        with pytest.raises(InvalidInput) as error:
            support.check([Control("edges", None), Control(name, None)])
        assert error.value.field == "controlnets.1.name" and words in error.value.message
    listed = support.listing()[1]
    assert listed == {"name": "xl", "status": "error", "family": "sdxl", "error": support.entries[1].error}


def test_the_residual_layout_is_diffusers_down_blocks_then_mid():
    config = {"block_out_channels": [32, 64, 64], "layers_per_block": 1}
    assert residual_layout(config) == ((32, 1), (32, 1), (32, 2), (64, 2), (64, 4), (64, 4), (64, 4))
    assert len(residual_layout({"block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2})) == 13  # SD


def _form_request(files, data) -> Request:
    built = httpx.Request("POST", "http://x/v1/images/edits", files=files, data=data)
    body = built.read()
    headers = [(name.lower(), value) for name, value in built.headers.raw]
    scope = {"type": "http", "method": "POST", "path": "/v1/images/edits", "headers": headers}

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def test_the_edits_form_reads_files_and_json_fields_into_the_request():
    image, mask = encode(Image.fromarray(input_image())), openai_mask(box_mask())
    controls = [{"name": "edges", "image": b64(input_image()), "scale": 0.5}]
    data = {
        "prompt": "a fox",
        "n": "2",
        "strength": "0.6",
        "seed": "7",
        "background": "auto",  # the openai client's value: an opaque image, not a job
        "controlnets": json.dumps(controls),
        "size": "64x64",
    }
    files = [("image[]", ("a.png", image)), ("image[]", ("b.png", image)), ("mask", ("m.png", mask))]
    request = asyncio.run(read_edit_form(_form_request(files, data)))
    assert request.image == [base64.b64encode(image).decode()] * 2 and request.mask == base64.b64encode(mask).decode()
    assert (request.n, request.strength, request.seed, request.background) == (2, 0.6, 7, False)
    assert request.controlnets[0].scale == 0.5 and request.size == "64x64"


@pytest.mark.parametrize(
    ("files", "data", "field"),
    [
        ([], {"prompt": "x"}, "image"),
        ([("image", ("a.png", b"png"))], {"prompt": "x", "strength": "lots"}, "strength"),
        ([("image", ("a.png", b"png"))], {"prompt": "x", "strength": "2"}, "strength"),
        ([("image", ("a.png", b"png"))], {"prompt": "x", "background": "transparent"}, "background"),
        ([("image", ("a.png", b"png")), ("prompt", ("p.txt", b"x"))], {}, "prompt"),
    ],
)
def test_bad_edit_forms_are_400s_naming_the_field(files, data, field):
    with pytest.raises(InvalidInput) as error:
        asyncio.run(read_edit_form(_form_request(files, data)))
    assert error.value.field == field


NESTED = "[" * 10_000 + "]" * 10_000


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"prompt": "x", "controlnets": NESTED}, "controlnets"),  # a RecursionError was a 503
        ({"prompt": "x", "loras": NESTED}, "loras"),
        ({"prompt": "x", "outpaint": "{" + '"a":{' * 10_000 + "}" * 10_001}, "outpaint"),
        ({"prompt": "a fox".encode("utf-16")}, "prompt"),  # UTF-16 with its BOM: was read as latin-1
        ({"prompt": "café".encode("latin-1")}, "prompt"),
        ({"prompt": ["a fox", "a cat"]}, "prompt"),  # repeated: the last one was taken
        ({"prompt": "x", "n": ["1", "4"]}, "n"),
        ({"prompt": "x", "style": "v" * (20 << 20)}, "style"),  # accepted for OpenAI's clients, 20 MiB of it
        ({"prompt": "x", "quality": "q" * 1000}, "quality"),
        ({"prompt": "x", "user": "u" * 10_000}, "user"),
    ],
)
def test_the_edits_form_refuses_what_the_json_route_refuses_naming_the_field(data, field):
    image = encode(Image.fromarray(input_image()))
    with pytest.raises(InvalidInput) as error:
        asyncio.run(read_edit_form(_form_request([("image", ("a.png", image))], data)))
    assert error.value.field == field and error.value.message.startswith(f"{field}:"), error.value.message


def test_the_edits_form_refuses_a_second_mask_naming_it():
    image, mask = encode(Image.fromarray(input_image())), openai_mask(box_mask())
    files = [("image", ("a.png", image)), ("mask", ("m.png", mask)), ("mask", ("n.png", mask))]
    with pytest.raises(InvalidInput) as error:
        asyncio.run(read_edit_form(_form_request(files, {"prompt": "x"})))
    assert error.value.field == "mask"


def test_the_edits_form_takes_utf_8_text_beyond_ascii():
    image = encode(Image.fromarray(input_image()))
    data = {"prompt": "café ☕".encode(), "style": "vivid", "quality": "hd"}
    request = asyncio.run(read_edit_form(_form_request([("image", ("a.png", image))], data)))
    assert (request.prompt, request.style, request.quality) == ("café ☕", "vivid", "hd")


def test_an_image_is_base64_decoded_once_in_a_process_from_its_check_to_its_pixels(monkeypatch, engine_dir):
    """The schema's check, the doors' price, a job's submission check and the decoding read the same bytes."""
    from serve import images
    from serve.models.served import ServedModels
    from serve.settings import DEFAULT_MODEL

    models = ServedModels.open({DEFAULT_MODEL: str(engine_dir)})

    decoded, decode = [], base64.b64decode

    def counted(text, validate=False):
        decoded.append(len(text))
        return decode(text, validate=validate)

    images.base64_bytes.cache_clear()
    monkeypatch.setattr(images.base64, "b64decode", counted)
    picture, mask = b64(input_image(64)), base64.b64encode(openai_mask(box_mask(64))).decode()
    request = GenerationRequest(prompt="a red fox", image=[picture], mask=mask)  # checked: decoded here
    assert models.resolve(request.model).work(request).cost > 0  # priced from the image's and the mask's headers
    first, again = decoded_images(request, 64), decoded_images(request, 64)  # a job's submission, then the replica
    assert first.images[0].shape == again.images[0].shape == (64, 64, 3)
    assert decoded == [len(picture), len(mask)]


def test_the_edits_form_takes_every_field_of_the_request_at_once():
    """A form of 37 text parts, each a field of the request, was a 400 ("Too many fields", the limit 36 fixed when
    the request had fewer fields): the limit follows the request's fields."""
    data = {name: "x" for name in GenerationRequest.model_fields if name not in FILE_FIELDS}
    assert len(data) > 36
    with pytest.raises(InvalidInput) as error:  # read whole, then each value checked as the JSON route does
        asyncio.run(read_edit_form(_form_request([("image", ("a.png", b"png"))], data)))
    assert error.value.field != "body", error.value.message
