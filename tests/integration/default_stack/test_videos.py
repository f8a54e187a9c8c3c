"""Videos (AnimateDiff) through OpenAI's videos API on the shared stack: the official client, parity, bad input."""

import base64
import io
import json
import time

import av
import numpy as np
import openai
import pytest
from PIL import Image

from build_engines.finishing.ifnet import read_flownet
from tests.conftest import psnr
from tests.integration.conftest import decode_images, post_together
from tests.videos import (
    animatediff,
    finished,
    frames,
    png,
    reference_frames,
    reference_frames_from,
    rife_reference,
    video_to_video,
)

pytestmark = pytest.mark.integration
VIDEO = {"prompt": "a red fox running", "negative_prompt": "blurry", "size": "64x64", "seed": 5, "steps": 2}


REFERENCE = Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8))
"""image-to-video's input: resized to the video's 64x64."""
OVER_4096 = base64.b64encode(png(Image.new("L", (4097, 4097)))).decode()


@pytest.fixture(scope="module")
def client(stack):
    """The official ``openai`` client on the stack's API."""
    return openai.OpenAI(base_url=f"{stack.info.api_url}/v1", api_key="unused", timeout=300, max_retries=0)


@pytest.fixture(scope="module")
def animatediff_pipeline(diffusers_pipeline, motion_adapter):
    """diffusers' ``AnimateDiffPipeline`` over the stack's model and motion adapter: the reference."""
    return animatediff(diffusers_pipeline, motion_adapter)


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_the_openai_client_makes_a_video_that_matches_animatediff(client, api, animatediff_pipeline, scheduler):
    fields = {k: v for k, v in VIDEO.items() if k not in ("prompt", "size")}
    created = client.videos.create(
        prompt=VIDEO["prompt"], size="64x64", seconds="1", extra_body=fields | {"fps": 4, "scheduler": scheduler}
    )
    assert (created.object, created.status, created.seconds, created.size) == ("video", "queued", "1", "64x64")
    video = finished(client, created.id)
    assert (video.status, video.progress, video.model) == ("completed", 100, "easel-default")
    with av.open(io.BytesIO(client.videos.download_content(created.id).read())) as container:
        stream = container.streams.video[0]
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        assert (stream.codec_context.name, stream.average_rate, stream.width, stream.height) == ("h264", 4, 64, 64)
    got = frames(api, created.id)
    assert len(decoded) == len(got) == 4
    want = reference_frames(
        animatediff_pipeline,
        scheduler,
        4,
        5,
        prompt=VIDEO["prompt"],
        negative_prompt="blurry",
        width=64,
        height=64,
        num_inference_steps=2,
        guidance_scale=7.5,
    )
    assert min(psnr(a, b) for a, b in zip(got, want, strict=True)) >= 40


def test_the_openai_client_makes_a_video_from_an_image_that_matches_video_to_video(client, api, animatediff_pipeline):
    """image-to-video: the image uploaded as the client's file; every frame as AnimateDiffVideoToVideoPipeline's."""
    fields = {"negative_prompt": "blurry", "seed": 5, "steps": 4, "strength": 0.5, "fps": 4, "scheduler": "ddim"}
    created = client.videos.create(
        prompt=VIDEO["prompt"],
        size="64x64",
        seconds="1",
        input_reference=("reference.png", png(REFERENCE), "image/png"),
        extra_body=fields,
    )
    assert finished(client, created.id).status == "completed"
    got = frames(api, created.id)
    want = reference_frames_from(
        video_to_video(animatediff_pipeline),
        "ddim",
        REFERENCE,
        4,
        5,
        prompt=VIDEO["prompt"],
        negative_prompt="blurry",
        width=64,
        height=64,
        num_inference_steps=4,
        guidance_scale=7.5,
        strength=0.5,
    )
    assert got.shape == want.shape == (4, 64, 64, 3)
    assert min(psnr(a, b) for a, b in zip(got, want, strict=True)) >= 40


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"input_reference": base64.b64encode(b"not an image").decode()}, "input_reference"),
        ({"input_reference": "not base64!"}, "input_reference"),
        ({"input_reference": OVER_4096}, "input_reference"),
        ({"input_reference": base64.b64encode(png(REFERENCE)).decode(), "strength": 0}, "strength"),
        ({"input_reference": base64.b64encode(png(REFERENCE)).decode(), "strength": 1.5}, "strength"),
        ({"strength": 0.5}, "strength"),  # no input_reference
        ({"frames": 33}, "frames"),
        ({"seconds": 9}, "seconds"),  # 72 frames at the default 8 fps
        ({"seconds": 1, "frames": 6}, "seconds"),  # 1 s at 8 fps is 8 frames
        ({"motion_adapter": "still"}, "motion_adapter"),
        ({"loras": [{"name": "ink"}]}, "loras.0.name"),  # this stack serves no LoRAs (no --loras)
        ({"size": "60x64"}, "size"),
        ({"steps": 0}, "steps"),
        ({"interpolate": {"factor": 3}}, "interpolate.factor"),
        ({"interpolate": {"factor": 2, "interpolator": "dain"}}, "interpolate.interpolator"),
    ],
)
def test_bad_videos_are_400s_naming_the_field_and_the_stack_stays_up(api, change, field):
    answer = api.post("/v1/videos", json=VIDEO | change)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == field, answer.json()
    assert api.get("/healthz").status_code == 200


def test_a_video_and_two_stills_in_flight_together_equal_their_solo_results(api, client, stack):
    stills = [
        {"prompt": "a red heart icon", "size": "64x64", "seed": seed, "num_inference_steps": 4} for seed in (1, 2)
    ]
    solo_stills = [decode_images(api.post("/v1/images/generations", json=body)) for body in stills]
    solo_video = frames(api, finished(client, api.post("/v1/videos", json=VIDEO | {"frames": 4}).json()["id"]).id)
    video_id = api.post("/v1/videos", json=VIDEO | {"frames": 4}).json()["id"]
    together = post_together(stack.info.api_url, "/v1/images/generations", stills)
    assert finished(client, video_id).status == "completed"
    np.testing.assert_array_equal(frames(api, video_id), solo_video)
    for answer, solo in zip(together, solo_stills, strict=True):
        np.testing.assert_array_equal(decode_images(answer), solo)


def test_a_canceled_video_stops_at_its_next_step(api, client):
    video_id = api.post("/v1/videos", json=VIDEO | {"frames": 32, "steps": 150}).json()["id"]
    deadline = time.monotonic() + 60
    while api.get(f"/v1/jobs/{video_id}").json()["progress"]["step"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    canceled = api.delete(f"/v1/videos/{video_id}")
    assert canceled.status_code == 200, canceled.text
    video = finished(client, video_id, timeout_s=30)
    assert video.status == "failed" and video.error.code == "canceled"
    job = api.get(f"/v1/jobs/{video_id}").json()
    assert job["status"] == "canceled" and job["progress"]["step"] < 150
    assert api.get(f"/v1/videos/{video_id}/content").status_code == 409


def stages_seen(api, job_id: str) -> list[tuple[str, int, int]]:
    """(stage, step, total) of each progress event of a job's stream, from now until the job ends."""
    seen, event = [], None
    with api.stream("GET", f"/v1/jobs/{job_id}/events", timeout=300) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:") and event == "progress":
                data = json.loads(line.removeprefix("data:"))
                seen.append((data["stage"], data["step"], data["total"]))
            elif line.startswith("data:") and event in ("completed", "failed", "canceled"):
                break
    return seen


def test_rife_x2_and_x4_draw_the_module_s_frames_between_the_video_s_own(client, api, flownet):
    listed = api.get("/v1/upscalers").json()["interpolators"]
    assert listed == [{"name": "rife", "status": "ready", "architecture": "RIFE 4.25"}]
    body = VIDEO | {"frames": 8, "fps": 4}
    plain = finished(client, api.post("/v1/videos", json=body).json()["id"])
    drawn = frames(api, plain.id)
    net, made_with = read_flownet(flownet), {}
    for factor in (2, 4):
        made = api.post("/v1/videos", json=body | {"interpolate": {"factor": factor}}).json()
        assert (made["frames"], made["fps"]) == (7 * factor + 1, 4 * factor)
        stages = stages_seen(api, made["id"])  # its interpolation a stage of its progress, a step per pair
        assert stages[-7:] == [("interpolate", pair, 7) for pair in range(1, 8)], stages
        assert {stage for stage, _, _ in stages[:-7]} == {"denoise"}, stages
        assert finished(client, made["id"]).status == "completed"
        got = frames(api, made["id"])
        assert len(got) == 7 * factor + 1
        np.testing.assert_array_equal(got[::factor], drawn)  # the drawn frames, as drawn; RIFE's between them
        want = rife_reference(net, drawn, factor)
        assert min(psnr(got[k], want[k]) for k in range(len(got)) if k % factor) >= 40
        with av.open(io.BytesIO(client.videos.download_content(made["id"]).read())) as container:
            stream = container.streams.video[0]
            assert (len(list(container.decode(stream))), stream.average_rate) == (7 * factor + 1, 4 * factor)
        made_with[factor] = (made["id"], got)
    # the finished video interpolated afterwards: the same frames, nothing drawn again
    later = api.post(f"/v1/videos/{plain.id}/interpolate", json={"factor": 2, "interpolator": "rife"})
    assert later.status_code == 200, later.text
    assert (later.json()["frames"], later.json()["fps"], later.json()["status"]) == (15, 8, "queued")
    assert finished(client, later.json()["id"]).status == "completed"
    np.testing.assert_array_equal(frames(api, later.json()["id"]), made_with[2][1])
    again = api.post(f"/v1/videos/{made_with[4][0]}/interpolate", json={"factor": 2})
    assert (again.status_code, again.json()["error"]["param"]) == (400, "video_id"), again.text  # interpolated already
    for video_id, body, status, field in (
        ("job_" + "0" * 24, {"factor": 2}, 404, "video_id"),
        (plain.id, {"factor": 3}, 400, "factor"),
        (plain.id, {"factor": 2, "interpolator": "dain"}, 400, "interpolator"),
    ):
        refused = api.post(f"/v1/videos/{video_id}/interpolate", json=body)
        assert (refused.status_code, refused.json()["error"]["param"]) == (status, field), refused.text


def test_a_video_s_frames_are_upscaled_and_faces_restored_each_then_interpolated(client, api, flownet):
    body = VIDEO | {"frames": 4, "fps": 4}
    plain = frames(api, finished(client, api.post("/v1/videos", json=body).json()["id"]).id)
    upscaled = []
    for frame in plain:  # each frame through the upscale route: what the video's finishing must give
        image = base64.b64encode(png(Image.fromarray(frame))).decode()
        answer = api.post("/v1/images/upscale", json={"image": image, "upscaler": "general", "scale": 2})
        upscaled.append(np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.json()["data"][0]["b64_json"])))))
    finishing = {"upscale": {"upscaler": "general", "scale": 2}, "interpolate": {"factor": 2}}
    made = api.post("/v1/videos", json=body | finishing).json()
    assert (made["frames"], made["fps"], made["size"]) == (7, 8, "128x128")
    assert finished(client, made["id"]).status == "completed"
    got = frames(api, made["id"])
    assert got.shape == (7, 128, 128, 3)
    np.testing.assert_array_equal(got[::2], np.stack(upscaled))  # upscaled each, then RIFE between them
    want = rife_reference(read_flownet(flownet), np.stack(upscaled), 2)
    assert min(psnr(got[k], want[k]) for k in (1, 3, 5)) >= 40
    restored = api.post("/v1/videos", json=body | {"restore_faces": {"restorer": "face"}}).json()
    assert finished(client, restored["id"]).status == "completed"
    np.testing.assert_array_equal(frames(api, restored["id"]), plain)  # no face in these frames: each unchanged
    refused = api.post("/v1/videos", json=body | {"upscale": {"upscaler": "general", "denoise": 0.5}})
    assert (refused.status_code, refused.json()["error"]["param"]) == (400, "upscale.denoise"), refused.text
