"""Memory models, budgets, batches split to fit, and admission (no servers)."""

import asyncio

import numpy as np
import pytest

from build_engines.memory import SIDES, measured, save, sides_up_to
from serve.errors import InvalidInput, Saturated
from serve.models.admission import Admission, Limits, Plan, Work
from serve.priority import Priority
from serve.serving.ray_errors import cannot_serve
from serve.text_to_image.tiling import VaeTiling
from serve.triton.activations import ActivationPool
from serve.triton.engine_files import EngineFiles
from serve.triton.memory import SAFETY, MemoryModel, activation_pool
from serve.triton.onnx_backend import MemoryBound, run_batched
from serve.triton.spec import ModelSpec, TensorSpec

MiB = 2**20


def test_fit_recovers_a_quadratic_and_extrapolates():
    truth = (1000.0, 50.0, 0.5)
    measured = [(p, int(truth[0] + truth[1] * p + truth[2] * p * p)) for p in (256, 1024, 2304, 4096)]
    model = MemoryModel.fit(10 * MiB, measured)
    at = 16384
    exact = truth[0] + truth[1] * at + truth[2] * at * at
    assert model.per_row(at) == pytest.approx(SAFETY * exact, rel=1e-3)
    assert model.rows_within(int(3.5 * model.per_row(at)), at) == 3
    assert model.rows_within(model.per_row(at) - 1, at) == 0


def test_rows_that_measured_nothing_are_never_split():
    model = MemoryModel(10 * MiB, (0.0, 0.0, 0.0), ((1, 0),))
    assert model.rows_within(0, 1) > 1 << 30


def test_save_and_load_round_trip(tmp_path):
    model = MemoryModel(123, (1.0, 2.0, 3.0), ((1, 6),))
    save(model, tmp_path / "memory.json")
    assert MemoryModel.load(tmp_path / "memory.json") == model


def test_engines_are_measured_up_to_their_models_native_size_and_measured_again_if_they_were_not(tmp_path):
    assert sides_up_to(64) == SIDES
    assert sides_up_to(128) == (*SIDES, 96, 128)  # SDXL, SD3: where a fit through 16-64 said a third of the peak
    unet = _specs()["unet"]
    files = EngineFiles(tmp_path)
    assert not measured(files, unet)
    small = MemoryModel(0, (0.0, 1.0, 0.0), ((256, 1), (4096, 2)), (0.0, 1.0, 0.0), ((4096, 0.1),))
    save(small, files.memory)
    assert measured(files, unet) and not measured(files, unet, sides_up_to(128))
    save(MemoryModel(0, (0.0, 1.0, 0.0), ((4096, 2), (16384, 9)), (0.0, 1.0, 0.0)), files.memory)
    assert measured(files, unet, sides_up_to(128))
    save(MemoryModel(0, (0.0, 0.0, 0.0), ((1, 0),), (0.0, 0.0, 0.0)), files.memory)  # no dynamic axes: one size
    assert measured(files, _specs()["text_encoder"], sides_up_to(128))
    save(MemoryModel(0, (0.0, 1.0, 0.0), ((4096, 2), (16384, 9))), files.memory)  # no times: measured again
    assert not measured(files, unet)


class _CountingSession:
    """Doubles its input; records the rows of every run."""

    output_names = ["out"]

    def __init__(self):
        self.runs = []

    def run(self, feeds, shared=None):
        (array,) = feeds.values()
        self.runs.append(len(array))
        return [array * 2]


class _PoolWatchingSession(_CountingSession):
    """Also records what the pool holds while each run runs."""

    def __init__(self, pool):
        super().__init__()
        self.pool, self.held = pool, []

    def run(self, feeds, shared=None):
        self.held.append(self.pool.usage().held)
        return super().run(feeds, shared)


def test_a_bounded_batch_runs_in_slices_that_fit_and_answers_every_request_exactly(tmp_path):
    model = MemoryModel(0, (0.0, 0.0, 1.0))  # one row at 8x8 positions: 64^2 x 1.25 bytes
    pool = ActivationPool.create(tmp_path / "pool.json", 3 * model.per_row(64))
    bound = MemoryBound(model, pool, dynamic_axes=(2, 3), engine="unet")
    session = _PoolWatchingSession(pool)
    feeds = [{"x": np.full((rows, 4, 8, 8), i, np.float32)} for i, rows in enumerate([2, 3, 2])]
    results = run_batched(session, feeds, bound)
    assert session.runs == [3, 3, 1]
    assert session.held == [3 * model.per_row(64), 3 * model.per_row(64), model.per_row(64)]  # each run reserved
    assert pool.usage().held == 0  # and gave them back
    for i, (feed, result) in enumerate(zip(feeds, results, strict=True)):
        np.testing.assert_array_equal(result["out"], feed["x"] * 2, err_msg=f"request {i}")


def test_a_row_that_cannot_fit_is_an_error_for_its_requests_and_other_shapes_still_run(tmp_path):
    model = MemoryModel(0, (0.0, 0.0, 1.0))
    pool = ActivationPool.create(tmp_path / "pool.json", model.per_row(64))
    bound = MemoryBound(model, pool, dynamic_axes=(2, 3), engine="unet")
    small = {"x": np.ones((1, 4, 8, 8), np.float32)}
    large = {"x": np.ones((1, 4, 16, 16), np.float32)}
    small_result, large_result = run_batched(_CountingSession(), [small, large], bound)
    np.testing.assert_array_equal(small_result["out"], small["x"] * 2)
    assert isinstance(large_result, MemoryError) and "activation memory" in str(large_result)


def _specs():
    latent = TensorSpec("sample", "float32", (4, -1, -1), ("h", "w"))
    return {
        "text_encoder": ModelSpec("text_encoder", (TensorSpec("ids", "int64", (77,)),), (), max_batch_size=16),
        "unet": ModelSpec("unet", (latent,), (), max_batch_size=32),
        "vae_decoder": ModelSpec("vae_decoder", (latent,), (), max_batch_size=8),
    }


def _models():
    return {
        "text_encoder": MemoryModel(100 * MiB, (1.0 * MiB, 0.0, 0.0)),
        "unet": MemoryModel(200 * MiB, (0.0, 1000.0, 1.0)),
        "vae_decoder": MemoryModel(100 * MiB, (0.0, 2000.0, 8.0)),
    }


def test_the_pool_is_what_the_weights_leave_and_must_hold_a_row_of_each_text_encoder():
    assert activation_pool(_models(), _specs(), 2048 * MiB) == 2048 * MiB - 400 * MiB
    with pytest.raises(ValueError, match="does not hold"):
        activation_pool(_models(), _specs(), 400 * MiB)
    with pytest.raises(ValueError, match="does not hold"):  # the text encoder's row: 1.25 MiB
        activation_pool(_models(), _specs(), 401 * MiB)
    assert activation_pool(_models(), _specs(), 402 * MiB) == 2 * MiB


def test_admission_refuses_what_cannot_fit_and_what_costs_too_much_naming_the_field():
    models = _models()
    pool = activation_pool(models, _specs(), 2048 * MiB)  # 1648 MiB
    admission = Admission(models, pool, Limits(2048 * MiB, max_cost=64), VaeTiling(256, 8), "unet")
    assert admission.check(Work(1, 20, 512, 512)) == Plan(Work(1, 20, 512, 512).cost, tiling=None)
    with pytest.raises(InvalidInput) as cost:
        admission.check(Work(4, 150, 512, 512))
    assert cost.value.field == "num_inference_steps" and "64" in cost.value.message
    # The VAE's row at 128x128 latents needs 8 x 16384^2 x 1.25 bytes (2.5 GiB), over the pool: 32x32 tiles.
    assert admission.check(Work(1, 2, 1024, 1024)).tiling == VaeTiling(256, 8)
    # A lone VAE row larger than any equal share of the pool decodes whole: the engines share one pool.
    assert admission.check(Work(1, 2, 768, 768)).tiling is None  # 832 MiB; its equal share was 792 MiB
    # A VAE whose 32x32 tile does not fit the pool either decodes in the largest halved tiles that do.
    models["vae_decoder"] = MemoryModel(200 * MiB, (0.0, 0.0, 1500.0))  # 1.83 GiB at 32x32, 117 MiB at 16x16
    halving = Admission(models, pool, Limits(2048 * MiB), VaeTiling(256, 8), "unet")
    assert halving.check(Work(1, 2, 1024, 1024)).tiling == VaeTiling(128, 8)
    models["vae_decoder"] = MemoryModel(200 * MiB, (0.0, 0.0, 1e5))  # not even the smallest tile fits
    with pytest.raises(InvalidInput, match="vae_decoder"):
        Admission(models, pool, Limits(2048 * MiB), VaeTiling(256, 8), "unet").check(Work(1, 2, 1024, 1024))
    models = _models()
    models["unet"] = MemoryModel(200 * MiB, (0.0, 1000.0, 8.0))  # now the UNet's row does not fit either
    refusing = Admission(models, pool, Limits(2048 * MiB), VaeTiling(256, 8), "unet")
    with pytest.raises(InvalidInput) as size:
        refusing.check(Work(1, 2, 1024, 1024))
    assert size.value.field == "size" and "unet" in size.value.message and "1.61 GiB" in size.value.message


def test_slots_start_in_arrival_order_and_never_exceed_the_in_flight_cost_unless_alone():
    admission = Admission({}, 0, Limits(1, max_cost=10, max_inflight_cost=10), VaeTiling(256, 8), "unet")
    started, running, most = [], [0.0], [0.0]

    async def request(name: str, cost: float, hold_s: float) -> None:
        async with admission.slot(cost):
            started.append(name)
            running[0] += cost
            most[0] = max(most[0], running[0])
            await asyncio.sleep(hold_s)
            running[0] -= cost

    async def scenario() -> None:
        first = asyncio.create_task(request("a", 6, 0.05))
        await asyncio.sleep(0.01)
        big = asyncio.create_task(request("big", 10, 0.01))  # waits for "a"
        await asyncio.sleep(0.01)
        small = asyncio.create_task(request("small", 1, 0.01))  # would fit now, but arrived after "big"
        await asyncio.gather(first, big, small)

    asyncio.run(scenario())
    assert started == ["a", "big", "small"] and most[0] <= 10


def test_higher_priority_starts_first_and_does_not_wait_for_lower_ones_in_flight():
    admission = Admission({}, 0, Limits(1, max_cost=10, max_inflight_cost=10), VaeTiling(256, 8), "unet")
    started = []

    async def request(name: str, cost: float, hold_s: float, priority: Priority) -> None:
        async with admission.slot(cost, priority):
            started.append(name)
            await asyncio.sleep(hold_s)

    async def scenario() -> None:
        normal = asyncio.create_task(request("normal", 10, 0.2, Priority.NORMAL))  # the replica is full
        await asyncio.sleep(0.01)
        low = asyncio.create_task(request("low", 1, 0.01, Priority.LOW))  # waits for "normal"
        await asyncio.sleep(0.01)
        later = asyncio.create_task(request("normal 2", 1, 0.01, Priority.NORMAL))  # waits too
        await asyncio.sleep(0.01)
        high = asyncio.create_task(request("high", 10, 0.01, Priority.HIGH))  # starts beside the full replica
        await asyncio.sleep(0.05)
        assert started == ["normal", "high"]
        await asyncio.gather(normal, low, later, high)

    asyncio.run(scenario())
    assert started == ["normal", "high", "normal 2", "low"]


def test_a_request_that_may_fall_back_waits_no_longer_than_its_queue_wait_and_the_queue_moves_on():
    admission = Admission({}, 0, Limits(1, max_cost=10, max_inflight_cost=10), VaeTiling(256, 8), "unet")
    started = []

    async def request(name: str, cost: float, hold_s: float, wait_s: float | None = None) -> None:
        async with admission.slot(cost, Priority.NORMAL, wait_s):
            started.append(name)
            await asyncio.sleep(hold_s)

    async def scenario() -> list:
        full = asyncio.create_task(request("full", 10, 0.2))
        await asyncio.sleep(0.01)
        impatient = asyncio.create_task(request("impatient", 1, 0.01, wait_s=0.05))  # saturated after 0.05 s
        await asyncio.sleep(0.01)
        patient = asyncio.create_task(request("patient", 1, 0.01))  # behind it, and not blocked by it once gone
        return await asyncio.gather(full, impatient, patient, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert isinstance(outcomes[1], Saturated) and outcomes[1].status == 429 and "0.05 s" in outcomes[1].message
    assert started == ["full", "patient"] and cannot_serve(outcomes[1]) == "saturated"
