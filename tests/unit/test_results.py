"""Signed image URLs and the generation record a PNG carries (AUTOMATIC1111's parameters line and the JSON)."""

import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from serve.errors import Forbidden
from serve.files import stack_secret
from serve.images.raster import encode_image
from serve.results.record import PARAMETERS, RECORD, parameters_line, with_record
from serve.results.tokens import UrlSigner

RECORD_SAMPLE = {
    "prompt": "a red fox, watercolour",
    "negative_prompt": "blurry",
    "steps": 20,
    "sampler": "ddim",
    "guidance_scale": 7.5,
    "seed": 42,
    "size": "64x64",
    "model": "easel-default",
    "model_hash": "0123456789abcdef",
    "n": 2,
    "index": 1,
    "loras": [{"name": "ink", "scale": 0.8, "hash": "feedfacecafebeef00"}],
    "easel_version": "0.1.0",
}


def _read_together(path, replicas: int = 16) -> set[bytes]:
    """What ``replicas`` threads released at once read as the secret at ``path``."""
    start = threading.Barrier(replicas)

    def read(_):
        start.wait()
        return stack_secret(path)

    with ThreadPoolExecutor(replicas) as pool:
        return set(pool.map(read, range(replicas)))


def test_replicas_starting_together_all_read_the_one_whole_secret(tmp_path):
    """Each Gateway replica reads the URL secret at start: one that read it half written signed URLs others refused."""
    for round_ in range(20):
        path = tmp_path / f"round{round_}" / "url_secret"
        assert _read_together(path) == {path.read_bytes()} and len(path.read_bytes()) == 32
        assert [p.name for p in path.parent.iterdir()] == ["url_secret"]  # no writer's draft left behind


def test_a_signed_url_opens_until_it_expires_and_not_for_another_image_or_secret(tmp_path):
    secret = stack_secret(tmp_path / "url_secret")
    assert stack_secret(tmp_path / "url_secret") == secret and len(secret) == 32  # made once, kept
    assert (tmp_path / "url_secret").stat().st_mode & 0o777 == 0o600
    signer = UrlSigner(secret, ttl_s=60)
    query = dict(part.split("=") for part in signer.query("img_a", now=1000).split("&"))
    expires, signature = int(query["expires"]), query["signature"]
    assert expires == 1060
    signer.check("img_a", expires, signature, now=1059)
    with pytest.raises(Forbidden) as expired:
        signer.check("img_a", expires, signature, now=1061)
    assert expired.value.status == 403 and expired.value.field == "expires"
    for image_id, until, sig, other in (
        ("img_b", expires, signature, signer),  # another image's
        ("img_a", expires + 3600, signature, signer),  # its expiry moved
        ("img_a", expires, signature[:-1] + ("1" if signature[-1] == "0" else "0"), signer),  # tampered
        ("img_a", expires, signature, UrlSigner(b"another stack", 60)),
        ("\u00d9x", expires, "h\u00fd\U00089534q", signer),  # any text a path and query decode to: a 403, never a 500
    ):
        with pytest.raises(Forbidden) as refused:
            other.check(image_id, until, sig, now=1000)
        assert refused.value.field == "signature"


def test_a_png_carries_its_parameters_line_and_json_record_with_its_pixels_unchanged():
    pixels = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    png = encode_image(pixels, "png")
    carrying = with_record(png, RECORD_SAMPLE)
    image = Image.open(io.BytesIO(carrying))
    assert json.loads(image.info[RECORD]) == RECORD_SAMPLE
    parameters = image.info[PARAMETERS]
    assert parameters == parameters_line(RECORD_SAMPLE)
    prompt, negative, line = parameters.split("\n")
    assert prompt == "a red fox, watercolour" and negative == "Negative prompt: blurry"
    assert line.startswith("Steps: 20, Sampler: ddim, CFG scale: 7.5, Seed: 42, Size: 64x64, Model hash: 0123456789")
    assert 'Lora hashes: "ink: feedfacecafe"' in line and "Batch pos: 1" in line and line.endswith("easel 0.1.0")
    assert np.array_equal(np.asarray(image.convert("RGB")), pixels)
    with pytest.raises(ValueError):
        with_record(encode_image(pixels, "jpeg"), RECORD_SAMPLE)


def _generations(engine_dir, tmp_path, **store_limits):
    """Generations over fake handles (tests.unit.test_serving's) keeping images in ``tmp_path``."""
    from serve.experiments import open_experiment_store
    from serve.experiments.traffic import Experiments
    from serve.models.served import ServedModels
    from serve.results import open_image_store
    from serve.serving.current_models import CurrentModels
    from serve.serving.generations import Generations
    from serve.serving.results import Results
    from tests.unit.test_serving import Handles

    url = f"sqlite:///{tmp_path / 'easel.db'}"
    models = CurrentModels(ServedModels.open({"easel-default": str(engine_dir)}, max_cost=64))
    store = open_image_store(url, tmp_path / "images", **store_limits)
    results = Results(store, UrlSigner(b"secret", 60), "http://easel.test")
    handles = Handles()
    traffic = Experiments(open_experiment_store(url), models.names)
    return Generations(models, handles, None, handles, None, traffic, results=results), results


def test_every_answer_is_kept_for_its_key_and_a_url_answer_opens_by_its_signature(engine_dir, tmp_path):
    import asyncio
    import base64
    from urllib.parse import parse_qs, urlparse

    from serve.access.keys import ApiKey, KeyLimits
    from serve.errors import InvalidInput, NotFound
    from serve.protocol.schema import GenerationRequest
    from serve.routes import Scope
    from serve.serving.generations import Generations
    from serve.serving.results import Results

    generations, results = _generations(engine_dir, tmp_path)
    admit = _admission(generations)
    alice, bob = (ApiKey(name, name, {Scope.GENERATE}, KeyLimits(), 0.0) for name in ("alice", "bob"))

    async def scenario():
        asked = {"prompt": "a red fox", "seed": 7, "n": 2}
        inline = await admit(GenerationRequest(**asked), alice)
        linked = await admit(GenerationRequest(**asked, response_format="url"), alice)
        plain = await admit(GenerationRequest(**asked, metadata="none"), alice)
        bodies = [(await generations.served_answer(a, "alice"))[0] for a in (inline, linked, plain)]
        url = urlparse(bodies[1]["data"][1]["url"])
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        image_id = url.path.split("/")[3]
        by_url = await results.signed(image_id, int(query["expires"]), query["signature"])
        by_key = await results.image(alice, image_id)
        with pytest.raises(NotFound) as other:
            await results.image(bob, image_id)
        history = await results.history(alice, None, 10)
        with pytest.raises(InvalidInput) as no_store:
            await Generations(generations.models, None, None, None, None, generations.experiments).admitted(
                GenerationRequest(**asked, response_format="url")
            )
        return bodies, by_url, by_key, other.value, history, no_store.value, image_id

    bodies, by_url, by_key, other, history, no_store, image_id = asyncio.run(scenario())
    inline, linked, plain = bodies
    assert url_and_b64(linked) == ({"id", "url"}, None) and url_and_b64(inline)[0] == {"id", "b64_json"}
    png = base64.b64decode(inline["data"][1]["b64_json"])
    assert by_url.body == by_key.body == png and by_url.media_type == "image/png"  # the same record: the same bytes
    record = json.loads(Image.open(io.BytesIO(png)).info[RECORD])
    assert (record["seed"], record["index"], record["n"], record["model"], record["size"]) == (
        7,
        1,
        2,
        "easel-default",
        "8x8",
    )
    assert record["request"]["seed"] == 7 and record["request"]["prompt"] == "a red fox"
    assert RECORD not in Image.open(io.BytesIO(base64.b64decode(plain["data"][0]["b64_json"]))).info
    assert other.status == 404 and other.field == "image_id"
    assert [item["id"] for item in history["data"]][:3] == [i["id"] for i in plain["data"][::-1]] + [image_id]
    assert history["data"][2]["record"] == record and history["data"][0]["record"] == {}  # metadata none: none
    assert no_store.field == "response_format" and isinstance(Results().signer, UrlSigner)


def url_and_b64(body: dict) -> tuple[set, str | None]:
    """The keys of an answer's first item, and its base64 if any."""
    return set(body["data"][0]), body["data"][0].get("b64_json")


def test_the_store_stays_under_its_bytes_bound_as_answers_are_kept_the_oldest_going_first(engine_dir, tmp_path):
    import asyncio

    from serve.protocol.schema import GenerationRequest

    generations, results = _generations(engine_dir, tmp_path, max_bytes=6000)
    admit = _admission(generations)

    async def scenario():
        ids = []
        for seed in range(12):
            admitted = await admit(GenerationRequest(prompt="a fox", seed=seed), None)
            ids.append((await generations.served_answer(admitted, None))[0]["data"][0]["id"])
            assert results.store.records.total() <= 6000
        return ids

    ids = asyncio.run(scenario())
    kept = [item["id"] for item in asyncio.run(results.history(None, None, 100))["data"]][::-1]
    assert 0 < len(kept) < len(ids) and kept == ids[-len(kept) :]


def test_the_kept_bytes_are_summed_for_the_gauge_once_per_interval_not_per_answer(engine_dir, tmp_path, monkeypatch):
    import asyncio

    from serve import metrics
    from serve.protocol.schema import GenerationRequest
    from serve.serving import results as results_module

    generations, results = _generations(engine_dir, tmp_path)
    admit = _admission(generations)
    sums, published = [], []
    total = results.store.records.total
    monkeypatch.setattr(results.store.records, "total", lambda: sums.append(1) or total())
    monkeypatch.setattr(metrics, "set_gauge", lambda spec, value, **tags: published.append((spec.name, tags, value)))

    async def answers(count: int, first_seed: int) -> None:
        for seed in range(first_seed, first_seed + count):
            await generations.served_answer(await admit(GenerationRequest(prompt="a fox", seed=seed), None), None)

    asyncio.run(answers(3, 0))
    kept = [value for name, tags, value in published if name == "easel_image_store_bytes" and tags["part"] == "kept"]
    assert len(sums) == 1 and len(kept) == 1 and 0 < kept[0] < total()  # summed after the first answer only
    monkeypatch.setattr(results_module, "REPORT_BYTES_S", 0.0)
    results._next_report = 0.0  # the interval passed
    asyncio.run(answers(2, 10))
    assert len(sums) == 3  # once for each answer after each interval


def test_a_rerun_is_priced_as_its_generation_and_refused_for_another_key_or_a_record_kept_without(engine_dir, tmp_path):
    import asyncio

    from serve.access.keys import ApiKey, KeyLimits
    from serve.errors import InvalidInput, NotFound
    from serve.protocol.schema import GenerationRequest
    from serve.results.rerun import RerunRequest
    from serve.routes import Scope

    generations, results = _generations(engine_dir, tmp_path)
    admit = _admission(generations)
    alice, bob = (ApiKey(name, name, {Scope.GENERATE}, KeyLimits(), 0.0) for name in ("alice", "bob"))

    async def scenario():
        first = await admit(GenerationRequest(prompt="a fox", seed=5, n=3), alice)
        body, _ = await generations.served_answer(first, "alice")
        plain = await admit(GenerationRequest(prompt="a fox", seed=1, metadata="none"), alice)
        unrecorded, _ = await generations.served_answer(plain, "alice")
        rerun = RerunRequest(image_id=body["data"][2]["id"], response_format="url")
        again = await admit(rerun, alice)
        answer, _ = await generations.served_answer(again.generation, "alice")
        answer = await results.rerun_answer(rerun, alice, again.generation.model, answer)
        refusals = []
        for key, image_id in ((bob, rerun.image_id), (alice, unrecorded["data"][0]["id"])):
            with pytest.raises((NotFound, InvalidInput)) as refused:
                await admit(RerunRequest(image_id=image_id), key)
            refusals.append(refused.value)
        return first, again, answer, refusals

    first, again, answer, refusals = asyncio.run(scenario())
    assert again.cost == first.cost and again.generation.request.n == 3 and again.generation.request.seed == 5
    assert answer["changed"] == [] and len(answer["data"]) == 1 and set(answer["data"][0]) == {"id", "url"}
    assert [(r.status, r.field) for r in refusals] == [(404, "image_id"), (400, "image_id")]


def _admission(generations):
    """The doors' admission over ``generations``: ``admit(body, key)`` (an open API's key limits charge nothing)."""
    from serve.access import Caller
    from serve.serving.admission import Admission

    admission = Admission(generations, generations.upscaling)
    return lambda body, key: admission.admit(body, Caller(key))
