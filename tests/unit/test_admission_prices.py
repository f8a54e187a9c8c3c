"""The prices admission takes for bodies priced by their own work (serve/serving/admission.py): no server."""

import base64

import pytest

from serve.images.raster import ImageRejected
from serve.moderation.requests import ModerationRequest
from serve.serving.admission import ENCODER_MEGAPIXELS, moderation_cost, reference_cost
from serve.text_to_image.reference_request import NewReference
from tests.controls import b64, input_image


def _data_url(image: str) -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}


def test_a_moderation_costs_its_characters_and_its_images_pixels():
    texts = ModerationRequest.model_validate({"input": ["x" * 32_000] * 32})
    assert moderation_cost(texts) == pytest.approx(10.24)
    image = ModerationRequest.model_validate(
        {"input": [{"type": "text", "text": "x" * 1000}, _data_url(b64(input_image(512)))]}
    )
    assert moderation_cost(image) == pytest.approx(0.01 + 512 * 512 / 1e6 + ENCODER_MEGAPIXELS)


def test_an_image_that_is_no_image_is_refused_naming_its_item_before_any_work():
    body = ModerationRequest.model_validate(
        {"input": [{"type": "text", "text": "a"}, _data_url(base64.b64encode(b"no").decode())]}
    )
    with pytest.raises(ImageRejected) as refused:
        moderation_cost(body)
    assert refused.value.status == 400 and refused.value.field == "input.1.image_url.image_url.url"


def test_a_reference_costs_its_decode_and_one_encoder_pass():
    body = NewReference.model_validate({"image": b64(input_image(512))})
    assert reference_cost(body) == pytest.approx(512 * 512 / 1e6 + ENCODER_MEGAPIXELS)
