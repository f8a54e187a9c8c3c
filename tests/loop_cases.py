"""Fixed-seed generations of the embedded default, recorded with the loop before issue 33 (no technique existed).

``tests/data/loop_before_issue_33.npz`` holds their images; every technique off must give exactly these bytes. Made by
running this file with the code of main before the change (commit 9d0dc4d) first on ``PYTHONPATH``::

    PYTHONPATH=/path/to/main-checkout python tests/loop_cases.py tests/data/loop_before_issue_33.npz
"""

import asyncio
import sys
import tempfile
from pathlib import Path

import numpy as np

from serve.text_to_image.generation import Generation, ImageInputs, SamplingParams
from tests.controls import input_image

PROMPT = "a red heart icon"


def cases() -> dict[str, Generation]:
    """Text (each sampler, guided and not, n 2, another size) and img2img."""
    return {
        "ddim_20_guided": Generation(SamplingParams(PROMPT, "", 1, 64, 64, 20, 7.5, 0, "ddim")),
        "euler_8_negative_n2": Generation(
            SamplingParams("a blue anchor icon", "blurry", 2, 96, 64, 8, 6.0, 3, "euler")
        ),
        "dpmpp_6_unguided": Generation(SamplingParams("a green cat icon", "", 1, 64, 64, 6, 1.0, 4, "dpmpp_2m")),
        "img2img_ddim_10": Generation(
            SamplingParams(PROMPT, "", 1, 64, 64, 10, 7.5, 5, "ddim"),
            inputs=ImageInputs(images=(input_image(64),), strength=0.6),
        ),
    }


RECORDED = Path(__file__).parent / "data" / "loop_before_issue_33.npz"


def assert_recorded_bytes(images: np.ndarray, name: str) -> None:
    """``images`` are the recorded case ``name``'s, up to the rounding of the runtime that a fresh install brings.

    The recording's engines were exported and run by the ONNX and ONNX Runtime releases of its day; a later release
    may round a handful of pixels the other way (seen: 3 of 36,864 values off by one). Anything more is the loop's.
    """
    recorded = np.load(RECORDED)[name]
    assert images.shape == recorded.shape, name
    off = np.abs(images.astype(np.int16) - recorded.astype(np.int16))
    assert off.max() <= 1 and np.count_nonzero(off) <= off.size // 1000, (
        f"{name}: {np.count_nonzero(off)} of {off.size} values differ, by up to {off.max()}"
    )


def record(out: Path) -> None:
    """Generate every case in-process (ONNX Runtime engines of the embedded default) and save the images."""
    from build_engines.text_to_image.build import build
    from serve.text_to_image.onnx_runner import OnnxRuntimeRunner
    from serve.text_to_image.pipeline import TextToImagePipeline

    folder = build(repository=Path(tempfile.mkdtemp()))
    pipeline = TextToImagePipeline(folder, OnnxRuntimeRunner(folder))
    images = {name: np.stack(asyncio.run(pipeline.generate(job)).images) for name, job in cases().items()}
    np.savez_compressed(out, **images)


if __name__ == "__main__":
    record(Path(sys.argv[1]))
