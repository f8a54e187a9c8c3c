"""A finished video's files: its frames as an MP4 or as PNGs in a zip.

Its job's answer holds its frames as PNGs (lossless); ``GET /v1/videos/{id}/content`` encodes them as an MP4 (H.264,
PyAV) or, with ``variant=frames``, zips them (Easel's: the exact frames, for parity).
"""

from __future__ import annotations

import base64
import io
import zipfile

import numpy as np
from PIL import Image


def frames_of(answer: dict) -> list[bytes]:
    """A finished video's frames, as the PNGs its answer (its job's result) holds."""
    return [base64.b64decode(item["b64_json"]) for item in answer["data"]]


def mp4(pngs: list[bytes], fps: int) -> bytes:
    """The frames as an MP4: H.264 (libx264, yuv420p) at ``fps``, through PyAV."""
    import av

    frames = [np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) for png in pngs]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def frames_zip(pngs: list[bytes]) -> bytes:
    """The frames as PNGs in a zip (``frame_000.png``, ...): the exact pixels the MP4 was encoded from."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for index, png in enumerate(pngs):
            archive.writestr(f"frame_{index:03d}.png", png)
    return buffer.getvalue()
