"""The video job's gRPC messages: the HTTP API's ``VideoRequest`` and video object, and a Gateway method per RPC."""

import base64
from dataclasses import replace

import pytest

from serve.errors import InvalidInput
from serve.grpc_api import easel_pb2
from serve.grpc_api.videos import content_request, video_id, video_reply, video_request
from serve.jobs.model import Job, JobStatus, Stage
from serve.priority import Priority
from serve.protocol.video import DEFAULT_FPS, VideoGeneration
from serve.serving.videos import VARIANTS, video_object


def test_unset_fields_take_the_http_api_s_defaults_and_set_ones_travel():
    request = video_request(easel_pb2.VideoRequest(prompt="a fox", seconds=1, seed=0))
    assert (request.prompt, request.seconds, request.frames, request.seed) == ("a fox", 1, None, 0)
    assert request.fps == DEFAULT_FPS and request.frame_count == DEFAULT_FPS and request.loras == []
    message = easel_pb2.VideoRequest(prompt="x", frames=4, fps=4, steps=2, scheduler="euler", size="64x64")
    message.loras.add(name="ink", scale=0.5)
    request = video_request(message)
    assert (request.frame_count, request.steps, request.scheduler, request.size) == (4, 2, "euler", "64x64")
    assert [(lora.name, lora.scale) for lora in request.loras] == [("ink", 0.5)]


def test_an_input_reference_travels_as_bytes_and_is_the_http_api_s_base64():
    png = b"\x89PNG\r\n\x1a\n not decoded here"
    request = video_request(easel_pb2.VideoRequest(prompt="x", input_reference=png, strength=0.5))
    assert request.input_reference == base64.b64encode(png).decode() and request.strength == 0.5
    assert video_request(easel_pb2.VideoRequest(prompt="x")).input_reference is None


def test_references_and_an_identity_travel_as_a_generation_s_and_become_the_video_s_generation():
    png = b"\x89PNG\r\n\x1a\n not decoded here"
    message = easel_pb2.VideoRequest(prompt="x", frames=4, identity=easel_pb2.Identity(image=png, strength=0.7))
    message.ip_adapters.add(name="ip", images=[png], references=["ref_" + "0" * 24], scale=0.5)
    request = video_request(message)
    (choice,) = request.ip_adapters
    assert (choice.name, choice.images, choice.references, choice.scale) == (
        "ip",
        [base64.b64encode(png).decode()],
        ["ref_" + "0" * 24],
        0.5,
    )
    assert request.identity.image == base64.b64encode(png).decode() and request.identity.strength == 0.7
    family = type("Family", (), {"motion_adapters": ("wave",), "pipeline_class": "StableDiffusionPipeline"})
    family.animates_images = False
    drawn = request.generation("easel-default", 64, family)
    assert drawn.ip_adapters == request.ip_adapters and drawn.identity == request.identity


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (easel_pb2.VideoRequest(prompt="x", frames=33), "frames"),
        (easel_pb2.VideoRequest(prompt="x", seconds=1, frames=6), "seconds"),  # 1 s at 8 fps is 8 frames
        (easel_pb2.VideoRequest(prompt="x", steps=0), "steps"),
        (easel_pb2.VideoRequest(prompt="x", scheduler="nope"), "scheduler"),
        (easel_pb2.VideoRequest(seconds=1), "prompt"),
        (easel_pb2.VideoRequest(prompt="x", strength=0.5), "strength"),  # only with an input_reference
        (easel_pb2.VideoRequest(prompt="x", input_reference=b"x", strength=1.5), "strength"),
    ],
)
def test_bad_fields_are_invalid_input_naming_the_field(message, field):
    with pytest.raises(InvalidInput) as refused:
        video_request(message)
    assert refused.value.field == field and refused.value.message.startswith(f"{field}:"), refused.value.message


def test_content_is_the_mp4_unless_frames_are_asked_and_another_variant_is_refused():
    variants = tuple(VARIANTS)
    assert content_request(easel_pb2.VideoContentRequest(video_id="job-1"), variants) == ("job-1", "video")
    asked = easel_pb2.VideoContentRequest(video_id="job-1", variant="frames")
    assert content_request(asked, variants) == ("job-1", "frames")
    with pytest.raises(InvalidInput) as refused:
        content_request(easel_pb2.VideoContentRequest(video_id="job-1", variant="gif"), variants)
    assert refused.value.field == "variant" and refused.value.message.startswith("variant:")
    assert video_id(easel_pb2.VideoId(video_id="job-2"), "GetVideo") == "job-2"


def test_the_reply_is_openai_s_video_object_its_unset_parts_left_unset():
    stored = VideoGeneration(
        prompt="a fox", model="easel-default", size="64x64", frames=4, fps=8, motion_adapter="wave", seed=5
    ).model_dump(mode="json")
    canceled = Job("job-1", JobStatus.CANCELED, Priority.NORMAL, stored, 1.7e9, step=1, total=2)
    reply = video_reply(video_object(canceled))
    assert (reply.id, reply.status, reply.progress, reply.frames, reply.seed) == ("job-1", "failed", 50, 4, 5)
    assert (reply.seconds, reply.size, reply.model) == ("0.5", "64x64", "easel-default")
    assert reply.error.code == "canceled" and not reply.HasField("completed_at")
    done = video_reply(video_object(replace(canceled, status=JobStatus.SUCCEEDED, finished_at=1.7e9 + 9)))
    assert (done.status, done.progress, done.completed_at) == ("completed", 100, 1_700_000_009)
    assert not done.HasField("error")


def test_a_video_s_progress_counts_its_interpolation_as_a_stage_after_its_denoising():
    """OpenAI's percent: denoising then interpolating, each half; a finished video's interpolation, the whole."""
    asked = {"prompt": "a fox", "size": "64x64", "frames": 4, "fps": 8, "motion_adapter": "wave", "seed": 5}
    interpolated = VideoGeneration(**asked, interpolate={"factor": 2}).model_dump(mode="json")
    job = Job("job-1", JobStatus.RUNNING, Priority.NORMAL, interpolated, 1.7e9, step=2, total=4)
    assert video_object(job)["progress"] == 25
    assert video_object(replace(job, step=4))["progress"] == 50
    assert video_object(replace(job, step=1, total=3, stage=Stage.INTERPOLATE))["progress"] == 66
    again = VideoGeneration(**asked, interpolate={"factor": 2}, source_video="job-0").model_dump(mode="json")
    assert video_object(replace(job, request=again, step=1, total=3, stage=Stage.INTERPOLATE))["progress"] == 33
    plain = replace(job, request=VideoGeneration(**asked).model_dump(mode="json"))
    assert video_object(plain)["progress"] == 50


def test_the_gateway_answers_every_rpc_by_its_servicer_streaming_where_the_proto_streams():
    import inspect

    from serve.gateway import Gateway
    from serve.grpc_api.servicer import Servicer

    methods = easel_pb2.DESCRIPTOR.services_by_name["Easel"].methods
    assert {"CreateVideo", "GetVideo", "GetVideoContent", "CancelVideo"} <= {method.name for method in methods}
    for method in methods:  # Ray Serve's proxy calls the deployment's method by the RPC's name
        for answering in (Gateway.func_or_class, Servicer):
            call = getattr(answering, method.name)
            assert inspect.isasyncgenfunction(call) is method.server_streaming, (answering, method.name)
            assert inspect.isasyncgenfunction(call) or inspect.iscoroutinefunction(call)
