"""Every place Easel decodes a caller's image answers bytes that are no image with a 400 naming the field.

The table below holds each such place with a call that reaches it; a scan of ``serve/`` finds every place that decodes
an image (PIL's ``Image.open``, :func:`serve.images.raster.decode_image`), so a new one must join the table (or the
list of places that decode only what Easel itself encoded).
"""

import ast
import asyncio
import base64

import pytest

from serve.errors import EaselError
from serve.images.raster import decode_image
from serve.images.raster import header_size as raster_header_size
from serve.moderation.requests import ModerationRequest
from serve.paths import PROJECT_ROOT
from serve.protocol.schema import GenerationRequest
from serve.serving import characters, identity, upscale
from serve.serving.moderation import Moderation
from serve.serving.upscale import image_size
from serve.text_to_image.images import ImageSources, decode_base64, decode_images, edit_mask, output_size
from serve.vectorize import deployment as vectorize_deployment
from tests.controls import b64, input_image

NOT_AN_IMAGE = b"GIF89a but nothing after"
B64 = base64.b64encode(NOT_AN_IMAGE).decode()
IMAGE_ITEM = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{B64}"}}


def decoded(request: GenerationRequest, native_size: int):
    """``request``'s images decoded as its replica decodes them, at the size its admission read."""
    return decode_images(ImageSources.of(request), *output_size(request, native_size))


class _Checker:
    """An image checker that must not be reached: the image is refused before."""

    async def check(self, images):
        raise AssertionError("checked an image that does not decode")


def _moderated() -> None:
    request = ModerationRequest(input=["a text", IMAGE_ITEM])
    asyncio.run(Moderation(images=_Checker()).moderations(request, None))


CALLERS = {
    # where it decodes -> (a call that reaches it with bytes that are no image, the field its 400 names)
    # decode_image's and decoded_size's (a remote's answer: a 502 instead, tests/unit/test_remote_answers.py)
    "serve/images/raster.py:_loaded": (lambda: decode_image(NOT_AN_IMAGE, "image"), "image"),
    "serve/images/raster.py:header_size": (lambda: raster_header_size(NOT_AN_IMAGE, "input"), "input"),
    "serve/text_to_image/images.py:_decode": (lambda: decode_base64(B64, "ip_adapter_image"), "ip_adapter_image"),
    "serve/text_to_image/images.py:edit_mask": (lambda: edit_mask(NOT_AN_IMAGE), "mask"),
    "serve/serving/upscale.py:decode": (lambda: upscale.decode(NOT_AN_IMAGE), "image"),
    "serve/serving/characters.py:picture": (lambda: characters.picture(B64, 1), "images.1"),
    "serve/serving/identity.py:picture": (lambda: identity.picture(B64, "identity.image"), "identity.image"),
    "serve/serving/upscale.py:image_size": (lambda: image_size(NOT_AN_IMAGE), "image"),
    "serve/vectorize/deployment.py:_decode": (lambda: asyncio.run(vectorize_deployment._decode(NOT_AN_IMAGE)), "image"),
    "serve/serving/moderation.py:Moderation._images_checked": (_moderated, "input.1.image_url.image_url.url"),
}
ENCODED_BY_EASEL = {
    "serve/images/raster.py:load_image": "an icon file of the training set",
    "serve/moderation/policy.py:blacked_out": "a generated image",
    "serve/images/video.py:mp4": "a video's generated frames",
    "serve/serving/results.py:Results._delivered": "a generated image, its size read for its record",
    "serve/vectorize/convert.py:render": "the PNG an SVG rendered to",
}


def _decoding_places() -> set[str]:
    """``file:function`` of every reference to ``Image.open`` or ``decode_image`` in ``serve/``."""
    found = set()

    def visit(node, path: str, scope: tuple[str, ...]) -> None:
        for child in ast.iter_child_nodes(node):
            inner = scope
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                inner = (*scope, child.name)
            elif isinstance(child, ast.Name | ast.Attribute) and ast.unparse(child) in ("Image.open", "decode_image"):
                found.add(f"{path}:{'.'.join(scope)}")
            visit(child, path, inner)

    for file in (PROJECT_ROOT / "serve").rglob("*.py"):
        path = file.relative_to(PROJECT_ROOT).as_posix()
        visit(ast.parse(file.read_text()), path, ())
    return found


def test_every_place_that_decodes_an_image_is_in_the_table():
    assert _decoding_places() == set(CALLERS) | set(ENCODED_BY_EASEL)


@pytest.mark.parametrize("place", sorted(CALLERS))
def test_an_image_that_does_not_decode_is_a_400_naming_its_field(place):
    call, field = CALLERS[place]
    with pytest.raises(EaselError) as refused:
        call()
    assert (refused.value.status, refused.value.field) == (400, field), refused.value.message
    assert refused.value.message.startswith(field) and refused.value.retry_after_s is None


def test_each_image_of_a_generation_is_named_when_it_does_not_decode():
    for body, field in (
        ({"image": [B64]}, "image"),
        ({"image": [b64(input_image(64))], "controlnets": [{"name": "edges", "image": B64}]}, "controlnets.0.image"),
    ):
        with pytest.raises(EaselError) as refused:
            decoded(GenerationRequest(prompt="x", size="64x64", **body), 64)
        assert (refused.value.status, refused.value.field) == (400, field)
