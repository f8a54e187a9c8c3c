"""A remote model's images checked as an input image is, before anything of this stack reads them.

Each image of its service's answer must decode (its first frame's every pixel, read as
:func:`serve.images.raster.decode_image` reads an upload) and have at most :data:`PIXEL_TOLERANCE` times the pixels
the request asked (its ``size``, else the remote's ``native_size``), at most 4096 pixels a side and at most
:data:`~serve.text_to_image.images.MAX_INPUT_PIXELS` (the bound of a generation's input images). The header is read
first: an image over the bounds is refused before any pixel is decoded. Otherwise a 502 naming the model.
"""

from __future__ import annotations

from serve.errors import BadGateway
from serve.images.raster import ImageRejected, decoded_size
from serve.text_to_image.images import MAX_INPUT_PIXELS

PIXEL_TOLERANCE = 2.0
"""How many times the pixels asked a remote's image may have: OpenAI's services draw a few fixed sizes (DALL-E 3's
1792x1024 where 1024x1024 was asked is 1.75 times); more is not what was asked, nor what was priced."""


def pixel_bound(width: int, height: int) -> int:
    """The most pixels an image of a request asked at ``width`` x ``height`` may have."""
    return min(int(width * height * PIXEL_TOLERANCE), MAX_INPUT_PIXELS)


def check_images(images: list[bytes], name: str, width: int, height: int) -> None:
    """A :class:`BadGateway` naming the model ``name`` unless each of ``images`` decodes within the bounds.

    ``width`` x ``height``: the size the request asked (else the remote's native size). No ``Retry-After``: the same
    request would get the same answer; a fallback chain may take it (``bad_gateway``).
    """
    bound = pixel_bound(width, height)
    for index, data in enumerate(images):
        try:
            decoded_size(data, f"data.{index}", bound)
        except ImageRejected as error:
            raise BadGateway(
                f"model: {name}'s service answered an image this stack does not pass on ({error.message}; asked "
                f"{width}x{height}, at most {bound} pixels)",
                "model",
            ) from None
