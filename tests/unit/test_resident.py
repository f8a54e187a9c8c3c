"""Where a generation's tensors live (serve/text_to_image/resident.py): on a GPU they stay there and each step settles
one step behind; the same loop on the host. Here on the CPU, the resident loop's logic with a marker for the GPU's
events (a CPU's work is done when queued): its images equal the host's, its steps are all reported, in order, and a
step that is not finite is refused by number."""

import asyncio

import numpy as np
import pytest
import torch

from build_engines.text_to_image.build import build
from serve.errors import Diverged
from serve.text_to_image.generation import Generation, SamplingParams
from serve.text_to_image.onnx_runner import OnnxRuntimeRunner
from serve.text_to_image.pipeline import TextToImagePipeline
from serve.text_to_image.resident import OnGpu, OnHost, place_for


class _Done:
    """A CPU's event: its work ran when it was queued."""

    def synchronize(self) -> None:
        pass


class OnCpuResident(OnGpu):
    """:class:`OnGpu`'s logic over the CPU (the tensors stay tensors, every call a tensor), its events done at once."""

    def __init__(self) -> None:
        super().__init__(torch.device("cpu"))

    def _mark(self):
        return _Done()


def test_a_cpu_keeps_its_tensors_on_the_host_and_a_gpu_on_the_gpu():
    assert type(place_for(None)) is OnHost and type(place_for("cpu")) is OnHost
    assert type(place_for("cuda:1")) is OnGpu and place_for("cuda:1").device == torch.device("cuda:1")


def test_a_resident_loop_draws_the_host_loop_s_images_and_reports_every_step_in_order(default_model):
    folder = build(default_model, None, runtime="torch", precision="fp32", device="cpu")
    pipeline = TextToImagePipeline(folder, OnnxRuntimeRunner(folder, device="cpu"))
    job = Generation(SamplingParams("a red heart icon", "", 2, 64, 64, 6, 7.5, 3, "euler"))
    steps = []

    async def on_step(step: int, total: int, latents: np.ndarray) -> None:
        steps.append((step, total, latents.shape))

    host = asyncio.run(pipeline.generate(job))
    pipeline.place = OnCpuResident
    resident = asyncio.run(pipeline.generate(job, on_step=on_step))
    assert all(np.array_equal(a, b) for a, b in zip(host.images, resident.images, strict=True))
    assert steps == [(step, 6, (2, 4, 16, 16)) for step in range(1, 7)]  # 64 px: a 16 x 16 latent


def test_a_step_that_is_not_finite_is_refused_by_number_once_the_next_is_queued():
    place, reported = OnCpuResident(), []

    async def on_step(step: int, total: int, latents: np.ndarray) -> None:
        reported.append(step)

    async def steps():
        await place.settle(1, 3, torch.zeros(2), on_step)
        assert reported == []  # settled one step behind: the GPU is never waited for inside a step
        await place.settle(2, 3, torch.tensor([0.0, float("nan")]), on_step)
        assert reported == [1]
        await place.settle(3, 3, torch.zeros(2), on_step)

    with pytest.raises(Diverged, match="at step 2 of 3"):
        asyncio.run(steps())
