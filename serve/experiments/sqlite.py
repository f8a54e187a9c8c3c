"""Experiments, posteriors and serving records in the stack's SQLite file (one machine)."""

from __future__ import annotations

from serve.experiments.policy import MAX_KEY_EVIDENCE, Experiment, ExperimentSpec, Posterior
from serve.experiments.store import SERVED_RETENTION_S, ExperimentStore, Served, already_rated
from serve.stores import serialized, sqlite_open

_SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (name TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS experiment_posteriors (experiment TEXT NOT NULL, variant TEXT NOT NULL,
    successes REAL NOT NULL, failures REAL NOT NULL, feedback INTEGER NOT NULL, PRIMARY KEY (experiment, variant));
CREATE TABLE IF NOT EXISTS served (id TEXT PRIMARY KEY, model TEXT NOT NULL, experiment TEXT, owner TEXT,
    created_at REAL NOT NULL, reward REAL);
CREATE INDEX IF NOT EXISTS served_created ON served (created_at);
CREATE INDEX IF NOT EXISTS served_by_key ON served (experiment, owner);
"""


class SqliteExperimentStore(ExperimentStore):
    """Experiments in the stack's SQLite file: each change one ``BEGIN IMMEDIATE`` transaction."""

    def __init__(self, url: str, retention_s: float = SERVED_RETENTION_S) -> None:
        super().__init__(retention_s)
        self.db, self._lock = sqlite_open(url, _SCHEMA)

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
            self.db.execute(
                f"DELETE FROM experiment_posteriors WHERE experiment = ? AND variant NOT IN ({places})",
                (experiment.name, *kept),
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
            self.db.execute("DELETE FROM experiment_posteriors WHERE experiment = ?", (name,))
            return self.db.execute("DELETE FROM experiments WHERE name = ?", (name,)).rowcount > 0

    @serialized
    def posteriors(self, name: str) -> dict[str, Posterior]:
        """See :meth:`ExperimentStore.posteriors`."""
        rows = self.db.execute(
            "SELECT variant, successes, failures, feedback FROM experiment_posteriors WHERE experiment = ?", (name,)
        )
        return {row["variant"]: Posterior(row["successes"], row["failures"], row["feedback"]) for row in rows}

    @serialized
    def _record(self, item_ids: list[str], served: Served) -> None:
        """See :meth:`ExperimentStore.record`; records past retention go in the same transaction."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM served WHERE created_at < ?", (served.created_at - self.retention_s,))
            self.db.executemany(
                "INSERT OR REPLACE INTO served (id, model, experiment, owner, created_at) VALUES (?, ?, ?, ?, ?)",
                [(item_id, served.model, served.experiment, served.owner, served.created_at) for item_id in item_ids],
            )

    @serialized
    def served(self, item_id: str) -> Served | None:
        """See :meth:`ExperimentStore.served`."""
        return self._served(item_id)

    def _served(self, item_id: str) -> Served | None:
        row = self.db.execute(
            "SELECT model, experiment, owner, created_at, reward FROM served WHERE id = ? AND created_at >= ?",
            (item_id, self.clock() - self.retention_s),
        ).fetchone()
        return None if row is None else Served(*row)

    @serialized
    def rate(self, item_id: str, reward: float) -> Served | None:
        """See :meth:`ExperimentStore.rate`."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            served = self._served(item_id)
            if served is None:
                return None
            if served.reward is not None:
                raise already_rated(item_id)
            row = self.db.execute("SELECT spec FROM experiments WHERE name = ?", (served.experiment,)).fetchone()
            counted = row is not None and served.model in ExperimentSpec.model_validate_json(row["spec"]).models
            counted = counted and self._key_rated(served) < MAX_KEY_EVIDENCE
            self.db.execute("UPDATE served SET reward = ? WHERE id = ?", (reward, item_id))
            if counted:
                self.db.execute(
                    "INSERT INTO experiment_posteriors (experiment, variant, successes, failures, feedback) "
                    "VALUES (?, ?, ?, ?, 1) ON CONFLICT (experiment, variant) DO UPDATE SET "
                    "successes = successes + excluded.successes, failures = failures + excluded.failures, "
                    "feedback = feedback + 1",
                    (served.experiment, served.model, reward, 1.0 - reward),
                )
        return Served(served.model, served.experiment, served.owner, served.created_at, reward, counted)

    def _key_rated(self, served: Served) -> int:
        """How many of its experiment's ids the key of ``served`` has rated (0 for an open API's: not bounded)."""
        if served.owner is None:
            return 0
        query = "SELECT COUNT(*) FROM served WHERE experiment = ? AND owner = ? AND reward IS NOT NULL"
        return self.db.execute(query, (served.experiment, served.owner)).fetchone()[0]

    def close(self) -> None:
        """See :meth:`ExperimentStore.close`."""
        self.db.close()
