"""Fallback chains and the circuit breakers a generation passes (serve/serving/fallbacks.py), without Ray."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from types import SimpleNamespace

import httpx
import pytest
from PIL import Image
from ray.exceptions import GetTimeoutError
from ray.serve.exceptions import BackPressureError

from serve.errors import InvalidInput, NotReady, Overloaded, Saturated
from serve.experiments import open_experiment_store
from serve.experiments.traffic import Experiments
from serve.jobs.model import Progress
from serve.models.served import ServedModels
from serve.protocol.schema import GenerationRequest
from serve.resilience.circuits import CircuitOpen, Circuits
from serve.resilience.settings import ResilienceSettings
from serve.serving.current_models import CurrentModels
from serve.serving.fallbacks import Fallback
from serve.serving.generations import Generations
from serve.serving.ray_errors import against_model, cannot_serve
from tests.unit.test_serving import Handles


class Down(Handles):
    """The handles, where the models in ``down`` fail as a backend that is down does (``error``)."""

    def __init__(self, *down: str, error: Exception | None = None) -> None:
        super().__init__()
        self.down = set(down)
        self.error = error

    async def _generate(self, drawing, plan, sent_at: float, cache_scope: str = "", model: str = ""):
        if model in self.down:
            self.calls.append(("failed", model))
            raise self.error or NotReady("Triton models not ready: unet", retry_after_s=5)
        return await super()._generate(drawing, plan, sent_at, cache_scope, model)


@pytest.fixture
def stack(engine_dir, transformer_engine_dirs, tmp_path):
    """A stack's models: the default, ``b`` (the same engines) and ``sd3`` (a family without dpmpp_2m)."""
    served = {"easel-default": str(engine_dir), "b": str(engine_dir), "sd3": str(transformer_engine_dirs["tiny-sd3"])}
    models = CurrentModels(ServedModels.open(served))
    return models, Experiments(open_experiment_store(f"sqlite:///{tmp_path / 'easel.db'}"), models.names)


def generations(
    stack, handles: Handles, chains: dict, failures: int = 2, remotes: dict | None = None, **options
) -> Generations:
    """Generations of the stack's models, ``chains`` and ``remotes`` in their table (``transport``: the remotes')."""
    models, traffic = stack
    table = models.now().table.declared(remotes or {}, chains)
    chained = CurrentModels(models.now().with_table(table), options.pop("transport", None))
    circuits = Circuits(ResilienceSettings(circuit_failures=failures), failed=against_model)
    return Generations(chained, handles, None, handles, None, traffic, circuits=circuits, **options)


async def answered(served: Generations, **asked):
    """The HTTP answer to a generation of the default model (seed 3), as the door admits and answers it."""
    request = GenerationRequest(prompt="a red fox", model="easel-default", seed=3, **asked)
    return await served.answer(await served.admitted(request, None), None, fresh=False)


def test_a_model_that_cannot_serve_is_answered_by_its_chain_and_the_answer_says_who_and_why(stack):
    handles = Down("easel-default")
    served = generations(stack, handles, {"easel-default": ("b",)})

    async def scenario():
        return [await answered(served) for _ in range(3)]

    first, second, third = asyncio.run(scenario())
    assert [r.headers["easel-model"] for r in (first, second, third)] == ["b"] * 3
    reasons = [r.headers["easel-fallback"] for r in (first, second, third)]
    assert reasons == ["easel-default unavailable"] * 2 + ["easel-default circuit_open"]  # 2 failures opened it
    assert json.loads(third.body)["fallback"] == {"model": "easel-default", "reason": "circuit_open"}
    assert json.loads(third.body)["model"] == "b"
    assert handles.calls.count(("failed", "easel-default")) == 2  # the open circuit called it no more
    assert served.circuits.states() == {"b": "closed", "easel-default": "open"}


def test_fallback_false_is_the_model_s_own_503(stack):
    handles = Down("easel-default")
    served = generations(stack, handles, {"easel-default": ("b",)}, failures=1)

    async def scenario():
        refusals = []
        for _ in range(2):
            with pytest.raises(NotReady) as refused:
                await answered(served, fallback=False)
            refusals.append(refused.value)
        return refusals

    unavailable, circuit_open = asyncio.run(scenario())
    assert type(unavailable) is NotReady and unavailable.status == 503
    assert isinstance(circuit_open, CircuitOpen) and "easel-default" in circuit_open.message
    assert ("generate", "b", "") not in handles.calls


def test_a_link_that_cannot_take_the_request_is_skipped_and_why_is_logged(stack, caplog):
    handles = Down("easel-default")
    served = generations(stack, handles, {"easel-default": ("sd3", "b")})
    with caplog.at_level(logging.WARNING, logger="serve.serving.fallbacks"):
        answer = asyncio.run(answered(served, scheduler="dpmpp_2m"))  # sd3's family has no dpmpp_2m
    assert answer.headers["easel-model"] == "b"
    assert [call[1] for call in handles.calls if call[0] == "generate"] == ["b"]
    assert "fallback sd3 skipped" in caplog.text and "scheduler" in caplog.text


def test_no_link_left_is_a_503_naming_the_model_and_each_link_s_reason(stack):
    handles = Down("easel-default", "b")
    served = generations(stack, handles, {"easel-default": ("sd3", "b")})
    with pytest.raises(NotReady) as refused:
        asyncio.run(answered(served, scheduler="dpmpp_2m"))
    assert refused.value.status == 503 and refused.value.field == "model"
    message = refused.value.message
    assert message.startswith("model easel-default cannot serve")
    assert "sd3: cannot take it (scheduler)" in message and "b: unavailable" in message


@pytest.mark.parametrize("error", [InvalidInput("loras: too many", "loras"), Overloaded("busy")])
def test_a_client_s_error_or_saturation_goes_down_no_chain(stack, error):
    handles = Down("easel-default", error=error)
    served = generations(stack, handles, {"easel-default": ("b",)})
    with pytest.raises(type(error)):
        asyncio.run(answered(served))
    assert ("generate", "b", "") not in handles.calls
    assert served.circuits.states() == {"easel-default": "closed"}


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (CircuitOpen("open"), "circuit_open"),
        (GetTimeoutError("late"), "timeout"),
        (TimeoutError(), "timeout"),
        (NotReady("down"), "unavailable"),
        (RuntimeError("replica died"), "unavailable"),
        (Overloaded("busy"), None),
        (BackPressureError(num_queued_requests=9, max_queued_requests=8), None),
        (InvalidInput("size: too big", "size"), None),
    ],
)
def test_what_cannot_serve_means(error, reason):
    assert cannot_serve(error) == reason


class Cancellable:
    """A stream as Ray Serve's handle answers it: iterated, and cancelled when its reader stops."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def __aiter__(self):
        return self

    def __anext__(self):
        return self.stream.__anext__()

    def cancel(self) -> None:
        pass


class Streaming(Down):
    """The handles with ``generate_stream`` too (gRPC's ``Generate``): each step, then the images."""

    def __init__(self, *down: str) -> None:
        super().__init__(*down)
        self.generate_stream = SimpleNamespace(remote=lambda *args, **kw: Cancellable(self._stream(*args, **kw)))

    async def _stream(self, drawing, plan, sent_at: float, cache_scope: str = "", previews: bool = False, model=""):
        images = await self._generate(drawing, plan, sent_at, cache_scope, model)  # a model that is down fails first
        yield Progress(1, 1)
        yield images


def test_a_stream_whose_model_fails_before_its_first_step_is_drawn_by_its_chain(stack):
    handles = Streaming("easel-default")
    served = generations(stack, handles, {"easel-default": ("b",)})

    async def scenario():
        request = GenerationRequest(prompt="a red fox", model="easel-default", seed=3)
        return [item async for item in served.events(await served.admitted(request, None), None)]

    progress, images = asyncio.run(scenario())
    assert progress == Progress(1, 1)
    assert images.model == "b" and images.fallback == Fallback("easel-default", "unavailable")
    assert images.fallback.metadata() == (("easel-fallback", "easel-default unavailable"),)
    assert ("end", "easel-default.v1") in handles.calls and ("end", "b.v1") in handles.calls  # both let go


def test_a_job_of_a_model_that_cannot_serve_is_run_down_its_chain_and_its_answer_says_so(stack, tmp_path):
    """A background job's run is a synchronous answer: the same chain, named in the body the job keeps."""
    from serve.jobs import open_job_store
    from serve.jobs.runner import JobLease
    from serve.priority import Priority
    from serve.serving.jobs import BackgroundJobs

    handles = Streaming("easel-default")  # a job's run streams its steps into the store
    served = generations(stack, handles, {"easel-default": ("b",)})

    async def scenario():
        jobs = BackgroundJobs(open_job_store(f"sqlite:///{tmp_path / 'jobs.db'}"), served, served.experiments)
        jobs.runner._loop_task.cancel()  # this test runs the job itself
        jobs.store.submit({"prompt": "a red fox", "model": "easel-default", "seed": 3}, Priority.NORMAL)
        job = jobs.store.claim("worker-1", 60.0)
        return await jobs.run(job, JobLease(job.id, "worker-1", 60.0))

    body = asyncio.run(scenario())
    assert body["model"] == "b" and body["fallback"] == {"model": "easel-default", "reason": "unavailable"}
    assert ("failed", "easel-default") in handles.calls and len(body["data"]) == 1


def test_a_queued_job_runs_the_drawing_it_was_admitted_as_its_seed_the_door_s(stack, tmp_path):
    """Its row keeps the API's request; its run, admitted again by the same model, types the same drawing."""
    from serve.jobs import open_job_store
    from serve.jobs.runner import JobLease
    from serve.priority import Priority
    from serve.serving.jobs import BackgroundJobs

    drawings = []

    class Recording(Streaming):
        async def _generate(self, drawing, plan, sent_at: float, cache_scope: str = "", model: str = ""):
            drawings.append(drawing)
            return await super()._generate(drawing, plan, sent_at, cache_scope, model)

    served = generations(stack, Recording(), {})
    prompts = [{"prompt": "a red fox"}, {"prompt": "an owl", "seed": 9}]
    asked = GenerationRequest(prompts=prompts, n=2, scheduler="ddim", priority="high", num_inference_steps=3)

    async def scenario():
        jobs = BackgroundJobs(open_job_store(f"sqlite:///{tmp_path / 'jobs.db'}"), served, served.experiments)
        jobs.runner._loop_task.cancel()  # this test runs the job itself
        admitted = await served.admitted(asked, None)
        await jobs.queued(admitted, None, None)
        job = jobs.store.claim("worker-1", 60.0)
        return admitted.drawing, job, await jobs.run(job, JobLease(job.id, "worker-1", 60.0))

    drawing, job, body = asyncio.run(scenario())
    (ran,) = drawings
    assert job.priority == drawing.priority == Priority.HIGH and body["seed"] == drawing.seed
    assert ran.jobs == drawing.jobs and ran.sources == drawing.sources and ran.answer == drawing.answer
    assert drawing.asked_seeds == (None, 9) and ran.asked_seeds == (drawing.seed, 9)  # the door's seed, stored


def test_a_job_for_a_remote_model_that_takes_no_seed_is_stored_without_one_and_drawn(stack, tmp_path):
    """``takes=`` without seed (an OpenAI service): a job's seed, drawn at submission for a served model, is not
    drawn for it, so its run is not refused for a seed it never asked."""
    from serve.jobs import open_job_store
    from serve.jobs.runner import JobLease
    from serve.serving.jobs import BackgroundJobs

    png = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(png, "PNG")
    answer = {"data": [{"b64_json": base64.b64encode(png.getvalue()).decode()}]}
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
    openai = {"openai": {"url": "http://127.0.0.1:9", "takes": []}}
    served = generations(stack, Down(), {}, remotes=openai, transport=transport)

    async def scenario():
        jobs = BackgroundJobs(open_job_store(f"sqlite:///{tmp_path / 'jobs.db'}"), served, served.experiments)
        jobs.runner._loop_task.cancel()  # this test runs the job itself
        admitted = await served.admitted(GenerationRequest(prompt="a red fox", model="openai"), None)
        await jobs.queued(admitted, None, None)
        job = jobs.store.claim("worker-1", 60.0)
        return job.request, await jobs.run(job, JobLease(job.id, "worker-1", 60.0))

    stored, body = asyncio.run(scenario())
    assert stored["seed"] is None and body["model"] == "openai" and len(body["data"]) == 1


def test_a_remote_link_draws_what_its_primary_cannot_and_says_what_it_dropped(stack, engine_dir):
    """A chain to a remote model (``unsupported=drop``): the default down, its request (with a sampler the remote
    cannot take) is drawn by the remote's service without it, and the answer says who drew it, why, and what it lost."""
    sent, png = [], io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(png, "PNG")

    def service(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json={"data": [{"b64_json": base64.b64encode(png.getvalue()).decode()}], "seed": 3})

    far = {"far": {"url": "http://127.0.0.1:9", "unsupported": "drop"}}
    transport = httpx.MockTransport(service)
    served = generations(stack, Down("easel-default"), {"easel-default": ("far",)}, remotes=far, transport=transport)
    answer = asyncio.run(answered(served, scheduler="euler"))
    body = json.loads(answer.body)
    assert answer.headers["easel-model"] == "far" and answer.headers["easel-fallback"] == "easel-default unavailable"
    assert answer.headers["easel-dropped"] == "scheduler" and body["dropped"] == ["scheduler"] and body["seed"] == 3
    assert sent == [{"prompt": "a red fox", "n": 1, "response_format": "b64_json", "seed": 3}]
    refusing = generations(stack, Down(), {}, remotes={"far": {"url": "http://127.0.0.1:9"}})
    with pytest.raises(InvalidInput) as refused:  # the remote asked by name: refused under its default, refuse
        asyncio.run(refusing.admitted(GenerationRequest(prompt="x", model="far", scheduler="euler"), None))
    assert refused.value.field == "scheduler"


def test_a_model_saturated_past_its_queue_wait_is_drawn_by_its_chain_and_only_a_request_that_may_fall_back_waits(
    stack,
):
    """``--fallback-queue-wait-s``: a request that may go down a chain carries the wait to its replica (its plan);
    one with ``fallback: false``, or for a model without a chain, waits its turn. Saturated there, the chain draws."""
    handles = Down("easel-default", error=Saturated("model: no slot within its queue wait of 2 s", "model"))
    served = generations(stack, handles, {"easel-default": ("b",)}, failures=5, fallback_queue_wait_s=2.0)

    async def plans() -> list:
        asked = [GenerationRequest(prompt="x", seed=1), GenerationRequest(prompt="x", seed=1, fallback=False)]
        asked.append(GenerationRequest(prompt="x", seed=1, model="b"))
        return [(await served.admitted(request, None)).plan.queue_wait_s for request in asked]

    assert asyncio.run(plans()) == [2.0, None, None]
    answer = asyncio.run(answered(served))
    assert answer.headers["easel-model"] == "b" and answer.headers["easel-fallback"] == "easel-default saturated"
    assert served.circuits.states()["easel-default"] == "closed"  # saturation is no failure


def test_a_request_that_may_fall_back_to_a_remote_is_priced_by_the_dearest_link_that_takes_it(stack):
    """Issue 76: a sizeless request to the 64-px default whose chain ends at a remote drawing 512 px by default is
    charged at admission what the remote charges for it, not the primary's price; with ``fallback: false`` (or a link
    that cannot take it) the primary's."""
    far = {"far": {"url": "http://127.0.0.1:9", "native_size": 512}}
    served = generations(stack, Down(), {"easel-default": ("far",)}, remotes=far)

    async def costs() -> list[float]:
        asked = [
            GenerationRequest(prompt="x", seed=1),
            GenerationRequest(prompt="x", seed=1, fallback=False),
            GenerationRequest(prompt="x", seed=1, model="far"),
            GenerationRequest(prompt="x", seed=1, scheduler="euler"),  # the remote refuses a sampler: it prices nothing
        ]
        return [(await served.admitted(request, None)).cost for request in asked]

    chained, exact, remote, refused_by_links = asyncio.run(costs())
    assert chained == remote > exact == refused_by_links
