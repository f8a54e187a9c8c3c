"""Preferences per user: what each end user's ratings taught every experiment, and the bandit a personal one draws from.

A request's ``user`` (OpenAI's field) names an end user of the API key that asked: the pair (key, user) keys a
record, so one ``user`` string under two keys is two users and no record crosses keys. Each rating of an image (or
job) served to a user through an experiment, feedback or a measured score alike, adds to that user's evidence of
the variant that served it, as it adds to the pooled posterior (:meth:`~serve.experiments.store.ExperimentStore.rate`).

An experiment in ``mode: personal`` draws a user's variant by Thompson sampling from the user's own posterior: their
evidence over a prior that is the pooled posterior, its weight capped at :data:`PERSONAL_PRIOR_STRENGTH`
pseudo-observations (:func:`personal`), so a new user is served as the population is, and a few of their own
ratings outweigh everyone else's.

Every rating of what was served to a user, through an experiment or not, also adds to that user's record of what
made it (its tastes, :func:`tastes_of`): the model, each style LoRA and the sampler, so what a user likes is known
beyond any one experiment. A taste's records are stored as if of an experiment named ``@model``, ``@lora`` or
``@sampler`` (:func:`taste_record`; no experiment's name starts with ``@``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from serve.experiments.policy import PRIOR, Evidence, Posterior

EXPERIMENT = "experiment"
"""A record of an experiment's variants (``by`` of :func:`preferences_to_api`'s entries; else its taste's name)."""

PERSONAL_PRIOR_STRENGTH = 10.0
"""The most pseudo-observations the pooled posterior weighs as a user's prior (its mean kept)."""


@dataclass(frozen=True)
class Preference:
    """One user's evidence of one variant of one record, under one key (``owner`` None: the open API's).

    ``experiment``: the experiment's name, or a taste's record (:func:`taste_record`).
    """

    owner: str | None
    user: str
    experiment: str
    variant: str
    evidence: Evidence


def kept_by(record: str) -> str:
    """What a record (an experiment's name, or a taste's: :func:`taste_record`) is kept by: an experiment or a taste."""
    return record[1:] if record.startswith("@") else EXPERIMENT


def taste_record(taste: str) -> str:
    """The record a taste (``model``, ``lora``, ``sampler``) is stored under, in the place of an experiment's name."""
    return f"@{taste}"


def tastes_of(model: str, loras: Iterable[str], sampler: str | None) -> list[tuple[str, str]]:
    """The (record, variant) pairs a rating of an image made so adds to: its model, each LoRA, its sampler."""
    made = [("model", model), *(("lora", name) for name in sorted(set(loras)))]
    made += [("sampler", sampler)] if sampler else []
    return [(taste_record(taste), variant) for taste, variant in made]


def personal(pooled: Posterior, own: Evidence, strength: float = PERSONAL_PRIOR_STRENGTH) -> Posterior:
    """A user's posterior of a variant: ``own`` evidence over the ``pooled`` posterior, scaled to ``strength`` at most.

    The pooled posterior's successes and failures (its uniform prior's included) keep their ratio and weigh at most
    ``strength`` observations; the user's count in full.
    """
    weight = pooled.alpha + pooled.beta
    scale = min(1.0, strength / weight)
    return Posterior(
        pooled.alpha * scale - 1 + own.successes,  # Posterior adds its uniform prior back
        pooled.beta * scale - 1 + own.failures,
        own.feedback,
    )


def personal_posteriors(
    models: Iterable[str], pooled: Mapping[str, Posterior], own: Mapping[str, Evidence]
) -> dict[str, Posterior]:
    """Each of ``models``' posterior for one user (:func:`personal`), from the pooled ones and the user's evidence."""
    return {model: personal(pooled.get(model, PRIOR), own.get(model, Evidence())) for model in models}


def preferences_to_api(user: str, found: Iterable[Preference]) -> dict:
    """``GET /v1/users/{user}/preferences``: per key and record, each variant's posterior from the user's evidence.

    A record is an experiment's (``by``: ``experiment``) or a taste's (``by``: ``model``, ``lora``, ``sampler``;
    ``experiment`` null). ``preferred``: the variant whose posterior mean is highest (what the ratings favour so far).
    """
    grouped: dict[tuple[str | None, str], dict[str, Posterior]] = {}
    for preference in found:
        evidence = preference.evidence
        posterior = Posterior(evidence.successes, evidence.failures, evidence.feedback)
        grouped.setdefault((preference.owner, preference.experiment), {})[preference.variant] = posterior
    data = [
        {
            "object": "user.preferences",
            "user": user,
            "owner": owner,
            "by": kept_by(experiment),
            "experiment": experiment if kept_by(experiment) == EXPERIMENT else None,
            "preferred": max(sorted(variants), key=lambda variant: variants[variant].mean),
            "variants": {variant: variants[variant].to_api() for variant in sorted(variants)},
        }
        for (owner, experiment), variants in sorted(grouped.items(), key=lambda item: (item[0][0] or "", item[0][1]))
    ]
    return {"object": "list", "user": user, "data": data}
