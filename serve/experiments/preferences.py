"""Preferences per user: what each end user's ratings taught every experiment, and the bandit a personal one draws from.

A request's ``user`` (OpenAI's field) names an end user of the API key that asked: the pair (key, user) keys a
record, so one ``user`` string under two keys is two users and no record crosses keys. Each rating of an image (or
job) served to a user through an experiment, feedback or a measured score alike, adds to that user's evidence of
the variant that served it, as it adds to the pooled posterior (:meth:`~serve.experiments.store.ExperimentStore.rate`).

An experiment in ``mode: personal`` draws a user's variant by Thompson sampling from the user's own posterior: their
evidence over a prior that is the pooled posterior, its weight capped at :data:`PERSONAL_PRIOR_STRENGTH`
pseudo-observations (:func:`personal`), so a new user is served as the population is, and a few of their own
ratings outweigh everyone else's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from serve.experiments.policy import PRIOR, Evidence, Posterior

PERSONAL_PRIOR_STRENGTH = 10.0
"""The most pseudo-observations the pooled posterior weighs as a user's prior (its mean kept)."""


@dataclass(frozen=True)
class Preference:
    """One user's evidence of one variant of one experiment, under one key (``owner`` None: the open API's)."""

    owner: str | None
    user: str
    experiment: str
    variant: str
    evidence: Evidence


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
    """``GET /v1/users/{user}/preferences``: per key and experiment, each variant's posterior from the user's evidence.

    ``preferred``: the variant whose posterior mean is highest (what the user's ratings favour so far).
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
            "experiment": experiment,
            "preferred": max(sorted(variants), key=lambda variant: variants[variant].mean),
            "variants": {variant: variants[variant].to_api() for variant in sorted(variants)},
        }
        for (owner, experiment), variants in sorted(grouped.items(), key=lambda item: (item[0][0] or "", item[0][1]))
    ]
    return {"object": "list", "user": user, "data": data}
