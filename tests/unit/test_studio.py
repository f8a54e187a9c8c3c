"""Easel Studio's page as served (the app in-process, no server): its policy, no inline script, nothing from outside."""

import re
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

from serve.http.app import api
from serve.http.studio import POLICY, STATIC, TYPES
from serve.routes import PAGES, is_open, required_scope

FILES = sorted(path.name for path in STATIC.iterdir() if path.is_file())


@pytest.fixture(scope="module")
def client():
    return TestClient(api, raise_server_exceptions=False)


class _Tags(HTMLParser):
    """Every start tag of a page, with its attributes, and whether a <script> had text inside."""

    def __init__(self) -> None:
        super().__init__()
        self.tags, self.inline, self._in_script = [], [], False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline.append(data)


def test_the_front_door_sends_a_browser_to_the_studio_and_the_page_is_open(client):
    door = client.get("/", follow_redirects=False)
    assert door.status_code == 307 and door.headers["location"] == "/studio"
    assert all(is_open(path.replace("{asset}", "main.js")) for path in PAGES)
    assert not is_open("/studios") and not is_open("/docs") and required_scope("/studio") is None
    assert {"/", "/studio", "/studio/{asset}"}.isdisjoint(api.openapi()["paths"])


def test_the_page_and_every_file_carry_the_policy_and_nothing_runs_inline_or_from_elsewhere(client):
    assert "script-src 'self'" in POLICY and "connect-src 'self'" in POLICY and "unsafe" not in POLICY
    page = client.get("/studio")
    assert page.status_code == 200 and page.headers["content-security-policy"] == POLICY
    parser = _Tags()
    parser.feed(page.text)
    assert parser.inline == []
    assert not [(tag, a) for tag, attrs in parser.tags for a in attrs if a.startswith("on") or a == "style"]
    sources = [attrs.get("src") or attrs.get("href") for tag, attrs in parser.tags if tag in ("script", "link")]
    assert sources and all(s.startswith("/studio/") or s == "data:," for s in sources), sources
    for name in FILES:
        served = client.get(f"/studio/{name}")
        assert served.status_code == 200 and served.headers["content-security-policy"] == POLICY, name
        assert served.headers["content-type"] == TYPES["." + name.rpartition(".")[2]], name
        assert served.headers["x-content-type-options"] == "nosniff"
        assert not re.search(r"https?://", served.text), f"{name} names another origin"


@pytest.mark.parametrize("name", ["nothing.js", "studio.py", "..%2fstudio.py", ".hidden.js", "index"])
def test_a_name_the_folder_does_not_hold_is_a_404_in_the_error_shape(client, name):
    response = client.get(f"/studio/{name}")
    assert response.status_code == 404 and response.json()["error"]["message"] == "no such route"


def test_every_module_the_page_imports_is_a_file_it_serves():
    text = {name: (STATIC / name).read_text() for name in FILES}
    imported = {m for body in text.values() for m in re.findall(r'from "\./([\w.]+)"', body)}
    assert imported and imported <= set(FILES), imported - set(FILES)
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", "".join(text.values()))


def test_the_page_s_grpc_call_knows_generate_request_s_fields_as_the_proto_declares_them():
    """Draw shows a gRPC call only for a body whose every field is GenerateRequest's: the page lists the proto's."""
    from serve.grpc_api import easel_pb2

    listed = re.search(r"const GRPC_FIELDS = \[(.*?)\];", (STATIC / "calls.js").read_text(), re.S).group(1)
    assert re.findall(r'"(\w+)"', listed) == list(easel_pb2.GenerateRequest.DESCRIPTOR.fields_by_name)
