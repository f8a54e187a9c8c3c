"""Experiments without a server: declarations, a weighted split (sticky per user), the bandit, feedback's rules.

The split and the bandit run through the real SQLite store, as a Gateway replica runs them.
"""

import math
import random
from collections import Counter

import pytest
from pydantic import ValidationError

from serve.errors import Conflict, InvalidInput, NotFound, invalid_input
from serve.experiments.feedback import FeedbackRequest, new_image_id
from serve.experiments.policy import MAX_KEY_SHARE, PRIOR, ExperimentSpec, Policy, Posterior, score_reward, user_share
from serve.experiments.sqlite import SqliteExperimentStore
from serve.experiments.traffic import Experiments

SERVED = {"v1", "v2", "v3"}


@pytest.fixture
def experiments(tmp_path):
    store = SqliteExperimentStore(f"sqlite:///{tmp_path / 'easel.db'}")
    yield Experiments(store, lambda: SERVED, random.Random(7))
    store.close()


def _refusal(body: dict, model=ExperimentSpec) -> InvalidInput:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    return invalid_input(caught.value)


def test_a_90_10_split_lands_within_binomial_noise_and_each_user_keeps_one_variant(experiments):
    experiments.define("logo-v", ExperimentSpec(variants={"v1": 0.9, "v2": 0.1}))
    users = [f"user-{i}" for i in range(1000)]
    first = {user: experiments.assign("logo-v", user).model for user in users}
    share = Counter(first.values())["v2"] / len(users)
    assert abs(share - 0.1) <= 4 * math.sqrt(0.1 * 0.9 / len(users)), share
    for user in users:  # again, in another order, and on another "replica" (its own RNG state)
        other = Experiments(experiments.store, lambda: SERVED, random.Random(99))
        assert experiments.assign("logo-v", user).model == first[user] == other.assign("logo-v", user).model


def test_without_a_user_each_request_is_drawn_by_the_weights(experiments):
    experiments.define("logo-v", ExperimentSpec(variants={"v1": 0.9, "v2": 0.1}))
    drawn = Counter(experiments.assign("logo-v", None).model for _ in range(1000))
    assert abs(drawn["v2"] / 1000 - 0.1) <= 4 * math.sqrt(0.1 * 0.9 / 1000) and drawn["v1"] + drawn["v2"] == 1000


def test_a_users_share_is_stable_and_differs_between_experiments():
    assert user_share("logo-v", "ann") == user_share("logo-v", "ann")
    assert user_share("logo-v", "ann") != user_share("logo-w", "ann")
    assert 0 <= user_share("x", "y") < 1


@pytest.mark.parametrize("keys", [None, 30])
def test_the_bandit_fed_rewards_that_favour_one_variant_sends_it_most_traffic_within_300_requests(experiments, keys):
    """From an open API's users, or from 30 keys' (each within its share of the evidence)."""
    experiments.define("art", ExperimentSpec(policy=Policy.BANDIT, variants=["v1", "v2", "v3"]))
    liked = {"v1": 0.3, "v2": 0.8, "v3": 0.3}  # how often each variant's image is liked
    users = random.Random(11)  # the users' answers, seeded
    served = []
    for request in range(300):
        assignment = experiments.assign("art", None)
        image = new_image_id()
        experiments.record([image], assignment, owner=keys and f"key-{request % keys}")
        reward = 1.0 if users.random() < liked[assignment.model] else 0.0
        experiments.rate(FeedbackRequest(image_id=image, reward=reward), lambda owner: True)
        served.append(assignment.model)
    assert Counter(served)["v2"] / len(served) >= 0.8, Counter(served)
    posteriors = experiments.store.posteriors("art")
    assert posteriors["v2"].mean > max(posteriors["v1"].mean, posteriors["v3"].mean)
    assert sum(p.feedback for p in posteriors.values()) == 300


def test_ten_ratings_from_one_key_move_a_fresh_bandit_by_at_most_its_share(experiments):
    """Ten 5-star ratings of one variant's images from one key once sent another key's next 30 draws 30/0."""
    experiments.define("art", ExperimentSpec(policy=Policy.BANDIT, variants=["v1", "v2"]))
    rated = []
    while len(rated) < 10:  # the steerer rates every image of v1 it is served
        assignment = experiments.assign("art", None)
        image = new_image_id()
        experiments.record([image], assignment, owner="steerer")
        if assignment.model == "v1":
            experiments.rate(FeedbackRequest(image_id=image, rating=5), lambda owner: owner == "steerer")
            rated.append(image)
    posteriors = experiments.store.posteriors("art")
    assert posteriors["v1"].feedback == 10 and "v2" not in posteriors
    assert posteriors["v1"].mean <= PRIOR.mean + MAX_KEY_SHARE * (1 - PRIOR.mean) + 1e-9
    draws = Counter(experiments.assign("art", "another").model for _ in range(30))
    assert draws["v2"] >= 5, draws  # not 30/0: v1 is favoured by at most the key's share


def test_a_bandit_with_no_feedback_tries_every_variant(experiments):
    experiments.define("art", ExperimentSpec(policy=Policy.BANDIT, variants=["v1", "v2", "v3"]))
    assert set(experiments.assign("art", "ann").model for _ in range(100)) == SERVED


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"variants": {"v1": 0.9, "v2": 0.2}}, "sum to 1"),
        ({"variants": {"v1": 1.0, "v2": 0.0}}, "> 0"),
        ({"variants": {"v1": 1.5, "v2": -0.5}}, "> 0"),
        ({"variants": {}}, "1 to 16"),
        ({"variants": {f"v{i}": 1 / 17 for i in range(17)}}, "1 to 16"),
        ({"variants": {"v1": "1"}}, "weights (numbers)"),
        ({"variants": 5}, "a mapping"),
        ({"variants": ["v1", "v2"]}, "mapping"),
        ({"policy": "bandit", "variants": {"v1": 0.5, "v2": 0.5}}, "list"),
        ({"policy": "bandit", "variants": ["v1"]}, "at least two"),
        ({"policy": "bandit", "variants": ["v1", "v1"]}, "at least two"),
    ],
)
def test_a_malformed_declaration_is_a_400_naming_variants(body, says):
    refusal = _refusal(body)
    assert refusal.field == "variants" and says in refusal.message, refusal.message


def test_an_unknown_policy_is_a_400_naming_policy():
    assert _refusal({"policy": "greedy", "variants": ["v1", "v2"]}).field == "policy"


def test_a_variant_that_is_not_served_and_an_alias_that_shadows_a_model_are_refused(experiments):
    with pytest.raises(InvalidInput) as unknown:
        experiments.define("logo-v", ExperimentSpec(variants={"v1": 0.5, "v9": 0.5}))
    assert unknown.value.field == "variants" and "v9" in unknown.value.message
    with pytest.raises(InvalidInput) as shadow:
        experiments.define("v1", ExperimentSpec(variants={"v2": 1.0}))
    assert shadow.value.field == "name"
    with pytest.raises(InvalidInput) as malformed:
        experiments.define("no spaces", ExperimentSpec(variants={"v2": 1.0}))
    assert malformed.value.field == "name"
    assert experiments.listing() == []


def test_a_served_model_or_an_unknown_name_is_no_experiment(experiments):
    experiments.define("logo-v", ExperimentSpec(variants={"v1": 1.0}))
    assert experiments.assign("v1", "ann") is None and experiments.assign("nothing", "ann") is None
    assert experiments.assign(None, "ann") is None
    assignment = experiments.assign("logo-v", "ann")
    assert assignment.headers() == {"Easel-Model": "v1", "Easel-Experiment": "logo-v"}
    assert assignment.to_api() == {"model": "v1", "experiment": {"id": "logo-v", "variant": "v1"}}


def test_admin_operations_list_describe_and_delete(experiments):
    listed = experiments.define("logo-v", ExperimentSpec(variants={"v1": 0.9, "v2": 0.1}))
    assert listed["posteriors"]["v1"] == {"alpha": 1.0, "beta": 1.0, "mean": 0.5, "feedback": 0}
    assert experiments.listing() == [listed] and experiments.describe("logo-v") == listed
    assert experiments.delete("logo-v")["deleted"]
    with pytest.raises(NotFound):
        experiments.delete("logo-v")
    with pytest.raises(NotFound):
        experiments.describe("logo-v")


@pytest.mark.parametrize(("rating", "reward"), [(1, 0.0), (2, 0.25), (3, 0.5), (4, 0.75), (5, 1.0)])
def test_a_rating_of_1_to_5_is_the_reward_rating_minus_1_over_4(rating, reward):
    assert FeedbackRequest(job_id="job_" + "0" * 24, rating=rating).value == reward


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"image_id": "img_" + "a" * 24, "reward": 1.5}, "reward"),
        ({"image_id": "img_" + "a" * 24, "reward": -0.1}, "reward"),
        ({"image_id": "img_" + "a" * 24, "rating": 0}, "rating"),
        ({"image_id": "img_" + "a" * 24, "rating": 6}, "rating"),
        ({"image_id": "img_" + "a" * 24}, "reward"),
        ({"image_id": "img_" + "a" * 24, "reward": 1, "rating": 5}, "reward"),
        ({"reward": 1}, "image_id"),
        ({"image_id": "img_" + "a" * 24, "job_id": "job_" + "a" * 24, "reward": 1}, "image_id"),
        ({"image_id": "not-an-id", "reward": 1}, "image_id"),
        ({"job_id": "img_" + "a" * 24, "reward": 1}, "job_id"),
    ],
)
def test_bad_feedback_is_a_400_naming_the_field(body, field):
    assert _refusal(body, FeedbackRequest).field == field


def test_feedback_for_an_unknown_or_anothers_image_is_a_404_naming_the_id_and_a_second_rating_a_409(experiments):
    experiments.define("logo-v", ExperimentSpec(variants={"v1": 0.9, "v2": 0.1}))
    assignment = experiments.assign("logo-v", "ann")
    image, job = new_image_id(), "job_" + "1" * 24
    experiments.record([image], assignment, owner="key_a")
    experiments.record([job], assignment, owner="key_a")
    assert experiments.served_by(job) == assignment and experiments.served_by("job_" + "2" * 24) is None
    with pytest.raises(NotFound) as unknown:
        experiments.rate(FeedbackRequest(image_id=new_image_id(), reward=1), lambda owner: True)
    assert unknown.value.field == "image_id"
    with pytest.raises(NotFound) as anothers:
        experiments.rate(FeedbackRequest(job_id=job, rating=5), lambda owner: owner == "key_b")
    assert anothers.value.field == "job_id"
    answer = experiments.rate(FeedbackRequest(image_id=image, rating=4), lambda owner: owner == "key_a")
    assert answer == {
        "object": "feedback",
        "id": image,
        "reward": 0.75,
        "model": assignment.model,
        "experiment": "logo-v",
    }
    with pytest.raises(Conflict):
        experiments.rate(FeedbackRequest(image_id=image, reward=0), lambda owner: True)
    assert experiments.describe("logo-v")["posteriors"][assignment.model]["feedback"] == 1


@pytest.mark.parametrize(
    ("option", "says"),
    [
        ('logo-v={"variants": {"v1": 0.9, "v2": 0.2}}', "experiments.logo-v.variants: weights must sum to 1"),
        ('logo-v={"variants": {"easel-default": 0.5, "v2": 0.5}}', "v2 not served (served models: easel-default)"),
        ("logo-v={nope", "is not JSON"),
        ('{"variants": {"v1": 1.0}}', "is not NAME=JSON"),
    ],
)
def test_up_refuses_a_malformed_experiment_in_one_line_before_starting(tmp_path, monkeypatch, option, says):
    from click.testing import CliRunner

    from serve.cli.main import main

    monkeypatch.setenv("EASEL_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["up", "--experiment", option, "--no-first-request"])
    assert result.exit_code in (1, 2) and says in result.output, result.output
    assert "Traceback" not in result.output


def test_stack_options_take_experiments_over_their_served_models(tmp_path):
    from serve.settings import StackOptions

    models = {"v1": tmp_path, "v2": tmp_path}
    pairs = {"a": {"variants": {"v1": 1.0}}, "b": {"policy": "bandit", "variants": ["v1", "v2"]}}
    options = StackOptions(models=models, experiments=pairs)
    assert options.experiments["b"].policy is Policy.BANDIT and options.experiments["a"].variants == {"v1": 1.0}
    for name, spec, says in [
        ("a", {"variants": {"v1": 0.5, "v3": 0.5}}, "v3 not served"),
        ("v1", {"variants": {"v2": 1.0}}, "is a served model"),
    ]:
        with pytest.raises(ValidationError) as refused:
            StackOptions(models=models, experiments={name: spec})
        assert says in invalid_input(refused.value).message


SCORES = ("clip_score", "aesthetic")


def test_a_reward_is_feedback_or_a_score_the_stack_gives(experiments, tmp_path):
    assert ExperimentSpec(variants=["v1", "v2"], policy="bandit").reward == "feedback"
    assert _refusal({"policy": "bandit", "variants": ["v1", "v2"], "reward": "ssim"}).field == "reward"
    spec = ExperimentSpec(policy=Policy.BANDIT, variants=["v1", "v2"], reward="clip_score")
    with pytest.raises(InvalidInput, match="easel up --scorer") as caught:  # this stack serves no scorer
        experiments.define("art", spec)
    assert caught.value.field == "reward"
    scored = Experiments(experiments.store, lambda: SERVED, random.Random(7), scores=SCORES[:1])
    scored.define("art", spec)
    with pytest.raises(InvalidInput, match="aesthetic is not a score") as caught:  # no aesthetic head
        scored.define("art", spec.model_copy(update={"reward": "aesthetic"}))
    assert caught.value.field == "reward" and scored.assign("art", None).reward == "clip_score"


def test_a_score_maps_its_range_onto_rewards_0_to_1():
    assert score_reward("clip_score", {"clip_score": 0.2}) == pytest.approx(0.6)
    assert score_reward("aesthetic", {"aesthetic": 5.5, "clip_score": 1.0}) == pytest.approx(0.5)
    assert score_reward("aesthetic", {"aesthetic": 11.0}) == 1.0 and score_reward("aesthetic", {"aesthetic": 0}) == 0
    assert score_reward("identity", {"identity": 0.5}) == pytest.approx(0.75)


def test_an_experiment_rewarded_by_identity_learns_from_images_with_a_face_and_skips_the_rest(experiments):
    with pytest.raises(InvalidInput, match="identity is not a score") as caught:  # no face models
        experiments.define("kept", ExperimentSpec(policy=Policy.BANDIT, variants=["v1", "v2"], reward="identity"))
    assert caught.value.field == "reward"
    faced = Experiments(experiments.store, lambda: SERVED, random.Random(7), scores=("identity",))
    faced.define("kept", ExperimentSpec(policy=Policy.BANDIT, variants=["v1", "v2"], reward="identity"))
    assignment = faced.assign("kept", None)
    faced.record(["img_a", "img_b", "img_c"], assignment, None)
    faced.measure(["img_a", "img_b", "img_c"], [{"identity": 0.5}, {"identity": None}, {}], assignment)
    assert faced.store.posteriors("kept")[assignment.model] == Posterior(0.75, 0.25, 1)  # the face-less two: none


def test_the_bandit_rewarded_by_scores_sends_most_traffic_to_the_better_scored_variant(tmp_path):
    store = SqliteExperimentStore(f"sqlite:///{tmp_path / 'easel.db'}")
    experiments = Experiments(store, lambda: SERVED, random.Random(3), scores=SCORES)
    experiments.define("art", ExperimentSpec(policy=Policy.BANDIT, variants=["v1", "v2"], reward="aesthetic"))
    noise, drawn = random.Random(5), []
    for _ in range(300):
        assignment = experiments.assign("art", None)
        image_id = new_image_id()
        experiments.record([image_id], assignment, None)
        mean = 7.0 if assignment.model == "v2" else 4.0  # v2's images look better, by the aesthetic head
        experiments.measure([image_id], [{"aesthetic": noise.gauss(mean, 1.0)}], assignment)
        drawn.append(assignment.model)
    assert Counter(drawn[-100:])["v2"] >= 80, Counter(drawn[-100:])
    posteriors = store.posteriors("art")
    assert posteriors["v2"].mean > posteriors["v1"].mean and sum(p.feedback for p in posteriors.values()) == 300
    store.close()


def test_feedback_replaces_an_images_score_reward_and_a_feedback_experiment_measures_nothing(experiments):
    scored = Experiments(experiments.store, lambda: SERVED, random.Random(7), scores=SCORES)
    scored.define("art", ExperimentSpec(policy=Policy.BANDIT, variants=["v1", "v2"], reward="clip_score"))
    assignment, image_id = scored.assign("art", None), new_image_id()
    scored.record([image_id], assignment, None)
    scored.measure([image_id], [{"clip_score": 0.5, "aesthetic": 3.0}], assignment)  # reward 0.75
    assert scored.store.posteriors("art")[assignment.model] == Posterior(0.75, 0.25, 1)
    answer = scored.rate(FeedbackRequest(image_id=image_id, rating=1), lambda owner: True)  # reward 0: replaces it
    assert answer["reward"] == 0.0 and scored.store.posteriors("art")[assignment.model] == Posterior(0.0, 1.0, 1)
    with pytest.raises(Conflict):
        scored.rate(FeedbackRequest(image_id=image_id, reward=1.0), lambda owner: True)
    scored.define("plain", ExperimentSpec(policy=Policy.BANDIT, variants=["v1", "v2"]))
    plain = scored.assign("plain", None)
    scored.record(["img_b"], plain, None)
    scored.measure(["img_b"], [{"clip_score": 0.5}], plain)  # rewarded by feedback alone: the score is no reward
    assert scored.store.served("img_b").reward is None and scored.store.posteriors("plain") == {}
