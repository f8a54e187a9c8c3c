"""The experiment store's contract, run against SQLite (unit tests) and a real Redis server (integration tests).

A test module imports these and defines ``store_factory`` (opens another connection to one fresh, empty store) and
``store`` (one opened from it).
"""

import itertools
import threading

import pytest

from serve.errors import Conflict
from serve.experiments.policy import (
    MAX_KEY_SHARE,
    PRIOR_STRENGTH,
    Evidence,
    Experiment,
    ExperimentSpec,
    Policy,
    Posterior,
)
from serve.experiments.preferences import EXPERIMENT, Preference, kept_by
from serve.experiments.store import Served

SPLIT = Experiment("logo-v", ExperimentSpec(variants={"v1": 0.9, "v2": 0.1}))
BANDIT = Experiment("art", ExperimentSpec(policy=Policy.BANDIT, variants=["sd", "sdxl", "lcm"]))


def test_experiments_are_defined_listed_replaced_and_deleted(store):
    assert store.list() == [] and store.get("logo-v") is None
    store.define(SPLIT)
    store.define(BANDIT)
    assert store.list() == [BANDIT, SPLIT] and store.get("logo-v") == SPLIT
    replaced = Experiment("logo-v", ExperimentSpec(variants={"v1": 0.5, "v2": 0.5}))
    store.define(replaced)
    assert store.get("logo-v") == replaced and len(store.list()) == 2
    assert store.delete("logo-v") and not store.delete("logo-v")
    assert store.list() == [BANDIT]


def test_a_reward_counts_once_and_goes_to_the_posterior_of_the_variant_that_served(store):
    store.define(BANDIT)  # an open API's ratings: counted in full
    store.record(["img_a", "img_b"], Served("sdxl", "art"))
    store.record(["job_c"], Served("sd", "art"))
    store.record(["img_d"], Served("sd", "art", owner="key1"))
    assert store.posteriors("art") == {}
    served = store.rate("img_a", 1.0)
    assert (served.model, served.experiment, served.owner, served.reward) == ("sdxl", "art", None, 1.0)
    store.rate("img_b", 0.25)
    store.rate("job_c", 0.0)
    assert store.posteriors("art") == {"sdxl": Posterior(1.25, 0.75, 2), "sd": Posterior(0.0, 1.0, 1)}
    with pytest.raises(Conflict):
        store.rate("img_a", 0.0)
    assert store.posteriors("art")["sdxl"] == Posterior(1.25, 0.75, 2)
    assert store.served("img_a").reward == 1.0 and store.served("img_d").owner == "key1"


def test_feedback_replaces_a_measured_reward_once(store):
    store.define(BANDIT)
    store.record(["img_a", "img_b"], Served("sd", "art", owner="key1"))
    assert store.rate("img_a", 0.75, measured=True).measured
    store.rate("img_b", 0.5, measured=True)
    with pytest.raises(Conflict):  # a measurement is taken once
        store.rate("img_a", 0.5, measured=True)
    assert store.evidence("art") == {"sd": {"key1": Evidence(1.25, 0.75, 2)}}
    replaced = store.rate("img_a", 0.0)  # the user's feedback: the measurement's evidence taken back, still one
    assert (replaced.reward, replaced.measured, replaced.counted) == (0.0, False, True)
    assert store.evidence("art") == {"sd": {"key1": Evidence(0.5, 1.5, 2)}}
    assert store.served("img_a").reward == 0.0 and not store.served("img_a").measured
    with pytest.raises(Conflict):  # feedback counts once
        store.rate("img_a", 1.0)
    assert store.evidence("art") == {"sd": {"key1": Evidence(0.5, 1.5, 2)}}


def test_unknown_and_expired_ids_are_not_rated(store):
    assert store.served("img_missing") is None and store.rate("img_missing", 1.0) is None
    store.clock = lambda: 1000.0
    store.record(["img_old"], Served("v1", "logo-v"))
    store.clock = lambda: 1000.0 + store.retention_s + 1
    assert store.served("img_old") is None and store.rate("img_old", 1.0) is None


def test_feedback_on_a_plain_model_or_a_dropped_variant_touches_no_posterior(store):
    store.define(SPLIT)
    store.record(["img_plain"], Served("v1"))
    store.record(["img_v2"], Served("v2", "logo-v"))
    assert store.rate("img_plain", 1.0).experiment is None
    store.define(Experiment("logo-v", ExperimentSpec(variants={"v1": 1.0})))  # v2 dropped
    assert store.rate("img_v2", 1.0).model == "v2"
    assert store.posteriors("logo-v") == {}


def test_redefining_keeps_the_posteriors_of_kept_variants_and_deleting_drops_them(store):
    store.define(SPLIT)
    store.record(["img_1"], Served("v1", "logo-v"))
    store.record(["img_2"], Served("v2", "logo-v"))
    store.rate("img_1", 1.0)
    store.rate("img_2", 1.0)
    store.define(Experiment("logo-v", ExperimentSpec(policy=Policy.BANDIT, variants=["v1", "v3"])))
    assert store.posteriors("logo-v") == {"v1": Posterior(1.0, 0.0, 1)}
    store.delete("logo-v")
    store.define(SPLIT)
    assert store.posteriors("logo-v") == {}


def test_concurrent_ratings_from_many_connections_all_count_and_none_twice(store, store_factory):
    store.define(SPLIT)
    ids = [f"img_{i}" for i in range(40)]
    store.record(ids, Served("v1", "logo-v"))
    counted, conflicts, lock = [], [], threading.Lock()

    def rater(offset: int) -> None:
        mine = store_factory()
        for item_id in ids[offset:] + ids[:offset]:  # every rater tries every id
            try:
                mine.rate(item_id, 1.0)
                with lock:
                    counted.append(item_id)
            except Conflict:
                with lock:
                    conflicts.append(item_id)
        mine.close()

    threads = [threading.Thread(target=rater, args=(i * 10,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(counted) == sorted(ids) and len(conflicts) == 3 * len(ids)
    assert store.posteriors("logo-v") == {"v1": Posterior(40.0, 0.0, 40)}


def test_a_second_connection_sees_the_same_experiments_and_posteriors(store, store_factory):
    store.define(BANDIT)
    store.record(["img_x"], Served("lcm", "art"))
    store.rate("img_x", 0.5)
    other = store_factory()
    try:
        assert other.get("art") == BANDIT and other.posteriors("art") == {"lcm": Posterior(0.5, 0.5, 1)}
    finally:
        other.close()


def test_one_key_s_ratings_make_at_most_its_share_of_a_variant_s_evidence_and_others_still_count(store):
    """A key rating 30 images (one variant 5, the other 1) once moved a bandit's next 30 draws to 30/0."""
    store.define(BANDIT)
    store.record([f"a{i}" for i in range(30)], Served("sd", "art", owner="steerer"))
    store.record([f"b{i}" for i in range(30)], Served("sdxl", "art", owner="steerer"))
    assert all(store.rate(f"{v}{i}", 1.0 if v == "a" else 0.0).counted for i in range(30) for v in "ab")
    posteriors = store.posteriors("art")
    assert {variant: p.feedback for variant, p in posteriors.items()} == {"sd": 30, "sdxl": 30}  # each one taken
    for variant, posterior in posteriors.items():  # the key's evidence: its share of the prior's and its own
        evidence = posterior.successes + posterior.failures
        assert evidence == pytest.approx(MAX_KEY_SHARE * (PRIOR_STRENGTH + evidence)), variant
    assert posteriors["sd"].mean == pytest.approx(0.5 + MAX_KEY_SHARE / 2)
    assert posteriors["sdxl"].mean == pytest.approx(0.5 - MAX_KEY_SHARE / 2)
    for i in range(8):  # eight more keys, each rating one sdxl image 1: together they outweigh the steerer
        store.record([f"k{i}"], Served("sdxl", "art", owner=f"key-{i}"))
        assert store.rate(f"k{i}", 1.0).counted
    assert store.posteriors("art")["sdxl"].mean > 0.5
    store.record(["open"], Served("sd", "art"))  # an open API (no key): counted in full
    before = store.posteriors("art")["sd"]
    assert store.rate("open", 1.0).counted and store.posteriors("art")["sd"].successes >= before.successes + 1


_SERVINGS = itertools.count()


def _served_to(store, user: str, owner: str | None, rewards: dict[str, list[float]], experiment=BANDIT) -> None:
    """Images of each variant served to ``user`` of key ``owner`` through ``experiment``, each rated as given."""
    for variant, given in rewards.items():
        for index, reward in enumerate(given):
            item_id = f"img_{owner}_{user}_{variant}_{index}_{next(_SERVINGS)}"  # a fresh id for every serving
            store.record([item_id], Served(variant, experiment.name, owner, user=user))
            assert store.rate(item_id, reward).counted


def _of_experiments(store, user: str) -> list[Preference]:
    """``user``'s records of experiments (their tastes left out), by key and variant."""
    found = [p for p in store.preferences(user) if kept_by(p.experiment) == EXPERIMENT]
    return sorted(found, key=lambda p: (p.owner or "", p.experiment, p.variant))


def test_a_rating_of_what_a_user_was_served_joins_that_user_s_record_under_its_key_only(store):
    store.define(BANDIT)
    _served_to(store, "ann", "key1", {"sd": [1.0, 0.5], "lcm": [0.0]})
    _served_to(store, "ann", "key2", {"sdxl": [1.0]})  # the same name under another key: another user
    _served_to(store, "ann", None, {"sd": [0.25]})  # and under the open API
    _served_to(store, "bob", "key1", {"sd": [0.0]})
    assert store.user_evidence(BANDIT, "key1", "ann") == {"sd": Evidence(1.5, 0.5, 2), "lcm": Evidence(0.0, 1.0, 1)}
    assert store.user_evidence(BANDIT, "key2", "ann") == {"sdxl": Evidence(1.0, 0.0, 1)}
    assert store.user_evidence(BANDIT, None, "ann") == {"sd": Evidence(0.25, 0.75, 1)}
    assert store.user_evidence(BANDIT, "key3", "ann") == {} and store.user_evidence(BANDIT, "key1", "cy") == {}
    assert _of_experiments(store, "ann") == [
        Preference(None, "ann", "art", "sd", Evidence(0.25, 0.75, 1)),
        Preference("key1", "ann", "art", "lcm", Evidence(0.0, 1.0, 1)),
        Preference("key1", "ann", "art", "sd", Evidence(1.5, 0.5, 2)),
        Preference("key2", "ann", "art", "sdxl", Evidence(1.0, 0.0, 1)),
    ]
    assert store.evidence("art")["sd"]["key1"] == Evidence(1.5, 1.5, 3)  # the pooled evidence took them all


def test_feedback_replacing_a_measured_reward_replaces_it_in_the_user_s_record(store):
    store.define(BANDIT)
    store.record(["img_m"], Served("sd", "art", "key1", user="ann"))
    assert store.served("img_m").user == "ann"
    store.rate("img_m", 0.75, measured=True)
    store.rate("img_m", 0.0)
    assert store.user_evidence(BANDIT, "key1", "ann") == {"sd": Evidence(0.0, 1.0, 1)}


def test_forgetting_a_user_deletes_that_key_s_records_only_and_keeps_the_pooled_evidence(store, store_factory):
    store.define(BANDIT)
    store.define(SPLIT)
    _served_to(store, "ann", "key1", {"sd": [1.0], "lcm": [0.0]})
    _served_to(store, "ann", "key1", {"v1": [1.0]}, experiment=SPLIT)
    _served_to(store, "ann", "key2", {"sd": [1.0]})
    pooled = store.evidence("art")
    other = store_factory()  # a second connection (another replica) sees the records and forgets them
    try:
        assert other.forget("ann", "key1") == 3 + 3 and other.forget("ann", "key1") == 0  # and 3 models' tastes
    finally:
        other.close()
    assert store.user_evidence(BANDIT, "key1", "ann") == {} and store.user_evidence(SPLIT, "key1", "ann") == {}
    assert set(store.preferences("ann")) == {
        Preference("key2", "ann", "art", "sd", Evidence(1.0, 0.0, 1)),
        Preference("key2", "ann", "@model", "sd", Evidence(1.0, 0.0, 1)),
    }
    assert store.evidence("art") == pooled
    _served_to(store, "ann", "key1", {"sd": [0.5]})  # a later rating starts a new record
    assert store.user_evidence(BANDIT, "key1", "ann") == {"sd": Evidence(0.5, 0.5, 1)}
    assert store.forget("ann", None) == 0


def test_users_records_go_with_the_variants_an_experiment_drops_and_with_the_experiment(store):
    store.define(BANDIT)
    _served_to(store, "ann", "key1", {"sd": [1.0], "lcm": [0.0]})
    store.define(Experiment("art", ExperimentSpec(policy=Policy.BANDIT, variants=["sd", "sdxl"])))  # lcm dropped
    assert store.user_evidence(store.get("art"), "key1", "ann") == {"sd": Evidence(1.0, 0.0, 1)}
    assert [p.variant for p in _of_experiments(store, "ann")] == ["sd"]
    store.delete("art")
    store.define(BANDIT)
    assert store.user_evidence(BANDIT, "key1", "ann") == {} and _of_experiments(store, "ann") == []
    assert {p.variant for p in store.preferences("ann")} == {"sd", "lcm"}  # what the user likes of models stays


def test_every_rating_of_what_a_user_was_served_joins_their_records_of_its_model_loras_and_sampler(store):
    """Experiment or not: the model, each LoRA and the sampler that made it, per key; forgetting takes them."""
    store.define(BANDIT)
    made = {"img_1": ("sd", None, ("ink", "paper"), "ddim", 1.0), "img_2": ("sdxl", None, ("ink",), "euler", 0.0)}
    made |= {"img_3": ("sd", "art", (), "ddim", 0.5), "img_4": ("sd", None, ("ink",), "ddim", 1.0)}
    for item_id, (model, experiment, loras, sampler, _) in made.items():
        owner = "key2" if item_id == "img_4" else "key1"
        store.record([item_id], Served(model, experiment, owner, user="ann", loras=loras, sampler=sampler))
    store.record(["img_5"], Served("sd", None, "key1", loras=("ink",), sampler="ddim"))  # no user: no record
    assert store.served("img_1").loras == ("ink", "paper") and store.served("img_1").sampler == "ddim"
    for item_id, (*_, reward) in made.items():
        store.rate(item_id, reward)
    store.rate("img_5", 0.0)
    found = {(p.owner, p.experiment, p.variant): p.evidence for p in store.preferences("ann")}
    assert found == {
        ("key1", "art", "sd"): Evidence(0.5, 0.5, 1),
        ("key1", "@model", "sd"): Evidence(1.5, 0.5, 2),
        ("key1", "@model", "sdxl"): Evidence(0.0, 1.0, 1),
        ("key1", "@lora", "ink"): Evidence(1.0, 1.0, 2),
        ("key1", "@lora", "paper"): Evidence(1.0, 0.0, 1),
        ("key1", "@sampler", "ddim"): Evidence(1.5, 0.5, 2),
        ("key1", "@sampler", "euler"): Evidence(0.0, 1.0, 1),
        ("key2", "@model", "sd"): Evidence(1.0, 0.0, 1),  # another key's ann: another user
        ("key2", "@lora", "ink"): Evidence(1.0, 0.0, 1),
        ("key2", "@sampler", "ddim"): Evidence(1.0, 0.0, 1),
    }
    assert store.forget("ann", "key1") == 7
    assert {p.owner for p in store.preferences("ann")} == {"key2"}
