"""What the framework refuses before a route runs has the one error shape (the app in-process, no server)."""

import pytest
from fastapi.testclient import TestClient

from serve.http.app import api


@pytest.fixture(scope="module")
def client():
    return TestClient(api, raise_server_exceptions=False)


def _error(response) -> dict:
    assert response.headers["content-type"] == "application/json"
    return response.json()["error"]


def test_an_unknown_route_is_a_404_in_the_error_shape(client):
    response = client.get("/v1/nothing")
    assert response.status_code == 404 and _error(response)["type"] == "not_found_error"


def test_a_missing_method_is_a_405_that_keeps_allow(client):
    response = client.put("/v1/moderations")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert _error(response) == {
        "message": "this route does not take that method",
        "type": "invalid_request_error",
        "param": None,
        "code": 405,
    }


def test_a_405_allows_every_method_of_a_path_several_routes_share(client):
    response = client.post("/v1/experiments/logo-v")
    assert response.status_code == 405 and response.headers["allow"] == "DELETE, GET, PUT"


def test_a_405_on_a_path_a_route_names_as_it_is_allows_that_route_s_methods_only(client):
    """``/v1/images/generations`` is POST's, though ``/v1/images/{image_id}`` (GET, DELETE) would match it too."""
    for path in ("/v1/images/generations", "/v1/images/rerun", "/v1/images/score"):
        response = client.options(path)
        assert response.status_code == 405 and response.headers["allow"] == "POST", path


@pytest.mark.parametrize("body", [b'{"prompt": "\xff\xfe"}', b"[" * 100_000 + b"]" * 100_000])
def test_an_unreadable_body_is_a_400_naming_the_body(client, body):
    response = client.post("/v1/images/generations", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and _error(response)["param"] == "body"


def test_the_docs_page_loads_nothing_from_outside(client):
    page = client.get("/docs").text
    assert "http://" not in page and "https://" not in page
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200


def _json_routes() -> list[tuple[str, str]]:
    """Every operation of the document whose body may be JSON (method, path with its parameters filled in)."""
    found = []
    for path, operations in api.openapi()["paths"].items():
        for method, operation in operations.items():
            if "application/json" in operation.get("requestBody", {}).get("content", {}):
                found.append((method, path.replace("{", "").replace("}", "")))
    return found


def test_every_json_route_is_known_to_the_strict_reader_s_test():
    routes = {path for _, path in _json_routes()}
    assert {"/v1/images/generations", "/v1/moderations", "/v1/references", "/v1/feedback", "/v1/models"} <= routes
    assert {"/v1/vectorize", "/v1/images/upscale", "/v1/videos", "/v1/experiments/name"} <= routes


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "utf-8-sig"])
def test_every_json_route_refuses_a_body_not_in_utf_8_with_a_400_naming_the_body(client, encoding, monkeypatch):
    """One strict reader for every JSON body: those FastAPI validates too (moderations took UTF-16 before)."""
    from types import SimpleNamespace

    from serve.serving.vectorize import Vectorizing

    monkeypatch.setattr(api.state, "gateway", SimpleNamespace(vectorizing=Vectorizing(None, None)), raising=False)
    body = '{"prompt": "a fox", "input": "a fox", "name": "x"}'.encode(encoding)
    for method, path in _json_routes():
        response = client.request(method, path, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, (method, path, response.text)
        assert _error(response)["param"] == "body" and "UTF-8" in _error(response)["message"], (method, path)


def test_a_json_body_nested_deeper_than_the_reader_s_bound_is_a_400_naming_the_body(client):
    from serve.wire import MAX_JSON_DEPTH

    deep = b'{"input": ' + b"[" * 2 * MAX_JSON_DEPTH + b"]" * 2 * MAX_JSON_DEPTH + b"}"
    response = client.post("/v1/moderations", content=deep, headers={"content-type": "application/json"})
    assert response.status_code == 400 and _error(response)["param"] == "body"
    assert str(MAX_JSON_DEPTH) in _error(response)["message"]
