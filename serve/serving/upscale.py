"""Upscale requests (an image and an upscaler, JSON or multipart) and a generation's ``upscale``, by tile engines.

A generation's ``upscale`` and ``restore_faces`` (and a video's ``interpolate``) are checked with the request
(:meth:`Upscaling.check_generation`) and applied to its images before they are answered (:meth:`Upscaling.finish`),
whichever door it came by: HTTP, gRPC or a job. Faces are restored after a hires fix's second pass, by the face
restorer's engine; a video's frames are interpolated last.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import numpy as np
from PIL import Image

from serve.errors import InvalidInput
from serve.faces.analyze import analyze_faces
from serve.faces.pack import DETECTION_SIDE, FaceEntry
from serve.finishing.faces import MAX_FACES
from serve.finishing.interpolators import interpolate_frames, padded_side
from serve.finishing.restorers import FACE_SIDE, RestorerEntry, restore_faces
from serve.finishing.schema import RestoreFaces, UpscaleOptions
from serve.finishing.upscalers import MAX_OUTPUT_PIXELS, Upscalers, engine_size, output_size, upscale_pixels
from serve.images import base64_bytes
from serve.images.raster import ImageRejected, decode_image, encode_image, png_base64
from serve.jobs.model import Progress, Stage
from serve.models.admission import Work
from serve.protocol.face_requests import FaceAnalysisRequest
from serve.protocol.schema import GenerationRequest
from serve.protocol.sizes import MAX_SIDE, SIDE_MULTIPLE
from serve.protocol.video import VideoGeneration
from serve.text_to_image.generation import OnStep
from serve.triton.client import TritonClient
from serve.triton.node import grpc_url_on_this_node
from serve.triton.runners import replica_runner
from serve.triton.spec import EngineRunner

Img2Img = Callable[[GenerationRequest], Awaitable[list[bytes]]]
"""A hires fix's second pass: the request (one upscaled input image) generated, its encoded images."""
RESTORATION_MEGAPIXELS = MAX_FACES * FACE_SIDE * FACE_SIDE / 1e6
"""An image's face restoration, as the price counts it: a restorer pass for each face it may restore."""


def finishes(request: GenerationRequest) -> bool:
    """Whether a generation asks for finishing: an upscale, restored faces, a video's interpolation."""
    interpolates = isinstance(request, VideoGeneration) and request.interpolate is not None
    return request.upscale is not None or request.restore_faces is not None or interpolates


class UpscaleBody(NamedTuple):
    """An upscale request as read (:func:`serve.http.bodies.read_upscale_request`): the image's bytes, the options."""

    data: bytes
    options: UpscaleOptions


def image_size(data: bytes) -> tuple[int, int]:
    """The (width, height) an upscale's image header says (no pixel decoded); a 400 naming ``image`` if none."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception as error:  # noqa: BLE001 - whatever PIL raises for bytes that are no image
        raise InvalidInput(f"image: not a readable image ({error})", "image") from error
    if width * height > MAX_OUTPUT_PIXELS:
        raise InvalidInput(f"image: {width}x{height} is over {MAX_OUTPUT_PIXELS} pixels", "image")
    return width, height


def decode(data: bytes) -> np.ndarray:
    """The RGB pixels of ``data``; a 400 naming ``image`` when it is not an image."""
    try:
        return decode_image(data, "image", max_pixels=MAX_OUTPUT_PIXELS)
    except ImageRejected as error:
        raise InvalidInput(str(error), error.field) from error


class Upscaling:
    """``GET /v1/upscalers`` and ``POST /v1/images/upscale``: the upscalers, run through ``runner`` (None: none)."""

    def __init__(self, upscalers: Upscalers, runner: EngineRunner | None) -> None:
        self.upscalers, self.runner = upscalers, runner

    @classmethod
    def on_triton(cls, upscalers: Upscalers, triton_grpc_url: str | None) -> Upscaling:
        """``upscalers`` run by the Triton at ``triton_grpc_url`` (``this-node``: the Triton of this replica's node).

        None of them ready, or no URL: no runner (the upscale route answers that none is ready).
        """
        if not (upscalers.any_ready and triton_grpc_url):
            return cls(upscalers, None)
        return cls(upscalers, replica_runner(TritonClient(grpc_url_on_this_node(triton_grpc_url))))

    def listing(self) -> dict:
        """Every upscaler the stack was started with: ready, or with why not."""
        return {
            "object": "list",
            "data": self.upscalers.listing(),
            "face_restorers": self.upscalers.restorers.listing(),
            "interpolators": self.upscalers.interpolators.listing(),
            "faces": self.upscalers.faces.listing(),
        }

    async def faces(self, body: FaceAnalysisRequest) -> dict:
        """``POST /v1/faces/analyze``: the faces in the image, by the stack's face models (:func:`analyze_faces`)."""
        entry = self.upscalers.faces.served("image")
        pixels = await asyncio.to_thread(decode, base64_bytes(body.image))  # decoded once, at admission
        found = await analyze_faces(pixels, entry, self.runner, body.max_faces)
        height, width = pixels.shape[:2]
        return {"object": "list", "model": entry.name, "size": f"{width}x{height}", "data": [f.public() for f in found]}

    async def restored(self, pixels: np.ndarray, choice: RestoreFaces) -> tuple[np.ndarray, dict]:
        """``pixels`` with their faces restored as ``choice`` asks, and the image object's ``faces``."""
        entry = self.upscalers.restorers.choose(choice.restorer, fidelity=choice.fidelity)
        aligned_by = self.face_models(entry)
        return await restore_faces(pixels, entry, choice.weight, self.runner, choice.fidelity, aligned_by)

    def face_models(self, restorer: RestorerEntry) -> FaceEntry | None:
        """The face models that find and align ``restorer``'s faces (a CodeFormer's, where served); None: none."""
        return next(iter(self.upscalers.faces.ready), None) if restorer.takes_fidelity else None

    async def upscale(self, data: bytes, options: UpscaleOptions) -> dict:
        """The image upscaled (its faces restored if asked), in the images API's shape, with what was used."""
        entry, scale = self.upscalers.choose(options.upscaler, options.scale)
        if options.restore_faces is not None:
            self.upscalers.restorers.choose(options.restore_faces.restorer, fidelity=options.restore_faces.fidelity)
        pixels = await asyncio.to_thread(decode, data)
        upscaled = await upscale_pixels(pixels, entry, scale, self.runner)
        image: dict = {}
        if options.restore_faces is not None:
            upscaled, image["faces"] = await self.restored(upscaled, options.restore_faces)
        height, width = upscaled.shape[:2]
        return {
            "created": int(time.time()),
            "data": [{"b64_json": await asyncio.to_thread(png_base64, upscaled), **image}],
            "upscaler": entry.name,
            "scale": scale,
            "size": f"{width}x{height}",
        }

    def work(self, body: UpscaleBody) -> Work:
        """What an upscale runs, as the doors price it: one pass at the engine's output + the input's decoded.

        The engine upscales by its own scale whatever the scale asked (a lower one resizes its output down), so that
        is what is priced and bounded: a 4096x4096 image at x1 through a x4 engine is a 400 naming ``image``.

        A face restoration's passes (:data:`RESTORATION_MEGAPIXELS`) are counted with the input's megapixels.
        Read from the image's header (:func:`image_size`): no pixel is decoded.
        """
        entry, scale = self.upscalers.choose(body.options.upscaler, body.options.scale)
        width, height = image_size(body.data)
        output_size(width, height, scale)  # what is answered: a 400 naming scale over the bound
        out_width, out_height = engine_size(width, height, entry.scale, "image")  # what runs: the engine's own scale
        faces = self.restoration_cost(body.options.restore_faces, 1)  # counted with the input's megapixels
        return Work(1, 0, out_width, out_height, input_pixels=width * height + round(faces * 1e6))

    def restoration_cost(self, choice: RestoreFaces | None, images: int) -> float:
        """What restoring the faces of ``images`` costs (megapixel passes); a 400 for a restorer not served."""
        if choice is None:
            return 0.0
        entry = self.upscalers.restorers.choose(choice.restorer, fidelity=choice.fidelity)
        detection = DETECTION_SIDE**2 / 1e6 if self.face_models(entry) is not None else 0.0  # the landmarks' pass
        return images * (RESTORATION_MEGAPIXELS + detection)

    def scale_named(self, video: VideoGeneration) -> VideoGeneration:
        """A video whose ``upscale`` leaves its scale to the upscaler, with that scale named (its size is known)."""
        if video.upscale is None or video.upscale.scale is not None:
            return video
        _, scale = self.upscalers.choose(video.upscale.upscaler, None, "upscale.upscaler")
        return video.model_copy(update={"upscale": video.upscale.model_copy(update={"scale": scale})})

    def finishing_cost(self, request: GenerationRequest, width: int, height: int) -> float:
        """What a generation's finishing adds to its price (megapixel passes).

        Its faces (a video's: each frame's), a video's new frames (:meth:`interpolation_cost`).
        """
        if not isinstance(request, VideoGeneration):
            return self.restoration_cost(request.restore_faces, request.rows)
        faces = self.restoration_cost(request.restore_faces, request.rows * request.frames)
        return faces + self.interpolation_cost(request, width, height)

    def interpolation_cost(self, video: VideoGeneration, width: int, height: int) -> float:
        """What a video's new frames cost (none without ``interpolate``).

        Each is one interpolator pass over the frame (``width`` x ``height`` as drawn, upscaled first if it asks),
        padded as the engine takes it.
        """
        if video.interpolate is None:
            return 0.0
        if video.upscale is not None:
            _, scale = self.upscalers.choose(video.upscale.upscaler, video.upscale.scale, "upscale.upscaler")
            width, height = output_size(width, height, scale)
        new_frames = video.interpolate.frames_from(video.frames) - video.frames
        return new_frames * padded_side(width) * padded_side(height) / 1e6

    def check_generation(self, request: GenerationRequest, width: int, height: int) -> None:
        """Refuse (a 400 naming the field) a generation's finishing this stack cannot do."""
        if isinstance(request, VideoGeneration) and request.interpolate is not None:
            self.upscalers.interpolators.choose(request.interpolate.interpolator)
        if request.restore_faces is not None:
            self.upscalers.restorers.choose(request.restore_faces.restorer, fidelity=request.restore_faces.fidelity)
        choice = request.upscale
        if choice is None:
            return
        entry, scale = self.upscalers.choose(choice.upscaler, choice.scale, field="upscale.upscaler")
        out_width, out_height = output_size(width, height, scale, field="upscale.scale")
        engine_size(width, height, entry.scale, "upscale.scale")  # what the engine runs is bounded too
        if choice.denoise is not None and not all(
            side % SIDE_MULTIPLE == 0 and side <= MAX_SIDE for side in (out_width, out_height)
        ):
            raise InvalidInput(
                f"upscale.scale: a hires fix generates at the upscaled size, {out_width}x{out_height}: each side must "
                f"be a multiple of {SIDE_MULTIPLE} up to {MAX_SIDE}",
                "upscale.scale",
            )

    async def finish(
        self,
        request: GenerationRequest,
        images: list[bytes],
        seed: int,
        img2img: Img2Img,
        on_step: OnStep | None = None,
    ) -> tuple[list[bytes], list[dict] | None]:
        """A generation's encoded ``images`` finished as it asks, and each image's ``faces`` (None: not asked).

        Upscaled (then, with ``denoise``, redrawn by ``img2img`` at that size), then their faces restored; a video's
        frames, then interpolated.
        """
        if request.upscale is not None:
            images = await self._upscaled(request, images, seed, img2img)
        faces = None
        if request.restore_faces is not None:
            images, faces = await self._restored_faces(request, images)
        if isinstance(request, VideoGeneration) and request.interpolate is not None:
            images = await self.interpolated(request, images, on_step)
            factor = request.interpolate.factor  # the drawn frames keep their faces; the new ones restored none
            faces = faces and [None if k % factor else faces[k // factor] for k in range(len(images))]
        return images, faces

    async def interpolated(
        self, request: VideoGeneration, frames: list[bytes], on_step: OnStep | None = None
    ) -> list[bytes]:
        """A video's encoded ``frames`` with the frames its ``interpolate`` draws between them (PNGs, lossless).

        Each pair of frames done is a step of the interpolate stage to ``on_step`` (what it raises stops it).
        """
        entry = self.upscalers.interpolators.choose(request.interpolate.interpolator)
        pixels = await asyncio.to_thread(lambda: [decode(frame) for frame in frames])
        pair_done = on_step and (lambda done, total: on_step(Progress(done, total, stage=Stage.INTERPOLATE)))
        every = await interpolate_frames(pixels, request.interpolate.factor, entry, self.runner, pair_done)
        encoding = (request.raster_format, request.output_compression)
        return await asyncio.to_thread(lambda: [encode_image(frame, *encoding) for frame in every])

    async def _restored_faces(self, request: GenerationRequest, images: list[bytes]) -> tuple[list[bytes], list[dict]]:
        """Each image with its faces restored as ``restore_faces`` asks, and each image's ``faces``."""
        encoding = (request.raster_format, request.output_compression)
        finished, notes = [], []
        for image in images:
            pixels = await asyncio.to_thread(decode, image)
            restored, faces = await self.restored(pixels, request.restore_faces)
            notes.append(faces)
            changed = restored is not pixels
            finished.append(await asyncio.to_thread(encode_image, restored, *encoding) if changed else image)
        return finished, notes

    async def _upscaled(
        self, request: GenerationRequest, images: list[bytes], seed: int, img2img: Img2Img
    ) -> list[bytes]:
        """A generation's encoded ``images`` upscaled (then, with ``denoise``, redrawn by ``img2img`` at that size)."""
        choice = request.upscale
        entry, scale = self.upscalers.choose(choice.upscaler, choice.scale, field="upscale.upscaler")
        encoding = (request.raster_format, request.output_compression)
        finished = []
        for image in images:
            pixels = await asyncio.to_thread(decode, image)
            upscaled = await upscale_pixels(pixels, entry, scale, self.runner)
            if choice.denoise is None:
                finished.append(await asyncio.to_thread(encode_image, upscaled, *encoding))
                continue
            height, width = upscaled.shape[:2]
            second = request.model_copy(
                update={
                    "image": [await asyncio.to_thread(png_base64, upscaled)],
                    "strength": choice.denoise,
                    "size": f"{width}x{height}",
                    "n": 1,
                    "candidates": 1,  # the chosen image is redrawn, not chosen again
                    "seed": seed,
                    "upscale": None,
                }
            )
            finished.extend(await img2img(second))
        return finished
