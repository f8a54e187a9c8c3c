"""The Gateway's door to experiments: an alias resolved to its variant, what served each image recorded, feedback.

Also the admin operations (define, describe, list, delete), each checked against the served models, and each end
user's preferences (:mod:`serve.experiments.preferences`): what their ratings taught, read and deleted per key.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from dataclasses import dataclass

from serve import metrics
from serve.errors import NotFound
from serve.experiments.feedback import FeedbackRequest
from serve.experiments.policy import FEEDBACK, Experiment, ExperimentSpec, Mode, Policy, assign, score_reward
from serve.experiments.preferences import personal_posteriors, preferences_to_api
from serve.experiments.store import ExperimentStore, Served

NO_EXPERIMENT = "none"
"""The ``experiment`` label of a generation that named its model directly."""


@dataclass(frozen=True)
class Assignment:
    """Which model serves a request, and the experiment (alias) that chose it, if any."""

    model: str
    experiment: str | None = None
    reward: str = FEEDBACK  # what rewards the experiment's variants: feedback, or a score measured of each image
    user: str | None = None  # the request's end user, whose record a rating of what it served joins

    @property
    def label(self) -> str:
        """The metrics' ``experiment`` label."""
        return self.experiment or NO_EXPERIMENT

    def headers(self) -> dict[str, str]:
        """What the answer's headers say of it: ``Easel-Model`` (the variant), ``Easel-Experiment`` (the alias)."""
        return {"Easel-Model": self.model} | ({"Easel-Experiment": self.experiment} if self.experiment else {})

    def to_api(self) -> dict:
        """What the answer's body says of it (``experiment``: null when the request named the model itself)."""
        experiment = {"id": self.experiment, "variant": self.model} if self.experiment else None
        return {"model": self.model, "experiment": experiment}


class Experiments:
    """Experiments over the stack's store; ``served_models`` gives the names a variant may take (and an alias not).

    ``rng`` draws a split's requests without a user and the bandit's samples (seeded in tests).
    """

    def __init__(
        self,
        store: ExperimentStore,
        served_models: Callable[[], Collection[str]],
        rng: random.Random | None = None,
        scores: Collection[str] = (),
    ) -> None:
        self.store = store
        self.served_models = served_models
        self.rng = rng or random.Random()
        self.scores = tuple(scores)  # the scores the stack's scorer gives (an experiment's reward may be one)

    def define(self, name: str, spec: ExperimentSpec) -> dict:
        """Create or replace experiment ``name`` (400 naming the field for a bad one); its listing."""
        experiment = Experiment(name, spec)
        experiment.check(self.served_models(), self.scores)
        self.store.define(experiment)
        return experiment.to_api(self.store.posteriors(name))

    def describe(self, name: str) -> dict:
        """Experiment ``name`` with its posteriors (404 if there is none)."""
        return self._require(name).to_api(self.store.posteriors(name))

    def listing(self) -> list[dict]:
        """Every experiment with its posteriors."""
        return [e.to_api(self.store.posteriors(e.name)) for e in self.store.list()]

    def delete(self, name: str) -> dict:
        """Remove experiment ``name`` and its posteriors (404 if there is none)."""
        if not self.store.delete(name):
            raise self._missing(name)
        return {"object": "experiment", "id": name, "deleted": True}

    def exists(self, name: str) -> bool:
        """Whether an experiment is named ``name`` (a model added under that name would shadow it)."""
        return self.store.get(name) is not None

    def using(self, model: str) -> list[str]:
        """The experiments with ``model`` among their variants (the model may not be removed while there are)."""
        return [experiment.name for experiment in self.store.list() if model in experiment.spec.models]

    def assign(
        self, model: str | None, user: str | None, owner: str | None = None, served: Collection[str] | None = None
    ) -> Assignment | None:
        """The variant that serves a request whose ``model`` names an experiment; None when it names none.

        ``user`` of key ``owner`` (None: the open API): a personal bandit draws from that user's own posteriors.
        ``served``: the model names served, as the caller read them (None: read now).
        """
        if not model or model in (self.served_models() if served is None else served):
            return None
        experiment = self.store.get(model)
        if experiment is None:
            return None
        posteriors = self.store.posteriors(model) if experiment.spec.policy is Policy.BANDIT else {}
        if experiment.spec.mode is Mode.PERSONAL and user:
            own = self.store.user_evidence(experiment, owner, user)
            posteriors = personal_posteriors(experiment.spec.models, posteriors, own)
        chosen = assign(experiment, posteriors, user, self.rng)
        return Assignment(chosen, model, experiment.spec.reward, user or None)

    def record(
        self,
        item_ids: Collection[str],
        assignment: Assignment,
        owner: str | None,
        loras: Collection[str] = (),
        sampler: str | None = None,
    ) -> None:
        """Remember what served ``item_ids`` (images, or a job), to which user and made how, so feedback can name them.

        ``loras`` and ``sampler``: what made them beside the model (a user's rating adds to their records of each).
        """
        served = Served(
            assignment.model, assignment.experiment, owner, user=assignment.user, loras=tuple(loras), sampler=sampler
        )
        self.store.record(item_ids, served)

    def measure(self, item_ids: Collection[str], scores: Collection[dict | None], assignment: Assignment) -> None:
        """Each image's measured score as its reward, for an experiment rewarded by a score.

        ``item_ids``: recorded (:meth:`record`); ``scores``: theirs, in order. Feedback on an image replaces it.
        """
        if assignment.experiment is None or assignment.reward == FEEDBACK:
            return
        for item_id, measured in zip(item_ids, scores, strict=True):
            if measured is None or measured.get(assignment.reward) is None:  # identity: no character, or no face
                continue
            reward = score_reward(assignment.reward, measured)
            self.store.rate(item_id, reward, measured=True)
            metrics.observe(metrics.VARIANT_REWARD, reward, experiment=assignment.label, variant=assignment.model)

    def served_by(self, item_id: str) -> Assignment | None:
        """What served ``item_id`` (a job's variant, chosen at submission), or None if nothing was recorded."""
        served = self.store.served(item_id)
        return None if served is None else Assignment(served.model, served.experiment, user=served.user)

    def rate(self, feedback: FeedbackRequest, may_see: Callable[[str | None], bool]) -> dict:
        """Take a reward for what ``feedback`` names (a 404 naming the field if the caller was served no such id).

        Counted by experiment, key and whether it went to a posterior (the experiments dashboard's evidence per key).
        """
        field, item_id = feedback.target
        served = self.store.served(item_id)
        rated = self.store.rate(item_id, feedback.value) if served is not None and may_see(served.owner) else None
        if rated is None:
            what = "image" if field == "image_id" else "job"
            raise NotFound(f"{field}: no generated {what} {item_id} to rate (unknown or expired)", field)
        counted = "yes" if rated.counted else "no"
        labels = {"experiment": rated.experiment or NO_EXPERIMENT, "key_id": rated.owner or "none"}
        metrics.count(metrics.EXPERIMENT_FEEDBACK, counted=counted, **labels)
        return {
            "object": "feedback",
            "id": item_id,
            "reward": rated.reward,
            "model": rated.model,
            "experiment": rated.experiment,
        }

    def preferences(self, user: str, shown: Callable[[str | None], bool]) -> dict:
        """What ``user``'s ratings taught, under the keys ``shown`` admits (404 naming ``user`` if nothing is shown)."""
        found = [preference for preference in self.store.preferences(user) if shown(preference.owner)]
        if not found:
            raise _no_preferences(user)
        return preferences_to_api(user, found)

    def forget(self, user: str, owner: str | None) -> dict:
        """Delete ``user``'s records under key ``owner`` (404 naming ``user`` if there are none)."""
        deleted = self.store.forget(user, owner)
        if not deleted:
            raise _no_preferences(user)
        return {"object": "user.preferences", "user": user, "owner": owner, "deleted": deleted}

    def _require(self, name: str) -> Experiment:
        experiment = self.store.get(name)
        if experiment is None:
            raise self._missing(name)
        return experiment

    @staticmethod
    def _missing(name: str) -> NotFound:
        return NotFound(f"no experiment {name!r}", "name")


def _no_preferences(user: str) -> NotFound:
    """The 404 of a user with no records the caller may see (another key's user is as unknown as none)."""
    return NotFound(f"user: no preferences recorded for {user!r} under this key", "user")
