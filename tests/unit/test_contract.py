"""The OpenAPI document says what the API does: its statuses, the one error body, every request body."""

import json

from serve import errors
from serve.app import api
from serve.routes import ROUTES, route
from serve.text_to_image.schema import GenerationRequest
from serve.vectorize.schema import VectorizeJson

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
