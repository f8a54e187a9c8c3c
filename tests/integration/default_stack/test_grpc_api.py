"""Easel's public gRPC API (``easel.v1.Easel``) through Ray Serve's gRPC proxy: the HTTP API's answers, streamed."""

import base64
import io
import time
import zipfile

import grpc
import numpy as np
import pytest
from PIL import Image

from serve.grpc_api import easel_pb2
from serve.paths import ICONS_DEV
from tests.bad_requests import BAD_GENERATIONS, as_message, deeply_nested
from tests.images import dev_icon_png
from tests.integration.conftest import assert_unet_goes_quiet

pytestmark = pytest.mark.integration

REQUEST = {"prompt": "a blue star icon", "size": "64x64", "num_inference_steps": 5, "seed": 11, "scheduler": "euler"}


def test_generate_streams_one_progress_event_per_step_then_the_http_api_s_image(api, easel):
    events = list(easel.Generate(easel_pb2.GenerateRequest(**REQUEST), timeout=120))
    progress = [(e.progress.step, e.progress.total) for e in events if e.WhichOneof("event") == "progress"]
    assert progress == [(step, 5) for step in range(1, 6)]
    assert [e.WhichOneof("event") for e in events][-1] == "result" and len(events) == 6
    result = events[-1].result
    over_http = api.post("/v1/images/generations", json=REQUEST).json()
    assert result.seed == over_http["seed"] == 11 and len(result.images) == 1
    assert result.images[0].data == base64.b64decode(over_http["data"][0]["b64_json"])  # byte-identical PNG
    assert result.images[0].data.startswith(b"\x89PNG")


def test_svg_output_carries_tier_and_ssim(easel):
    request = easel_pb2.GenerateRequest(**REQUEST, output_format="svg", vectorize_tier="1")
    image = list(easel.Generate(request, timeout=120))[-1].result.images[0]
    assert image.data.startswith(b"<svg") or b"<svg" in image.data[:200]
    assert image.tier == "1" and 0 < image.ssim <= 1


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt": "x", "size": "13x13"}, "size"),
        ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps"),
        ({"prompt": "x", "scheduler": "nope"}, "scheduler"),
        ({"size": "64x64"}, "prompt"),
    ],
)
def test_bad_input_is_invalid_argument_naming_the_field(easel, fields, field):
    with pytest.raises(grpc.RpcError) as refused:
        list(easel.Generate(easel_pb2.GenerateRequest(**fields), timeout=30))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith(f"{field}:"), refused.value.details()


@pytest.mark.parametrize(("body", "field"), BAD_GENERATIONS)
def test_the_http_api_s_bad_input_is_invalid_argument_naming_the_same_field(easel, body, field):
    with pytest.raises(grpc.RpcError) as refused:
        list(easel.Generate(as_message(body), timeout=30))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert refused.value.details().startswith(f"{field}:"), refused.value.details()
    assert " object at 0x" not in refused.value.details()


def test_a_mapping_nested_past_any_parser_s_limit_is_invalid_argument(easel):
    message = easel_pb2.GenerateRequest(prompt="x", ip_adapter_image=b"i", ip_adapter_scale_json=deeply_nested())
    with pytest.raises(grpc.RpcError) as refused:
        list(easel.Generate(message, timeout=30))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert refused.value.details().startswith("ip_adapter_scale_json:"), refused.value.details()


def test_a_stream_its_client_cancels_stops_its_generation(stack, easel):
    long = easel_pb2.GenerateRequest(prompt="x", size="256x256", n=4, num_inference_steps=150, seed=1)
    call = easel.Generate(long, timeout=300)
    assert next(call).WhichOneof("event") == "progress"
    call.cancel()
    assert_unet_goes_quiet(stack)


def test_vectorize_answers_what_the_http_api_does(api, easel):
    icon = dev_icon_png(ICONS_DEV / "val")
    reply = easel.Vectorize(easel_pb2.VectorizeRequest(image=icon, tier="1", validate=True), timeout=60)
    over_http = api.post(
        "/v1/vectorize",
        files={"file": ("icon.png", icon, "image/png")},
        data={"tier": "1", "validate": "true"},
        headers={"Accept": "application/json"},
    ).json()
    assert reply.svg == over_http["svg"] and reply.tier == over_http["tier"] == "1"
    assert reply.ssim == pytest.approx(over_http["ssim"])
    with pytest.raises(grpc.RpcError) as refused:
        easel.Vectorize(easel_pb2.VectorizeRequest(image=b"not an image"), timeout=30)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_analyze_answers_what_the_http_api_does(api, easel):
    icon = dev_icon_png(ICONS_DEV / "val")
    reply = easel.Analyze(easel_pb2.VectorizeRequest(image=icon, tier="2"), timeout=60)
    over_http = api.post("/v1/vectorize/analyze", files={"file": ("icon.png", icon, "image/png")}, data={"tier": "2"})
    found = over_http.json()
    assert reply.tier == found["tier"] and reply.image_class == found["image_class"] and reply.why == found["why"]
    assert reply.class_confidence == pytest.approx(found["class_confidence"])
    assert {tier: p.ssim for tier, p in reply.predicted.items()} == pytest.approx(
        {tier: p["ssim"] for tier, p in found["predicted"].items()}
    )
    with pytest.raises(grpc.RpcError) as refused:
        easel.Analyze(easel_pb2.VectorizeRequest(image=b"not an image"), timeout=30)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


VIDEO = {"prompt": "a red fox running", "size": "64x64", "seed": 5, "steps": 2, "frames": 4, "fps": 4}


def pngs_in(archive_bytes: bytes) -> np.ndarray:
    """A video's frames variant (PNGs in a zip) as (F, H, W, 3) uint8."""
    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as archive:
        return np.stack([np.asarray(Image.open(io.BytesIO(archive.read(n)))) for n in sorted(archive.namelist())])


def over(easel, video_id: str, timeout_s: float = 120.0) -> easel_pb2.Video:
    """The video once it is over (polled with ``GetVideo``)."""
    deadline, asked = time.monotonic() + timeout_s, easel_pb2.VideoId(video_id=video_id)
    while (video := easel.GetVideo(asked, timeout=30)).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline, f"video {video_id} still {video.status}"
        time.sleep(0.2)
    return video


def test_a_video_made_over_grpc_is_the_http_api_s_video_and_bad_input_names_the_field(api, easel):
    made = easel.CreateVideo(easel_pb2.VideoRequest(**VIDEO), timeout=60)
    over_http = api.post("/v1/videos", json=VIDEO).json()["id"]
    assert (made.status, made.frames, made.fps, made.seed, made.size) == ("queued", 4, 4, 5, "64x64")
    video, deadline = over(easel, made.id), time.monotonic() + 120
    assert (video.status, video.progress, video.model) == ("completed", 100, "easel-default")
    mp4 = easel.GetVideoContent(easel_pb2.VideoContentRequest(video_id=made.id), timeout=60)
    assert mp4.content_type == "video/mp4" and mp4.data == api.get(f"/v1/videos/{made.id}/content").content
    while api.get(f"/v1/videos/{over_http}").json()["status"] in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    frames = easel.GetVideoContent(easel_pb2.VideoContentRequest(video_id=made.id, variant="frames"), timeout=60)
    http_frames = api.get(f"/v1/videos/{over_http}/content", params={"variant": "frames"}).content
    np.testing.assert_array_equal(pngs_in(frames.data), pngs_in(http_frames))  # the same seed's video, to the pixel
    with pytest.raises(grpc.RpcError) as refused:
        easel.CreateVideo(easel_pb2.VideoRequest(**VIDEO | {"frames": 33}), timeout=30)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("frames:"), refused.value.details()


def test_an_interpolated_video_made_over_grpc_has_the_factor_s_frames_and_fps(easel):
    asked = easel_pb2.VideoRequest(**VIDEO, interpolate=easel_pb2.Interpolate(factor=2, interpolator="rife"))
    made = easel.CreateVideo(asked, timeout=60)
    assert (made.frames, made.fps) == (7, 8)
    assert over(easel, made.id).status == "completed"
    frames = easel.GetVideoContent(easel_pb2.VideoContentRequest(video_id=made.id, variant="frames"), timeout=60)
    assert len(pngs_in(frames.data)) == 7
    with pytest.raises(grpc.RpcError) as refused:
        easel.CreateVideo(easel_pb2.VideoRequest(**VIDEO, interpolate=easel_pb2.Interpolate(factor=3)), timeout=30)
    assert refused.value.details().startswith("interpolate.factor"), refused.value.details()
    plain = easel.CreateVideo(easel_pb2.VideoRequest(**VIDEO), timeout=60)
    assert over(easel, plain.id).status == "completed"
    asked = easel_pb2.InterpolateVideoRequest(video_id=plain.id, interpolate=easel_pb2.Interpolate(factor=2))
    later = easel.InterpolateVideo(asked, timeout=60)  # the finished video's frames: the same as asked at once
    assert (later.frames, later.fps) == (7, 8) and over(easel, later.id).status == "completed"
    again = easel.GetVideoContent(easel_pb2.VideoContentRequest(video_id=later.id, variant="frames"), timeout=60)
    np.testing.assert_array_equal(pngs_in(again.data), pngs_in(frames.data))


def test_an_image_to_video_made_over_grpc_is_the_http_api_s_and_a_bad_image_names_the_field(api, easel):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(buffer, "PNG")
    made = easel.CreateVideo(
        easel_pb2.VideoRequest(**VIDEO, input_reference=buffer.getvalue(), strength=0.5), timeout=60
    )
    reference = base64.b64encode(buffer.getvalue()).decode()
    over_http = api.post("/v1/videos", json=VIDEO | {"input_reference": reference, "strength": 0.5}).json()["id"]
    assert over(easel, made.id).status == "completed" and over(easel, over_http).status == "completed"
    frames = easel.GetVideoContent(easel_pb2.VideoContentRequest(video_id=made.id, variant="frames"), timeout=60)
    http_frames = api.get(f"/v1/videos/{over_http}/content", params={"variant": "frames"}).content
    np.testing.assert_array_equal(pngs_in(frames.data), pngs_in(http_frames))
    with pytest.raises(grpc.RpcError) as refused:
        easel.CreateVideo(easel_pb2.VideoRequest(**VIDEO, input_reference=b"not an image"), timeout=30)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("input_reference:"), refused.value.details()


def test_a_video_canceled_over_grpc_stops_and_has_no_content(api, easel):
    made = easel.CreateVideo(easel_pb2.VideoRequest(**VIDEO | {"frames": 32, "steps": 150}), timeout=60)
    deadline = time.monotonic() + 60
    while api.get(f"/v1/jobs/{made.id}").json()["progress"]["step"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    easel.CancelVideo(easel_pb2.VideoId(video_id=made.id), timeout=30)
    video = over(easel, made.id, timeout_s=30)
    assert video.status == "failed" and video.error.code == "canceled"
    assert api.get(f"/v1/jobs/{made.id}").json()["progress"]["step"] < 150
    with pytest.raises(grpc.RpcError) as refused:
        easel.GetVideoContent(easel_pb2.VideoContentRequest(video_id=made.id), timeout=30)
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION, refused.value.details()
    with pytest.raises(grpc.RpcError) as refused:
        easel.GetVideo(easel_pb2.VideoId(video_id="no-such-video"), timeout=30)
    assert refused.value.code() is grpc.StatusCode.NOT_FOUND, refused.value.details()
