"""A video drawn: a generation's motion part (its frames one axis of the latents).

The request it comes from is :mod:`serve.protocol.video`'s; the files it is answered as, :mod:`serve.images.video`'s.
"""

from __future__ import annotations

from serve.protocol.schema import GenerationRequest
from serve.protocol.video import SVD_CONDITIONING, VideoGeneration
from serve.text_to_image.generation import Motion, VideoConditioning


def motion_of(request: GenerationRequest) -> Motion | None:
    """A video request's motion part (None for a still): an image-to-video model's has its conditioning."""
    if not isinstance(request, VideoGeneration):
        return None
    if request.motion_adapter:
        return Motion(request.motion_adapter, request.frames)
    asked = {name: getattr(request, name) for name in SVD_CONDITIONING}
    return Motion("", request.frames, VideoConditioning(fps=request.fps, **asked))
