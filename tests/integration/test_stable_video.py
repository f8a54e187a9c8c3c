"""Stable Video Diffusion (image-to-video) served beside the embedded default: the official client's MP4 against
diffusers' pipeline through the same H.264 encoding, gRPC, two videos merged in Triton's batches, cancel, bad input."""

import base64
import io
import json
import re
import time

import av
import grpc
import numpy as np
import openai
import pytest
import torch
from PIL import Image

from build_engines.text_to_image.build import default_model_dir
from serve.grpc_api import easel_pb2, easel_pb2_grpc
from serve.images.video import mp4
from serve.settings import DEFAULT_MODEL
from serve.stack import Stack, StackOptions
from tests.conftest import psnr
from tests.videos import finished, frames, png

pytestmark = pytest.mark.integration
SVD = "svd"
STILL = Image.fromarray(np.random.default_rng(8).integers(0, 256, (64, 96, 3), dtype=np.uint8))
"""The still every frame is drawn from, at the videos' size (so neither side resizes it)."""
FIELDS = {"frames": 6, "fps": 6, "steps": 4, "seed": 9, "motion_bucket_id": 90, "noise_aug_strength": 0.05}
"""An SVD video's fields besides the still (decode_chunk_size per test)."""


@pytest.fixture(scope="module")
def svd_model():
    """The tiny Stable Video Diffusion folder (made here, deterministic)."""
    return default_model_dir("tiny-svd")


@pytest.fixture(scope="module")
def stack(svd_model, tmp_path_factory):
    """The embedded default and the tiny SVD in one stack, no result cache."""
    options = StackOptions(
        port=0,
        dashboard=False,
        models={DEFAULT_MODEL: None, SVD: svd_model},
        run_dir=tmp_path_factory.mktemp("run"),
        cache_bytes=0,
    )
    with Stack(options) as stack:
        yield stack


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=f"{stack.info.api_url}/v1", api_key="unused", timeout=300, max_retries=0)


@pytest.fixture(scope="module")
def diffusers_svd(svd_model):
    """diffusers' ``StableVideoDiffusionPipeline`` over the same folder: the reference."""
    from diffusers import StableVideoDiffusionPipeline

    pipeline = StableVideoDiffusionPipeline.from_pretrained(svd_model)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def reference(pipeline, decode_chunk_size: int) -> np.ndarray:
    """diffusers' uint8 frames (F, H, W, 3) for :data:`FIELDS` and :data:`STILL`."""
    frames = pipeline(
        STILL,
        height=64,
        width=96,
        num_frames=FIELDS["frames"],
        num_inference_steps=FIELDS["steps"],
        fps=FIELDS["fps"],
        motion_bucket_id=FIELDS["motion_bucket_id"],
        noise_aug_strength=FIELDS["noise_aug_strength"],
        decode_chunk_size=decode_chunk_size,
        generator=torch.Generator().manual_seed(FIELDS["seed"]),
        output_type="np",
    ).frames[0]
    return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)


def luma(video: bytes) -> np.ndarray:
    """An MP4's decoded frames' luma (F, H, W)."""
    with av.open(io.BytesIO(video)) as container:
        return np.stack([frame.to_ndarray(format="gray") for frame in container.decode(container.streams.video[0])])


def test_the_openai_client_animates_a_still_as_stable_video_diffusion_does(client, api, diffusers_svd):
    """The client's multipart upload; the MP4's luma against diffusers' frames through the same H.264 encoding."""
    created = client.videos.create(
        model=SVD,
        prompt="a fox in the snow",
        size="96x64",
        input_reference=("still.png", png(STILL), "image/png"),
        extra_body=FIELDS | {"decode_chunk_size": 4},
    )
    video = finished(client, created.id)
    assert (video.status, video.model, video.size, video.seconds) == ("completed", SVD, "96x64", "1"), video.error
    served = client.videos.download_content(created.id).read()
    want = reference(diffusers_svd, decode_chunk_size=4)
    expected = luma(mp4([png(Image.fromarray(frame)) for frame in want], FIELDS["fps"]))
    got = luma(served)
    assert got.shape == expected.shape == (6, 64, 96)
    assert min(psnr(a, b) for a, b in zip(got, expected, strict=True)) >= 35
    exact = frames(api, created.id)  # the frames the MP4 was encoded from: diffusers' own, bar rounding
    assert min(psnr(a, b) for a, b in zip(exact, want, strict=True)) >= 40


def test_grpc_and_two_videos_together_draw_what_one_alone_does(stack, api, client):
    """A video over gRPC equals the same over HTTP; two at once (their UNet calls merged) equal each alone."""
    body = {"model": SVD, "prompt": "waves", "size": "96x64", "input_reference": base64.b64encode(png(STILL)).decode()}
    alone = frames(api, finished(client, api.post("/v1/videos", json=body | FIELDS).json()["id"]).id)
    other = body | FIELDS | {"seed": 10}
    ids = [api.post("/v1/videos", json=each).json()["id"] for each in (body | FIELDS, other)]
    together = [frames(api, finished(client, video_id).id) for video_id in ids]
    np.testing.assert_array_equal(together[0], alone)
    assert psnr(together[1][0], alone[0]) < 40  # another seed: another video
    with grpc.insecure_channel(stack.info.grpc_address) as channel:
        message = easel_pb2.VideoRequest(model=SVD, prompt="waves", size="96x64", input_reference=png(STILL), **FIELDS)
        created = easel_pb2_grpc.EaselStub(channel).CreateVideo(message)
    np.testing.assert_array_equal(frames(api, finished(client, created.id).id), alone)


def test_a_canceled_video_stops_mid_loop_and_frees_its_slot(api, client):
    body = {"model": SVD, "prompt": "x", "size": "96x64", "input_reference": base64.b64encode(png(STILL)).decode()}
    video_id = api.post("/v1/videos", json=body | FIELDS | {"frames": 16, "steps": 150}).json()["id"]
    deadline = time.monotonic() + 120
    while api.get(f"/v1/jobs/{video_id}").json()["progress"]["step"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert api.delete(f"/v1/videos/{video_id}").status_code == 200
    video = finished(client, video_id, timeout_s=30)
    assert video.status == "failed" and video.error.code == "canceled"
    assert api.get(f"/v1/jobs/{video_id}").json()["progress"]["step"] < 150
    after = api.post("/v1/videos", json=body | FIELDS).json()["id"]  # the slot is free: the next one runs
    assert finished(client, after, timeout_s=60).status == "completed"


STILL_B64 = base64.b64encode(png(STILL)).decode()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"input_reference": None}, "input_reference"),
        ({"input_reference": base64.b64encode(b"not an image").decode()}, "input_reference"),
        ({"strength": 0.5}, "strength"),
        ({"motion_adapter": "wave"}, "motion_adapter"),
        ({"negative_prompt": "blurry"}, "negative_prompt"),
        ({"motion_bucket_id": 256}, "motion_bucket_id"),
        ({"noise_aug_strength": -0.1}, "noise_aug_strength"),
        ({"decode_chunk_size": 0}, "decode_chunk_size"),
        ({"scheduler": "ddim"}, "scheduler"),
        ({"loras": [{"name": "ink"}]}, "loras.0.name"),
        ({"frames": 33}, "frames"),
        ({"size": "90x64"}, "size"),
        ({"model": DEFAULT_MODEL, "motion_bucket_id": 100}, "motion_bucket_id"),  # AnimateDiff's model: SVD's field
    ],
)
def test_bad_svd_videos_are_400s_naming_the_field_and_the_stack_stays_up(api, change, field):
    body = {"model": SVD, "prompt": "x", "size": "96x64", "input_reference": STILL_B64, "frames": 6} | change
    answer = api.post("/v1/videos", json={key: value for key, value in body.items() if value is not None})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == field, answer.json()
    assert api.get("/healthz").status_code == 200


def test_a_still_from_an_svd_model_is_a_400_naming_model(api):
    answer = api.post(
        "/v1/images/generations", json={"model": SVD, "prompt": "x", "size": "96x64", "image": [STILL_B64]}
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "model" and "videos" in answer.json()["error"]["message"]


def test_the_studio_animates_a_still_with_an_svd_model_and_shows_the_call(studio, tmp_path):
    from playwright.sync_api import expect

    studio.click("#tab-video")
    expect(studio.locator("#video-svd")).to_be_hidden()  # the default model: AnimateDiff's fields
    studio.select_option("#video-model", SVD)
    expect(studio.locator("#video-svd")).to_be_visible()
    (tmp_path / "still.png").write_bytes(png(STILL))
    studio.set_input_files("#video-still", str(tmp_path / "still.png"))
    for field, value in {"frames": 4, "fps": 6, "steps": 2, "seed": 5, "motion_bucket_id": 80}.items():
        studio.fill(f"#video-{field}", str(value))
    expect(studio.locator("#video-call pre").first).to_contain_text('"input_reference"')
    body = json.loads(re.search(r"-d '(.*)'", studio.locator("#video-call pre").first.inner_text()).group(1))
    shown = body.pop("input_reference")  # shown shortened, whole in its Copy
    assert shown.startswith(STILL_B64[:24]) and "Copy has them all" in shown
    assert body == {
        "prompt": "a red fox running",
        "frames": 4,
        "fps": 6,
        "steps": 2,
        "seed": 5,
        "model": SVD,
        "motion_bucket_id": 80,
    }
    studio.click("#video-form button[type=submit]")
    expect(studio.locator("#video-player video")).to_have_count(1, timeout=120_000)
    expect(studio.locator("#video-facts")).to_contain_text("4 at 6 fps")
