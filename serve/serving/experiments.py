"""Experiments (model aliases split among served models) and the feedback that trains their bandits."""

from __future__ import annotations

import asyncio
import functools

from serve import metrics
from serve.access import may_see, owner_filter
from serve.access.keys import ApiKey
from serve.errors import Forbidden
from serve.experiments.feedback import FeedbackRequest
from serve.experiments.policy import ExperimentSpec
from serve.experiments.traffic import NO_EXPERIMENT, Experiments


class ExperimentsAndFeedback:
    """What the experiment routes and ``POST /v1/feedback`` (and gRPC's ``Feedback``) answer."""

    def __init__(self, experiments: Experiments) -> None:
        self.experiments = experiments

    async def listing(self) -> dict:
        """Every experiment: its policy, its variants and each variant's posterior."""
        return {"object": "list", "data": await asyncio.to_thread(self.experiments.listing)}

    async def describe(self, name: str) -> dict:
        """One experiment with its variants' posteriors (404 if there is none)."""
        return await asyncio.to_thread(self.experiments.describe, name)

    async def define(self, name: str, spec: ExperimentSpec) -> dict:
        """Create or replace experiment ``name`` (replacing keeps the posteriors of the variants it keeps)."""
        return await asyncio.to_thread(self.experiments.define, name, spec)

    async def delete(self, name: str) -> dict:
        """Remove experiment ``name`` and its posteriors (404 if there is none)."""
        return await asyncio.to_thread(self.experiments.delete, name)

    async def rate(self, feedback: FeedbackRequest, key: ApiKey | None) -> dict:
        """Feedback taken for ``key`` (it may rate what it generated), and its reward in the per-variant metric."""
        answer = await asyncio.to_thread(self.experiments.rate, feedback, lambda owner: may_see(key, owner))
        labels = {"experiment": answer["experiment"] or NO_EXPERIMENT, "variant": answer["model"]}
        metrics.observe(metrics.VARIANT_REWARD, answer["reward"], **labels)
        return answer

    async def preferences(self, user: str, key: ApiKey | None, owner: str | None) -> dict:
        """What ``user``'s ratings taught under ``key`` (an admin's: every key's, or ``owner``'s; 404 if nothing)."""
        if owner is not None:
            _admin_names(key)
            return await asyncio.to_thread(self.experiments.preferences, user, lambda found: found == owner)
        return await asyncio.to_thread(self.experiments.preferences, user, functools.partial(may_see, key))

    async def forget(self, user: str, key: ApiKey | None, owner: str | None) -> dict:
        """Delete ``user``'s records under ``key`` (an admin's: under ``owner``, if it names one; 404 if none)."""
        if owner is not None:
            _admin_names(key)
        return await asyncio.to_thread(self.experiments.forget, user, owner if owner is not None else key and key.id)


def _admin_names(key: ApiKey | None) -> None:
    """Refuse (403 naming ``owner``) a key that names another key's users without being an admin's."""
    if owner_filter(key) is not None:
        raise Forbidden("owner: only an admin key names another key's users", "owner")
