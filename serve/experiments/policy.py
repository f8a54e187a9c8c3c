"""What an experiment is and how it picks a variant: a weighted split (sticky per user) or a Thompson-sampling bandit.

An experiment is a model alias: a request whose ``model`` names it is served by one of its variants (served models).
``split``: each variant takes its weight's share of the traffic; a request with a ``user`` is placed by a stable hash
of alias and user, so one user always sees one variant; without a user, each request is drawn. ``bandit``: Thompson
sampling: each request draws a mean reward from every variant's Beta posterior and takes the highest, so traffic
moves to the variant feedback favours while the others are still tried now and then. Every experiment keeps its
variants' posteriors (a split's show how its variants fare; only a bandit acts on them).

No one key steers an experiment for everyone: each variant's posterior pools its raters' evidence with its prior,
and one API key's ratings make at most :data:`MAX_KEY_SHARE` of that evidence (the prior's pseudo-observations
included): a key over its share has its ratings scaled down to it (:func:`pooled`). So no key moves a variant's
posterior mean more than that share of the way from where the rest of its evidence puts it, however many images it
rates, and N keys together still weigh as N (a key rating 10 images of a fresh bandit moves a mean from 0.5 to at most
0.625). An open API's ratings (no keys, so no tenants) count in full. An answer from the result cache is no new
evidence (its feedback is taken, not counted).
"""

from __future__ import annotations

import enum
import hashlib
import math
import random
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from serve.errors import InvalidInput
from serve.schema_rules import when

WEIGHT_TOLERANCE = 1e-6
"""How far a split's weights may sum from 1."""
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""An experiment's name (the alias requests give as ``model``)."""
MAX_VARIANTS = 16
MAX_KEY_SHARE = 0.25
"""The most of a variant's evidence (its prior's pseudo-observations included) one API key's ratings may make."""
PRIOR_STRENGTH = 2.0
"""The prior's pseudo-observations: Beta(1, 1), uniform, pooled into every variant's evidence."""


Weights = Annotated[dict[str, Annotated[float, Strict()]], Field(min_length=1, max_length=MAX_VARIANTS)]
"""A split's variants: served model -> weight."""


class Policy(enum.StrEnum):
    """How an experiment picks a variant."""

    SPLIT = "split"
    BANDIT = "bandit"


class Mode(enum.StrEnum):
    """Whose evidence a bandit draws from: everyone's (``pooled``), or a user's own over everyone's (``personal``)."""

    POOLED = "pooled"
    PERSONAL = "personal"


FEEDBACK = "feedback"
SCORE_RANGES = {"clip_score": (-1.0, 1.0), "aesthetic": (1.0, 10.0), "identity": (-1.0, 1.0)}
"""Each score an experiment may be rewarded by, and the range mapped onto rewards 0 to 1 (clamped): CLIP's cosine,
LAION's aesthetic scale."""
Reward = Literal["feedback", "clip_score", "aesthetic", "identity"]
"""What rewards an experiment's variants: users' feedback alone, or a score of each image served (feedback on an
image still replaces its score's reward)."""


def score_reward(reward: str, scores: Mapping[str, float]) -> float:
    """The reward of an image whose ``scores`` were measured, for an experiment rewarded by score ``reward``."""
    low, high = SCORE_RANGES[reward]
    return min(1.0, max(0.0, (scores[reward] - low) / (high - low)))


def _variants_error(message: str) -> PydanticCustomError:
    return PydanticCustomError("variants", message, {"field": "variants"})


SHAPES = [
    when(
        "policy",
        Policy.BANDIT,
        then={"properties": {"variants": {"type": "array", "minItems": 2, "uniqueItems": True}}},
        otherwise={"properties": {"variants": {"type": "object", "additionalProperties": {"exclusiveMinimum": 0}}}},
    ),
    when("mode", Mode.PERSONAL, then={"required": ["policy"], "properties": {"policy": {"const": Policy.BANDIT}}}),
]
"""What the schema states of the fields together: a bandit's variants are two or more different models, a split's
a mapping to weights > 0 (their sum of 1 it cannot state); personal is a bandit's."""


class ExperimentSpec(BaseModel):
    """An experiment's declaration: its policy and variants (``easel up --experiment``, ``PUT /v1/experiments/{name}``).

    ``split``: a mapping of served model -> weight (each > 0, summing to 1); ``bandit``: a list of served models.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"allOf": SHAPES})

    policy: Policy = Field(Policy.SPLIT, description="split: by weight, sticky per user; bandit: Thompson sampling.")
    reward: Reward = Field(
        FEEDBACK,
        description="What rewards its variants: feedback (POST /v1/feedback) alone, or a score of every image served "
        "(clip_score: CLIP's cosine, -1 to 1, as a reward 0 to 1; aesthetic: 1 to 10 as 0 to 1; easel up --scorer; "
        "identity: a character's face kept, a cosine, -1 to 1, as 0 to 1, of the images of generations naming a "
        "character, easel up --faces), which an image's feedback still replaces.",
    )
    mode: Mode = Field(
        Mode.POOLED,
        description="pooled: one bandit for everyone; personal (a bandit's only): a request with a user is drawn "
        "from that user's own bandit (per API key), whose prior is the pooled posterior; without a user, pooled.",
    )
    variants: Weights | Annotated[list[str], Field(min_length=1, max_length=MAX_VARIANTS)] = Field(
        description='split: served model -> weight, e.g. {"v1": 0.9, "v2": 0.1} (weights > 0, summing to 1); '
        'bandit: the served models it chooses among, e.g. ["v1", "v2"].',
        union_mode="left_to_right",
    )

    @field_validator("variants", mode="wrap")
    @classmethod
    def _variants_shaped(cls, value, handler):
        """One refusal naming ``variants`` for a value that is neither shape (not one per shape of the union)."""
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError(
                "variants",
                f"a mapping of 1 to {MAX_VARIANTS} models to weights (numbers), or a list of 1 to {MAX_VARIANTS} "
                "models",
            ) from None

    @model_validator(mode="after")
    def _variants_fit_the_policy(self) -> ExperimentSpec:
        if self.mode is Mode.PERSONAL and self.policy is not Policy.BANDIT:
            message = "personal takes policy bandit (a split keeps each user on one variant already)"
            raise PydanticCustomError("mode", message, {"field": "mode"})
        if self.policy is Policy.SPLIT:
            if not isinstance(self.variants, dict):
                raise _variants_error('a split takes a mapping of model -> weight, e.g. {"v1": 0.9, "v2": 0.1}')
            bad = sorted(name for name, weight in self.variants.items() if not weight > 0 or not math.isfinite(weight))
            if bad:
                raise _variants_error(f"weights must be > 0 (not for {', '.join(bad)})")
            total = sum(self.variants.values())
            if abs(total - 1) > WEIGHT_TOLERANCE:
                raise _variants_error(f"weights must sum to 1 (within {WEIGHT_TOLERANCE:g}); they sum to {total:g}")
        else:
            if not isinstance(self.variants, list):
                raise _variants_error("a bandit takes a list of models (its traffic follows its posteriors)")
            if len(set(self.variants)) != len(self.variants) or len(self.variants) < 2:
                raise _variants_error("a bandit chooses among at least two different models")
        return self

    @property
    def models(self) -> tuple[str, ...]:
        """The variants' model names, in a fixed order (sorted)."""
        return tuple(sorted(self.variants))


@dataclass(frozen=True)
class Experiment:
    """A declared experiment: its name (the alias) and its declaration."""

    name: str
    spec: ExperimentSpec

    def check(self, served: Collection[str], scores: Collection[str] = ()) -> None:
        """Refuse (400) a malformed name, one that shadows a served model, a variant not served, or a bad reward.

        ``scores``: those the stack gives (its scorer's; ``identity`` with face models); another reward is refused.
        """
        if self.spec.reward != FEEDBACK and self.spec.reward not in scores:
            given = ", ".join(scores) or "none: easel up --scorer clip=DIR, --faces DIR"
            raise InvalidInput(f"reward: {self.spec.reward} is not a score this stack gives ({given})", "reward")
        if not re.match(NAME_PATTERN, self.name):
            raise InvalidInput(f"name: {self.name!r} does not match {NAME_PATTERN}", "name")
        if self.name in served:
            raise InvalidInput(f"name: {self.name!r} is a served model; an experiment may not shadow it", "name")
        unknown = [model for model in self.spec.models if model not in served]
        if unknown:
            listed = ", ".join(sorted(served)) or "none"
            raise InvalidInput(f"variants: {', '.join(unknown)} not served (served models: {listed})", "variants")

    def to_api(self, posteriors: Mapping[str, Posterior]) -> dict:
        """The experiment as ``GET /v1/experiments`` lists it, with each variant's posterior."""
        return {
            "object": "experiment",
            "id": self.name,
            **self.spec.model_dump(mode="json"),
            "posteriors": {model: posteriors.get(model, PRIOR).to_api() for model in self.spec.models},
        }


@dataclass(frozen=True)
class Posterior:
    """A variant's Beta posterior over its mean reward: Beta(1 + successes, 1 + failures) (a uniform prior).

    A reward r in [0, 1] adds r to ``successes`` and 1 - r to ``failures`` (fractional Bernoulli observations).
    """

    successes: float = 0.0
    failures: float = 0.0
    feedback: int = 0  # rewards observed

    @property
    def alpha(self) -> float:
        """Beta's first parameter."""
        return 1.0 + self.successes

    @property
    def beta(self) -> float:
        """Beta's second parameter."""
        return 1.0 + self.failures

    @property
    def mean(self) -> float:
        """The posterior mean reward."""
        return self.alpha / (self.alpha + self.beta)

    def to_api(self) -> dict:
        """As the API shows it."""
        return {"alpha": self.alpha, "beta": self.beta, "mean": self.mean, "feedback": self.feedback}


PRIOR = Posterior()


@dataclass(frozen=True)
class Evidence:
    """One rater's ratings of one variant: rewards summed (``successes``), their complements, how many."""

    successes: float = 0.0
    failures: float = 0.0
    feedback: int = 0

    @property
    def weight(self) -> float:
        """How many observations it is (each reward adds 1 to successes + failures)."""
        return self.successes + self.failures


def key_cap(weights: Collection[float], pooled: float, share: float = MAX_KEY_SHARE) -> float:
    """The most evidence one key may add to a variant: c with c = share x (pooled + sum of min(w, c)) (inf: no cap).

    ``weights``: each key's evidence of the variant; ``pooled``: what counts in full (the prior, the open API's).
    With k keys capped, c = share x (pooled + the others') / (1 - k x share): the one solution, as the right side
    grows slower than c past it.
    """
    ordered = sorted(weights, reverse=True)
    rest = sum(ordered)
    for capped, weight in enumerate([*ordered, 0.0]):
        cap = share * (pooled + rest) / (1 - capped * share) if capped * share < 1 else math.inf
        if weight <= cap:
            return math.inf if capped == 0 else cap
        rest -= weight
    return math.inf  # not reached: the last weight is 0


def pooled(by_key: Mapping[str | None, Evidence], share: float = MAX_KEY_SHARE) -> Posterior:
    """A variant's posterior from its raters' evidence (key id -> its evidence; None: the open API's).

    The prior and the open API's ratings count in full; each key's are scaled down to at most ``share`` of the
    variant's evidence (:func:`key_cap`). ``feedback`` counts every rating taken.
    """
    keys = {key: evidence for key, evidence in by_key.items() if key is not None}
    open_api = by_key.get(None, Evidence())
    cap = key_cap([e.weight for e in keys.values()], PRIOR_STRENGTH + open_api.weight, share)
    successes, failures = open_api.successes, open_api.failures
    for evidence in keys.values():
        scale = min(1.0, cap / evidence.weight) if evidence.weight else 0.0
        successes, failures = successes + scale * evidence.successes, failures + scale * evidence.failures
    return Posterior(successes, failures, sum(e.feedback for e in by_key.values()))


def user_share(name: str, user: str) -> float:
    """A stable point in [0, 1) for ``user`` in experiment ``name`` (the same on every replica, every restart)."""
    digest = hashlib.sha256(f"{name}\0{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(
    experiment: Experiment,
    posteriors: Mapping[str, Posterior],
    user: str | None,
    rng: random.Random,
) -> str:
    """The variant that serves a request: by weight (a user's stable share; else drawn) or by Thompson sampling."""
    spec = experiment.spec
    if spec.policy is Policy.BANDIT:
        return thompson(spec.models, posteriors, rng)
    point = user_share(experiment.name, user) if user else rng.random()
    edge = 0.0
    for model in spec.models:
        edge += spec.variants[model]
        if point < edge:
            return model
    return spec.models[-1]  # the weights' sum fell a rounding error short of 1


def thompson(models: tuple[str, ...], posteriors: Mapping[str, Posterior], rng: random.Random) -> str:
    """The model whose mean reward, drawn from its posterior, is highest (Thompson sampling)."""
    draws = {model: rng.betavariate(p.alpha, p.beta) for model in models for p in (posteriors.get(model, PRIOR),)}
    return max(models, key=draws.__getitem__)
