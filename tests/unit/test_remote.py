"""Remote models (``easel up --remote``): the flag, what a request sends, what a service's answer gives, and bounds.

The service's answers are httpx's recorded shapes (no server): OpenAI's images answer (no seed), Easel's (its seed
and ``prompt_tokens_truncated``), and the ways a service fails. A key is read only from a variable declared for
remotes' keys and never shown back; an answer's images are checked as an input image is (tests/unit/
test_remote_answers.py).
"""

from __future__ import annotations

import asyncio
import base64
import json

import click
import httpx
import pytest
from pydantic import ValidationError

from serve.cli.options import NAMED_REMOTE
from serve.errors import BadGateway, GatewayTimeout, InvalidInput, NotReady
from serve.protocol.schema import GenerationRequest
from serve.remote import openai_images
from serve.remote.models import RemoteModel
from serve.remote.settings import RemoteBackend, RemoteSettings
from serve.serving.ray_errors import cannot_serve
from tests.unit.test_remote_answers import answer_of, png

PNG = b"\x89PNG\r\n\x1a\n-an-image"
OPENAI_ANSWER = {"created": 1_700_000_000, "data": [{"b64_json": base64.b64encode(PNG).decode()}]}
EASEL_ANSWER = OPENAI_ANSWER | {"seed": 42, "prompt_tokens_truncated": 3}


def backend(**options) -> RemoteBackend:
    return RemoteBackend(url="http://127.0.0.1:9", **options)


def drawn(handler, request: GenerationRequest, seed: int = 7, **options):
    """``request`` drawn through a transport answering with ``handler``."""
    transport = httpx.MockTransport(handler)
    return asyncio.run(openai_images.generate(request, backend(**options), seed, "b", transport=transport))


def test_the_flag_reads_a_url_and_its_options_into_a_backend(monkeypatch):
    monkeypatch.setenv("EASEL_REMOTE_B", "sk-b")
    flag = "b=http://127.0.0.1:8100,key_env=EASEL_REMOTE_B,unsupported=drop,takes=seed"
    name, value = NAMED_REMOTE.convert(flag, None, None)
    settings = RemoteSettings(remotes={name: value})
    assert settings.remotes["b"] == RemoteBackend(
        url="http://127.0.0.1:8100", key_env="EASEL_REMOTE_B", unsupported="drop", takes=("seed",)
    )
    assert RemoteBackend(url="http://x", takes="").takes == ()  # takes= alone: OpenAI's fields only
    for bad in ("b", "b=", "b=http://x,timeout_s"):
        with pytest.raises(click.BadParameter):
            NAMED_REMOTE.convert(bad, None, None)
    for fields in ({"takes": "seed+loras"}, {"url": "ftp://x"}, {"timeout_s": 0}, {"colour": "red"}):
        with pytest.raises(ValidationError):
            RemoteBackend(**{"url": "http://x"} | fields)
    with pytest.raises(ValidationError, match="cannot name a model"):
        RemoteSettings(remotes={"B!": {"url": "http://x"}})


def test_a_key_comes_from_its_environment_variable_and_an_unset_one_stops_the_start(monkeypatch):
    monkeypatch.delenv("EASEL_REMOTE_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match="EASEL_REMOTE_TEST_KEY, the variable holding its key, is not set"):
        RemoteSettings(remotes={"b": {"url": "http://127.0.0.1:9", "key_env": "EASEL_REMOTE_TEST_KEY"}})
    monkeypatch.setenv("EASEL_REMOTE_TEST_KEY", "sk-test")
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return httpx.Response(200, json=answer_of(png(64, 64)))

    model = RemoteModel("b", backend(key_env="EASEL_REMOTE_TEST_KEY"), transport=httpx.MockTransport(handler))
    asyncio.run(model.generate(GenerationRequest(prompt="a fox", size="64x64"), 7))
    assert seen == ["Bearer sk-test"]


def test_the_body_sent_has_openai_s_fields_and_the_extensions_the_service_takes():
    request = GenerationRequest(prompt="a fox", n=2, size="64x64", seed=5, num_inference_steps=3, user="u1")
    body = openai_images.request_body(request, backend(model="sdxl"), seed=5)
    assert body == {
        "prompt": "a fox",
        "n": 2,
        "size": "64x64",
        "user": "u1",
        "num_inference_steps": 3,
        "response_format": "b64_json",
        "model": "sdxl",
        "seed": 5,
    }
    openai_only = openai_images.request_body(request, backend(takes=""), seed=5)
    assert "seed" not in openai_only and "num_inference_steps" not in openai_only
    svg = openai_images.request_body(GenerationRequest(prompt="x", output_format="svg"), backend(), seed=1)
    assert "output_format" not in svg  # drawn as a PNG, traced here


def test_what_a_remote_cannot_honour_is_a_400_naming_the_field_or_dropped_as_its_operator_chose():
    refusing, dropping = RemoteModel("b", backend()), RemoteModel("b", backend(unsupported="drop"))
    with_lora = GenerationRequest(prompt="x", size="64x64", loras=[{"name": "ink"}], scheduler="lcm")
    with pytest.raises(InvalidInput) as refused:
        refusing.check(with_lora.model_copy(update={"scheduler": "ddim"}))
    assert refused.value.field == "loras" and "model b" in refused.value.message
    assert dropping.check(with_lora).work.rows == 1
    assert dropping.dropped(with_lora) == ("scheduler", "loras")  # in the request's order
    assert dropping.headers(with_lora) == {"Easel-Model": "b", "Easel-Dropped": "scheduler,loras"}
    drawn_as = dropping.drawn(with_lora)  # what is admitted, cached and recorded: the request without them
    assert (drawn_as.loras, drawn_as.scheduler, drawn_as.size) == ([], "ddim", "64x64")
    assert refusing.drawn(with_lora) == with_lora
    with pytest.raises(InvalidInput) as prompts:  # what the request is about is never dropped
        dropping.check(GenerationRequest(prompts=[{"prompt": "a"}, {"prompt": "b"}], size="64x64"))
    assert prompts.value.field == "prompts"
    seeded = GenerationRequest(prompt="x", size="64x64", seed=3)
    with pytest.raises(InvalidInput) as seed:  # an OpenAI service would ignore the seed
        RemoteModel("b", backend(takes="")).check(seeded)
    assert seed.value.field == "seed"
    assert refusing.check(seeded).work.rows == 1 and refusing.dropped(seeded) == ()


def test_a_remote_request_is_priced_like_any_and_the_stack_s_cost_limit_holds():
    model = RemoteModel("b", backend(), max_cost=10.0)
    checked = model.check(GenerationRequest(prompt="x", size="512x512", num_inference_steps=4))
    assert checked.work.cost == pytest.approx(0.262144 * 5) and checked.plan.cost == checked.work.cost
    unsized = model.check(GenerationRequest(prompt="x", num_inference_steps=1))  # its native 1024x1024
    assert unsized.work.width == unsized.work.height == 1024
    with pytest.raises(InvalidInput) as over:
        model.check(GenerationRequest(prompt="x", size="1024x1024", num_inference_steps=50))
    assert over.value.field == "num_inference_steps" and "over the limit of 10" in over.value.message


def test_answers_of_openai_and_of_easel_are_read_with_their_seed_and_truncation():
    sent = []

    def openai(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        assert request.url.path == "/v1/images/generations"
        return httpx.Response(200, json=OPENAI_ANSWER)

    result = drawn(openai, GenerationRequest(prompt="a fox"), seed=11)
    assert result.images == [PNG] and result.seed == 11 and sent[0]["seed"] == 11  # taken: the seed it was sent
    assert drawn(openai, GenerationRequest(prompt="a fox"), takes="").seed is None  # neither taken nor said
    easel = drawn(lambda _: httpx.Response(200, json=EASEL_ANSWER), GenerationRequest(prompt="a fox"))
    assert (easel.seed, easel.prompt_tokens_dropped) == (42, 3)


def test_a_failing_service_is_a_503_a_refusal_or_no_images_a_502_and_each_names_the_model():
    request = GenerationRequest(prompt="a fox")
    cases = [
        (httpx.Response(503, json={"error": {"message": "warming up"}}), NotReady, "warming up"),
        (httpx.Response(429, text="slow down"), NotReady, "slow down"),
        (httpx.Response(401, json={"error": {"message": "bad key"}}), BadGateway, "bad key"),
        (httpx.Response(200, json={"data": [{"url": "https://elsewhere"}]}), BadGateway, "b64_json"),
        (httpx.Response(200, json={"data": []}), BadGateway, "no image"),
    ]
    for answer, error, said in cases:
        with pytest.raises(error) as raised:
            drawn(lambda _, answer=answer: answer, request)
        assert raised.value.field == "model" and said in raised.value.message and "b's service" in raised.value.message
    assert cannot_serve(NotReady("x")) == "unavailable" and cannot_serve(BadGateway("x")) == "bad_gateway"


def test_an_unreachable_service_is_a_503_that_a_fallback_takes():
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(NotReady) as raised:
        drawn(refused, GenerationRequest(prompt="a fox"))
    assert raised.value.status == 503 and cannot_serve(raised.value) == "unavailable"


def test_a_service_that_hangs_is_cut_at_its_timeout_and_one_that_floods_at_its_byte_limit():
    async def hangs(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200, json=OPENAI_ANSWER)

    with pytest.raises(GatewayTimeout) as late:
        drawn(hangs, GenerationRequest(prompt="a fox"), timeout_s=0.2)
    assert late.value.status == 504 and "0.2 s" in late.value.message and cannot_serve(late.value) == "timeout"

    async def megabytes(count: int):
        for _ in range(count):
            yield b"x" * (1 << 20)

    def floods(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=megabytes(50))  # 50 MB, no length said

    with pytest.raises(BadGateway) as large:
        drawn(floods, GenerationRequest(prompt="a fox"), max_mb=1)
    assert large.value.status == 502 and "more than 1 MB" in large.value.message
    declared = httpx.Response(200, headers={"Content-Length": str(50 << 20)}, content=b"")
    with pytest.raises(BadGateway):
        drawn(lambda _: declared, GenerationRequest(prompt="a fox"), max_mb=1)


def test_a_remote_model_is_listed_with_its_family_and_nothing_to_load():
    entry = RemoteModel("b", backend(native_size=512)).public()
    assert entry["id"] == "b" and entry["family"] == "remote" and entry["native_size"] == "512x512"
    assert entry["loaded"] is True and entry["loras"] is False and entry["takes_images"] is False
