import numpy as np
import pytest
from PIL import Image

from serve.images.raster import MAX_PIXELS, MAX_SIDE, MIN_SIDE, ImageRejected, decode_image
from tests.images import encode, png_header_only


@pytest.mark.parametrize("data", [b"", b"hello, not an image", b"\x89PNG\r\n\x1a\n"])
def test_rejects_empty_and_non_images(data):
    with pytest.raises(ImageRejected) as info:
        decode_image(data, field="file")
    assert info.value.status == 400
    assert info.value.field == "file"
    assert isinstance(info.value, ValueError)


def test_rejects_truncated_png():
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(ImageRejected) as info:
        decode_image(data[: len(data) // 2])
    assert info.value.status == 400


def test_rejects_over_the_pixel_limit_from_header_only():
    width, height = 4096, MAX_PIXELS // 4096 + 1  # sides within limits, area over
    with pytest.raises(ImageRejected) as info:
        decode_image(png_header_only(width, height))
    assert info.value.status == 413
    assert str(MAX_PIXELS) in str(info.value)


def test_rejects_side_over_4096():
    with pytest.raises(ImageRejected) as info:
        decode_image(png_header_only(MAX_SIDE + 1, 8))
    assert info.value.status == 413
    assert str(MAX_SIDE) in str(info.value)


@pytest.mark.parametrize("size", [(1, 1), (1, 300), (300, 7)])
def test_images_thinner_than_the_minimum_side_are_a_400_naming_it(size):
    data = encode(Image.new("RGB", size, "red"))
    with pytest.raises(ImageRejected) as info:
        decode_image(data)
    assert info.value.status == 400 and str(MIN_SIDE) in str(info.value)


def test_zero_size_header():
    with pytest.raises(ImageRejected) as info:
        decode_image(png_header_only(0, 10))
    assert info.value.status == 400


def test_huge_header_is_413_not_bomb_warning():
    with pytest.raises(ImageRejected) as info:
        decode_image(png_header_only(60000, 60000))
    assert info.value.status == 413


def test_pil_global_limit_untouched():
    before = Image.MAX_IMAGE_PIXELS
    decode_image(encode(Image.new("RGB", (8, 8), "red")))
    assert Image.MAX_IMAGE_PIXELS == before


def test_animated_gif_takes_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue", "lime")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    pixels = decode_image(data)
    assert pixels.shape == (16, 16, 3)
    assert tuple(pixels[8, 8]) == (255, 0, 0)


def test_cmyk_jpeg_becomes_rgb():
    pixels = decode_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95))
    assert pixels.dtype == np.uint8 and pixels.shape == (16, 16, 3)
    r, g, b = pixels[8, 8].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_16bit_png_is_scaled_to_8bit():
    values = np.full((8, 8), 65535, dtype=np.uint16)
    values[:4] = 32768
    image = Image.fromarray(values)
    assert image.mode.startswith("I")
    pixels = decode_image(encode(image))
    assert pixels.shape == (8, 8, 3)
    assert tuple(pixels[6, 0]) == (255, 255, 255)
    assert abs(int(pixels[0, 0, 0]) - 128) <= 1


def test_palette_with_transparency_flattens_on_white():
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((0, 0), 1)
    pixels = decode_image(encode(image, transparency=0))
    assert tuple(pixels[4, 4]) == (255, 255, 255)  # transparent black -> white
    assert tuple(pixels[0, 0]) == (255, 0, 0)


def test_rgba_and_la_flatten_alpha_onto_white():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 128))
    pixels = decode_image(encode(rgba))
    assert np.all(np.abs(pixels.astype(int) - 127) <= 1)
    la = Image.new("LA", (8, 8), (0, 0))
    assert np.all(decode_image(encode(la)) == 255)
