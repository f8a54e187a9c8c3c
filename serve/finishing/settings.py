"""The finishing engines' and face models' settings, a part of ``easel up``'s (:class:`serve.settings.StackOptions`).

Each names files ``easel up`` builds into the finishing engines' folder (:mod:`build_engines.finishing.upscalers`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field

from serve.spelling import Cli


def named_files(option: str) -> Any:
    """The type of a repeatable ``OPTION NAME=FILE``: files by the names they are served under."""
    return Annotated[dict[str, Path], Cli(option, "NAMED_FILE", metavar="NAME=FILE", multiple=True)]


class FinishingSettings(BaseModel):
    """The upscalers, face restorers, frame interpolators and face models a stack serves."""

    upscalers: named_files("--upscaler") = Field(
        {},
        description="An upscaler weights file (.pth, .safetensors: RRDBNet ESRGAN/Real-ESRGAN x4plus/x2plus, "
        "SRVGGNetCompact realesr-general; or .onnx), served as upscaler NAME by tiles (repeatable). One not "
        "recognised is listed with why (GET /v1/upscalers) and not served.",
    )
    face_restorers: named_files("--face-restorer") = Field(
        {},
        description="A face restorer weights file (.pth, .safetensors: GFPGAN v1 clean, as GFPGANv1.4.pth), served "
        "as face restorer NAME for `restore_faces` (repeatable). One not recognised is listed with why (GET "
        "/v1/upscalers, `face_restorers`) and not served.",
    )
    interpolators: named_files("--interpolator") = Field(
        {},
        description="A RIFE flownet.pkl (Practical-RIFE v4.25/4.26), served as interpolator NAME for videos' "
        "`interpolate` (repeatable). One not recognised is listed with why (GET /v1/upscalers) and not served.",
    )
    faces: Annotated[Path | None, Cli(type="EXISTING_FOLDER")] = Field(
        None,
        description="A face model folder in InsightFace's model-zoo layout (as buffalo_l: an SCRFD det_*.onnx and an "
        "ArcFace w600k_*.onnx), served as the engines faces_detector and faces_recognizer for POST /v1/faces/analyze. "
        "One that cannot be served is listed with why (GET /v1/upscalers, `faces`).",
    )
