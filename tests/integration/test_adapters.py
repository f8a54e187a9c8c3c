"""LoRA and IP-Adapter per request through a real Triton and Ray Serve app, against diffusers' own adapter loading."""

import asyncio
import base64
import dataclasses
import hashlib
import io
import json
import logging
import re
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from playwright.sync_api import expect

from build_engines.faces.random_pack import drawn_faces, random_face_pack
from build_engines.text_to_image.motion import random_motion_adapter
from build_engines.text_to_image.random_adapters import (
    FACEID_WEIGHTS,
    IP_WEIGHTS,
    make_faceid_adapter,
    make_ip_adapter,
    make_motion_lora,
)
from serve.adapters.ip_adapter import MAX_REFERENCES, face_lora
from serve.stack import Stack, StackOptions
from tests.adapters import LORAS, make_adapters, reference_image
from tests.conftest import psnr, reference_images
from tests.images import encode
from tests.integration.conftest import GENERATE, NO_CANARY_S, batch_histogram, decode_images, post_together
from tests.studio import PNG, assert_drawn_as_the_api_draws_it, chromium, draw, drawn_with_choice, sent_body, shown_call
from tests.tenant_matrix import UNKNOWN, Row, row_id, rows
from tests.videos import reference_frames

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)

RESIDENT = 2
MAX_RANK = 4  # the test LoRAs' largest
FILES_KEPT_S = 2.0  # a removed LoRA's files stay this long (requests in flight finish on them), then go
BODY = {"prompt": "a red heart icon", "seed": 3, "num_inference_steps": 10, "size": "64x64", "scheduler": "ddim"}


@pytest.fixture(scope="module")
def adapters(default_model, tmp_path_factory):
    return make_adapters(default_model, tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="module")
def face_adapter(default_model, tmp_path_factory):
    """A second IP-Adapter, served beside the first as ``face``."""
    return make_ip_adapter(default_model, tmp_path_factory.mktemp("face"), seed=6)


@pytest.fixture(scope="module")
def faceid(default_model, tmp_path_factory):
    """A random IP-Adapter FaceID in h94's layout (its LoRA of the test LoRAs' largest rank), served as ``faceid``."""
    return make_faceid_adapter(default_model, tmp_path_factory.mktemp("faceid"), seed=8, rank=MAX_RANK)


@pytest.fixture(scope="module")
def wave(default_model, tmp_path_factory):
    """A tiny random motion adapter (videos with LoRAs)."""
    return random_motion_adapter(default_model, tmp_path_factory.mktemp("motion") / "wave")


@pytest.fixture(scope="module")
def stack(default_model, adapters, face_adapter, faceid, wave, tmp_path_factory):
    """The embedded model with every test LoRA (at most 2 held per engine instance), two IP-Adapters, a FaceID and a
    motion adapter, and face models (characters, identities)."""
    options = StackOptions(
        port=0,
        dashboard=False,
        repository=tmp_path_factory.mktemp("repository"),
        run_dir=tmp_path_factory.mktemp("run"),
        cache_bytes=0,
        loras_dir=adapters.loras,
        lora_resident=RESIDENT,
        lora_files_kept_s=FILES_KEPT_S,
        lora_max_rank=MAX_RANK,
        ip_adapters={"ip": adapters.ip_adapter, "face": face_adapter, "faceid": faceid},
        motion_adapters={"wave": wave},
        faces=random_face_pack(tmp_path_factory.mktemp("faces") / "buffalo_l"),  # characters' faces
        canary_interval_s=NO_CANARY_S,  # a test counts the image encoder's executions
    )
    with Stack(options) as stack:
        yield stack


@pytest.fixture(scope="module")
def with_loras(default_model, adapters):
    """diffusers' pipeline with every test LoRA loaded by ``load_lora_weights``."""
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(1)
    pipeline = StableDiffusionPipeline.from_pretrained(default_model)
    pipeline.set_progress_bar_config(disable=True)
    for name in LORAS:
        pipeline.load_lora_weights(str(adapters.loras), weight_name=adapters.lora_file(name), adapter_name=name)
    return pipeline


@pytest.fixture(scope="module")
def with_ip_adapter(default_model, adapters):
    """diffusers' pipeline with the IP-Adapter loaded by ``load_ip_adapter`` (and the LoRAs)."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(default_model)
    pipeline.set_progress_bar_config(disable=True)
    for name in LORAS:
        pipeline.load_lora_weights(str(adapters.loras), weight_name=adapters.lora_file(name), adapter_name=name)
    pipeline.load_ip_adapter(str(adapters.ip_adapter), subfolder="", weight_name="ip_adapter.safetensors")
    return pipeline


def _diffusers(pipeline, loras: list[dict], **kwargs) -> np.ndarray:
    if loras:
        pipeline.set_adapters([lora["name"] for lora in loras], [lora.get("scale", 1.0) for lora in loras])
    else:
        pipeline.disable_lora()
    try:
        return reference_images(
            pipeline, "ddim", prompt=BODY["prompt"], width=64, height=64, num_inference_steps=10, seed=3, **kwargs
        )
    finally:
        pipeline.enable_lora()


def _served(api, **fields) -> np.ndarray:
    response = api.post(GENERATE, json=BODY | fields)
    assert response.status_code == 200, response.text
    return decode_images(response)


def test_the_folder_is_listed_with_the_broken_adapter_and_why(api):
    listed = {entry["name"]: entry for entry in api.get("/v1/loras").json()["data"]}
    assert {name for name, entry in listed.items() if entry["status"] == "ready"} == {*LORAS, face_lora("faceid")}
    assert listed["broken"]["status"] == "error" and "not a readable LoRA file" in listed["broken"]["error"]
    assert listed["kohya"]["layers"]["text_encoder"] > 0 and listed["kohya"]["layers"]["unet"] > 0


@pytest.mark.parametrize(
    "loras",
    [
        [{"name": "style"}],
        [{"name": "style", "scale": 0.8}, {"name": "line", "scale": -0.6}],
        [{"name": "kohya", "scale": 1.3}],
    ],
    ids=["one", "two-with-weights", "kohya"],
)
def test_lora_parity_with_diffusers(api, with_loras, loras):
    got = _served(api, loras=loras)
    want = _diffusers(with_loras, loras)
    base = _diffusers(with_loras, [])
    logger.info(
        "LoRA %s: PSNR %.1f dB against diffusers, %.1f dB against the base model",
        loras,
        psnr(got, want),
        psnr(want, base),
    )
    assert psnr(got, want) >= 40
    assert psnr(want, base) < 35, "the adapter should change the image"


@pytest.mark.parametrize(
    "scale",
    [0.7, {"up": {"block_0": [0.0, 1.0]}, "down": {"block_1": [0.5]}}],
    ids=["number", "instantstyle"],
)
def test_ip_adapter_parity_with_diffusers(api, with_ip_adapter, scale):
    image, b64 = reference_image(seed=1)
    loras = [{"name": "line", "scale": 0.7}]
    got = _served(api, loras=loras, ip_adapter_image=b64, ip_adapter_scale=scale)
    with_ip_adapter.set_ip_adapter_scale(scale)
    want = _diffusers(with_ip_adapter, loras, ip_adapter_image=image)
    with_ip_adapter.set_ip_adapter_scale(0.0)
    without = _diffusers(with_ip_adapter, loras, ip_adapter_image=image)
    logger.info(
        "IP-Adapter %s: PSNR %.1f dB against diffusers, %.1f dB against no reference",
        scale,
        psnr(got, want),
        psnr(want, without),
    )
    assert psnr(got, want) >= 40
    assert psnr(want, without) < 35, "the reference should change the image"


@pytest.fixture(scope="module")
def with_two_ip_adapters(default_model, adapters, face_adapter):
    """diffusers' pipeline with both IP-Adapters loaded by ``load_ip_adapter`` with lists."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(default_model)
    pipeline.set_progress_bar_config(disable=True)
    folders = [str(adapters.ip_adapter), str(face_adapter)]
    pipeline.load_ip_adapter(folders, subfolder=["", ""], weight_name=[IP_WEIGHTS] * 2)
    return pipeline


def _region(left: bool) -> Image.Image:
    """A region mask of the output's size: white on the left 40 % (or the rest)."""
    mask = np.zeros((64, 64, 3), np.uint8)
    mask[:, : int(64 * 0.4)] = 255
    return Image.fromarray(mask if left else 255 - mask)


def _diffusers_ip(pipeline, **kwargs) -> np.ndarray:
    return reference_images(
        pipeline, "ddim", prompt=BODY["prompt"], width=64, height=64, num_inference_steps=10, seed=3, **kwargs
    )


def _b64(image: Image.Image) -> str:
    return base64.b64encode(encode(image)).decode()


def test_two_ip_adapters_with_region_masks_and_two_references_match_diffusers(api, with_two_ip_adapters):
    """``ip_adapters``: two adapters (the first with two references, each in its region), and one adapter with two
    references, against ``load_ip_adapter`` with lists and ``ip_adapter_masks`` (IPAdapterMaskProcessor's)."""
    from diffusers.image_processor import IPAdapterMaskProcessor

    pipeline = with_two_ip_adapters
    (a1, a1_b64), (a2, a2_b64), (b, b_64) = (reference_image(seed=s) for s in (1, 2, 3))
    regions = [_region(True), _region(False)]
    masks = IPAdapterMaskProcessor().preprocess(regions, height=64, width=64)
    cases = {
        "two adapters, masked": (
            [
                {"name": "ip", "images": [a1_b64, b_64], "scale": 0.8, "masks": [_b64(r) for r in regions]},
                {"name": "face", "images": [a2_b64], "scale": 0.6},
            ],
            {
                "ip_adapter_image": [[a1, b], a2],
                "cross_attention_kwargs": {"ip_adapter_masks": [masks[None, :, 0], None]},
            },
            [0.8, 0.6],
        ),
        "one adapter, two references": (
            [{"images": [a1_b64, a2_b64], "scale": 0.7}],
            {"ip_adapter_image": [[a1, a2], b]},
            [0.7, 0.0],
        ),
    }
    for case, (ip_adapters, kwargs, scales) in cases.items():
        got = _served(api, ip_adapters=ip_adapters)
        pipeline.set_ip_adapter_scale(scales)
        want = _diffusers_ip(pipeline, **kwargs)
        pipeline.set_ip_adapter_scale([0.0, 0.0])
        without = _diffusers_ip(pipeline, ip_adapter_image=kwargs["ip_adapter_image"])
        logger.info(
            "%s: PSNR %.1f dB against diffusers, %.1f dB against none", case, psnr(got, want), psnr(want, without)
        )
        assert psnr(got, want) >= 40, case
        assert psnr(want, without) < 35, f"{case}: the references should change the image"


def test_different_adapters_share_batches_and_each_gets_its_solo_image(api, stack):
    _, b64 = reference_image(seed=2)
    variants = [
        {},
        {"loras": [{"name": "style"}]},
        {"loras": [{"name": "style", "scale": 0.3}]},
        {"loras": [{"name": "line"}]},
        {"ip_adapter_image": b64},
        {"loras": [{"name": "line", "scale": 0.5}], "ip_adapter_image": b64, "ip_adapter_scale": {"up": 1.0}},
    ]
    bodies = [BODY | {"seed": 40 + i} | variant for i, variant in enumerate(variants)]
    alone = [_served(api, **body) for body in bodies]
    before = batch_histogram(stack.info.triton_http_url)

    together = post_together(stack.info.api_url, GENERATE, bodies)
    histogram = batch_histogram(stack.info.triton_http_url) - before
    for body, single, response in zip(bodies, alone, together, strict=True):
        assert response.status_code == 200, response.text
        np.testing.assert_array_equal(decode_images(response), single, err_msg=str(body)[:200])
    logger.info("unet batch sizes with mixed adapters: %s", dict(sorted(histogram.items())))
    assert sum(count for size, count in histogram.items() if size > 2) > 0, "no execution merged requests"


def _poisoned(stack, name: str, factor: float) -> None:
    """LoRA ``name`` whose weights are ``style``'s times ``factor``, put in the store as if uploaded (no check)."""
    from safetensors.numpy import load_file, save_file

    from serve.adapters import open_adapter_store
    from serve.adapters.registry import READY, UPLOAD, LoraEntry, LoraRegistry

    folder = stack.options.run_dir / "loras"
    style = LoraRegistry.load(folder).get("style")
    path = folder / f"{hashlib.sha256(name.encode()).hexdigest()[:24]}.safetensors"
    save_file({key: value * np.float32(factor) for key, value in load_file(style.prepared).items()}, path)
    entry = LoraEntry(name, READY, None, style.rank, style.bytes, style.layers, str(path), "easel-default", UPLOAD)
    store = open_adapter_store(stack.options.store)
    try:
        store.add_lora(dataclasses.replace(entry, sha256="0" * 64, created_at=time.time()))
    finally:
        store.close()


def test_a_poisoned_lora_fails_its_own_request_and_no_other_row_of_its_batch(api, stack):
    """Weights that overflow (finite, 1e30 x a LoRA's: the upload check bypassed) batched with a plain and a LoRA row.

    The others equal their solo images; the poisoned request is a 400 naming ``loras`` and the adapter, not black.
    """
    _poisoned(stack, "overflowing", 1e30)
    variants = [{}, {"loras": [{"name": "line"}]}, {"loras": [{"name": "overflowing"}]}]
    bodies = [BODY | {"seed": 60 + i} | variant for i, variant in enumerate(variants)]
    alone = [_served(api, **body) for body in bodies[:2]]
    before = batch_histogram(stack.info.triton_http_url)
    for _ in range(3):
        *others, poisoned = post_together(stack.info.api_url, GENERATE, bodies)
        for body, single, response in zip(bodies[:2], alone, others, strict=True):
            assert response.status_code == 200, response.text
            np.testing.assert_array_equal(decode_images(response), single, err_msg=str(body))
        assert poisoned.status_code == 400, poisoned.text
        error = poisoned.json()["error"]
        assert error["param"] == "loras" and "'overflowing'" in error["message"] and "NaN or Inf" in error["message"]
    histogram = batch_histogram(stack.info.triton_http_url) - before
    logger.info("unet batch sizes with a poisoned LoRA: %s", dict(sorted(histogram.items())))
    assert sum(count for size, count in histogram.items() if size > 2) > 0, "no execution merged the requests"


def test_more_adapters_than_held_are_evicted_reloaded_and_still_right(api, stack):
    order = ["style", "line", "kohya", "spare"]
    first = {name: _served(api, loras=[{"name": name}]) for name in order}
    second = {name: _served(api, loras=[{"name": name}]) for name in reversed(order)}
    for name in order:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    metrics = httpx.get(stack.info.triton_metrics_url).text
    evictions = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("easel_adapter_evictions_total{") and 'model="unet"' in line
    )
    assert evictions >= len(order) - RESIDENT


def test_a_background_job_uses_its_adapters(api):
    loras = [{"name": "kohya", "scale": 0.9}]
    job = api.post(GENERATE, json=BODY | {"loras": loras, "background": True}).json()
    for _ in range(600):
        job = api.get(f"/v1/jobs/{job['id']}").json()
        if job["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.1)
    assert job["status"] == "succeeded", job
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(job["data"][0]["b64_json"]))).convert("RGB"))
    np.testing.assert_array_equal(image[None], _served(api, loras=loras))


def _png_b64(width: int, height: int) -> str:
    return base64.b64encode(encode(Image.new("RGB", (width, height), "white"))).decode()


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"loras": [{"name": "nope"}]}, "loras.0.name"),
        ({"loras": [{"name": "broken"}]}, "loras.0.name"),
        ({"loras": [{"name": "style", "scale": 9}]}, "loras.0.scale"),
        ({"loras": [{"name": "style"}, {"name": "style"}]}, "loras"),
        ({"loras": [{"name": n} for n in "abcde"]}, "loras"),
        ({"ip_adapter_image": "bm90IGFuIGltYWdl"}, "ip_adapter_image"),
        ({"ip_adapter_image": "###"}, "ip_adapter_image"),
        ({"ip_adapter_image": _png_b64(5000, 8)}, "ip_adapter_image"),
        ({"ip_adapter_image": _png_b64(16, 16), "ip_adapter_scale": 3}, "ip_adapter_scale"),
        ({"ip_adapter_image": _png_b64(16, 16), "ip_adapter_scale": {"up": {"block_7": 1.0}}}, "ip_adapter_scale"),
        ({"ip_adapter_scale": 0.5}, "ip_adapter_scale"),
        ({"ip_adapter_reference": "ref_" + "0" * 24}, "ip_adapter_reference"),
        ({"ip_adapter_reference": "ref_" + "0" * 24, "ip_adapter_image": _png_b64(16, 16)}, "ip_adapter_reference"),
        ({"ip_adapter_reference": "not-an-id"}, "ip_adapter_reference"),
        ({"ip_adapters": [{"name": "nope", "images": [_png_b64(16, 16)]}]}, "ip_adapters.0.name"),
        ({"ip_adapters": [{"images": [_png_b64(16, 16)] * (MAX_REFERENCES + 1)}]}, "ip_adapters.0.images"),
        ({"ip_adapters": [{"images": [_png_b64(16, 16)], "masks": [_png_b64(64, 64)] * 2}]}, "ip_adapters.0.masks"),
        ({"ip_adapters": [{"images": [_png_b64(16, 16)], "masks": [_png_b64(64, 48)]}]}, "ip_adapters.0.masks.0"),
        ({"ip_adapters": [{"references": ["ref_" + "0" * 24]}]}, "ip_adapters.0.references.0"),
    ],
)
def test_bad_adapter_input_is_a_400_naming_the_field(api, fields, param):
    response = api.post(GENERATE, json=BODY | fields)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert _served(api).shape == (1, 64, 64, 3)  # the stack goes on


# -- LoRAs uploaded while the stack runs (POST, PUT, DELETE /v1/loras) -------------------------------------------------


def _upload(api, method: str, path: str, file, **fields) -> httpx.Response:
    return api.request(
        method, path, data=fields, files={"file": ("lora.safetensors", file, "application/octet-stream")}
    )


def test_an_uploaded_lora_serves_the_next_request_of_every_replica_as_diffusers_loads_it(api, adapters, with_loras):
    """Upload under a new name -> the next requests (both Gateway replicas) equal load_lora_weights + set_adapters."""
    started = time.perf_counter()
    added = _upload(api, "POST", "/v1/loras", (adapters.loras / "style.safetensors").read_bytes(), name="fresh")
    assert added.status_code == 200, added.text
    assert added.json()["rank"] == LORAS["style"][1] and added.json()["source"] == "upload"
    first = _served(api, loras=[{"name": "fresh", "scale": 0.8}])
    logger.info("upload to first image: %.2f s", time.perf_counter() - started)
    want = _diffusers(with_loras, [{"name": "style", "scale": 0.8}])
    assert psnr(first, want) >= 40
    for _ in range(4):  # Ray Serve spreads them over the Gateway (and TextToImage) replicas
        np.testing.assert_array_equal(_served(api, loras=[{"name": "fresh", "scale": 0.8}]), first)
    listed = {entry["name"]: entry for entry in api.get("/v1/loras").json()["data"]}
    assert listed["fresh"]["model"] == listed["style"]["model"] == "easel-default"
    assert listed["fresh"]["status"] == "ready" and listed["style"]["source"] == "folder"


def test_a_put_under_load_drops_nothing_and_each_image_has_the_weights_of_its_moment(api, stack, adapters, with_loras):
    """Requests before the PUT get the old weights, those after it the new ones, none fails."""
    assert _upload(api, "POST", "/v1/loras", (adapters.loras / "line.safetensors").read_bytes(), name="swap").is_success
    old, new = (_diffusers(with_loras, [{"name": name}]) for name in ("line", "spare"))
    assert psnr(old, new) < 35, "the two weights should give different images"
    answers: list[tuple[float, float, httpx.Response]] = []

    async def load(until: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=stack.info.api_url, timeout=300) as client:
            while not until.is_set():
                sent = time.monotonic()
                response = await client.post(GENERATE, json=BODY | {"loras": [{"name": "swap"}]})
                answers.append((sent, time.monotonic(), response))

    async def answered_after(moment: float) -> None:
        """Until a request sent after ``moment`` is answered (a fixed wait once saw none answered before the PUT)."""
        deadline = time.monotonic() + 120
        while not any(sent > moment for sent, *_ in answers):
            assert time.monotonic() < deadline, f"no request sent after {moment} answered in 120 s"
            await asyncio.sleep(0.1)

    async def replace_under_load() -> tuple[float, float]:
        until = asyncio.Event()
        clients = [asyncio.create_task(load(until)) for _ in range(3)]
        await answered_after(0.0)
        began = time.monotonic()
        async with httpx.AsyncClient(base_url=stack.info.api_url, timeout=300) as client:
            file = (adapters.loras / "spare.safetensors").read_bytes()
            put = await client.put("/v1/loras/swap", files={"file": ("spare.safetensors", file)})
        answered = time.monotonic()
        assert put.status_code == 200, put.text
        await answered_after(answered)
        until.set()
        await asyncio.gather(*clients)
        return began, answered

    began, answered = asyncio.run(replace_under_load())
    assert all(response.status_code == 200 for *_, response in answers), [r.text for *_, r in answers][:3]
    before = [decode_images(r) for sent, done, r in answers if done < began]
    after = [decode_images(r) for sent, done, r in answers if sent > answered]
    assert before and after, (len(before), len(after), len(answers))
    assert all(psnr(image, old) >= 40 for image in before)
    assert all(psnr(image, new) >= 40 for image in after)
    for *_, response in answers:  # those in between: one or the other, never a blend
        image = decode_images(response)
        assert max(psnr(image, old), psnr(image, new)) >= 40
    logger.info(
        "PUT under load: %d requests, %d before it, %d after it, 0 failed", len(answers), len(before), len(after)
    )


@pytest.mark.parametrize(
    ("method", "path", "file", "fields", "status", "param"),
    [
        ("POST", "/v1/loras", b"not a lora", {"name": "junk"}, 400, "file"),
        ("POST", "/v1/loras", "style", {"name": "kohya"}, 400, "name"),
        ("POST", "/v1/loras", "style", {"name": "x y"}, 400, "name"),
        ("POST", "/v1/loras", "style", {"name": "other", "model": "nope"}, 400, "model"),
        ("PUT", "/v1/loras/absent", "style", {}, 404, "name"),
        ("PUT", "/v1/loras/style", "style", {}, 409, "name"),
    ],
)
def test_bad_uploads_are_refused_naming_the_field(api, adapters, method, path, file, fields, status, param):
    data = (adapters.loras / f"{file}.safetensors").read_bytes() if isinstance(file, str) else file
    response = _upload(api, method, path, data, **fields)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    assert _served(api).shape == (1, 64, 64, 3)  # the stack goes on


def _poisoned_file(adapters, poison: float) -> bytes:
    """``style``'s file with one of its tensors all ``poison`` (NaN, Inf, or 3e38: finite, but it overflows)."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save

    path = adapters.loras / "style.safetensors"
    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata()
    tensors = load_file(path)
    first = sorted(key for key in tensors if key.startswith("unet."))[0]
    tensors[first] = np.full_like(tensors[first], poison)
    return save(tensors, metadata)


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), 3e38], ids=["nan", "inf", "overflowing"])
def test_a_lora_with_nan_inf_or_overflowing_weights_is_a_400_naming_file(api, adapters, poison):
    response = _upload(api, "POST", "/v1/loras", _poisoned_file(adapters, poison), name="poison")
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "file"
    assert ("NaN or Inf" if poison != 3e38 else "--lora-max-norm") in response.json()["error"]["message"]
    assert "poison" not in [entry["name"] for entry in api.get("/v1/loras").json()["data"]]


def test_a_rank_over_the_bound_is_a_400_naming_file(api, adapters, default_model, tmp_path):
    from build_engines.text_to_image.random_adapters import make_lora

    path = make_lora(default_model, tmp_path / "wide.safetensors", rank=MAX_RANK + 1, seed=8)
    response = _upload(api, "POST", "/v1/loras", path.read_bytes(), name="wide")
    assert response.status_code == 400 and response.json()["error"]["param"] == "file", response.text
    assert f"rank {MAX_RANK + 1}, over the largest served, {MAX_RANK}" in response.json()["error"]["message"]


def test_a_deleted_lora_is_a_400_naming_the_field(api, adapters):
    assert _upload(
        api, "POST", "/v1/loras", (adapters.loras / "kohya.safetensors").read_bytes(), name="gone"
    ).is_success
    assert _served(api, loras=[{"name": "gone"}]).shape == (1, 64, 64, 3)
    assert api.delete("/v1/loras/gone").json() == {"id": "gone", "object": "lora", "deleted": True}
    response = api.post(GENERATE, json=BODY | {"loras": [{"name": "gone"}]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "loras.0.name"
    assert api.delete("/v1/loras/gone").status_code == 404


def test_a_video_with_a_lora_and_an_uploaded_motion_lora_matches_animatediff(
    api, adapters, default_model, wave, tmp_path
):
    """Every frame as AnimateDiffPipeline's with load_lora_weights and set_adapters; a motion LoRA on a still: 400."""
    from diffusers import AnimateDiffPipeline, MotionAdapter

    make_motion_lora(default_model, wave, tmp_path / "swing.safetensors", rank=2, seed=2, strength=3)
    assert _upload(api, "POST", "/v1/loras", (tmp_path / "swing.safetensors").read_bytes(), name="swing").is_success
    loras = [{"name": "style", "scale": 0.8}, {"name": "swing", "scale": 1.0}]
    fields = {"size": "64x64", "frames": 4, "fps": 4, "steps": 4, "seed": 3, "guidance_scale": 7.5, "loras": loras}
    video_id = api.post("/v1/videos", json={"prompt": BODY["prompt"], "scheduler": "ddim", **fields}).json()["id"]
    still = api.post(GENERATE, json=BODY | {"loras": [{"name": "swing"}]})
    assert still.status_code == 400 and still.json()["error"]["param"] == "loras.0.name", still.text
    reference = AnimateDiffPipeline.from_pretrained(default_model, motion_adapter=MotionAdapter.from_pretrained(wave))
    reference.set_progress_bar_config(disable=True)
    reference.load_lora_weights(str(adapters.loras), weight_name=adapters.lora_file("style"), adapter_name="style")
    reference.load_lora_weights(str(tmp_path), weight_name="swing.safetensors", adapter_name="swing")
    reference.set_adapters(["style", "swing"], [0.8, 1.0])
    want = reference_frames(
        reference, "ddim", 4, 3, prompt=BODY["prompt"], width=64, height=64, num_inference_steps=4, guidance_scale=7.5
    )
    deadline = time.monotonic() + 120
    while (video := api.get(f"/v1/videos/{video_id}").json())["status"] in ("queued", "in_progress"):
        assert time.monotonic() < deadline, api.get(f"/v1/jobs/{video_id}").json()
        time.sleep(0.2)
    assert video["status"] == "completed", video
    content = api.get(f"/v1/videos/{video_id}/content", params={"variant": "frames"})
    with zipfile.ZipFile(io.BytesIO(content.content)) as archive:
        got = [np.asarray(Image.open(io.BytesIO(archive.read(name)))) for name in sorted(archive.namelist())]
    assert len(got) == len(want) == 4
    assert min(psnr(a, b) for a, b in zip(got, want, strict=True)) >= 40
    assert api.delete("/v1/loras/swing").json()["deleted"] is True


# -- stored references (POST, GET, DELETE /v1/references) -------------------------------------------------------------


def _encoder_executions(stack) -> int:
    stats = httpx.get(f"{stack.info.triton_http_url}/v2/models/image_encoder/stats", timeout=10).json()
    return int(stats["model_stats"][0]["execution_count"])


def test_a_stored_reference_gives_the_inline_image_without_encoding_it_again(api, stack):
    _, b64 = reference_image(seed=3)
    scale = {"up": {"block_0": [0.0, 1.0]}}
    inline = _served(api, ip_adapter_image=b64, ip_adapter_scale=scale)
    stored = api.post("/v1/references", json={"image": b64, "name": "subject"})
    assert stored.status_code == 200, stored.text
    reference = stored.json()
    assert reference["id"].startswith("ref_") and reference["name"] == "subject"
    before = _encoder_executions(stack)
    named = _served(api, ip_adapter_reference=reference["id"], ip_adapter_scale=scale)
    assert _encoder_executions(stack) == before, "a stored reference's request ran the image encoder"
    np.testing.assert_array_equal(named, inline)
    assert reference["id"] in [r["id"] for r in api.get("/v1/references").json()["data"]]
    assert api.get(f"/v1/references/{reference['id']}").json() == reference
    assert api.delete(f"/v1/references/{reference['id']}").json()["deleted"] is True
    gone = api.post(GENERATE, json=BODY | {"ip_adapter_reference": reference["id"]})
    assert gone.status_code == 400 and gone.json()["error"]["param"] == "ip_adapter_reference"
    assert api.get(f"/v1/references/{reference['id']}").status_code == 404


def _face_png(*centres: tuple[int, int, int], seed: int = 0) -> str:
    """A picture the random face models find a face in at each ``(x, y, radius)``, base64 PNG."""
    return base64.b64encode(encode(Image.fromarray(drawn_faces(list(centres), seed=seed)))).decode()


PICTURES = [_face_png((150 + 10 * i, 120, 56), seed=i) for i in range(3)]
CHARACTER = {"name": "zed", "images": PICTURES, "lora": {"name": "style", "scale": 0.7}, "trigger_words": "zed person"}
CHARACTER |= {"face": "largest"}  # the random detector finds a disc more than once


def test_a_character_draws_as_its_pictures_lora_and_trigger_words_sent_by_hand(api, stack):
    made = api.post("/v1/characters", json=CHARACTER | {"note": "the hero"})
    assert made.status_code == 200, made.text
    character = made.json()
    assert (character["images"], character["face"], len(character["references"])) == (3, True, 3)
    before = _encoder_executions(stack)
    by_name = _served(api, character={"name": "zed", "scale": 0.6})
    assert _encoder_executions(stack) == before, "a character's pictures were encoded again"
    by_hand = _served(
        api,
        prompt=f"zed person, {BODY['prompt']}",
        loras=[{"name": "style", "scale": 0.7}],
        ip_adapters=[{"images": PICTURES, "scale": 0.6}],
    )
    np.testing.assert_array_equal(by_name, by_hand)  # the same embeddings: the same pixels (>= 40 dB asked)
    assert api.get("/v1/characters/zed").json() == character
    assert [c["name"] for c in api.get("/v1/characters").json()["data"]] == ["zed"]
    held = api.delete(f"/v1/references/{character['references'][0]}")
    assert held.status_code == 409 and held.json()["error"]["param"] == "reference_id", held.text
    faces = [api.post("/v1/faces/analyze", json={"image": picture}).json()["data"] for picture in PICTURES]
    largest = [max(found, key=lambda f: (f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1])) for found in faces]
    mean = np.mean([face["embedding"] for face in largest], axis=0)
    from serve.adapters import open_adapter_store

    kept = open_adapter_store(stack.options.store)  # what a restarted stack reads
    try:
        np.testing.assert_allclose(kept.character("zed", None).face, mean / np.linalg.norm(mean), atol=1e-5)
        assert kept.character("zed", None).references == tuple(character["references"])
    finally:
        kept.close()
    again = api.put("/v1/characters/zed", json=CHARACTER | {"images": PICTURES[:2], "trigger_words": ""})
    assert again.status_code == 200 and again.json()["images"] == 2, again.text
    assert api.get(f"/v1/references/{character['references'][0]}").status_code == 404  # the old pictures went
    assert api.delete("/v1/characters/zed").json()["deleted"] is True
    gone = api.post(GENERATE, json=BODY | {"character": {"name": "zed"}})
    assert gone.status_code == 400 and gone.json()["error"]["param"] == "character.name", gone.text
    assert all(r.get("character") is None for r in api.get("/v1/references").json()["data"])


def _video_frames(api, body: dict) -> np.ndarray:
    """The frames (RGB pixels) of a video made from ``body``."""
    created = api.post("/v1/videos", json=body)
    assert created.status_code == 200, created.text
    deadline = time.monotonic() + 120
    while (made := api.get(f"/v1/videos/{created.json()['id']}").json())["status"] in ("queued", "in_progress"):
        assert time.monotonic() < deadline, made
        time.sleep(0.2)
    assert made["status"] == "completed", made
    content = api.get(f"/v1/videos/{made['id']}/content", params={"variant": "frames"})
    with zipfile.ZipFile(io.BytesIO(content.content)) as archive:
        return np.stack([np.asarray(Image.open(io.BytesIO(archive.read(n)))) for n in sorted(archive.namelist())])


def test_a_character_is_drawn_by_a_job_a_grpc_call_and_a_video_as_by_hand(api, stack):
    import grpc

    from serve.grpc_api import easel_pb2, easel_pb2_grpc

    assert api.post("/v1/characters", json=CHARACTER | {"name": "kit"}).status_code == 200
    named = {"character": {"name": "kit", "scale": 0.5}}
    loras, pictures = [{"name": "style", "scale": 0.7}], [{"images": PICTURES, "scale": 0.5}]
    by_hand = _served(api, prompt=f"zed person, {BODY['prompt']}", loras=loras, ip_adapters=pictures)
    job = api.post(GENERATE, json=BODY | named | {"background": True}).json()
    deadline = time.monotonic() + 120
    while (job := api.get(f"/v1/jobs/{job['id']}").json())["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    assert job["status"] == "succeeded", job
    drawn = np.asarray(Image.open(io.BytesIO(base64.b64decode(job["data"][0]["b64_json"]))).convert("RGB"))
    np.testing.assert_array_equal(drawn[None], by_hand)
    fields = {k: BODY[k] for k in ("prompt", "seed", "num_inference_steps", "size", "scheduler")}
    message = easel_pb2.GenerateRequest(**fields, character=easel_pb2.Character(name="kit", scale=0.5))
    with grpc.insecure_channel(stack.info.grpc_address) as channel:
        events = list(easel_pb2_grpc.EaselStub(channel).Generate(message, timeout=120))
    rpc = np.asarray(Image.open(io.BytesIO(events[-1].result.images[0].data)).convert("RGB"))
    np.testing.assert_array_equal(rpc[None], by_hand)
    video = {"prompt": BODY["prompt"], "size": "64x64", "frames": 4, "fps": 4, "steps": 4, "seed": 3}
    by_name = _video_frames(api, video | named)  # its trigger words, LoRA and pictures, in every frame
    words = {"prompt": f"zed person, {BODY['prompt']}", "loras": loras}
    by_hand = _video_frames(api, video | words | {"ip_adapters": pictures})
    np.testing.assert_array_equal(by_name, by_hand)
    assert psnr(by_name, _video_frames(api, video | words)) < 35, "its pictures changed no frame"
    assert api.delete("/v1/characters/kit").status_code == 200


def _identity(api, image: str, face: np.ndarray) -> float | None:
    """The reference identity of a base64 image: its faces (POST /v1/faces/analyze) against ``face``, the best."""
    found = api.post("/v1/faces/analyze", json={"image": image}).json()["data"]
    return max((float(np.dot(f["embedding"], face)) for f in found), default=None)


def test_a_character_s_images_are_scored_by_identity_and_best_of_identity_keeps_the_best(api, stack):
    from serve.adapters import open_adapter_store

    assert api.post("/v1/characters", json=CHARACTER | {"name": "ida"}).status_code == 200
    kept = open_adapter_store(stack.options.store)
    try:
        face = np.asarray(kept.character("ida", None).face)
    finally:
        kept.close()
    body = BODY | {"character": {"name": "ida"}, "scores": True, "n": 2, "size": "128x128"}
    answer = api.post(GENERATE, json=body)
    assert answer.status_code == 200, answer.text
    for item in answer.json()["data"]:
        identity, reference = item["scores"]["identity"], _identity(api, item["b64_json"], face)
        logger.info("scores.identity %s, its reference %s", identity, reference)
        assert (identity is None) == (reference is None)
        assert identity is None or abs(identity - reference) <= 1e-4, (identity, reference)
    ranked = api.post(GENERATE, json=body | {"n": 1, "candidates": 3, "best_of": "identity"})
    assert ranked.status_code == 200, ranked.text
    candidates = ranked.json()["candidates"]
    values = [-2.0 if c["scores"]["identity"] is None else c["scores"]["identity"] for c in candidates]
    assert [c["kept"] for c in candidates] == [i == int(np.argmax(values)) for i in range(3)]
    refused = api.post(GENERATE, json=BODY | {"candidates": 2, "best_of": "identity"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "best_of", refused.text
    experiment = {"variants": {"easel-default": 1.0}, "reward": "identity"}  # learns from the faces kept
    assert api.put("/v1/experiments/kept", json=experiment).status_code == 200
    through = api.post(GENERATE, json=body | {"model": "kept"})
    plain = api.post(GENERATE, json=BODY | {"model": "kept"})  # no character: no evidence, and no scorer needed
    assert through.status_code == plain.status_code == 200, (through.text, plain.text)
    measured = sum(item["scores"]["identity"] is not None for item in through.json()["data"])
    assert api.get("/v1/experiments/kept").json()["posteriors"]["easel-default"]["feedback"] == measured
    assert api.delete("/v1/experiments/kept").status_code == 200
    assert api.delete("/v1/characters/ida").status_code == 200


FACE = _face_png((160, 120, 60), seed=9)
IDENTITY = {"image": FACE, "face": "largest", "strength": 0.8}


def test_an_identity_draws_as_diffusers_draws_with_the_faceid_its_embedding_and_seed(api, default_model, faceid):
    from diffusers import StableDiffusionPipeline

    found = api.post("/v1/faces/analyze", json={"image": FACE, "max_faces": 1})
    assert found.status_code == 200, found.text
    embedding = found.json()["data"][0]["embedding"]
    by_image = _served(api, identity=IDENTITY)
    by_embedding = _served(api, identity={"embedding": embedding, "strength": 0.8})
    np.testing.assert_array_equal(by_image, by_embedding)
    pipeline = StableDiffusionPipeline.from_pretrained(default_model)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.load_ip_adapter(str(faceid), subfolder="", weight_name=FACEID_WEIGHTS, image_encoder_folder=None)
    pipeline.set_ip_adapter_scale(0.8)
    face = torch.tensor(embedding)[None, None]
    embeds = [torch.cat([torch.zeros_like(face), face])]  # diffusers' negative for given embeddings: zeros
    kwargs = {"prompt": BODY["prompt"], "width": 64, "height": 64, "num_inference_steps": 10, "seed": 3}
    expected = reference_images(pipeline, "ddim", ip_adapter_image_embeds=embeds, **kwargs)  # with its LoRA
    logger.info("identity against diffusers: %.1f dB", psnr(by_image, expected))
    assert psnr(by_image, expected) >= 40
    assert psnr(by_image, _served(api)) < 30, "the identity changed nothing"


def test_a_video_s_identity_draws_every_frame_as_animatediff_with_the_faceid(api, default_model, faceid, wave):
    """An identity on a video: the face's embedding in every frame, as AnimateDiff over the UNet that diffusers'
    ``load_ip_adapter`` made (its LoRA fused: loaded into AnimateDiff's own UNet, diffusers puts a FaceID's LoRA on
    the motion modules' attention too, by processor index, and fails)."""
    from diffusers import AnimateDiffPipeline, MotionAdapter, StableDiffusionPipeline

    embedding = api.post("/v1/faces/analyze", json={"image": FACE, "max_faces": 1}).json()["data"][0]["embedding"]
    video = {"prompt": BODY["prompt"], "size": "64x64", "frames": 4, "fps": 4, "steps": 4, "seed": 3}
    video |= {"scheduler": "ddim", "guidance_scale": 7.5}
    got = _video_frames(api, video | {"identity": IDENTITY})
    still = StableDiffusionPipeline.from_pretrained(default_model)
    still.load_ip_adapter(str(faceid), subfolder="", weight_name=FACEID_WEIGHTS, image_encoder_folder=None)
    still.fuse_lora()
    still.unload_lora_weights()
    pipeline = AnimateDiffPipeline.from_pipe(still, motion_adapter=MotionAdapter.from_pretrained(wave))
    pipeline.set_progress_bar_config(disable=True)
    pipeline.set_ip_adapter_scale(0.8)
    face = torch.tensor(embedding)[None, None]
    embeds = [torch.cat([torch.zeros_like(face), face])]  # diffusers' negative for given embeddings: zeros
    kwargs = {"prompt": BODY["prompt"], "width": 64, "height": 64, "num_inference_steps": 4, "guidance_scale": 7.5}
    want = reference_frames(pipeline, "ddim", 4, 3, ip_adapter_image_embeds=embeds, **kwargs)  # with its LoRA
    values = [psnr(a, b) for a, b in zip(got, want, strict=True)]
    logger.info("a video's identity against AnimateDiff: %s dB", [round(v, 1) for v in values])
    assert len(got) == 4 and min(values) >= 40
    assert psnr(got, _video_frames(api, video)) < 30, "the identity changed nothing"


def test_an_identity_is_scored_against_its_own_face_and_a_character_s_face_draws_it(api):
    scored = api.post(GENERATE, json=BODY | {"identity": IDENTITY, "scores": True})
    assert scored.status_code == 200, scored.text
    assert "identity" in scored.json()["data"][0]["scores"]  # against its face (None where no face is drawn)
    made = api.post("/v1/characters", json={"name": "ida", "images": [FACE], "face": "largest"})
    assert made.status_code == 200, made.text
    by_character = _served(api, identity={"character": "ida", "strength": 0.8})
    assert psnr(by_character, _served(api, identity=IDENTITY)) >= 40  # one picture: its face, kept unit length
    assert api.delete("/v1/characters/ida").status_code == 200


def test_an_identity_s_image_is_made_again_by_a_rerun_from_the_face_it_kept(api):
    made = api.post(GENERATE, json=BODY | {"identity": IDENTITY})
    assert made.status_code == 200, made.text
    rerun = api.post("/v1/images/rerun", json={"image_id": made.json()["data"][0]["id"]})
    assert rerun.status_code == 200, rerun.text
    assert rerun.json()["data"][0]["b64_json"] == made.json()["data"][0]["b64_json"]


def test_a_character_s_face_kept_in_the_studio_is_the_api_s_identity(studio, api):
    made = api.post("/v1/characters", json={"name": "ivy", "images": [FACE], "face": "largest"})
    assert made.status_code == 200, made.text
    try:
        fields = {"prompt": BODY["prompt"], "seed": 4, "num_inference_steps": 2, "size": "64x64"}
        image = drawn_with_choice(studio, "identity", "ivy", **fields)
        assert_drawn_as_the_api_draws_it(studio, api, image, "identity", {"character": "ivy"})
    finally:
        assert api.delete("/v1/characters/ivy").status_code == 200


def test_a_character_and_its_face_chosen_for_a_studio_video_draw_as_the_api_draws_them(studio, api):
    made = api.post("/v1/characters", json={"name": "vic", "images": [FACE], "face": "largest"})
    assert made.status_code == 200, made.text
    try:
        studio.reload()  # its lists read again
        expect(studio.locator("body")).to_have_attribute("data-ready", "true", timeout=30_000)
        studio.click("#tab-video")
        for field, value in {"frames": 2, "fps": 2, "steps": 2, "seed": 5}.items():
            studio.fill(f"#video-{field}", str(value))
        studio.select_option("#video-character", "vic")
        studio.select_option("#video-identity", "vic")
        curl = studio.locator("#video-call pre").first.inner_text()
        body = json.loads(re.search(r"-d '(.*)'", curl).group(1))
        assert body["character"] == {"name": "vic"} and body["identity"] == {"character": "vic"}, body
        studio.click("#video-form button[type=submit]")
        expect(studio.locator("#video-status")).to_have_text("completed: 100%", timeout=120_000)
        shown = studio.locator("#video-facts dd").first.inner_text()
        content = api.get(f"/v1/videos/{shown}/content", params={"variant": "frames"})
        with zipfile.ZipFile(io.BytesIO(content.content)) as archive:
            frames = np.stack([np.asarray(Image.open(io.BytesIO(archive.read(n)))) for n in sorted(archive.namelist())])
        np.testing.assert_array_equal(frames, _video_frames(api, body))
        plain = {name: value for name, value in body.items() if name not in ("character", "identity")}
        assert psnr(frames, _video_frames(api, plain)) < 35, "the character and its face changed nothing"
    finally:
        assert api.delete("/v1/characters/vic").status_code == 200


def test_a_character_made_in_the_studio_is_kept_as_the_api_keeps_it_offered_to_draw_and_deleted(studio, api, tmp_path):
    """The Studio's Characters tab: a bad name refused beside its field; a character made from three pictures with a
    LoRA and trigger words, kept as the API keeps it, listed, offered to Draw, then deleted."""
    files = [tmp_path / f"zoe-{i}.png" for i in range(len(PICTURES))]
    for file, picture in zip(files, PICTURES, strict=True):
        file.write_bytes(base64.b64decode(picture))
    studio.click("#tab-characters")
    studio.fill("#characters-name", "not a name")
    studio.set_input_files("#characters-images", [str(file) for file in files])
    studio.select_option("#characters-face", "largest")
    studio.fill("#characters-lora", "style")
    studio.fill("#characters-lora-scale", "0.7")
    studio.fill("#characters-trigger_words", "zoe person")
    studio.click("#characters-form button[type=submit]")
    expect(studio.locator("#characters-name-error")).to_contain_text("name")
    studio.fill("#characters-name", "zoe")
    expect(studio.locator("#characters-call")).to_contain_text("/v1/characters")
    studio.click("#characters-form button[type=submit]")
    try:
        made = "zoe: made from 3 picture(s), its face kept"
        expect(studio.locator("#characters-status")).to_have_text(made, timeout=60_000)
        kept = api.get("/v1/characters/zoe").json()
        assert (kept["images"], kept["lora"], kept["trigger_words"], kept["face"]) == (
            3,
            {"name": "style", "scale": 0.7},
            "zoe person",
            True,
        )
        expect(studio.locator("#characters-list li[data-name=zoe]")).to_contain_text("LoRA style at 0.7")
        expect(studio.locator("#character option[value=zoe]")).to_have_count(1)  # Draw offers it
        studio.click("#characters-list li[data-name=zoe] button")
        expect(studio.locator("#characters-status")).to_have_text("zoe: deleted")
        expect(studio.locator("#characters-list li[data-name=zoe]")).to_have_count(0)
        assert api.get("/v1/characters/zoe").status_code == 404
    finally:
        api.delete("/v1/characters/zoe")


@pytest.mark.parametrize(
    ("identity", "param"),
    [
        ({"image": _face_png(seed=1)}, "identity.image"),  # no face
        ({"image": _face_png((100, 120, 50), (230, 120, 50))}, "identity.image"),  # several, and face: only
        ({"character": "nobody"}, "identity.character"),
        ({"embedding": [0.1] * 3}, "identity.embedding"),
        ({"embedding": [0.0] * 512}, "identity.embedding"),
        ({"embedding": [0.1] * 512, "adapter": "ip"}, "identity.adapter"),
        ({"embedding": [0.1] * 512, "image": FACE}, "identity"),
        ({"embedding": [0.1] * 512, "strength": 9}, "identity.strength"),
    ],
)
def test_a_bad_identity_is_a_400_naming_the_field(api, identity, param):
    refused = api.post(GENERATE, json=BODY | {"identity": identity})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == param, refused.text
    as_ip = api.post(GENERATE, json=BODY | {"ip_adapters": [{"name": "faceid", "images": [FACE]}]})
    assert as_ip.status_code == 400 and as_ip.json()["error"]["param"] == "ip_adapters.0.name", as_ip.text
    assert api.post(GENERATE, json=BODY).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "param"),
    [
        ("post", "/v1/characters", CHARACTER | {"images": [PICTURES[0], _face_png()]}, "images.1"),
        ("post", "/v1/characters", CHARACTER | {"face": "only"}, "images.0"),  # found more than once
        ("post", "/v1/characters", CHARACTER | {"images": PICTURES + PICTURES[:2]}, "images"),
        ("post", "/v1/characters", CHARACTER | {"images": ["bm90IGFuIGltYWdl"]}, "images.0"),
        ("post", "/v1/characters", CHARACTER | {"lora": {"name": "nope"}}, "lora.name"),
        ("post", "/v1/characters", CHARACTER | {"model": "nope"}, "model"),
        ("post", "/v1/characters", CHARACTER | {"name": "not a name"}, "name"),
        ("put", "/v1/characters/other", CHARACTER, "name"),
        ("post", GENERATE, BODY | {"character": {"name": "never-made"}}, "character.name"),
    ],
)
def test_a_bad_character_is_a_400_naming_the_field(api, method, path, body, param):
    response = api.request(method, path, json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text
    assert api.get("/v1/characters").json()["data"] == []
    assert api.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"image": "###"}, "image"),
        ({"image": "bm90IGFuIGltYWdl"}, "image"),
        ({"image": _png_b64(16, 16), "model": "nope"}, "model"),
    ],
)
def test_a_bad_reference_is_a_400_naming_the_field(api, body, param):
    response = api.post("/v1/references", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.fixture
def browser():
    """Chromium for the one test that opens the Studio here: the tests after it call ``asyncio.run``."""
    with chromium() as launched:
        yield launched


def test_an_admin_uploads_a_lora_in_the_studio_and_draws_with_it(studio, api, default_model, tmp_path):
    """The Studio's Operate section uploads a LoRA file (an open API: every caller administers it); Draw lists it, and
    the picture drawn with it is the API's answer for the call the page shows, not the picture without it; with a
    reference image added (IP-Adapter), the API's answer for the body the page sends, and another picture."""
    from build_engines.text_to_image.random_adapters import make_lora

    path = make_lora(default_model, tmp_path / "studio.safetensors", rank=4, seed=12, strength=1.5)
    try:
        studio.click("#tab-operate")
        studio.fill("#lora-name", "studio")
        studio.set_input_files("#lora-file", str(path))
        studio.click("#lora-form button[type=submit]")
        expect(studio.locator("#lora-status")).to_have_text("studio: ready", timeout=60_000)
        expect(studio.locator("#lora-list")).to_contain_text("studio")
        studio.click("#tab-draw")
        studio.check("#loras-list input[value=studio]")
        draw(studio, prompt="a red heart icon", seed=5, num_inference_steps=2, size="64x64")
        body = shown_call(studio)
        assert body["loras"] == [{"name": "studio", "scale": 1}]
        with_lora = api.post(GENERATE, json=body)
        assert with_lora.status_code == 200, with_lora.text
        drawn = studio.locator("#draw-images img").get_attribute("src")
        assert drawn == PNG + with_lora.json()["data"][0]["b64_json"]
        without = api.post(GENERATE, json={field: value for field, value in body.items() if field != "loras"})
        assert drawn != PNG + without.json()["data"][0]["b64_json"]  # the LoRA changed the picture
        reference = tmp_path / "reference.png"
        reference.write_bytes(base64.b64decode(reference_image(seed=8)[1]))
        studio.click("#more summary")
        studio.set_input_files("#ip_adapter_image", str(reference))
        studio.fill("#ip_adapter_scale", "0.8")
        studio.click("#draw-button")
        expect(studio.locator("#draw-button")).to_be_enabled(timeout=120_000)
        body = sent_body(studio)
        assert body["ip_adapter_image"] == base64.b64encode(reference.read_bytes()).decode()
        assert body["ip_adapter_scale"] == 0.8 and body["loras"] == [{"name": "studio", "scale": 1}]
        with_both = api.post(GENERATE, json=body)
        assert with_both.status_code == 200, with_both.text
        referenced = studio.locator("#draw-images img").get_attribute("src")
        assert referenced == PNG + with_both.json()["data"][0]["b64_json"] and referenced != drawn
    finally:
        api.delete("/v1/loras/studio")


def test_zz_references_are_their_key_s_and_loras_change_with_the_adapters_scope(stack, adapters):
    """Last in the module: it creates keys, which close the API for the tests after it."""
    from serve.access import ACTIVE_CHECK_S, open_key_store
    from serve.access.keys import KeyLimits
    from serve.routes import Scope

    store = open_key_store(stack.options.store)
    made = {
        name: store.create(name, scopes, KeyLimits())[1]
        for name, scopes in (("alice", {Scope.GENERATE}), ("bob", {Scope.GENERATE}), ("curator", {Scope.ADAPTERS}))
    }
    time.sleep(ACTIVE_CHECK_S + 0.5)  # each replica re-reads whether keys exist
    with httpx.Client(base_url=stack.info.api_url, timeout=300) as client:

        def as_(name: str) -> dict:
            return {"Authorization": f"Bearer {made[name]}"}

        _, b64 = reference_image(seed=4)
        stored = client.post("/v1/references", json={"image": b64}, headers=as_("alice"))
        assert stored.status_code == 200, stored.text
        ref = stored.json()["id"]
        mine = client.post(GENERATE, json=BODY | {"ip_adapter_reference": ref}, headers=as_("alice"))
        assert mine.status_code == 200, mine.text
        theirs = client.post(GENERATE, json=BODY | {"ip_adapter_reference": ref}, headers=as_("bob"))
        unknown = client.post(GENERATE, json=BODY | {"ip_adapter_reference": "ref_" + "0" * 24}, headers=as_("bob"))
        assert theirs.status_code == unknown.status_code == 400
        assert theirs.json()["error"]["param"] == "ip_adapter_reference"
        assert theirs.json()["error"]["message"].replace(ref, "ID") == unknown.json()["error"]["message"].replace(
            "ref_" + "0" * 24, "ID"
        )
        assert client.get(f"/v1/references/{ref}", headers=as_("bob")).status_code == 404
        assert client.get("/v1/references", headers=as_("bob")).json()["data"] == []
        file = {"file": ("lora.safetensors", (adapters.loras / "line.safetensors").read_bytes())}
        refused = client.post("/v1/loras", data={"name": "keyed"}, files=file, headers=as_("alice"))
        assert refused.status_code == 403, refused.text
        added = client.post("/v1/loras", data={"name": "keyed"}, files=file, headers=as_("curator"))
        assert added.status_code == 200, added.text


def test_zz_loras_are_their_key_s_and_another_key_gets_what_an_unknown_name_gets(stack, default_model, tmp_path):
    """After the keys of the test before: a private LoRA is unknown to another key for every verb; an admin shares.

    And a removed LoRA's files are gone once no entry names them (``FILES_KEPT_S`` after).
    """
    from build_engines.text_to_image.random_adapters import make_lora
    from serve.access import ACTIVE_CHECK_S, open_key_store
    from serve.access.keys import KeyLimits
    from serve.adapters import open_adapter_store
    from serve.routes import Scope

    store = open_key_store(stack.options.store)
    both = {Scope.GENERATE, Scope.ADAPTERS}
    keys = {name: store.create(name, scopes, KeyLimits()) for name, scopes in (("ann", both), ("ben", both))}
    keys["boss"] = store.create("boss", {Scope.ADMIN}, KeyLimits())
    files = {
        who: make_lora(default_model, tmp_path / f"{who}.safetensors", rank=2, seed=seed).read_bytes()
        for who, seed in (("ann", 9), ("ben", 10))
    }
    time.sleep(ACTIVE_CHECK_S + 0.5)
    with httpx.Client(base_url=stack.info.api_url, timeout=300) as client:

        def call(who: str, method: str, path: str, **kwargs) -> httpx.Response:
            return client.request(method, path, headers={"Authorization": f"Bearer {keys[who][1]}"}, **kwargs)

        def upload(who: str, method: str, path: str, **fields) -> httpx.Response:
            return call(who, method, path, data=fields, files={"file": ("lora.safetensors", files[who])})

        added = upload("ann", "POST", "/v1/loras", name="mine")
        assert added.status_code == 200 and added.json()["visibility"] == "private", added.text
        assert call("ann", "POST", GENERATE, json=BODY | {"loras": [{"name": "mine"}]}).status_code == 200
        for name in ("mine", "never"):  # ann's private LoRA and a name never uploaded: the same answers for ben
            generated = call("ben", "POST", GENERATE, json=BODY | {"loras": [{"name": name}]})
            assert generated.status_code == 400 and generated.json()["error"]["param"] == "loras.0.name"
            assert f"unknown LoRA adapter {name!r}" in generated.json()["error"]["message"]
            assert upload("ben", "PUT", f"/v1/loras/{name}").status_code == 404
            assert call("ben", "DELETE", f"/v1/loras/{name}").status_code == 404
        assert "mine" not in [entry["name"] for entry in call("ben", "GET", "/v1/loras").json()["data"]]
        shared = upload("ben", "POST", "/v1/loras", name="ours", visibility="shared")
        assert shared.status_code == 403 and shared.json()["error"]["param"] == "visibility"
        assert upload("ben", "POST", "/v1/loras", name="mine").status_code == 200  # names are per key
        ann, ben = keys["ann"][0].id, keys["ben"][0].id
        listed = [(e["name"], e.get("owner")) for e in call("boss", "GET", "/v1/loras").json()["data"]]
        assert ("mine", ann) in listed and ("mine", ben) in listed
        given = call("boss", "PUT", "/v1/loras/mine", data={"visibility": "shared", "owner": ann})
        assert given.status_code == 200 and given.json()["visibility"] == "shared", given.text
        assert call("ann", "POST", GENERATE, json=BODY | {"loras": [{"name": "mine"}]}).status_code == 200
        kept = open_adapter_store(stack.options.store)
        bens, shared_one = kept.lora("mine", ben), kept.lora("mine", None)
        kept.close()
        assert call("ben", "DELETE", "/v1/loras/mine").json()["deleted"] is True
        time.sleep(FILES_KEPT_S + 0.5)
        assert call("boss", "DELETE", "/v1/loras/mine").json()["deleted"] is True  # its sweep takes ben's files
    folder = stack.options.run_dir / "loras"
    assert not Path(bens.prepared).exists() and not (folder / "files" / f"{bens.sha256}.safetensors").exists()
    assert Path(shared_one.prepared).exists()  # removed just now: kept for the requests that resolved it


def test_zz_a_key_keeps_no_more_stored_things_than_its_quota(stack, default_model, tmp_path):
    """References and LoRA uploads count together against a key's stored_items and stored_bytes: a 429 naming the
    quota, without Retry-After (waiting frees nothing)."""
    from build_engines.text_to_image.random_adapters import make_lora
    from serve.access import ACTIVE_CHECK_S, open_key_store
    from serve.access.keys import KeyLimits
    from serve.routes import Scope

    store = open_key_store(stack.options.store)
    both = {Scope.GENERATE, Scope.ADAPTERS}
    keys = {"carl": store.create("carl", both, KeyLimits(stored_items=2))[1]}
    keys["dora"] = store.create("dora", both, KeyLimits(stored_bytes=1))[1]
    lora = make_lora(default_model, tmp_path / "carl.safetensors", rank=2, seed=11).read_bytes()
    _, image = reference_image(seed=5)
    time.sleep(ACTIVE_CHECK_S + 0.5)
    with httpx.Client(base_url=stack.info.api_url, timeout=300) as client:

        def call(who: str, method: str, path: str, **kwargs) -> httpx.Response:
            return client.request(method, path, headers={"Authorization": f"Bearer {keys[who]}"}, **kwargs)

        first = call("carl", "POST", "/v1/references", json={"image": image})
        assert first.status_code == 200, first.text
        file = {"file": ("lora.safetensors", lora)}
        assert call("carl", "POST", "/v1/loras", data={"name": "carls"}, files=file).status_code == 200
        third = call("carl", "POST", "/v1/references", json={"image": image})
        assert third.status_code == 429 and third.json()["error"]["param"] == "stored_items", third.text
        assert "retry-after" not in third.headers
        assert call("carl", "DELETE", f"/v1/references/{first.json()['id']}").status_code == 200
        assert call("carl", "POST", "/v1/references", json={"image": image}).status_code == 200
        over = call("dora", "POST", "/v1/references", json={"image": image})
        assert over.status_code == 429 and over.json()["error"]["param"] == "stored_bytes", over.text
        assert call("dora", "GET", "/v1/references").json()["data"] == []


def _row_request(row: Row, given: str) -> dict:
    """``row``'s request naming ``given`` (httpx's keywords): its path, or its body's field, or its upload."""
    path = row.path.replace(f"{{{row.field}}}", given)
    video = {"prompt": BODY["prompt"], "size": "64x64", "frames": 4, "fps": 4, "steps": 4, "seed": 3}
    body = video if row.path == "/v1/videos" else BODY
    named = {
        "character.name": {"character": {"name": given}},
        "identity.character": {"identity": {"character": given}},
        "loras.0.name": {"loras": [{"name": given}]},
    }
    if row.field in named:
        return {"method": row.method, "url": path, "json": body | named[row.field]}
    if (row.method, row.thing) == ("put", "character"):
        return {"method": row.method, "url": path, "json": CHARACTER | {"name": given}}
    if row.where == "body":
        return {"method": row.method, "url": path, "json": BODY | {row.field: given}}
    if (row.method, row.thing) == ("put", "lora"):
        return {"method": row.method, "url": path, "files": {"file": ("lora.safetensors", b"never read")}}
    return {"method": row.method, "url": path}


@pytest.mark.parametrize("row", rows("adapters"), ids=row_id)
def test_zz_another_key_s_reference_or_lora_answers_as_an_unknown_one(stack, default_model, tmp_path, row):
    """The hostile-tenant matrix's adapter rows (tests/tenant_matrix.py): made by one key, asked by another."""
    from build_engines.text_to_image.random_adapters import make_lora
    from serve.access import ACTIVE_CHECK_S, open_key_store
    from serve.access.keys import KeyLimits
    from serve.routes import Scope

    store = open_key_store(stack.options.store)
    both = {Scope.GENERATE, Scope.ADAPTERS}
    owner, other = (store.create(name, both, KeyLimits())[1] for name in ("maker", "asker"))
    time.sleep(ACTIVE_CHECK_S + 0.5)
    with httpx.Client(base_url=stack.info.api_url, timeout=300) as client:
        mine = {"Authorization": f"Bearer {owner}"}
        if row.thing == "reference":
            made = client.post("/v1/references", json={"image": reference_image(seed=6)[1]}, headers=mine)
            given = made.json()["id"]
        elif row.thing == "character":
            given = f"matrix-{row.method}-{row.path.count('/')}"
            made = client.post("/v1/characters", json=CHARACTER | {"name": given, "lora": None}, headers=mine)
        else:
            given = f"matrix-{row.method}-{row.path.count('/')}"
            lora = make_lora(default_model, tmp_path / "m.safetensors", rank=2, seed=12).read_bytes()
            made = client.post("/v1/loras", data={"name": given}, files={"file": ("m.safetensors", lora)}, headers=mine)
        assert made.status_code == 200, made.text

        def answer(name: str) -> tuple:
            got = client.request(**_row_request(row, name), headers={"Authorization": f"Bearer {other}"})
            error = got.json()["error"]
            return got.status_code, error["type"], error["param"], error["message"].replace(name, "ID")

        theirs, unknown = answer(given), answer(UNKNOWN[row.thing])
    assert theirs == unknown, (theirs, unknown)
    kind = "not_found_error" if row.status == 404 else "invalid_request_error"
    assert theirs[:3] == (row.status, kind, row.param), theirs


def test_zz_an_admin_shares_a_character_that_every_key_draws_and_only_an_admin_deletes(stack):
    from serve.access import ACTIVE_CHECK_S, open_key_store
    from serve.access.keys import KeyLimits
    from serve.routes import Scope

    store = open_key_store(stack.options.store)
    keys = {
        who: store.create(who, scopes, KeyLimits())[1]
        for who, scopes in (("chief", {Scope.ADMIN}), ("dana", {Scope.GENERATE}))
    }
    time.sleep(ACTIVE_CHECK_S + 0.5)
    with httpx.Client(base_url=stack.info.api_url, timeout=300) as client:

        def call(who: str, method: str, path: str, **kwargs) -> httpx.Response:
            return client.request(method, path, headers={"Authorization": f"Bearer {keys[who]}"}, **kwargs)

        refused = call("dana", "POST", "/v1/characters", json=CHARACTER | {"name": "mine", "visibility": "shared"})
        assert refused.status_code == 403 and refused.json()["error"]["param"] == "visibility", refused.text
        made = call("chief", "POST", "/v1/characters", json=CHARACTER | {"name": "hero", "visibility": "shared"})
        assert made.status_code == 200 and made.json()["visibility"] == "shared", made.text
        assert "hero" in [c["name"] for c in call("dana", "GET", "/v1/characters").json()["data"]]
        drawn = call("dana", "POST", GENERATE, json=BODY | {"character": {"name": "hero"}})
        by_hand = {"prompt": f"zed person, {BODY['prompt']}", "loras": [{"name": "style", "scale": 0.7}]}
        by_hand = call("dana", "POST", GENERATE, json=BODY | by_hand | {"ip_adapters": [{"images": PICTURES}]})
        np.testing.assert_array_equal(decode_images(drawn), decode_images(by_hand))
        taken = call("dana", "DELETE", "/v1/characters/hero")
        assert taken.status_code == 403 and taken.json()["error"]["param"] == "name", taken.text
        assert call("chief", "DELETE", "/v1/characters/hero").status_code == 200
        gone = call("dana", "POST", GENERATE, json=BODY | {"character": {"name": "hero"}})
        assert gone.status_code == 400 and gone.json()["error"]["param"] == "character.name", gone.text


def test_zzz_admin_actions_are_audited_and_a_backup_under_load_restores_everything(stack, default_model, tmp_path):
    """A scripted sequence of admin calls is in ``GET /v1/audit`` with each key's id and outcome; ``easel backup``
    while generations and jobs run, ``easel restore`` into a fresh folder: every key, job, image (byte-equal),
    reference, LoRA and character of the copy is there."""
    import threading

    from click.testing import CliRunner

    from build_engines.text_to_image.random_adapters import make_lora
    from serve.access import ACTIVE_CHECK_S, open_key_store
    from serve.access.audit import AUDIT_FILE
    from serve.access.keys import KeyLimits
    from serve.adapters import open_adapter_store
    from serve.cli.main import main
    from serve.jobs import open_job_store
    from serve.results import open_image_store
    from serve.routes import Scope
    from serve.stores import default_url

    store, run = open_key_store(stack.options.store), stack.options.run_dir
    (auditor, boss), (painter, paint) = (
        store.create(name, scopes, KeyLimits())
        for name, scopes in (("auditor", {Scope.ADMIN}), ("painter", {Scope.GENERATE, Scope.ADAPTERS, Scope.JOBS}))
    )
    lora = make_lora(default_model, tmp_path / "kept.safetensors", rank=2, seed=13).read_bytes()
    time.sleep(ACTIVE_CHECK_S + 0.5)
    script = [  # who, method, path, what else, the status expected
        (boss, "PUT", "/v1/experiments/audited", {"json": {"variants": {"easel-default": 1.0}}}, 200),
        (boss, "POST", "/v1/loras", {"data": {"name": "kept", "visibility": "shared"}}, 200),
        (boss, "DELETE", "/v1/models/no-such-model", {}, 404),
        (paint, "POST", "/v1/models", {"json": {}}, 403),  # a scope it lacks
        (paint, "PUT", "/v1/loras/kept", {"data": {"visibility": "private"}}, 403),  # a shared LoRA is an admin's
        (boss, "DELETE", "/v1/experiments/audited", {}, 200),
    ]
    with httpx.Client(base_url=stack.info.api_url, timeout=300) as client:
        for key, method, path, more, status in script:
            files = {"files": {"file": ("kept.safetensors", lora)}} if path == "/v1/loras" else {}
            answer = client.request(method, path, headers={"Authorization": f"Bearer {key}"}, **more, **files)
            assert answer.status_code == status, (method, path, answer.text)
        assert client.get("/v1/audit", headers={"Authorization": f"Bearer {paint}"}).status_code == 403
        reference = {"image": reference_image(seed=7)[1]}  # a stored reference, for the backup below (not audited)
        assert client.post("/v1/references", json=reference, headers={"Authorization": f"Bearer {paint}"}).is_success
        character = CHARACTER | {"name": "kept", "lora": None}  # and a character, its pictures stored references
        assert client.post("/v1/characters", json=character, headers={"Authorization": f"Bearer {paint}"}).is_success
        page = client.get("/v1/audit", params={"limit": 10}, headers={"Authorization": f"Bearer {boss}"})
    assert page.status_code == 200, page.text
    ids = {boss: auditor.id, paint: painter.id}
    expected = [(ids[k], m, p, s, "ok" if s < 400 else "refused" if s == 403 else "failed") for k, m, p, _, s in script]
    expected.append((painter.id, "GET", "/v1/audit", 403, "refused"))
    logged = [(e["key_id"], e["action"].split()[0], e["path"], e["status"], e["outcome"]) for e in page.json()["data"]]
    assert logged[: len(expected)] == expected[::-1]  # newest first
    assert {e["key_name"] for e in page.json()["data"][: len(expected)]} == {"auditor", "painter"}
    assert boss not in (run / AUDIT_FILE).read_text() and paint not in (run / AUDIT_FILE).read_text()

    url, stop, done = stack.options.store, threading.Event(), []

    def load() -> None:  # generations (their images kept) and background jobs, until the backup is made
        with httpx.Client(base_url=stack.info.api_url, timeout=300, headers={"Authorization": f"Bearer {paint}"}) as c:
            while not stop.is_set():
                assert c.post(GENERATE, json=BODY | {"seed": len(done)}).status_code == 200
                assert c.post(GENERATE, json=BODY | {"background": True}).status_code == 202
                done.append(1)

    def contents(folder: Path, store_url: str) -> dict:
        images = open_image_store(store_url, folder / "images")
        return {
            "keys": {k.id for k in open_key_store(store_url).list()},
            "jobs": {j.id for j in open_job_store(store_url).list(limit=10_000)},
            "images": {row.id: images.read(row) for row in images.page(None, None, 10_000)},
            "loras": {(e.name, e.owner, e.sha256) for e in open_adapter_store(store_url).loras()},
            "references": {r.id for r in open_adapter_store(store_url).references(None)},
            "characters": {(c.name, c.owner, c.references) for c in open_adapter_store(store_url).characters(None)},
        }

    writer = threading.Thread(target=load)
    writer.start()
    try:
        while not done and writer.is_alive():
            time.sleep(0.1)
        before = contents(run, url)
        made = CliRunner().invoke(main, ["backup", str(tmp_path / "backup"), "--run-folder", str(run)])
    finally:
        stop.set()
        writer.join()
    assert made.exit_code == 0, made.output
    fresh = tmp_path / "fresh"
    put = CliRunner().invoke(main, ["restore", str(tmp_path / "backup"), "--run-folder", str(fresh)])
    assert put.exit_code == 0, put.output
    restored, after = contents(fresh, default_url(fresh)), contents(run, url)
    for part in ("keys", "loras", "references", "characters"):  # unchanged by the load: all of them, no more
        assert restored[part] == before[part] == after[part] and restored[part], part
    for part in ("jobs", "images"):  # all that were there when the backup began, none that never was
        assert set(before[part]) <= set(restored[part]) <= set(after[part]), part
    assert all(data == after["images"][image_id] for image_id, data in restored["images"].items())
    for entry in open_adapter_store(default_url(fresh)).loras():  # the files the entries name, in the new folder
        assert entry.prepared is None or (entry.prepared.startswith(str(fresh)) and Path(entry.prepared).exists())
    assert "kept" in {name for name, _, _ in restored["loras"]}
