"""Vectorize model versions on the shared stack: side by side, replaced under requests, rolled back, refused; an A/B
split over them, on HTTP and gRPC alike."""

import json
import shutil
import threading

import grpc
import pytest

from build_engines.vectorize.runtime import TRAINED_DIR
from serve.grpc_api import easel_pb2
from serve.vectorize.params import DEFAULTS, to_vector
from serve.vectorize.tiers import TIER1_FILE
from tests.integration.default_stack.test_vectorize import _val_icons

pytestmark = pytest.mark.integration

MODELS = "/v1/vectorize/models"
TIER1 = {"tier": "1", "prefer": "size"}  # tier 1's table, unchecked: its parameters decide the bytes


@pytest.fixture(scope="module")
def other_trained(tmp_path_factory):
    """A second trained set: the committed one with every tier-1 cluster mapped to vtracer's defaults."""
    folder = tmp_path_factory.mktemp("trained") / "other"
    shutil.copytree(TRAINED_DIR, folder)
    table = json.loads((folder / TIER1_FILE).read_text())
    table["params"] = [to_vector(DEFAULTS).tolist()] * len(table["params"])
    (folder / TIER1_FILE).write_text(json.dumps(table))
    return folder


def _svg(api, icon: bytes, **options) -> tuple[str, str]:
    response = api.post("/v1/vectorize", files={"file": ("i.png", icon, "image/png")}, data={**TIER1, **options})
    assert response.status_code == 200, response.text
    return response.text, response.headers["Easel-Model-Version"]


def test_versions_side_by_side_a_replace_under_requests_and_a_rollback(api, other_trained):
    icon = _val_icons(1)[0]
    first, version = _svg(api, icon)
    assert version == "1" and [v["version"] for v in api.get(MODELS).json()["data"]] == [1]
    added = api.post(MODELS, json={"trained_dir": str(other_trained)})
    assert added.status_code == 200, added.text
    assert added.json()["version"] == 2 and not added.json()["current"]
    assert _svg(api, icon) == (first, "1")  # not current: only asked for by number
    other, version = _svg(api, icon, model_version="2")
    assert version == "2" and other != first
    statuses, stop = [], threading.Event()

    def load() -> None:
        while not stop.is_set():
            statuses.append(api.post("/v1/vectorize", files={"file": ("i.png", icon, "image/png")}).status_code)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        replaced = api.put(MODELS, json={"trained_dir": str(other_trained)})
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert replaced.status_code == 200 and replaced.json()["version"] == 3 and replaced.json()["current"]
    assert statuses and set(statuses) == {200}  # nothing in flight dropped
    assert _svg(api, icon) == (other, "3")
    rolled_back = api.put(MODELS, json={"version": 1})
    assert rolled_back.status_code == 200 and rolled_back.json()["current"]
    assert _svg(api, icon) == (first, "1")  # the old version's bytes again
    assert api.delete(f"{MODELS}/1").status_code == 409  # the current one
    for version in (2, 3):
        assert api.delete(f"{MODELS}/{version}").status_code == 200
    assert [v["version"] for v in api.get(MODELS).json()["data"]] == [1]


def test_bad_version_changes_are_400s_naming_the_field_and_install_nothing(api, stack, other_trained, tmp_path):
    repository = stack.options.repository
    before = sorted(p.name for p in repository.iterdir())
    broken = tmp_path / "broken"
    shutil.copytree(other_trained, broken)
    (broken / TIER1_FILE).write_text("{not json")
    response = api.post(MODELS, json={"trained_dir": str(broken)})
    assert response.status_code == 400 and response.json()["error"]["param"] == "trained_dir"
    assert "tier1.json" in response.json()["error"]["message"]
    assert sorted(p.name for p in repository.iterdir()) == before
    unknown = api.post(
        "/v1/vectorize", files={"file": ("i.png", _val_icons(1)[0], "image/png")}, data={"model_version": "9"}
    )
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "model_version"
    assert api.put(MODELS, json={"version": 9}).json()["error"]["param"] == "version"
    assert [v["version"] for v in api.get(MODELS).json()["data"]] == [1]


def test_two_versions_under_a_50_50_split_each_user_keeps_its_version_over_http_and_grpc(api, easel, other_trained):
    icon = _val_icons(1)[0]
    added = api.post(MODELS, json={"trained_dir": str(other_trained)}).json()["version"]
    variants = {"vectorize.v1": 0.5, f"vectorize.v{added}": 0.5}
    missing = api.put("/v1/experiments/vab", json={"policy": "split", "variants": {"vectorize.v99": 1.0}})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "variants"
    assert api.put("/v1/experiments/vab", json={"policy": "split", "variants": variants}).status_code == 200
    try:
        served = {}
        for user in [f"user-{i}" for i in range(24)] * 2:
            response = api.post(
                "/v1/vectorize",
                files={"file": ("i.png", icon, "image/png")},
                data={**TIER1, "experiment": "vab", "user": user},
                headers={"Accept": "application/json"},
            )
            assert response.status_code == 200 and response.headers["Easel-Experiment"] == "vab"
            body = response.json()
            assert str(body["model_version"]) == response.headers["Easel-Model-Version"] and body["id"]
            assert served.setdefault(user, body["model_version"]) == body["model_version"]  # sticky
        assert 6 <= list(served.values()).count(added) <= 18  # about half of 24 users
        for user in list(served)[:8]:  # gRPC: the same Vectorizing, the same assignment
            message = easel_pb2.VectorizeRequest(image=icon, **TIER1, experiment="vab", user=user)
            reply = easel.Vectorize(message, timeout=60)
            assert (reply.model_version, reply.experiment) == (served[user], "vab") and reply.id.startswith("img_")
        rated = easel.Feedback(easel_pb2.FeedbackRequest(image_id=reply.id, rating=5), timeout=30)
        assert (rated.model, rated.experiment) == (f"vectorize.v{reply.model_version}", "vab")
        with pytest.raises(grpc.RpcError) as refused:
            easel.Vectorize(easel_pb2.VectorizeRequest(image=icon, experiment="no-such"), timeout=30)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details().startswith("experiment:"), refused.value.details()
    finally:
        api.delete("/v1/experiments/vab")
        api.delete(f"{MODELS}/{added}")
    assert [v["version"] for v in api.get(MODELS).json()["data"]] == [1]
