"""Experiments, posteriors and serving records in the stack's SQLite file (one machine)."""

from __future__ import annotations

import dataclasses
import json

from serve.experiments.policy import Evidence, Experiment, ExperimentSpec
from serve.experiments.preferences import Preference
from serve.experiments.store import SERVED_RETENTION_S, ExperimentStore, Served, evidence_change, replaced_reward
from serve.stores import serialized, sqlite_open

_SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (name TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS experiment_evidence (experiment TEXT NOT NULL, variant TEXT NOT NULL, owner TEXT NOT NULL,
    successes REAL NOT NULL, failures REAL NOT NULL, feedback INTEGER NOT NULL,
    PRIMARY KEY (experiment, variant, owner));
CREATE TABLE IF NOT EXISTS served (id TEXT PRIMARY KEY, model TEXT NOT NULL, experiment TEXT, owner TEXT,
    created_at REAL NOT NULL, reward REAL, measured INTEGER NOT NULL DEFAULT 0, user TEXT, loras TEXT, sampler TEXT);
CREATE INDEX IF NOT EXISTS served_created ON served (created_at);
CREATE INDEX IF NOT EXISTS served_by_key ON served (experiment, owner);
CREATE TABLE IF NOT EXISTS preferences (experiment TEXT NOT NULL, variant TEXT NOT NULL, owner TEXT NOT NULL,
    user TEXT NOT NULL, successes REAL NOT NULL, failures REAL NOT NULL, feedback INTEGER NOT NULL,
    PRIMARY KEY (experiment, variant, owner, user));
CREATE INDEX IF NOT EXISTS preferences_of_user ON preferences (user, owner);
"""
_OPEN_API = ""
"""The ``owner`` of the open API's evidence (no key)."""
_ADDED = (
    "DO UPDATE SET successes = successes + excluded.successes, failures = failures + excluded.failures, "
    "feedback = feedback + excluded.feedback"
)
"""How a rating adds to a row of evidence (a variant's per key, or a user's)."""
_KEPT_POSTERIORS = """
INSERT OR IGNORE INTO experiment_evidence SELECT experiment, variant, '', successes, failures, feedback
    FROM experiment_posteriors;
DROP TABLE experiment_posteriors;
"""
"""A store made before evidence was kept per key: its posteriors kept as evidence of no key (counted in full)."""


class SqliteExperimentStore(ExperimentStore):
    """Experiments in the stack's SQLite file: each change one ``BEGIN IMMEDIATE`` transaction."""

    def __init__(self, url: str, retention_s: float = SERVED_RETENTION_S) -> None:
        super().__init__(retention_s)
        self.db, self._lock = sqlite_open(url, _SCHEMA)
        tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "experiment_posteriors" in tables:
            self.db.executescript(_KEPT_POSTERIORS)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(served)")}
        if "measured" not in columns:  # an older store's
            self.db.execute("ALTER TABLE served ADD COLUMN measured INTEGER NOT NULL DEFAULT 0")
        for column in ("user", "loras", "sampler"):
            if column not in columns:
                self.db.execute(f"ALTER TABLE served ADD COLUMN {column} TEXT")

    @serialized
    def define(self, experiment: Experiment) -> None:
        """See :meth:`ExperimentStore.define`."""
        kept = experiment.spec.models
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "INSERT OR REPLACE INTO experiments (name, spec) VALUES (?, ?)",
                (experiment.name, experiment.spec.model_dump_json()),
            )
            places = ",".join("?" * len(kept))
            for table in ("experiment_evidence", "preferences"):
                self.db.execute(
                    f"DELETE FROM {table} WHERE experiment = ? AND variant NOT IN ({places})", (experiment.name, *kept)
                )

    @serialized
    def get(self, name: str) -> Experiment | None:
        """See :meth:`ExperimentStore.get`."""
        row = self.db.execute("SELECT name, spec FROM experiments WHERE name = ?", (name,)).fetchone()
        return None if row is None else Experiment(row["name"], ExperimentSpec.model_validate_json(row["spec"]))

    @serialized
    def list(self) -> list[Experiment]:
        """See :meth:`ExperimentStore.list`."""
        rows = self.db.execute("SELECT name, spec FROM experiments ORDER BY name").fetchall()
        return [Experiment(row["name"], ExperimentSpec.model_validate_json(row["spec"])) for row in rows]

    @serialized
    def delete(self, name: str) -> bool:
        """See :meth:`ExperimentStore.delete`."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM experiment_evidence WHERE experiment = ?", (name,))
            self.db.execute("DELETE FROM preferences WHERE experiment = ?", (name,))
            return self.db.execute("DELETE FROM experiments WHERE name = ?", (name,)).rowcount > 0

    @serialized
    def evidence(self, name: str) -> dict[str, dict[str | None, Evidence]]:
        """See :meth:`ExperimentStore.evidence`."""
        found: dict[str, dict[str | None, Evidence]] = {}
        rows = self.db.execute(
            "SELECT variant, owner, successes, failures, feedback FROM experiment_evidence WHERE experiment = ?",
            (name,),
        )
        for row in rows:
            owner = row["owner"] if row["owner"] != _OPEN_API else None
            found.setdefault(row["variant"], {})[owner] = Evidence(row["successes"], row["failures"], row["feedback"])
        return found

    @serialized
    def _record(self, item_ids: list[str], served: Served) -> None:
        """See :meth:`ExperimentStore.record`; records past retention go in the same transaction."""
        loras = json.dumps(served.loras) if served.loras else None
        row = (served.model, served.experiment, served.owner, served.created_at, served.user, loras, served.sampler)
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM served WHERE created_at < ?", (served.created_at - self.retention_s,))
            self.db.executemany(
                "INSERT OR REPLACE INTO served (id, model, experiment, owner, created_at, user, loras, sampler) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(item_id, *row) for item_id in item_ids],
            )

    @serialized
    def served(self, item_id: str) -> Served | None:
        """See :meth:`ExperimentStore.served`."""
        return self._served(item_id)

    def _served(self, item_id: str) -> Served | None:
        row = self.db.execute(
            "SELECT model, experiment, owner, created_at, reward, measured, user, loras, sampler FROM served "
            "WHERE id = ? AND created_at >= ?",
            (item_id, self.clock() - self.retention_s),
        ).fetchone()
        if row is None:
            return None
        loras = tuple(json.loads(row["loras"])) if row["loras"] else ()
        return Served(*row[:5], measured=bool(row[5]), user=row[6], loras=loras, sampler=row[8])

    @serialized
    def rate(self, item_id: str, reward: float, measured: bool = False) -> Served | None:
        """See :meth:`ExperimentStore.rate`."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            served = self._served(item_id)
            if served is None:
                return None
            replaced = replaced_reward(served, item_id, measured)
            row = self.db.execute("SELECT spec FROM experiments WHERE name = ?", (served.experiment,)).fetchone()
            counted = row is not None and served.model in ExperimentSpec.model_validate_json(row["spec"]).models
            self.db.execute("UPDATE served SET reward = ?, measured = ? WHERE id = ?", (reward, measured, item_id))
            rater = (served.experiment, served.model, served.owner or _OPEN_API)  # the variant's, by key
            change = evidence_change(reward, replaced)
            if counted:
                self.db.execute(
                    "INSERT INTO experiment_evidence (experiment, variant, owner, successes, failures, feedback) "
                    f"VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (experiment, variant, owner) {_ADDED}",
                    (*rater, *change),
                )
            mine = [(served.experiment, served.model)] if counted and served.user is not None else []
            self.db.executemany(  # the user's records: of the experiment's variant, and of what made it
                "INSERT INTO preferences (experiment, variant, owner, user, successes, failures, feedback) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (experiment, variant, owner, user) {_ADDED}",
                [(*record, rater[2], served.user, *change) for record in mine + served.tastes()],
            )
        return dataclasses.replace(served, reward=reward, counted=counted, measured=measured)

    @serialized
    def user_evidence(self, experiment: Experiment, owner: str | None, user: str) -> dict[str, Evidence]:
        """See :meth:`ExperimentStore.user_evidence`."""
        rows = self.db.execute(
            "SELECT variant, successes, failures, feedback FROM preferences "
            "WHERE experiment = ? AND owner = ? AND user = ?",
            (experiment.name, owner or _OPEN_API, user),
        )
        return {row["variant"]: Evidence(row["successes"], row["failures"], row["feedback"]) for row in rows}

    @serialized
    def preferences(self, user: str) -> list[Preference]:
        """See :meth:`ExperimentStore.preferences`."""
        rows = self.db.execute(
            "SELECT owner, experiment, variant, successes, failures, feedback FROM preferences WHERE user = ? "
            "ORDER BY owner, experiment, variant",
            (user,),
        )
        return [
            Preference(
                row["owner"] or None,
                user,
                row["experiment"],
                row["variant"],
                Evidence(row["successes"], row["failures"], row["feedback"]),
            )
            for row in rows
        ]

    @serialized
    def forget(self, user: str, owner: str | None) -> int:
        """See :meth:`ExperimentStore.forget`."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db.execute(
                "DELETE FROM preferences WHERE user = ? AND owner = ?", (user, owner or _OPEN_API)
            ).rowcount

    def close(self) -> None:
        """See :meth:`ExperimentStore.close`."""
        self.db.close()
