"""Signed image URLs and the generation record a PNG carries (AUTOMATIC1111's parameters line and the JSON)."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from serve.errors import Forbidden
from serve.images.raster import encode_image
from serve.results.record import PARAMETERS, RECORD, parameters_line, with_record
from serve.results.tokens import UrlSigner, stack_secret

RECORD_SAMPLE = {
    "prompt": "a red fox, watercolour",
    "negative_prompt": "blurry",
    "steps": 20,
    "sampler": "ddim",
    "guidance_scale": 7.5,
    "seed": 42,
    "size": "64x64",
    "model": "easel-default",
    "model_hash": "0123456789abcdef",
    "n": 2,
    "index": 1,
    "loras": [{"name": "ink", "scale": 0.8, "hash": "feedfacecafebeef00"}],
    "easel_version": "0.1.0",
}


def test_a_signed_url_opens_until_it_expires_and_not_for_another_image_or_secret(tmp_path):
    secret = stack_secret(tmp_path)
    assert stack_secret(tmp_path) == secret and len(secret) == 32  # made once, kept
    assert (tmp_path / "url_secret").stat().st_mode & 0o777 == 0o600
    signer = UrlSigner(secret, ttl_s=60)
    query = dict(part.split("=") for part in signer.query("img_a", now=1000).split("&"))
    expires, signature = int(query["expires"]), query["signature"]
    assert expires == 1060
    signer.check("img_a", expires, signature, now=1059)
    with pytest.raises(Forbidden) as expired:
        signer.check("img_a", expires, signature, now=1061)
    assert expired.value.status == 403 and expired.value.field == "expires"
    for image_id, until, sig, other in (
        ("img_b", expires, signature, signer),  # another image's
        ("img_a", expires + 3600, signature, signer),  # its expiry moved
        ("img_a", expires, signature[:-1] + "0", signer),  # tampered
        ("img_a", expires, signature, UrlSigner(b"another stack", 60)),
    ):
        with pytest.raises(Forbidden) as refused:
            other.check(image_id, until, sig, now=1000)
        assert refused.value.field == "signature"


def test_a_png_carries_its_parameters_line_and_json_record_with_its_pixels_unchanged():
    pixels = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    png = encode_image(pixels, "png")
    carrying = with_record(png, RECORD_SAMPLE)
    image = Image.open(io.BytesIO(carrying))
    assert json.loads(image.info[RECORD]) == RECORD_SAMPLE
    parameters = image.info[PARAMETERS]
    assert parameters == parameters_line(RECORD_SAMPLE)
    prompt, negative, line = parameters.split("\n")
    assert prompt == "a red fox, watercolour" and negative == "Negative prompt: blurry"
    assert line.startswith("Steps: 20, Sampler: ddim, CFG scale: 7.5, Seed: 42, Size: 64x64, Model hash: 0123456789")
    assert 'Lora hashes: "ink: feedfacecafe"' in line and "Batch pos: 1" in line and line.endswith("easel 0.1.0")
    assert np.array_equal(np.asarray(image.convert("RGB")), pixels)
    with pytest.raises(ValueError):
        with_record(encode_image(pixels, "jpeg"), RECORD_SAMPLE)
