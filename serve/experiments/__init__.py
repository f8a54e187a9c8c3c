"""Experiments: a model alias served by one of its variants, by weight (sticky per user) or by a bandit.

Declared once (:mod:`serve.experiments.policy`: :class:`ExperimentSpec`, checked against the served models), kept in
the stack's store with its variants' posteriors and what served each image or job (the contract
:mod:`serve.experiments.store`, one module per store: :mod:`serve.experiments.sqlite`, :mod:`serve.experiments.redis`),
so every Gateway replica and a restart see the same experiments and posteriors. Feedback
(:mod:`serve.experiments.feedback`) names an image or a job and adds its reward to the posterior of the variant that
served it.
"""

from __future__ import annotations

from serve.experiments.redis import RedisExperimentStore
from serve.experiments.sqlite import SqliteExperimentStore
from serve.experiments.store import ExperimentStore
from serve.stores import scheme


def open_experiment_store(url: str) -> ExperimentStore:
    """The experiment store at ``url`` (``sqlite:///PATH`` or ``redis://HOST:PORT/DB``)."""
    if scheme(url) == "sqlite":
        return SqliteExperimentStore(url)
    return RedisExperimentStore(url)
