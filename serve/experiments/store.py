"""The experiment store's contract: experiments, their variants' posteriors, and what served each image or job.

Two implementations keep it, tested against the same tests: :mod:`serve.experiments.sqlite` and
:mod:`serve.experiments.redis` (:func:`serve.experiments.open_experiment_store` picks one by URL). Every Gateway
replica (and, with Redis, every node) reads the same definitions and posteriors, and a restart keeps them. A reward
marks its id rated and adds to its key's evidence of its variant in one transaction, so an id counts once (feedback
may replace a measured reward: :meth:`ExperimentStore.rate`); a
variant's posterior pools its keys' evidence, each within its share (:func:`~serve.experiments.policy.pooled`).
A rating of what was served to a ``user`` adds to that user's records too, in the same transaction: of the experiment
that served it, and of what made it (model, LoRAs, sampler: :mod:`serve.experiments.preferences`).
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass

from serve.errors import Conflict
from serve.experiments.policy import Evidence, Experiment, Posterior, pooled
from serve.experiments.preferences import Preference, tastes_of

SERVED_RETENTION_S = 30 * 24 * 3600.0
"""How long what served an image (or job) is kept, so feedback can name it."""


@dataclass(frozen=True)
class Served:
    """What served an image or a job: the model, the experiment it was served through (if any), whose it is."""

    model: str
    experiment: str | None = None
    owner: str | None = None  # the id of the API key that asked for it (None: the API was open)
    created_at: float = 0.0
    reward: float | None = None  # its feedback, once given
    counted: bool = False  # its feedback went to a posterior (a variant its experiment has), within its key's share
    measured: bool = False  # its reward is a measurement (an experiment's score), which feedback may replace once
    user: str | None = None  # the end user it was served to (the request's ``user``), whose record its rating joins
    loras: tuple[str, ...] = ()  # the LoRAs that made it, and its sampler: the user's tastes a rating adds to
    sampler: str | None = None

    def tastes(self) -> list[tuple[str, str]]:
        """The taste records (and their variants) a rating of it adds to, when it was served to a user."""
        return tastes_of(self.model, self.loras, self.sampler) if self.user is not None else []


def already_rated(item_id: str) -> Conflict:
    """The 409 for a second rating of one id."""
    return Conflict(f"{item_id} has been rated already (each image or job counts once)")


def replaced_reward(served: Served, item_id: str, measured: bool) -> float | None:
    """The measured reward a rating of ``served`` replaces (None: it had none), or the 409 of a second rating.

    Feedback replaces a measurement (an experiment's score) once; nothing else is rated twice.
    """
    if served.reward is None:
        return None
    if served.measured and not measured:
        return served.reward
    raise already_rated(item_id)


def evidence_change(reward: float, replaced: float | None) -> tuple[float, float, int]:
    """What a rating adds to its variant's evidence: successes, failures, observations (a replacement adds none)."""
    if replaced is None:
        return reward, 1.0 - reward, 1
    return reward - replaced, replaced - reward, 0


class ExperimentStore(ABC):
    """Experiments, their posteriors and serving records. ``clock`` is injectable for tests."""

    clock = staticmethod(time.time)

    def __init__(self, retention_s: float = SERVED_RETENTION_S) -> None:
        self.retention_s = retention_s

    @abstractmethod
    def define(self, experiment: Experiment) -> None:
        """Create or replace an experiment; posteriors (and users' records) of variants it keeps stay, others go."""

    @abstractmethod
    def get(self, name: str) -> Experiment | None:
        """The experiment called ``name``, or None."""

    @abstractmethod
    def list(self) -> list[Experiment]:
        """Every experiment, by name."""

    @abstractmethod
    def delete(self, name: str) -> bool:
        """Remove an experiment, its posteriors and its users' records; False if there is none."""

    def posteriors(self, name: str) -> dict[str, Posterior]:
        """Each of the experiment's variants that has feedback -> its posterior (the others are at the prior)."""
        return {variant: pooled(by_key) for variant, by_key in self.evidence(name).items()}

    @abstractmethod
    def evidence(self, name: str) -> dict[str, dict[str | None, Evidence]]:
        """Each of the experiment's variants that has feedback -> each rater's evidence (None: the open API's)."""

    def record(self, item_ids: Iterable[str], served: Served) -> None:
        """Remember what served each of ``item_ids`` (images, or a job), for :data:`SERVED_RETENTION_S`."""
        self._record(list(item_ids), dataclasses.replace(served, created_at=self.clock()))

    @abstractmethod
    def _record(self, item_ids: list[str], served: Served) -> None: ...

    @abstractmethod
    def served(self, item_id: str) -> Served | None:
        """What served ``item_id``, or None (never served, or past retention)."""

    @abstractmethod
    def rate(self, item_id: str, reward: float, measured: bool = False) -> Served | None:
        """Record ``reward`` for ``item_id``; add it to its key's evidence of its variant if that still counts.

        It counts while its experiment still has the variant (how much, is its key's share: :meth:`posteriors`);
        what was served to a ``user`` adds the same to that user's evidence (:meth:`user_evidence`), and to their
        records of what made it (:meth:`Served.tastes`), experiment or not.
        Returns what served it (None: unknown id; ``counted``: whether it went to a posterior); a second rating of
        one id is a :class:`~serve.errors.Conflict`, but feedback on a ``measured`` reward (an experiment's score)
        replaces it: the measurement's evidence is taken back and the feedback's added, still one observation.
        """

    @abstractmethod
    def user_evidence(self, experiment: Experiment, owner: str | None, user: str) -> dict[str, Evidence]:
        """Each of ``experiment``'s variants that ``user`` of key ``owner`` rated -> that user's evidence."""

    @abstractmethod
    def preferences(self, user: str) -> list[Preference]:
        """Every record of ``user``: under every key, of every experiment's variants and every taste they rated."""

    @abstractmethod
    def forget(self, user: str, owner: str | None) -> int:
        """Delete the records of ``user`` of key ``owner`` (None: the open API's); how many there were."""

    @abstractmethod
    def close(self) -> None:
        """Release the store's connections."""
