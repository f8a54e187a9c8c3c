"""Merging engine calls that are ready together (no servers: ONNX Runtime in-process, or a recording runner)."""

import asyncio
from collections import Counter

import numpy as np
import pytest

from serve.errors import InvalidInput
from serve.text_to_image.engine_folder import EngineFolder
from serve.text_to_image.families.sd import SDDims, StableDiffusion
from serve.text_to_image.generation import Generation, SamplingParams
from serve.text_to_image.onnx_runner import OnnxRuntimeRunner
from serve.text_to_image.pipeline import TextToImagePipeline
from serve.text_to_image.spec import UNET
from serve.triton.coalesce import CoalescingRunner
from tests.conftest import psnr

DIMS = SDDims(
    text_length=4,
    text_hidden=3,
    latent_channels=2,
    vae_scale_factor=8,
    vae_scaling_factor=0.18,
    sample_size=4,
    vae_sample_size=32,
)
SPECS = StableDiffusion(DIMS).specs


class Recorder:
    """Answers each UNet request with ``sample * 10 + timestep`` and records the rows of every request."""

    def __init__(self, runner=None, fail: Exception | None = None) -> None:
        self.runner = runner
        self.fail = fail
        self.requests: list[tuple[str, int]] = []

    async def infer(self, spec, inputs, priority=0):
        self.requests.append((spec.name, len(next(iter(inputs.values())))))
        await asyncio.sleep(0)
        if self.fail:
            raise self.fail
        if self.runner:
            return await self.runner.infer(spec, inputs)
        return {"noise_pred": inputs["sample"] * 10 + inputs["timestep"][:, None, None, None]}


def unet_inputs(rows: int, side: int, value: float) -> dict[str, np.ndarray]:
    return {
        "sample": np.full((rows, 2, side, side), value, np.float32),
        "timestep": np.full(rows, value, np.float32),
        "encoder_hidden_states": np.zeros((rows, 4, 3), np.float32),
    }


def test_calls_made_together_go_as_one_request_and_each_gets_its_rows():
    recorder = Recorder()
    runner = CoalescingRunner(recorder)

    async def main():
        return await asyncio.gather(*(runner.infer(SPECS[UNET], unet_inputs(2, 4, v)) for v in (1.0, 2.0, 3.0)))

    results = asyncio.run(main())
    assert recorder.requests == [(UNET, 6)]
    for value, result in zip((1.0, 2.0, 3.0), results, strict=True):
        np.testing.assert_array_equal(result["noise_pred"], np.full((2, 2, 4, 4), value * 11, np.float32))


def test_shapes_are_never_mixed_and_requests_stay_within_the_models_batch_limit():
    recorder = Recorder()
    runner = CoalescingRunner(recorder)
    limit = SPECS[UNET].max_batch_size

    async def main():
        calls = [runner.infer(SPECS[UNET], unet_inputs(limit // 2, 4, 1.0)) for _ in range(3)]
        calls.append(runner.infer(SPECS[UNET], unet_inputs(2, 8, 1.0)))
        return await asyncio.gather(*calls)

    results = asyncio.run(main())
    assert sorted(recorder.requests) == sorted([(UNET, limit), (UNET, limit // 2), (UNET, 2)])
    assert [r["noise_pred"].shape for r in results] == [(limit // 2, 2, 4, 4)] * 3 + [(2, 2, 8, 8)]


def test_a_lone_call_goes_alone_and_calls_in_later_turns_are_separate_requests():
    recorder = Recorder()
    runner = CoalescingRunner(recorder)

    async def main():
        for value in (1.0, 2.0):
            await runner.infer(SPECS[UNET], unet_inputs(2, 4, value))

    asyncio.run(main())
    assert recorder.requests == [(UNET, 2), (UNET, 2)]


def test_an_error_reaches_every_caller_in_the_request_and_a_cancelled_caller_is_left_out():
    runner = CoalescingRunner(Recorder(fail=InvalidInput("bad")))

    async def failing():
        return await asyncio.gather(
            *(runner.infer(SPECS[UNET], unet_inputs(2, 4, 1.0)) for _ in range(2)), return_exceptions=True
        )

    assert [type(e) for e in asyncio.run(failing())] == [InvalidInput, InvalidInput]

    recorder = Recorder()
    runner = CoalescingRunner(recorder)

    async def cancelled():
        gone = asyncio.ensure_future(runner.infer(SPECS[UNET], unet_inputs(2, 4, 1.0)))
        kept = asyncio.ensure_future(runner.infer(SPECS[UNET], unet_inputs(2, 4, 2.0)))
        await asyncio.sleep(0)  # both are queued
        gone.cancel()
        return await kept

    np.testing.assert_array_equal(asyncio.run(cancelled())["noise_pred"], np.full((2, 2, 4, 4), 22.0, np.float32))
    assert recorder.requests == [(UNET, 2)]


class OneAtATime(Recorder):
    """A runner that runs one request at a time, each taking a while (a GPU's engine in Triton's process)."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = asyncio.Lock()

    async def infer(self, spec, inputs, priority=0):
        async with self.lock:
            await asyncio.sleep(0.01)
            return await super().infer(spec, inputs, priority)


def out_of_phase_steps(serial: bool) -> tuple[list[int], Counter]:
    """The rows of each request when four 10-step loops start 5 ms apart (while another's step runs)."""
    recorder = OneAtATime()
    runner = CoalescingRunner(recorder, serial=serial)

    async def steps(start: float) -> None:
        await asyncio.sleep(start)
        for step in range(10):
            await runner.infer(SPECS[UNET], unet_inputs(2, 4, float(step)))

    async def main():
        await asyncio.gather(*(steps(0.005 * i) for i in range(4)))

    asyncio.run(main())
    return [rows for _, rows in recorder.requests], runner.sent


def test_serial_sends_the_calls_made_while_a_request_runs_together_after_it():
    rows, sent = out_of_phase_steps(serial=True)
    assert sum(rows) == 4 * 10 * 2
    assert len(rows) <= 10 + 3  # the late starters join the first loop's steps within a request or two
    assert sent == Counter({f"{UNET} requests": len(rows), f"{UNET} rows": 80})
    unmerged, _ = out_of_phase_steps(serial=False)
    assert len(unmerged) >= 30  # without it each loop keeps its own phase: about a request per step each


@pytest.mark.slow
def test_concurrent_generations_merged_match_each_run_alone(engine_dir):
    engines = EngineFolder(engine_dir)
    alone = TextToImagePipeline(engines, OnnxRuntimeRunner(engines))
    recorder = Recorder(OnnxRuntimeRunner(engines))
    merged = TextToImagePipeline(engines, CoalescingRunner(recorder))
    jobs = [Generation(SamplingParams(f"a red fox {i}", "", 1, 64, 64, 4, 7.5, i, "ddim")) for i in range(3)]

    async def together():
        return await asyncio.gather(*(merged.generate(job) for job in jobs))

    results = asyncio.run(together())
    unet_rows = [rows for name, rows in recorder.requests if name == UNET]
    assert unet_rows == [6] * 4  # 3 guided generations, 4 steps: one request of 6 rows per step
    for job, result in zip(jobs, results, strict=True):
        want = asyncio.run(alone.generate(job)).images[0]
        assert psnr(result.images[0], want) >= 40


class QueuedOnGpu:
    """A runner whose requests return as soon as they are queued, as the torch runtime's tensors on a GPU do."""

    def __init__(self) -> None:
        self.requests: list[int] = []

    async def infer(self, spec, inputs, priority=0):
        self.requests.append(len(inputs["sample"]))
        return {"noise_pred": inputs["sample"] * 10}


def gpu_steps(monkeypatch, steps: list[int], gate: bool) -> list[int]:
    """Generations of ``steps`` steps each, back for their next step 0, 10, 20 ms after a request (each checking its
    last step on the host meanwhile); the GPU runs a request in 50 ms. The UNet requests' rows."""
    import time

    from serve.triton import coalesce

    monkeypatch.setattr(coalesce, "gpu_work", (lambda outputs: lambda: time.sleep(0.05)) if gate else lambda _: None)
    runner = QueuedOnGpu()
    coalescing = CoalescingRunner(runner, serial=True)

    async def generation(index: int, count: int) -> None:
        for _ in range(count):
            await coalescing.infer(SPECS[UNET], unet_inputs(1, 4, index))
            await asyncio.sleep(0.01 * index)

    async def together():
        await asyncio.gather(*(generation(index, count) for index, count in enumerate(steps)))

    asyncio.run(together())
    return runner.requests


def test_a_request_queued_on_a_gpu_stays_in_flight_until_its_callers_are_back_or_the_gpu_has_run_it(monkeypatch):
    assert gpu_steps(monkeypatch, [4, 4, 4], gate=True) == [3, 3, 3, 3]  # every step of the three: one request
    assert len(gpu_steps(monkeypatch, [4, 4, 4], gate=False)) > 4  # gone once queued: each comes back alone
    assert gpu_steps(monkeypatch, [4, 1, 4], gate=True) == [3, 2, 2, 2]  # one left: the rest go once the GPU ran
