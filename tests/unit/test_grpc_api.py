"""The gRPC API's messages: the HTTP API's validation and defaults, generated code that matches the proto."""

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import yaml
from ray._common.utils import import_attr

from serve.errors import InvalidInput, NotReady
from serve.grpc_api import easel_pb2
from serve.grpc_api import messages as grpc_api
from serve.grpc_api.messages import generation_request, vectorize_options
from serve.paths import PROJECT_ROOT, SERVE_CONFIG
from serve.routes import ROUTES, rpc_route
from serve.vectorize.deployment import VectorizeResult
from tests.bad_requests import deeply_nested

PROTO = Path("serve/grpc_api/easel.proto")


def test_unset_fields_take_the_http_api_s_defaults():
    request = generation_request(easel_pb2.GenerateRequest(prompt="a fox", seed=7))
    assert (request.prompt, request.seed, request.n, request.num_inference_steps) == ("a fox", 7, 1, 20)
    assert request.scheduler == "ddim" and request.output_format == "png" and request.size is None
    assert generation_request(easel_pb2.GenerateRequest(prompt="x", seed=0)).seed == 0  # set, though the zero value
    assert request.approximate_cache is None  # unset: the stack's default for a request without a seed
    for asked in (True, False):
        message = easel_pb2.GenerateRequest(prompt="x", approximate_cache=asked)
        assert generation_request(message).approximate_cache is asked
    options = vectorize_options(easel_pb2.VectorizeRequest(image=b"png", tier="1", validate=True))
    assert options.tier == "1" and options.validate_output is True


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (easel_pb2.GenerateRequest(prompt="x", size="13x13"), "size"),
        (easel_pb2.GenerateRequest(prompt="x", n=99), "n"),
        (easel_pb2.GenerateRequest(prompt="x", seed=2**63 + 5), "seed"),
        (easel_pb2.GenerateRequest(size="64x64"), "prompt"),
        (easel_pb2.GenerateRequest(prompt="x", vectorize_tier="1"), "vectorize_tier"),
        (easel_pb2.GenerateRequest(prompt="x", loras=[easel_pb2.Lora(name="a", scale=9)]), "loras.0.scale"),
        (
            easel_pb2.GenerateRequest(prompt="x", ip_adapter_image=b"i", ip_adapter_scale_json="{"),
            "ip_adapter_scale_json",
        ),
        (
            easel_pb2.GenerateRequest(prompt="x", ip_adapter_image=b"i", ip_adapter_scale_json=deeply_nested()),
            "ip_adapter_scale_json",
        ),
        (easel_pb2.GenerateRequest(prompt="x", size="0064x0064"), "size"),
        (easel_pb2.GenerateRequest(prompt="x", prompts=[easel_pb2.Prompt(prompt="y")]), "prompts"),
        (easel_pb2.GenerateRequest(prompts=[easel_pb2.Prompt(prompt="y", seed=2**63)]), "prompts.0.seed"),
    ],
)
def test_bad_fields_are_invalid_argument_naming_the_field(message, field):
    with pytest.raises(InvalidInput) as refused:
        generation_request(message)
    assert refused.value.field == field and refused.value.message.startswith(f"{field}:")
    assert refused.value.grpc_code is grpc.StatusCode.INVALID_ARGUMENT


def test_many_prompts_travel_as_the_http_api_s_prompts():
    prompts = [easel_pb2.Prompt(prompt="a fox", seed=3), easel_pb2.Prompt(prompt="a cat")]
    request = generation_request(easel_pb2.GenerateRequest(prompts=prompts, seed=10))
    assert request.prompt is None and [(p.prompt, p.seed) for p in request.prompts] == [("a fox", 3), ("a cat", None)]
    assert [(single.prompt, single.seed) for single in request.singles(10)] == [("a fox", 3), ("a cat", 11)]


def test_adapters_travel_as_the_http_api_s_fields():
    message = easel_pb2.GenerateRequest(
        prompt="x",
        loras=[easel_pb2.Lora(name="style", scale=0.5), easel_pb2.Lora(name="line")],
        ip_adapter_image=b"png bytes",
        ip_adapter_scale_json='{"up": {"block_0": [0.0, 1.0, 0.0]}}',
    )
    request = generation_request(message)
    assert [(lora.name, lora.scale) for lora in request.loras] == [("style", 0.5), ("line", 1.0)]
    assert request.ip_adapter_image == "cG5nIGJ5dGVz" and request.ip_adapter_scale == {"up": {"block_0": [0, 1, 0]}}


def test_a_vectorize_experiment_and_user_travel_as_the_http_api_s_fields_and_the_reply_names_them():
    message = easel_pb2.VectorizeRequest(image=b"png", experiment="vab", user="ana")
    options = vectorize_options(message)
    assert (options.experiment, options.user) == ("vab", "ana")
    assert vectorize_options(easel_pb2.VectorizeRequest(image=b"png")).experiment is None
    with pytest.raises(InvalidInput) as refused:
        vectorize_options(easel_pb2.VectorizeRequest(image=b"png", experiment=""))
    assert refused.value.field == "experiment" and refused.value.grpc_code is grpc.StatusCode.INVALID_ARGUMENT
    result = VectorizeResult("<svg/>", "1", "1", "asked", None, {}, None, None, False, 6, 0, None, 2)
    assert not grpc_api.vectorize_reply(result).HasField("experiment")  # no experiment chose the version
    reply = grpc_api.vectorize_reply(replace(result, id="img_1", experiment="vab"))
    assert (reply.experiment, reply.id, reply.model_version) == ("vab", "img_1", 2)


def test_the_result_says_the_steps_the_approximate_cache_skipped_only_when_it_was_asked():
    assert grpc_api.result(3, [], "easel-default", steps_skipped=5).result.steps_skipped == 5
    asked = grpc_api.result(3, [], "easel-default", steps_skipped=0).result
    assert asked.HasField("steps_skipped") and asked.model == "easel-default"  # asked, nothing similar kept
    assert not grpc_api.result(3, [], "easel-default").result.HasField("steps_skipped")


def test_a_failure_sets_the_error_s_status_and_ends_the_call():
    class Context:
        def set_code(self, code):
            self.code = code

        def set_details(self, details):
            self.details = details

    from serve.grpc_api.messages import fail

    context, error = Context(), NotReady("Triton is restarting", retry_after_s=2)
    with pytest.raises(NotReady):
        fail(context, error)
    assert context.code is grpc.StatusCode.UNAVAILABLE and context.details == "Triton is restarting"


def test_the_generated_code_is_what_the_proto_makes(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", ".", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}"]
        + [f"--grpc_python_out={tmp_path}", str(PROTO)],
        cwd=PROJECT_ROOT,
        check=True,
    )
    for name in ("easel_pb2.py", "easel_pb2.pyi", "easel_pb2_grpc.py"):
        generated = (tmp_path / PROTO.parent / name).read_text()
        assert generated == (PROJECT_ROOT / PROTO.parent / name).read_text(), f"{name} is stale: regenerate it"


def test_the_serve_config_registers_the_servicer():
    functions = yaml.safe_load(SERVE_CONFIG.read_text())["grpc_options"]["grpc_servicer_functions"]
    assert [import_attr(f).__name__ for f in functions] == ["add_EaselServicer_to_server"]


def test_every_rpc_shares_one_http_route_s_scope_and_limits():
    methods = {method.name for method in easel_pb2.DESCRIPTOR.services_by_name["Easel"].methods}
    assert methods == {route.rpc for route in ROUTES if route.rpc is not None}
    assert rpc_route("Generate").path == "/v1/images/generations" and rpc_route("Vectorize").path == "/v1/vectorize"


def test_the_grpc_proxy_keeps_each_method_s_message_unparsed_and_bounded_by_its_http_route(monkeypatch):
    """Ray Serve's proxy took 2 GiB messages and parsed them before the key was checked."""
    from types import SimpleNamespace

    import grpc
    from ray.serve._private import grpc_util

    from serve.grpc_api.messages import Unparsed
    from serve.routes import DEFAULT_BODY_LIMIT, MAX_REQUEST_BYTES, rpc_route
    from serve.vectorize.schema import MAX_UPLOAD_BYTES
    from serve.wire import GRPC_LIMITS, MAX_RECEIVE, bound_grpc_messages

    server = grpc_util.gRPCGenericServer
    for name in ("_override_method_handler", "easel_bounded"):  # restored after the test
        monkeypatch.setattr(server, name, getattr(server, name, False), raising=False)
    monkeypatch.setattr(grpc_util, "DEFAULT_GRPC_SERVER_OPTIONS", list(grpc_util.DEFAULT_GRPC_SERVER_OPTIONS))
    assert GRPC_LIMITS == {
        "/easel.v1.Easel/Generate": MAX_REQUEST_BYTES,
        "/easel.v1.Easel/Vectorize": MAX_UPLOAD_BYTES,
        "/easel.v1.Easel/Analyze": MAX_UPLOAD_BYTES,
        "/easel.v1.Easel/Feedback": DEFAULT_BODY_LIMIT,
        "/easel.v1.Easel/CreateVideo": MAX_REQUEST_BYTES,
        "/easel.v1.Easel/InterpolateVideo": DEFAULT_BODY_LIMIT,
        "/easel.v1.Easel/GetVideo": DEFAULT_BODY_LIMIT,
        "/easel.v1.Easel/GetVideoContent": DEFAULT_BODY_LIMIT,
        "/easel.v1.Easel/CancelVideo": DEFAULT_BODY_LIMIT,
    }
    assert rpc_route("Feedback").body_limit is None  # the HTTP route's default
    bound_grpc_messages()
    assert dict(grpc_util.DEFAULT_GRPC_SERVER_OPTIONS)[MAX_RECEIVE] == max(MAX_REQUEST_BYTES, MAX_UPLOAD_BYTES)
    proxy = SimpleNamespace(service_handler_factory=lambda **_: None)
    handler = grpc.unary_unary_rpc_method_handler(None, easel_pb2.FeedbackRequest.FromString)
    kept = server._override_method_handler(proxy, "/easel.v1.Easel/Feedback", handler).request_deserializer
    small = easel_pb2.FeedbackRequest(image_id="img-1", rating=5).SerializeToString()
    assert kept(small) == Unparsed(small, len(small), DEFAULT_BODY_LIMIT)
    assert kept(b"x" * (DEFAULT_BODY_LIMIT + 1)) == Unparsed(b"", DEFAULT_BODY_LIMIT + 1, DEFAULT_BODY_LIMIT)
    other = server._override_method_handler(proxy, "/ray.serve.RayServeAPIService/Healthz", handler)
    assert other.request_deserializer == easel_pb2.FeedbackRequest.FromString  # Serve's own methods: as they were


def test_a_message_is_parsed_only_by_the_gateway_and_one_over_its_limit_is_a_413_naming_it():
    from serve.errors import PayloadTooLarge
    from serve.grpc_api.messages import Unparsed, feedback_request, generation_request, vectorize_request

    data = easel_pb2.GenerateRequest(prompt="a fox", seed=7).SerializeToString()
    assert generation_request(Unparsed(data, len(data), 1 << 20)).prompt == "a fox"
    with pytest.raises(PayloadTooLarge) as refused:
        feedback_request(Unparsed(b"", 2 << 20, 1 << 20))
    assert refused.value.field == "message" and "at most 1048576" in refused.value.message
    with pytest.raises(InvalidInput, match="not a Generate request"):
        generation_request(Unparsed(b"\xff\xff\xff", 3, 1 << 20))
    image = easel_pb2.VectorizeRequest(image=b"png", prefer="size").SerializeToString()
    assert vectorize_request(Unparsed(image, len(image), 1 << 20), "Analyze")[0] == b"png"
    with pytest.raises(PayloadTooLarge, match="Analyze takes at most"):
        vectorize_request(Unparsed(b"", 2 << 20, 1 << 20), "Analyze")


def test_an_identity_travels_as_the_http_api_s_field():
    identity = easel_pb2.Identity(image=b"png bytes", face="largest", strength=0.6, adapter="faceid")
    request = generation_request(easel_pb2.GenerateRequest(prompt="x", identity=identity))
    assert request.identity.image == "cG5nIGJ5dGVz" and request.identity.face == "largest"
    assert (request.identity.strength, request.identity.adapter, request.identity.embedding) == (0.6, "faceid", None)
    embedded = generation_request(easel_pb2.GenerateRequest(prompt="x", identity={"embedding": [0.25, -0.5]}))
    assert embedded.identity.embedding == [0.25, -0.5] and embedded.identity.strength == 1.0
    posed = easel_pb2.Identity(embedding=[0.25], keypoints=b"png bytes", pose_strength=0.8, adapter="instantid")
    instantid = generation_request(easel_pb2.GenerateRequest(prompt="x", identity=posed)).identity
    assert (instantid.keypoints, instantid.pose_strength) == ("cG5nIGJ5dGVz", 0.8)  # an InstantID's, bytes as base64
