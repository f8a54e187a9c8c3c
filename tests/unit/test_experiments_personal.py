"""Preferences per user without a server: the personal bandit, and the routes that show and delete what it learned.

The bandits run through the real SQLite store, as a Gateway replica runs them; the routes through the app in-process,
behind the real key check (keys in a SQLite key store).
"""

import random
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from serve.access import ACCESS
from serve.access.keys import KeyLimits
from serve.access.sqlite import SqliteKeyStore
from serve.errors import invalid_input
from serve.experiments.feedback import FeedbackRequest, new_image_id
from serve.experiments.policy import ExperimentSpec, Mode, Policy
from serve.experiments.sqlite import SqliteExperimentStore
from serve.experiments.traffic import Experiments
from serve.http.app import api
from serve.routes import Scope
from serve.serving.experiments import ExperimentsAndFeedback
from tests.tenant_matrix import UNKNOWN, row_id, rows

SERVED = {"v1", "v2", "v3"}
LIKED = {"ann": "v1", "bob": "v2"}  # two users with opposite, fixed preferences
RATED = 200  # rated requests per user
LAST = 50  # the draws judged: each user's last


@pytest.fixture
def experiments(tmp_path):
    store = SqliteExperimentStore(f"sqlite:///{tmp_path / 'easel.db'}")
    yield Experiments(store, lambda: SERVED, random.Random(3))
    store.close()


def _served_and_rated(experiments: Experiments, name: str, user: str, owner: str | None, reward) -> str:
    """One request of ``user`` (key ``owner``) to experiment ``name``, its image rated ``reward(variant)``."""
    assignment = experiments.assign(name, user, owner)
    image = new_image_id()
    experiments.record([image], assignment, owner, ["ink"], "ddim")
    experiments.rate(FeedbackRequest(image_id=image, reward=float(reward(assignment.model))), lambda _: True)
    return assignment.model


def _simulated(experiments: Experiments, mode: Mode, owner: str | None) -> dict[str, float]:
    """Each user's share of their last 50 draws that went to their preferred variant, after 200 rated requests."""
    experiments.define("art", ExperimentSpec(policy=Policy.BANDIT, mode=mode, variants=["v1", "v2"]))
    hits = {user: [] for user in LIKED}
    for _ in range(RATED):
        for user, liked in LIKED.items():  # the two users' requests interleaved
            model = _served_and_rated(experiments, "art", user, owner, lambda variant, liked=liked: variant == liked)
            hits[user].append(model == liked)
    return {user: sum(hit[-LAST:]) / LAST for user, hit in hits.items()}


@pytest.mark.parametrize("owner", [None, "key-1"], ids=["open-api", "one-key"])
def test_a_personal_bandit_learns_each_user_s_preference_where_a_pooled_one_stays_near_50_50(experiments, owner):
    """Acceptance (issue 64): >= 80 % of each user's last 50 draws to their variant; pooled, 35-65 % of both users'."""
    personal = _simulated(experiments, Mode.PERSONAL, owner)
    assert all(share >= 0.8 for share in personal.values()), personal
    experiments.store.delete("art")
    pooled = _simulated(experiments, Mode.POOLED, owner)
    assert 0.35 <= sum(pooled.values()) / len(pooled) <= 0.65, pooled  # no user's preference is learned


def test_a_new_user_of_a_personal_bandit_is_served_the_population_s_best_and_no_user_the_pooled_one(experiments):
    experiments.define("art", ExperimentSpec(policy=Policy.BANDIT, mode=Mode.PERSONAL, variants=["v1", "v2"]))
    for _ in range(60):  # the population (open API, no user) likes v2
        _served_and_rated(experiments, "art", None, None, lambda variant: float(variant == "v2"))
    drawn = [experiments.assign("art", user, None).model for user in ("cy", None) for _ in range(100)]
    assert drawn[:100].count("v2") >= 80 and drawn[100:].count("v2") >= 80, drawn


def _refusal(body: dict):
    with pytest.raises(ValidationError) as caught:
        ExperimentSpec.model_validate(body)
    return invalid_input(caught.value)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"policy": "bandit", "mode": "solo", "variants": ["v1", "v2"]}, "'pooled' or 'personal'"),
        ({"mode": "personal", "variants": {"v1": 1.0}}, "personal takes policy bandit"),
    ],
)
def test_an_unknown_mode_or_a_personal_split_is_a_400_naming_mode(body, says):
    refused = _refusal(body)
    assert refused.status == 400 and refused.field == "mode" and says in refused.message, refused.message


# -- the routes, through the app in-process -------------------------------------------------------------------------


@pytest.fixture
def keyed(tmp_path, monkeypatch, experiments):
    """The app over ``experiments``, behind keys: alice and bob (generate), and an admin; their bearer headers."""
    store = SqliteKeyStore(f"sqlite:///{tmp_path / 'keys.db'}")
    monkeypatch.setattr(ACCESS, "store", store)
    monkeypatch.setattr(ACCESS, "_active", (float("inf"), True))
    monkeypatch.setattr(api.state, "gateway", SimpleNamespace(experiments=ExperimentsAndFeedback(experiments)), False)
    made = {
        name: store.create(name, {scope}, KeyLimits())
        for name, scope in (("alice", Scope.GENERATE), ("bob", Scope.GENERATE), ("admin", Scope.ADMIN))
    }
    ids = {name: key.id for name, (key, _) in made.items()}
    headers = {name: {"Authorization": f"Bearer {secret}"} for name, (_, secret) in made.items()}
    experiments.define("art", ExperimentSpec(policy=Policy.BANDIT, mode=Mode.PERSONAL, variants=["v1", "v2"]))
    yield TestClient(api), ids, headers
    store.db.close()


def _rated(experiments, user: str, owner: str, times: int, reward: float) -> None:
    for _ in range(times):
        _served_and_rated(experiments, "art", user, owner, lambda _: reward)


def test_a_key_sees_its_own_user_s_preferences_and_records_never_cross_keys(keyed, experiments):
    client, ids, headers = keyed
    _rated(experiments, "ann", ids["alice"], 4, 1.0)
    _rated(experiments, "ann", ids["bob"], 3, 0.0)  # bob's ann: another user
    alices = client.get("/v1/users/ann/preferences", headers=headers["alice"])
    assert alices.status_code == 200, alices.text
    by = {record["by"]: record for record in alices.json()["data"]}
    record = by.pop("experiment")
    assert (record["owner"], record["experiment"]) == (ids["alice"], "art")
    assert sum(v["feedback"] for v in record["variants"].values()) == 4
    assert all(v["mean"] > 0.5 for v in record["variants"].values())
    # what made each image, experiment or not: its model, its LoRAs, its sampler
    assert sorted(by) == ["lora", "model", "sampler"] and all(r["experiment"] is None for r in by.values())
    assert (by["lora"]["preferred"], by["sampler"]["preferred"]) == ("ink", "ddim")
    assert by["lora"]["variants"]["ink"]["feedback"] == by["sampler"]["variants"]["ddim"]["feedback"] == 4
    bobs = client.get("/v1/users/ann/preferences", headers=headers["bob"]).json()["data"]
    assert {r["owner"] for r in bobs} == {ids["bob"]}
    assert all(v["mean"] < 0.5 for r in bobs for v in r["variants"].values())
    both = client.get("/v1/users/ann/preferences", headers=headers["admin"]).json()["data"]
    assert {r["owner"] for r in both} == {ids["alice"], ids["bob"]} and len(both) == 8
    one = client.get("/v1/users/ann/preferences", params={"owner": ids["bob"]}, headers=headers["admin"])
    assert {r["owner"] for r in one.json()["data"]} == {ids["bob"]}


def test_a_key_cannot_read_or_delete_another_key_s_user(keyed, experiments):
    client, ids, headers = keyed
    _rated(experiments, "ann", ids["alice"], 2, 1.0)
    for method in ("GET", "DELETE"):
        refused = client.request(method, "/v1/users/ann/preferences", headers=headers["bob"])
        assert refused.status_code == 404 and refused.json()["error"]["param"] == "user", refused.text
        named = client.request(
            method, "/v1/users/ann/preferences", params={"owner": ids["alice"]}, headers=headers["bob"]
        )
        assert named.status_code == 403 and named.json()["error"]["param"] == "owner", named.text
    assert client.get("/v1/users/ann/preferences", headers=headers["alice"]).status_code == 200  # still there


def test_delete_removes_that_key_s_records_of_the_user_and_the_personal_bandit_starts_over(keyed, experiments):
    client, ids, headers = keyed
    _rated(experiments, "ann", ids["alice"], 5, 1.0)
    _rated(experiments, "ann", ids["bob"], 2, 1.0)
    assert experiments.store.user_evidence(experiments.store.get("art"), ids["alice"], "ann")
    deleted = client.delete("/v1/users/ann/preferences", headers=headers["alice"])
    assert deleted.status_code == 200 and deleted.json()["owner"] == ids["alice"] and deleted.json()["deleted"] >= 1
    assert client.get("/v1/users/ann/preferences", headers=headers["alice"]).status_code == 404
    assert client.delete("/v1/users/ann/preferences", headers=headers["alice"]).status_code == 404
    assert experiments.store.user_evidence(experiments.store.get("art"), ids["alice"], "ann") == {}
    assert client.get("/v1/users/ann/preferences", headers=headers["bob"]).status_code == 200  # bob's ann stays
    by_admin = client.delete("/v1/users/ann/preferences", params={"owner": ids["bob"]}, headers=headers["admin"])
    assert by_admin.status_code == 200 and by_admin.json()["owner"] == ids["bob"]
    assert client.get("/v1/users/ann/preferences", headers=headers["admin"]).status_code == 404


@pytest.mark.parametrize("row", rows("in-process"), ids=row_id)
def test_another_key_s_user_answers_as_an_unknown_user_on_every_door_naming_it(keyed, experiments, row):
    """The hostile-tenant matrix's rows this module asks (tests/tenant_matrix.py)."""
    client, ids, headers = keyed
    _rated(experiments, "ann", ids["alice"], 1, 1.0)

    def answer(given: str) -> tuple:
        found = client.request(row.method, row.path.replace(f"{{{row.field}}}", given), headers=headers["bob"])
        error = found.json()["error"]
        return found.status_code, error["type"], error["param"], error["message"].replace(given, "ID")

    theirs = answer("ann")
    assert theirs == answer(UNKNOWN[row.thing]) and theirs[:3] == (row.status, "not_found_error", row.param), theirs


def test_a_user_whose_id_holds_a_slash_is_addressed_by_it(keyed, experiments):
    client, ids, headers = keyed
    _rated(experiments, "team/ann", ids["alice"], 1, 1.0)  # OpenAI's user is any string
    shown = client.get("/v1/users/team/ann/preferences", headers=headers["alice"])
    assert shown.status_code == 200 and shown.json()["user"] == "team/ann", shown.text
    assert client.get("/v1/users/team%2Fann/preferences", headers=headers["alice"]).status_code == 200
    assert client.get("/v1/users/ann/preferences", headers=headers["alice"]).status_code == 404
    assert client.delete("/v1/users/team/ann/preferences", headers=headers["alice"]).json()["deleted"] == 4
