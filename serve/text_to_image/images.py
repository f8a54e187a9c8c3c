"""A request's images, decoded and checked: input images, the mask, outpainting's padding, ControlNets' images.

Every failure is a 400 naming its field: an image that does not decode or is over the limits (4096 px a side,
:data:`MAX_INPUT_PIXELS`), input images of different sizes, a mask whose size is not the image's, an output size out
of the API's range. The mask follows OpenAI's edits (its fully transparent pixels are the area to draw); a mask
without an alpha channel is read as diffusers reads one (white: draw). The ``canny`` preprocessor is OpenCV's Canny
(3x3 Sobel, L2 gradient magnitude, the strongest channel of a colour image) written with numpy and scipy.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from serve.adapters.ip_adapter import preprocessed_masks
from serve.errors import InvalidInput
from serve.images import base64_bytes, content_digest, raster
from serve.images.raster import ImageRejected, check_size, decode_image
from serve.protocol.adapter_choices import ControlNetChoice
from serve.protocol.character_requests import IdentityChoice
from serve.protocol.ip_scale import IpRequest, ip_choices
from serve.protocol.schema import GenerationRequest
from serve.protocol.sizes import MAX_SIDE, MIN_SIDE, SIDE_MULTIPLE, Outpaint
from serve.text_to_image.generation import Control, IpReferences

MAX_INPUT_PIXELS = 4096 * 4096
"""Input, mask, control and reference images are resized (to the output's size, the image encoder's): any picture up
to 4096 pixels a side is taken."""
DRAW = 255
"""The mask's value where the image is drawn (diffusers' convention: white)."""


@dataclass(frozen=True)
class ImageSources:
    """A generation's images as sent (base64), with the fields their errors name: decoded where it runs.

    Its input images, mask, outpainting's padding, ControlNets and IP-Adapters (:func:`decode_images`,
    :func:`ip_references`), and its identity (a face's embedding by then: :mod:`serve.serving.identity`).
    """

    images: tuple[str, ...] = ()
    mask: str | None = None
    outpaint: Outpaint | None = None
    controlnets: tuple[ControlNetChoice, ...] = ()
    ip: tuple[IpRequest, ...] = ()
    identity: IdentityChoice | None = None

    @classmethod
    def of(cls, request) -> ImageSources:
        """An API request's (a ``GenerationRequest``'s)."""
        images, controls, ip = tuple(request.image), tuple(request.controlnets), tuple(ip_choices(request))
        return cls(images, request.mask, request.outpaint, controls, ip, getattr(request, "identity", None))

    def hashed(self) -> ImageSources:
        """Each image replaced by its content's SHA-256 (:func:`~serve.images.content_digest`): a cache key's."""
        controls = tuple(c.model_copy(update={"image": content_digest(c.image)}) for c in self.controlnets)
        ip = tuple(
            dataclasses.replace(
                ip,
                choice=ip.choice.model_copy(
                    update={
                        "images": [content_digest(i) for i in ip.choice.images],
                        "masks": [content_digest(m) for m in ip.choice.masks],
                    }
                ),
            )
            for ip in self.ip
        )
        mask = None if self.mask is None else content_digest(self.mask)
        identity = self.identity
        if identity is not None:
            pictures = {name: getattr(identity, name) for name in ("aligned_face", "keypoints")}
            digests = {name: content_digest(text) for name, text in pictures.items() if text is not None}
            identity = identity.model_copy(update=digests)
        images = tuple(content_digest(image) for image in self.images)
        return ImageSources(images, mask, self.outpaint, controls, ip, identity)


@dataclass(frozen=True)
class RequestImages:
    """What a request's images give its generation, at the output's size (``width`` x ``height``)."""

    width: int
    height: int
    images: tuple[np.ndarray, ...] = ()
    mask: np.ndarray | None = None
    controls: tuple[Control, ...] = ()


def _decode(data: bytes, field: str) -> np.ndarray:
    try:
        return decode_image(data, field, max_pixels=MAX_INPUT_PIXELS)
    except ImageRejected as error:
        raise InvalidInput(str(error), field) from error


def header_size(data: bytes, field: str) -> tuple[int, int]:
    """An input image's (width, height) from its header, within :data:`MAX_INPUT_PIXELS` (a 400, no pixel decoded)."""
    try:
        return raster.header_size(data, field, MAX_INPUT_PIXELS)
    except ImageRejected as error:
        raise InvalidInput(str(error), field) from error


def output_size(request: GenerationRequest, native_size: int) -> tuple[int, int]:
    """The (width, height) of a request's images, read from the headers of its images (cheap: the cost needs it).

    Its ``size``; else its input image's (outpainting's padding added) rounded down to a multiple of 8; else the
    model's native size.
    """
    if request.size is not None or not request.image:
        return request.width_height(native_size)
    width, height = header_size(base64_bytes(request.image[0]), "image")
    if (pad := request.outpaint) is not None:
        width, height = width + pad.left + pad.right, height + pad.top + pad.bottom
    width, height = width - width % SIDE_MULTIPLE, height - height % SIDE_MULTIPLE
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise InvalidInput(
            f"size: the image makes {width}x{height}; the sides must be in [{MIN_SIDE}, {MAX_SIDE}]: give a size "
            "to resize it to",
            "size",
        )
    return width, height


def input_pixels(request: GenerationRequest) -> int:
    """The pixels a request's uploads decode to (images, mask, ControlNets', IP-Adapter's), read from their headers."""
    uploads = [("image", text) for text in request.image] + [("mask", request.mask)]
    uploads += [(f"controlnets.{i}.image", choice.image) for i, choice in enumerate(request.controlnets)]
    for ip in ip_choices(request):
        uploads += [(ip.name_of("images", i), text) for i, text in enumerate(ip.choice.images)]
        uploads += [(ip.name_of("masks", i), text) for i, text in enumerate(ip.choice.masks)]
    sizes = [header_size(base64_bytes(text), field) for field, text in uploads if text is not None]
    return sum(width * height for width, height in sizes)


def edit_mask(data: bytes, field: str = "mask") -> np.ndarray:
    """The area to draw as a grey ``uint8`` image (255: draw): alpha 0 where the mask has alpha, else its white."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            check_size(*image.size, field, MAX_INPUT_PIXELS)
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                alpha = np.asarray(image.convert("RGBA"))[:, :, 3]
                return np.where(alpha == 0, DRAW, 0).astype(np.uint8)
            return np.asarray(image.convert("L"), dtype=np.uint8)
    except ImageRejected as error:
        raise InvalidInput(str(error), field) from error
    except Exception as error:  # noqa: BLE001 - whatever PIL raises for bytes that are no image
        raise InvalidInput(f"{field}: not a readable image ({error})", field) from error


def outpainted(images: list[np.ndarray], mask: np.ndarray | None, pad: Outpaint) -> tuple[list, np.ndarray]:
    """The images padded by ``pad`` (their edge pixels repeated) and the mask: the new area drawn, and ``mask``."""
    sides = ((pad.top, pad.bottom), (pad.left, pad.right))
    height, width = images[0].shape[:2]
    mask = np.zeros((height, width), np.uint8) if mask is None else mask
    return [np.pad(image, (*sides, (0, 0)), mode="edge") for image in images], np.pad(mask, sides, constant_values=DRAW)


def canny(pixels: np.ndarray, low: float, high: float) -> np.ndarray:
    """The edges of an RGB ``uint8`` image, white on black (RGB), as OpenCV's ``Canny(image, low, high, L2gradient)``.

    3x3 Sobel gradients of each channel, the strongest channel's at each pixel; non-maximum suppression along the
    gradient's direction (four sectors); hysteresis: pixels over ``high``, and those over ``low`` connected to them.
    """
    from scipy import ndimage  # here, not at the top: the Gateway never loads it (a TextToImage replica at its start)

    channels = pixels.astype(np.float64).transpose(2, 0, 1)
    gx = np.stack([ndimage.sobel(c, axis=1, mode="nearest") for c in channels])
    gy = np.stack([ndimage.sobel(c, axis=0, mode="nearest") for c in channels])
    magnitude = np.hypot(gx, gy)
    strongest = magnitude.argmax(axis=0)[None]
    gx, gy = (np.take_along_axis(g, strongest, axis=0)[0] for g in (gx, gy))
    magnitude = np.take_along_axis(magnitude, strongest, axis=0)[0]
    angle = (np.degrees(np.arctan2(gy, gx)) + 180.0) % 180.0
    sector = np.digitize(angle, (22.5, 67.5, 112.5, 157.5)) % 4  # 0: horizontal gradient, 1: 45°, 2: vertical, 3: 135°
    padded = np.pad(magnitude, 1)
    height, width = magnitude.shape
    keep = np.zeros_like(magnitude, dtype=bool)
    for index, (dy, dx) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
        ahead = padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        behind = padded[1 - dy : 1 - dy + height, 1 - dx : 1 - dx + width]
        keep |= (sector == index) & (magnitude > ahead) & (magnitude >= behind)
    candidate = keep & (magnitude > low)
    labels, _ = ndimage.label(candidate, structure=np.ones((3, 3)))
    strong = np.unique(labels[candidate & (magnitude > high)])
    edges = np.isin(labels, strong[strong > 0])
    return np.repeat((edges * 255).astype(np.uint8)[:, :, None], 3, axis=2)


def decode_base64(text: str, field: str) -> np.ndarray:
    """One base64 image of the API as RGB pixels (alpha onto white); a 400 naming ``field`` if unreadable."""
    try:
        data = base64_bytes(text)
    except ValueError as error:
        raise InvalidInput(f"{field}: not base64", field) from error
    return _decode(data, field)


def ip_references(sources: ImageSources, width: int, height: int, adapters, stored) -> tuple[IpReferences, ...]:
    """A generation's IP-Adapters for its model's engines (``adapters``: its ``GenerationAdapters``), decoded.

    ``stored(reference_id, field)``: a stored reference's embeddings. 400s naming the field: an adapter the model
    lacks, an unreadable image, a scale that does not fit the UNet, a mask not of the output's size.
    """
    info, found = adapters.support.ip_adapter, []
    for ip in sources.ip:
        field = ip.name_of("name")
        if info is None:
            raise InvalidInput(f"{field}: this model has no IP-Adapter (start the stack with --ip-adapter DIR)", field)
        try:
            index = info.index(ip.choice.name)
        except ValueError as error:
            raise InvalidInput(f"{field}: {error}", field) from None
        if info.reads_faces(index):
            raise InvalidInput(f"{field}: {ip.choice.name} is an IP-Adapter FaceID: send its face as identity", field)
        choice = ip.choice
        images = [_decode(base64_bytes(text), ip.name_of("images", i)) for i, text in enumerate(choice.images)]
        embeds = [stored(ref, ip.name_of("references", i)) for i, ref in enumerate(choice.references)]
        adapters.scales(choice.scale, ip.name_of("scale"))
        masks = None
        if choice.masks:
            pixels = [_decode(base64_bytes(text), ip.name_of("masks", i)) for i, text in enumerate(choice.masks)]
            for i, mask in enumerate(pixels):
                if mask.shape[:2] != (height, width):
                    where = ip.name_of("masks", i)
                    message = f"{where}: it is {mask.shape[1]}x{mask.shape[0]}; the output is {width}x{height}"
                    raise InvalidInput(message, where)
            masks = preprocessed_masks(pixels, height, width)
        found.append(IpReferences(index, tuple(images), tuple(embeds), choice.scale, masks))
    identity = sources.identity
    if identity is not None:  # admitted: its adapter named, its face an embedding (and a FaceID Plus's aligned face)
        face, crop = np.asarray(identity.embedding, np.float32)[None], identity.aligned_face
        aligned = () if crop is None else (decode_base64(crop, "identity.aligned_face"),)
        found.append(IpReferences(info.names.index(identity.adapter), aligned, (face,), identity.strength))
    return tuple(found)


def decode_images(sources: ImageSources, width: int, height: int) -> RequestImages:
    """Decode and check every image of ``sources`` for an output of ``width`` x ``height`` (400s naming the field)."""
    images = [_decode(base64_bytes(text), "image") for text in sources.images]
    if len({image.shape for image in images}) > 1:
        sizes = ", ".join(f"{image.shape[1]}x{image.shape[0]}" for image in images)
        raise InvalidInput(f"image: the images must have one size, not {sizes}", "image")
    mask = None
    if sources.mask is not None:
        mask = edit_mask(base64_bytes(sources.mask))
        if mask.shape != images[0].shape[:2]:
            raise InvalidInput(
                f"mask: it is {mask.shape[1]}x{mask.shape[0]}; the image is {images[0].shape[1]}x{images[0].shape[0]}",
                "mask",
            )
    if sources.outpaint is not None:
        images, mask = outpainted(images, mask, sources.outpaint)
    controls = []
    for index, choice in enumerate(sources.controlnets):
        pixels = _decode(base64_bytes(choice.image), f"controlnets.{index}.image")
        if choice.preprocess == "canny":
            pixels = canny(pixels, choice.low_threshold, choice.high_threshold)
        controls.append(Control(choice.name, pixels, choice.scale, choice.start, choice.end))
    identity = sources.identity
    if identity is not None and identity.keypoints is not None:  # an InstantID's: its IdentityNet reads them
        pixels = decode_base64(identity.keypoints, "identity.keypoints")
        controls.append(Control(identity.adapter, pixels, identity.pose_strength, face=tuple(identity.embedding)))
    return RequestImages(width, height, tuple(images), mask, tuple(controls))
