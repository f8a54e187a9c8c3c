"""Experiments, posteriors and serving records in Redis (a stack across machines).

A rating is one optimistic transaction (WATCH the record and the definitions, MULTI the writes), so an id counts
once even when two replicas rate it at the same moment.
"""

from __future__ import annotations

from serve.experiments.policy import MAX_KEY_EVIDENCE, Experiment, ExperimentSpec, Posterior
from serve.experiments.store import SERVED_RETENTION_S, ExperimentStore, Served, already_rated
from serve.stores import redis_client

_PREFIX = "easel:"
_EXPERIMENTS = _PREFIX + "experiments"  # hash: name -> its spec (JSON)


def _posterior_key(name: str) -> str:
    """A hash: ``<variant>:successes``, ``<variant>:failures``, ``<variant>:feedback``."""
    return f"{_PREFIX}experiment:{name}:posteriors"


def _rated_by_key(name: str) -> str:
    """A hash: a key's id -> how many of the experiment's ids it has rated."""
    return f"{_PREFIX}experiment:{name}:rated-by-key"


def _served_key(item_id: str) -> str:
    return f"{_PREFIX}served:{item_id}"


class RedisExperimentStore(ExperimentStore):
    """Experiments in Redis; serving records expire on their own after the retention."""

    def __init__(self, url: str, retention_s: float = SERVED_RETENTION_S) -> None:
        super().__init__(retention_s)
        self.redis = redis_client(url)

    def define(self, experiment: Experiment) -> None:
        """See :meth:`ExperimentStore.define`."""
        key = _posterior_key(experiment.name)

        def change(pipe) -> None:
            dropped = [f for f in pipe.hkeys(key) if f.rsplit(":", 1)[0] not in experiment.spec.models]
            pipe.multi()
            pipe.hset(_EXPERIMENTS, experiment.name, experiment.spec.model_dump_json())
            if dropped:
                pipe.hdel(key, *dropped)

        self.redis.transaction(change, key)

    def get(self, name: str) -> Experiment | None:
        """See :meth:`ExperimentStore.get`."""
        spec = self.redis.hget(_EXPERIMENTS, name)
        return None if spec is None else Experiment(name, ExperimentSpec.model_validate_json(spec))

    def list(self) -> list[Experiment]:
        """See :meth:`ExperimentStore.list`."""
        specs = self.redis.hgetall(_EXPERIMENTS)
        return [Experiment(name, ExperimentSpec.model_validate_json(specs[name])) for name in sorted(specs)]

    def delete(self, name: str) -> bool:
        """See :meth:`ExperimentStore.delete`."""
        with self.redis.pipeline() as pipe:
            removed, _ = pipe.hdel(_EXPERIMENTS, name).delete(_posterior_key(name), _rated_by_key(name)).execute()
        return bool(removed)

    def posteriors(self, name: str) -> dict[str, Posterior]:
        """See :meth:`ExperimentStore.posteriors`."""
        fields = self.redis.hgetall(_posterior_key(name))
        variants = {f.rsplit(":", 1)[0] for f in fields}
        return {
            v: Posterior(float(fields[f"{v}:successes"]), float(fields[f"{v}:failures"]), int(fields[f"{v}:feedback"]))
            for v in variants
        }

    def _record(self, item_ids: list[str], served: Served) -> None:
        """See :meth:`ExperimentStore.record`: one hash per id, expiring after the retention."""
        fields = {"model": served.model, "created_at": repr(served.created_at)}
        fields |= {"experiment": served.experiment} if served.experiment else {}
        fields |= {"owner": served.owner} if served.owner else {}
        with self.redis.pipeline() as pipe:
            for item_id in item_ids:
                pipe.hset(_served_key(item_id), mapping=fields).expire(_served_key(item_id), int(self.retention_s))
            pipe.execute()

    def served(self, item_id: str) -> Served | None:
        """See :meth:`ExperimentStore.served`."""
        return self._served(self.redis.hgetall(_served_key(item_id)))

    def _served(self, fields: dict[str, str]) -> Served | None:
        if not fields or float(fields["created_at"]) < self.clock() - self.retention_s:
            return None
        reward = fields.get("reward")
        return Served(
            fields["model"],
            fields.get("experiment"),
            fields.get("owner"),
            float(fields["created_at"]),
            None if reward is None else float(reward),
        )

    def rate(self, item_id: str, reward: float) -> Served | None:
        """See :meth:`ExperimentStore.rate`."""
        key = _served_key(item_id)

        def change(pipe) -> Served | None:
            served = self._served(pipe.hgetall(key))
            if served is None:
                return None
            if served.reward is not None:
                raise already_rated(item_id)
            spec = pipe.hget(_EXPERIMENTS, served.experiment) if served.experiment else None
            counts = spec is not None and served.model in ExperimentSpec.model_validate_json(spec).models
            by_key = _rated_by_key(served.experiment or "")
            pipe.watch(by_key)  # a key's count, as its record, changes in this transaction only
            if served.owner is not None:
                counts = counts and int(pipe.hget(by_key, served.owner) or 0) < MAX_KEY_EVIDENCE
            pipe.multi()
            pipe.hset(key, "reward", repr(reward))
            if served.owner is not None and served.experiment:
                pipe.hincrby(by_key, served.owner, 1)
            if counts:
                posterior, variant = _posterior_key(served.experiment), served.model
                pipe.hincrbyfloat(posterior, f"{variant}:successes", reward)
                pipe.hincrbyfloat(posterior, f"{variant}:failures", 1.0 - reward)
                pipe.hincrby(posterior, f"{variant}:feedback", 1)
            return Served(served.model, served.experiment, served.owner, served.created_at, reward, counts)

        return self.redis.transaction(change, key, _EXPERIMENTS, value_from_callable=True)

    def close(self) -> None:
        """See :meth:`ExperimentStore.close`."""
        self.redis.close()
