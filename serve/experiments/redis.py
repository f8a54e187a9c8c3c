"""Experiments, posteriors and serving records in Redis (a stack across machines).

A rating is one optimistic transaction (WATCH the record and the definitions, MULTI the writes), so an id counts
once even when two replicas rate it at the same moment. Users' records of an experiment are one hash beside its
posteriors (so redefining and deleting treat both alike); a set per user names the (key, experiment) pairs they have
records in, which reading and forgetting a user's records follow. A user's records of what made what they rated (their
tastes) are one hash per user, over every key.
"""

from __future__ import annotations

import dataclasses
import json

from serve.experiments.policy import Evidence, Experiment, ExperimentSpec
from serve.experiments.preferences import Preference
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


_STATS = ("successes", "failures", "feedback")


def _preferences_key(name: str) -> str:
    """A hash: ``<variant>:<stat>:<key id>:<user>`` (the open API's: an empty key id; the user last, as it is)."""
    return f"{_PREFIX}experiment:{name}:preferences"


def _user_field(variant: str, stat: str, owner: str | None, user: str) -> str:
    return f"{variant}:{stat}:{owner or ''}:{user}"


def _user_key(user: str) -> str:
    """A set: ``<key id>:<experiment>`` for each experiment the user has records in under that key."""
    return f"{_PREFIX}preferences:{user}"


def _tastes_key(user: str) -> str:
    """A hash: ``<key id>:<record>:<variant>:<stat>`` per taste the user rated (the open API's: an empty key id)."""
    return f"{_PREFIX}tastes:{user}"


def _tastes(fields: dict[str, str], user: str) -> list[Preference]:
    """The records a user's tastes hash holds, by key, record and variant."""
    stats: dict[tuple[str, str, str], dict[str, str]] = {}
    for name, value in fields.items():
        owner, record, rest = name.split(":", 2)
        variant, stat = rest.rsplit(":", 1)
        stats.setdefault((owner, record, variant), {})[stat] = value
    return [
        Preference(owner or None, user, record, variant, _evidence([found.get(stat) for stat in _STATS]))
        for (owner, record, variant), found in sorted(stats.items())
    ]


def _evidence(values: list[str | None]) -> Evidence | None:
    """Evidence from its three stats as stored (None if it has none)."""
    return None if values[0] is None else Evidence(float(values[0]), float(values[1]), int(values[2]))


def _served_key(item_id: str) -> str:
    return f"{_PREFIX}served:{item_id}"


class RedisExperimentStore(ExperimentStore):
    """Experiments in Redis; serving records expire on their own after the retention."""

    def __init__(self, url: str, retention_s: float = SERVED_RETENTION_S) -> None:
        super().__init__(retention_s)
        self.redis = redis_client(url)

    def define(self, experiment: Experiment) -> None:
        """See :meth:`ExperimentStore.define`."""
        keys = (_posterior_key(experiment.name), _preferences_key(experiment.name))

        def change(pipe) -> None:
            dropped = {
                key: [f for f in pipe.hkeys(key) if f.split(":")[0] not in experiment.spec.models] for key in keys
            }
            pipe.multi()
            pipe.hset(_EXPERIMENTS, experiment.name, experiment.spec.model_dump_json())
            for key, fields in dropped.items():
                if fields:
                    pipe.hdel(key, *fields)

        self.redis.transaction(change, *keys)

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
            removed, *_ = pipe.hdel(_EXPERIMENTS, name).delete(_posterior_key(name), _preferences_key(name)).execute()
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
        fields |= {"user": served.user} if served.user is not None else {}
        fields |= {"loras": json.dumps(served.loras)} if served.loras else {}
        fields |= {"sampler": served.sampler} if served.sampler else {}
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
            user=fields.get("user"),
            loras=tuple(json.loads(fields["loras"])) if "loras" in fields else (),
            sampler=fields.get("sampler"),
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
            variant, owner = served.model, served.owner
            successes, failures, observations = evidence_change(reward, replaced)
            for record, made_by in served.tastes():
                field = f"{owner or ''}:{record}:{made_by}"
                pipe.hincrbyfloat(_tastes_key(served.user), f"{field}:successes", successes)
                pipe.hincrbyfloat(_tastes_key(served.user), f"{field}:failures", failures)
                pipe.hincrby(_tastes_key(served.user), f"{field}:feedback", observations)
            if counts:
                posterior = _posterior_key(served.experiment)
                pipe.hincrbyfloat(posterior, _field(variant, owner, "successes"), successes)
                pipe.hincrbyfloat(posterior, _field(variant, owner, "failures"), failures)
                pipe.hincrby(posterior, _field(variant, owner, "feedback"), observations)
                if served.user is not None:
                    user, mine = served.user, _preferences_key(served.experiment)
                    pipe.hincrbyfloat(mine, _user_field(variant, "successes", owner, user), successes)
                    pipe.hincrbyfloat(mine, _user_field(variant, "failures", owner, user), failures)
                    pipe.hincrby(mine, _user_field(variant, "feedback", owner, user), observations)
                    pipe.sadd(_user_key(user), f"{owner or ''}:{served.experiment}")
            return dataclasses.replace(served, reward=reward, counted=counts, measured=measured)

        return self.redis.transaction(change, key, _EXPERIMENTS, value_from_callable=True)

    def user_evidence(self, experiment: Experiment, owner: str | None, user: str) -> dict[str, Evidence]:
        """See :meth:`ExperimentStore.user_evidence`."""
        return {
            variant: found
            for variant, found in self._user_evidence(self.redis, experiment.name, experiment.spec.models, owner, user)
            if found is not None
        }

    @staticmethod
    def _user_evidence(client, name: str, models, owner: str | None, user: str) -> list[tuple[str, Evidence | None]]:
        """Each of ``models`` with ``user``'s evidence of it in experiment ``name`` (None: none)."""
        fields = [_user_field(model, stat, owner, user) for model in models for stat in _STATS]
        values = client.hmget(_preferences_key(name), fields) if fields else []
        return [(model, _evidence(values[i * 3 : i * 3 + 3])) for i, model in enumerate(models)]

    def _pairs(self, client, user: str) -> list[tuple[str | None, Experiment]]:
        """The (key id, experiment) pairs ``user`` has records in (those of experiments deleted since left out)."""
        pairs = [member.split(":", 1) for member in client.smembers(_user_key(user))]
        specs = client.hgetall(_EXPERIMENTS)
        return [
            (owner or None, Experiment(name, ExperimentSpec.model_validate_json(specs[name])))
            for owner, name in sorted(pairs)
            if name in specs
        ]

    def preferences(self, user: str) -> list[Preference]:
        """See :meth:`ExperimentStore.preferences`."""
        return [
            Preference(owner, user, experiment.name, variant, found)
            for owner, experiment in self._pairs(self.redis, user)
            for variant, found in self._user_evidence(self.redis, experiment.name, experiment.spec.models, owner, user)
            if found is not None
        ] + _tastes(self.redis.hgetall(_tastes_key(user)), user)

    def forget(self, user: str, owner: str | None) -> int:
        """See :meth:`ExperimentStore.forget`: one transaction, watching the user's set."""

        def change(pipe) -> int:
            mine = [(key_id, experiment) for key_id, experiment in self._pairs(pipe, user) if key_id == owner]
            models = {experiment.name: experiment.spec.models for _, experiment in mine}
            found = [
                sum(evidence is not None for _, evidence in self._user_evidence(pipe, name, kept, owner, user))
                for name, kept in models.items()
            ]
            members = [member for member in pipe.smembers(_user_key(user)) if member.split(":", 1)[0] == (owner or "")]
            tastes = [f for f in pipe.hkeys(_tastes_key(user)) if f.split(":", 1)[0] == (owner or "")]
            pipe.multi()
            if tastes:
                pipe.hdel(_tastes_key(user), *tastes)
            for name, kept in models.items():
                pipe.hdel(_preferences_key(name), *(_user_field(m, stat, owner, user) for m in kept for stat in _STATS))
            if members:
                pipe.srem(_user_key(user), *members)
            return sum(found) + len(tastes) // len(_STATS)

        return self.redis.transaction(change, _user_key(user), _tastes_key(user), value_from_callable=True)

    def close(self) -> None:
        """See :meth:`ExperimentStore.close`."""
        self.redis.close()
