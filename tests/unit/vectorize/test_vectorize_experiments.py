"""Experiments over vectorize versions, without a server: the Gateway's class over a real SQLite store.

The Vectorizer's handle is a stand-in whose measured SSIM depends on the version asked for (one clearly better), so
the split's stickiness and the bandit's learning from measured SSIM run through the real assignment, store and rewards.
"""

import asyncio
import random
from collections import Counter
from types import SimpleNamespace

import pytest

from serve import metrics
from serve.errors import InvalidInput
from serve.experiments.feedback import FeedbackRequest
from serve.experiments.policy import ExperimentSpec
from serve.experiments.sqlite import SqliteExperimentStore
from serve.experiments.traffic import Experiments
from serve.serving.vectorize import REWARD_SSIM, Vectorizing, measured_reward
from serve.vectorize.deployment import VectorizeResult
from serve.vectorize.schema import VectorizeOptions
from serve.vectorize.versions import VectorizeTable, variant_name, variant_version

VERSIONS = VectorizeTable(1, {1: "/a", 2: "/b"})
SUCCESS = {1: 0.35, 2: 0.9}  # how often each version's answer reaches the reward's SSIM


class Vectorizer:
    """The Vectorizer's handle: an answer whose measured SSIM reaches the target as often as its version does."""

    def __init__(self, seed: int, fallback_version: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.fallback_version = fallback_version  # its answers are vtracer's defaults (the models unavailable)
        self.vectorize = SimpleNamespace(remote=self._vectorize)

    async def _vectorize(self, image: bytes, options: VectorizeOptions, sent_at: float) -> VectorizeResult:
        version = VERSIONS.resolve(options.model_version)
        if image == b"not an image":
            raise InvalidInput("file: not an image", "file")
        ssim = REWARD_SSIM + (0.02 if self.rng.random() < SUCCESS[version] else -0.05)
        measured = ssim if options.validate_output else None
        fallback = "models_unavailable" if version == self.fallback_version else None
        size = 100 * version  # each version's SVG its own size
        return VectorizeResult("<svg/>", "1", "1", "asked", None, {}, None, measured, False, size, 1, fallback, version)


@pytest.fixture
def vectorizing(tmp_path):
    store = SqliteExperimentStore(f"sqlite:///{tmp_path / 'easel.db'}")
    experiments = Experiments(store, lambda: set(VERSIONS.variant_names()), random.Random(5))
    yield Vectorizing(Vectorizer(seed=3), None, experiments)
    store.close()


def _ask(vectorizing: Vectorizing, **options) -> VectorizeResult:
    return asyncio.run(vectorizing.vectorize(b"png", VectorizeOptions(experiment="ab", **options)))


def test_a_split_keeps_each_user_on_one_version_and_halves_the_users(vectorizing):
    spec = ExperimentSpec(policy="split", variants={variant_name(1): 0.5, variant_name(2): 0.5})
    vectorizing.experiments.define("ab", spec)
    first = {f"user-{i}": _ask(vectorizing, user=f"user-{i}").model_version for i in range(200)}
    again = {user: _ask(vectorizing, user=user).model_version for user in list(first)[:50]}
    assert again == {user: first[user] for user in again}
    assert 0.4 < Counter(first.values())[2] / len(first) < 0.6
    result = _ask(vectorizing, user="someone")
    assert result.experiment == "ab" and FeedbackRequest(image_id=result.id, reward=1.0)  # an id feedback takes


def test_the_bandit_moves_80_percent_to_the_better_version_within_300_requests_on_measured_ssim(vectorizing):
    vectorizing.experiments.define("ab", ExperimentSpec(policy="bandit", variants=[variant_name(1), variant_name(2)]))
    versions = [_ask(vectorizing, validate=True).model_version for _ in range(300)]
    assert Counter(versions[-100:])[2] >= 80, Counter(versions[-100:])
    posteriors = vectorizing.experiments.describe("ab")["posteriors"]
    assert posteriors[variant_name(2)]["mean"] > posteriors[variant_name(1)]["mean"]


def test_an_experiment_over_a_missing_version_or_an_unknown_one_is_a_400_naming_the_field(vectorizing):
    with pytest.raises(InvalidInput) as refused:
        vectorizing.experiments.define("ab", ExperimentSpec(policy="split", variants={"vectorize.v9": 1.0}))
    assert refused.value.field == "variants" and "vectorize.v9" in refused.value.message
    with pytest.raises(InvalidInput) as unknown:
        _ask(vectorizing)
    assert unknown.value.field == "experiment"


def test_rewards_and_variant_names():
    assert measured_reward(REWARD_SSIM, None) == 1.0 and measured_reward(0.95, 0.96) == 0.0
    assert variant_version(variant_name(12)) == 12 and variant_version("sd.v2") is None
    assert variant_version("vectorize.vx") is None


def test_each_variant_s_latency_outcome_bytes_and_measured_ssim_reach_its_metrics(vectorizing, monkeypatch):
    seen = []
    monkeypatch.setattr(metrics, "observe", lambda spec, value, **tags: seen.append((spec.name, value, tags)))
    monkeypatch.setattr(metrics, "count", lambda spec, value=1.0, **tags: seen.append((spec.name, value, tags)))
    vectorizing.vectorizer.fallback_version = 1
    spec = ExperimentSpec(policy="split", variants={variant_name(1): 0.5, variant_name(2): 0.5})
    vectorizing.experiments.define("ab", spec)
    answers = [_ask(vectorizing, user=f"user-{i}", validate=i % 2 == 0) for i in range(20)]
    with pytest.raises(InvalidInput):
        asyncio.run(vectorizing.vectorize(b"not an image", VectorizeOptions(experiment="ab", user="user-0")))

    def values(name: str, **tags) -> list:
        return [
            value for seen_name, value, seen_tags in seen if seen_name == name and tags.items() <= seen_tags.items()
        ]

    v1, v2 = ({"experiment": "ab", "variant": variant_name(v)} for v in (1, 2))
    answered = Counter(result.model_version for result in answers)
    assert answered[1] and answered[2]  # both variants answered
    assert values(metrics.VARIANT_SVG_BYTES.name, **v1) == [100] * answered[1]
    assert values(metrics.VARIANT_SVG_BYTES.name, **v2) == [200] * answered[2]
    assert sorted(values(metrics.VARIANT_SSIM.name)) == sorted(r.ssim for r in answers if r.ssim is not None)
    assert len(values(metrics.VARIANT_SSIM.name)) == 10  # measured only where validated
    assert len(values(metrics.VARIANT_REQUESTS.name, outcome="fallback", **v1)) == answered[1]
    assert len(values(metrics.VARIANT_REQUESTS.name, outcome="ok", **v2)) == answered[2]
    assert values(metrics.VARIANT_REQUESTS.name, outcome="ok", **v1) == []
    assert len(values(metrics.VARIANT_REQUESTS.name, outcome="error")) == 1  # the image that was none
    assert len(values(metrics.VARIANT_LATENCY.name)) == 20
