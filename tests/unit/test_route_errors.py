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


@pytest.mark.parametrize("body", [b'{"prompt": "\xff\xfe"}', b"[" * 100_000 + b"]" * 100_000])
def test_an_unreadable_body_is_a_400_naming_the_body(client, body):
    response = client.post("/v1/images/generations", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and _error(response)["param"] == "body"


def test_the_docs_page_loads_nothing_from_outside(client):
    page = client.get("/docs").text
    assert "http://" not in page and "https://" not in page
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
