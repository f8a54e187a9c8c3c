"""Experiments, posteriors and serving records in Redis (a stack across machines).

A rating is one optimistic transaction (WATCH the record and the definitions, MULTI the writes), so an id counts
once even when two replicas rate it at the same moment.
"""

from __future__ import annotations

from serve.experiments.policy import Evidence, Experiment, ExperimentSpec
from serve.experiments.store import (
    SERVED_RETENTION_S,
    ExperimentStore,
    Served,
    evidence_change,
    replaced_reward,
)
from serve.stores import redis_client

_PREFIX = "easel:"
_EXPERIMENTS = _PREFIX + "experiments"  # hash: name -> its spec (JSON)


def _posterior_key(name: str) -> str:
    """A hash: ``<variant>:<key id>:successes``, ``...:failures``, ``...:feedback`` (the open API's: no key id).

    A store made before evidence was kept per key holds ``<variant>:successes`` ...: evidence of no key.
    """
    return f"{_PREFIX}experiment:{name}:posteriors"


def _field(variant: str, owner: str | None, stat: str) -> str:
    return ":".join((variant, *((owner,) if owner else ()), stat))


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
            dropped = [f for f in pipe.hkeys(key) if f.split(":")[0] not in experiment.spec.models]
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
            removed, _ = pipe.hdel(_EXPERIMENTS, name).delete(_posterior_key(name)).execute()
        return bool(removed)

    def evidence(self, name: str) -> dict[str, dict[str | None, Evidence]]:
        """See :meth:`ExperimentStore.evidence`."""
        fields = self.redis.hgetall(_posterior_key(name))
        raters = {(parts[0], parts[1] if len(parts) == 3 else None) for f in fields for parts in (f.split(":"),)}
        found: dict[str, dict[str | None, Evidence]] = {}
        for variant, owner in raters:
            stats = [fields[_field(variant, owner, stat)] for stat in ("successes", "failures", "feedback")]
            found.setdefault(variant, {})[owner] = Evidence(float(stats[0]), float(stats[1]), int(stats[2]))
        return found

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
            measured=fields.get("measured") == "1",
        )

    def rate(self, item_id: str, reward: float, measured: bool = False) -> Served | None:
        """See :meth:`ExperimentStore.rate`."""
        key = _served_key(item_id)

        def change(pipe) -> Served | None:
            served = self._served(pipe.hgetall(key))
            if served is None:
                return None
            replaced = replaced_reward(served, item_id, measured)
            spec = pipe.hget(_EXPERIMENTS, served.experiment) if served.experiment else None
            counts = spec is not None and served.model in ExperimentSpec.model_validate_json(spec).models
            pipe.multi()
            pipe.hset(key, mapping={"reward": repr(reward), "measured": "1" if measured else "0"})
            if counts:
                posterior, variant, owner = _posterior_key(served.experiment), served.model, served.owner
                successes, failures, observations = evidence_change(reward, replaced)
                pipe.hincrbyfloat(posterior, _field(variant, owner, "successes"), successes)
                pipe.hincrbyfloat(posterior, _field(variant, owner, "failures"), failures)
                pipe.hincrby(posterior, _field(variant, owner, "feedback"), observations)
            return Served(served.model, served.experiment, served.owner, served.created_at, reward, counts, measured)

        return self.redis.transaction(change, key, _EXPERIMENTS, value_from_callable=True)

    def close(self) -> None:
        """See :meth:`ExperimentStore.close`."""
        self.redis.close()
