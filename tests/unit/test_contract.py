"""The OpenAPI document says what the API does: its statuses, the one error body, every request body."""

import base64
import itertools
import json
import re

import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from pydantic import ValidationError

from serve import errors
from serve.contract import IDEMPOTENCY_KEY, UNSTATED_LIMITS
from serve.errors import InvalidInput
from serve.experiments.feedback import FeedbackRequest
from serve.experiments.policy import ExperimentSpec
from serve.http.app import api
from serve.http.generations import GenerationHeaders
from serve.jobs.model import check_idempotency_key
from serve.protocol.ip_scale import IpAdapterChoice
from serve.protocol.prompt_batch import PROMPT_PATTERN
from serve.protocol.schema import GenerationRequest
from serve.protocol.sizes import SIZE_PATTERN, Outpaint
from serve.routes import ROUTES, route
from serve.serving.models import NewModel
from serve.vectorize.schema import BASE64_PATTERN, VectorizeJson
from serve.vectorize.versions import NewVersion, VersionChange

DOCUMENT = api.openapi()


def _operations():
    return [(method, path, op) for path, ops in DOCUMENT["paths"].items() for method, op in ops.items()]


def test_every_route_is_declared_and_documents_its_errors_with_the_one_error_body():
    assert {(method, path) for method, path, _ in _operations()} == {(r.method, r.path) for r in ROUTES}
    for method, path, operation in _operations():
        documented = {int(s) for s in operation["responses"] if s.startswith(("4", "5"))}
        assert documented == set(route(method, path).error_statuses), (method, path)
        for status in documented:
            schema = operation["responses"][str(status)]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Error"}


def test_fastapi_s_422_is_gone_and_every_status_easel_raises_is_documented_somewhere():
    text = json.dumps(DOCUMENT)
    assert '"422"' not in text and "HTTPValidationError" not in text
    raised = {
        cls.status for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.EaselError)
    }
    raised -= {500}  # the base class; nothing is sent as a 500
    documented = {int(s) for _, _, op in _operations() for s in op["responses"]}
    assert raised <= documented, raised - documented


def test_vectorize_documents_its_three_request_encodings():
    body = DOCUMENT["paths"]["/v1/vectorize"]["post"]["requestBody"]
    assert set(body["content"]) == {"multipart/form-data", "application/json", "image/png", "image/jpeg"}
    form = body["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["file"] and {"file", "tier", "priority", "prefer"} <= set(form["properties"])
    assert "image" in DOCUMENT["components"]["schemas"]["VectorizeJson"]["properties"]


def test_limits_are_exact_numbers():
    seed = DOCUMENT["components"]["schemas"]["GenerationRequest"]["properties"]["seed"]["anyOf"][0]
    assert seed["maximum"] == 2**63 - 1 and isinstance(seed["maximum"], int)


def test_each_model_s_enums_keep_their_own_name_in_the_document():
    """Two enums of one name would merge into one component: the generation's priority once offered "size"."""
    components = DOCUMENT["components"]["schemas"]
    for model in (GenerationRequest, VectorizeJson):
        for name, schema in model.model_json_schema(ref_template="#/components/schemas/{model}")["$defs"].items():
            assert components[name] == schema, name
    assert components["GenerationRequest"]["properties"]["priority"]["$ref"].endswith("/Priority")
    assert components["Priority"]["enum"] == ["high", "normal", "low"]
    assert components["Preference"]["enum"] == ["quality", "size"]


def _accepted(check, value) -> bool:
    try:
        check(value)
    except (ValueError, InvalidInput):
        return False
    return True


SIDES = ["0", "8", "56", "64", "064", "0064", "00064", "000064", "72", "100", "1016", "1024", "01024", "1032", "2048"]


@pytest.mark.parametrize(
    ("pattern", "check", "values"),
    [
        (
            SIZE_PATTERN,
            lambda size: GenerationRequest(prompt="x", size=size),
            [f"{w}x{h}" for w in SIDES for h in ("64", "1024")] + ["64x64\n", "\uff16\uff14x64", "64X64", " 64x64"],
        ),
        (
            PROMPT_PATTERN,
            lambda prompt: GenerationRequest(prompt=prompt),
            [chr(c) * 2 for c in range(0x3001) if chr(c) not in "()[]"] + ["\ufeff", " \x85a"],  # brackets: weighting
        ),
        (
            BASE64_PATTERN,
            lambda text: base64.b64decode(text, validate=True),
            ["".join(chars) for n in range(8) for chars in itertools.product("A+/=\n-", repeat=n)][::7] + ["é==="],
        ),
        (
            IDEMPOTENCY_KEY["pattern"],
            check_idempotency_key,
            ["k", "k" * 255, "k" * 256, "a b", "a\tb", "k\n", "~!", "\x7f", "é"],
        ),
    ],
)
def test_each_pattern_in_the_document_is_exactly_what_the_server_accepts(pattern, check, values):
    for value in values:
        assert bool(re.search(pattern, value)) == _accepted(check, value), repr(value)


def test_every_route_that_takes_an_idempotency_key_states_its_pattern_and_every_generation_checks_it():
    """A synchronous generation once took a malformed key (200): the header is checked wherever it is read."""
    taking = {
        (method, path)
        for path, operations in DOCUMENT["paths"].items()
        for method, operation in operations.items()
        for parameter in operation.get("parameters", ())
        if parameter["name"] == "Idempotency-Key" and parameter["schema"] == IDEMPOTENCY_KEY
    }
    videos = {("post", "/v1/videos"), ("post", "/v1/videos/{video_id}/interpolate")}
    assert taking == {("post", "/v1/images/generations"), ("post", "/v1/images/edits"), *videos}
    with pytest.raises(InvalidInput) as refused:
        GenerationHeaders(idempotency_key="has space")
    assert refused.value.field == "Idempotency-Key"
    assert GenerationHeaders(idempotency_key="k-1").idempotency_key == "k-1"


def test_every_limit_no_schema_states_is_documented_on_a_declared_route():
    for limit in UNSTATED_LIMITS:
        declared = route(limit.method, limit.path)
        assert declared is not None and limit.status in declared.error_statuses, limit
        description = DOCUMENT["paths"][limit.path][limit.method]["responses"][str(limit.status)]["description"]
        assert limit.limit in description and limit.why in description


def _drawn(operation) -> bool:
    """Whether schemathesis draws a request for ``operation`` (its generator models every part of its schema)."""

    @settings(max_examples=1, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(operation.as_strategy())
    def draw(case):
        assert case.operation is operation

    try:
        draw()
    except schemathesis.errors.UnsupportedSchema:
        return False
    return True


def test_schemathesis_draws_a_request_for_every_operation():
    """The contract test draws from every operation; a body its generator cannot model fails there, after minutes."""
    operations = [result.ok() for result in schemathesis.openapi.from_dict(DOCUMENT).get_all_operations()]
    assert [operation.label for operation in operations if not _drawn(operation)] == []


@pytest.mark.parametrize(
    ("model", "body", "read"),
    [
        (GenerationRequest, {"prompt": "x", "n": 2.0, "num_inference_steps": 3.0, "seed": 7.0}, "n"),
        (GenerationRequest, {"prompt": "x", "candidates": 2.0, "cache_interval": 1.0}, "candidates"),
        (GenerationRequest, {"prompt": "x", "output_compression": 50.0, "output_format": "jpeg"}, "output_compression"),
        (GenerationRequest, {"prompts": [{"prompt": "a", "seed": 1.0}, {"prompt": "b"}]}, "prompts"),
        (Outpaint, {"left": 8.0, "bottom": 16.0}, "left"),
        (FeedbackRequest, {"image_id": "img_59b70a8550e819ebf3a0789b", "rating": 5.0}, "rating"),
        (VersionChange, {"version": 2.0}, "version"),
    ],
)
def test_an_integer_field_takes_2_0_as_json_schema_counts_it_an_integer_and_refuses_true_and_text(model, body, read):
    """Issue 76: a schema-valid ``rating: 1.0`` was a 400; now every integer the document states is JSON Schema's."""
    taken = model.model_validate(body)
    value = getattr(taken, read)
    assert value == body[read] if read != "prompts" else taken.prompts[0].seed == 1
    assert read == "prompts" or type(value) is int
    for wrong in (True, "2", 2.5):
        changed = {read: wrong} if read != "prompts" else {"prompts": [{"prompt": "a", "seed": wrong}]}
        with pytest.raises(ValidationError):
            model.model_validate(body | changed)


_REMOTE = {"url": "http://127.0.0.1:9/v1", "model": "m"}
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()  # read as base64 only: never decoded here
_SHAPED = {
    NewModel: [
        ({"name": "a", "engine_dir": "/x"}, True),
        ({"name": "a", "remote": _REMOTE}, True),
        ({"name": "a", "engine_dir": "/x", "remote": None}, True),
        ({"name": "a", "engine_dir": "/x", "remote": _REMOTE}, False),
        ({"name": "a"}, False),
    ],
    VersionChange: [
        ({"trained_dir": "/t"}, True),
        ({"version": 2}, True),
        ({}, False),
        ({"trained_dir": "/t", "version": 2}, False),
    ],
    NewVersion: [({"trained_dir": "/t"}, True), ({"trained_dir": "/t", "version": 2}, False), ({}, False)],
    ExperimentSpec: [
        ({"variants": {"a": 0.5, "b": 0.5}}, True),
        ({"policy": "bandit", "variants": ["a", "b"]}, True),
        ({"policy": "bandit", "mode": "personal", "variants": ["a", "b"]}, True),
        ({"variants": ["a", "b"]}, False),
        ({"variants": {"a": 0.0, "b": 1.0}}, False),
        ({"policy": "bandit", "variants": {"a": 1.0}}, False),
        ({"policy": "bandit", "variants": ["a", "a"]}, False),
        ({"policy": "bandit", "variants": ["a"]}, False),
        ({"mode": "personal", "variants": {"a": 1.0}}, False),
    ],
    IpAdapterChoice: [
        ({"images": [PNG_B64]}, True),
        ({"references": ["ref_" + "0" * 24]}, True),
        ({"images": [], "references": []}, False),
        ({"scale": 0.5}, False),
    ],
}


@pytest.mark.parametrize(("model", "body", "valid"), [(m, b, v) for m, cases in _SHAPED.items() for b, v in cases])
def test_a_rule_across_fields_is_the_schema_s_as_it_is_the_model_s(model, body, valid):
    """Issue 76: exactly one of two fields, a policy's variants, personal's policy, an IP-Adapter's references: what
    the document states (JSON Schema, the component its operations name) is what the server takes, both ways."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}", "components": DOCUMENT["components"]}
    stated = jsonschema.Draft202012Validator(schema).is_valid(body)
    try:
        model.model_validate(body)
        taken = True
    except ValidationError:
        taken = False
    assert (stated, taken) == (valid, valid)


def test_every_costed_route_and_only_those_is_admitted_by_the_one_admission():
    """A route declared ``costed`` names :func:`serve.http.admission.admit` in its handler, which charges its cost."""
    from fastapi.routing import APIRoute

    from serve.http.admission import admit

    admitted = {
        (method.lower(), r.path)
        for r in api.routes
        if isinstance(r, APIRoute) and any(d.call is admit for d in r.dependant.dependencies)
        for method in r.methods
    }
    assert admitted == {(r.method, r.path) for r in ROUTES if r.costed}


def test_a_handler_answers_one_declared_operation_and_no_other():
    """The app adds serve.routes' operations, each its one handler's: a path not declared, or answered twice, fails."""
    from serve.http.operations import HANDLERS, answers

    with pytest.raises(LookupError, match="not an operation"):
        answers("GET", "/v1/nothing-declared")
    taken = next(iter(HANDLERS))
    with pytest.raises(LookupError, match="answered twice"):
        answers(taken.method, HANDLERS[taken][0])(lambda: None)
