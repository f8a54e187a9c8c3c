"""The model table: the models a stack serves now by name, each at a version, and the old versions still finishing.

It is a file in the run folder (``models.json``) that the ``ModelResidency`` writes when a model is added, replaced or
removed, and every replica reads again when it changes (:meth:`~serve.models.served.ServedModels.refreshed`).
It is the stack's state: the next start resumes it (:meth:`ModelTable.resumed`). A command line that names models
(``easel up --model ...``) wins for what it names: its first model is the default, and each model it names serves
this start's build; the table's other models stay. A command line that names none serves the table as it was.

It also holds the remote models (``--remote``, ``POST /v1/models`` with ``remote``: each one's declaration, the fields
of :class:`serve.remote.settings.RemoteBackend`) and the fallback chains (``--fallback``, ``PUT
/v1/models/{model_id}/fallback``); the command line's win for the names they give (:meth:`ModelTable.declared`). A
version's change arrives as :class:`ModelFolder`, the body that names its engine folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from serve.errors import Conflict, InvalidInput, NotFound
from serve.names import NAME, NAME_RULE


def check_name(name: str) -> str:
    """``name`` if it may name a model, else :class:`ValueError` saying the rule."""
    if not NAME.match(name):
        raise ValueError(f"{name!r} cannot name a model: use {NAME_RULE}")
    return name


MODEL_TABLE = "models.json"
"""The run folder's file that names the models a stack serves now (:class:`ModelTable`)."""


@dataclass(frozen=True)
class ModelEntry:
    """One version of a served model: its engine folder; version 1 is what the stack started with (or first added)."""

    name: str
    engine_dir: str
    version: int = 1
    loras_dir: str | None = None  # its LoRA registry folder (`easel models add --loras`); None: as the stack started

    @property
    def version_id(self) -> str:
        """The version's id: Ray Serve's multiplexed model id and the residency's key (``sd.v2``)."""
        return f"{self.name}.v{self.version}"


@dataclass
class ModelTable:
    """The models served now by name (the default first), and old versions still finishing their requests.

    Versions of a name are never reused (``versions`` remembers the last of every name ever served), so an old
    version's Triton models, loop and counts are never mistaken for a new one's. A name in ``versions`` that is not
    served was removed.
    """

    current: dict[str, ModelEntry]
    retired: dict[str, ModelEntry] = field(default_factory=dict)  # by version id, until its requests have ended
    versions: dict[str, int] = field(default_factory=dict)
    remotes: dict[str, dict] = field(default_factory=dict)  # name -> its declaration (RemoteBackend's fields)
    fallbacks: dict[str, tuple[str, ...]] = field(default_factory=dict)  # model -> its chain's links, in order

    def __post_init__(self) -> None:
        for entry in self.entries():
            self.versions[entry.name] = max(self.versions.get(entry.name, 0), entry.version)

    @classmethod
    def start(cls, engine_dirs: Mapping[str, str]) -> ModelTable:
        """The table of a stack's start: every model at version 1, in the order given."""
        return cls({name: ModelEntry(name, str(path)) for name, path in engine_dirs.items()})

    @classmethod
    def resumed(cls, kept: ModelTable | None, engine_dirs: Mapping[str, str], named: bool = False) -> ModelTable:
        """The table of a start over ``kept``, the table the last run left (None: a new stack, :meth:`start`).

        ``engine_dirs``: this start's builds (name -> engine folder, the command line's order). What the API changed
        stays: models added, versions replaced, models removed, the default. A version 1 (what a start serves)
        follows this start's build of it; a model of the command line the table never served is added; retired
        versions are gone (their requests ended with the last run). With ``named`` (the command line names its
        models), the command line wins for what it names: its first model is the default, and a model the API
        replaced or removed serves this build as its next version.
        """
        if kept is None:
            return cls.start(engine_dirs)
        current = {
            name: replace(entry, engine_dir=engine_dirs[name]) if entry.version == 1 and name in engine_dirs else entry
            for name, entry in kept.current.items()
        }
        table = cls(current, {}, dict(kept.versions), dict(kept.remotes), dict(kept.fallbacks))
        for name, engine_dir in engine_dirs.items():
            if name not in table.versions:
                table.add(name, engine_dir)
            elif named and table.current.get(name, ModelEntry(name, "")).engine_dir != engine_dir:
                table._serve(name, engine_dir, None)  # the API's version or removal gives way to this build
        if named:
            first = next(iter(engine_dirs))
            table.current = {first: table.current[first], **table.current}
        return table

    @staticmethod
    def start_default(kept: ModelTable | None, names: list[str], named: bool) -> str:
        """The default model of a start, whose Triton models keep their bare names.

        The command line's first when it names models or no table is kept, else the kept table's default.
        """
        return names[0] if named or kept is None or not kept.current else next(iter(kept.current))

    def declared(self, remotes: Mapping[str, dict], fallbacks: Mapping[str, tuple[str, ...]]) -> ModelTable:
        """This table with the command line's remote models and fallback chains, which win for the names they give.

        A remote named as a model the table serves (one the API added in the last run) is a :class:`ValueError`.
        """
        for name in set(remotes) & set(self.current):
            raise ValueError(f"--remote: {name!r} is a served model's name (easel models remove {name}, or rename it)")
        table = self.copy()
        table.remotes.update((name, dict(declaration)) for name, declaration in remotes.items())
        table.fallbacks.update((name, tuple(links)) for name, links in fallbacks.items())
        return table

    def differences(self, kept: ModelTable | None) -> list[str]:
        """What this start's table changes in ``kept`` (the default, models served again or anew), one phrase each."""
        if kept is None or not kept.current:
            return []
        said = []
        if (default := next(iter(self.current))) != next(iter(kept.current)):
            said.append(f"{default} is the default now (it was {next(iter(kept.current))})")
        for name, entry in self.current.items():
            was = kept.current.get(name)
            if was is None:
                said.append(f"{name} added")
            elif entry.version != was.version:
                said.append(f"{name} serves this build as version {entry.version} (was version {was.version})")
        return said

    def entries(self) -> list[ModelEntry]:
        """Every version with Triton models: the current ones, then the retired."""
        return [*self.current.values(), *self.retired.values()]

    def copy(self) -> ModelTable:
        """A table to change (this one stays as it is until the change is done)."""
        return ModelTable(
            dict(self.current), dict(self.retired), dict(self.versions), dict(self.remotes), dict(self.fallbacks)
        )

    def add(self, name: str, engine_dir: str, loras_dir: str | None = None) -> ModelEntry:
        """Serve ``engine_dir`` as a new model ``name`` (409 naming ``name`` if one is served)."""
        self._unnamed(name)
        return self._serve(name, engine_dir, loras_dir)

    def add_remote(self, name: str, declaration: dict) -> None:
        """Serve the remote model ``declaration`` declares as ``name`` (409 naming ``name`` if one is served)."""
        self._unnamed(check_name(name))
        self.remotes[name] = dict(declaration)

    def chain(self, name: str, links: tuple[str, ...]) -> None:
        """Make ``links`` model ``name``'s fallback chain (none: it has none); 404 for a model not served.

        Each link is a model served here or a remote one, not ``name`` itself, named once (else a 400 naming
        ``chain``). A link removed later stays: a request going down the chain skips it, and says why in the log.
        """
        if name not in self.current and name not in self.remotes:
            self._served(name)
        known = (*self.current, *self.remotes)
        for link in links:
            if link not in known:
                why = f"no model {link!r} (served: {', '.join(known)})"
            elif link == name or links.count(link) > 1:
                why = f"{link!r} is {'the model itself' if link == name else 'named twice'}"
            else:
                continue
            raise InvalidInput(f"chain: {why}", "chain")
        if links:
            self.fallbacks[name] = tuple(links)
        else:
            self.fallbacks.pop(name, None)

    def replace(self, name: str, engine_dir: str, loras_dir: str | None = None) -> tuple[ModelEntry, ModelEntry]:
        """Serve ``engine_dir`` as model ``name``'s next version; (the new version, the old, now retired)."""
        old = self._served(name)
        self.retired[old.version_id] = old
        return self._serve(name, engine_dir, loras_dir), old

    def remove(self, name: str) -> ModelEntry | None:
        """Stop serving ``name`` (the default model cannot go: 409); its version, retired (None: a remote model)."""
        if self.remotes.pop(name, None) is not None:
            return None
        old = self._served(name)
        if name == next(iter(self.current)):
            raise Conflict(f"model_id: {name!r} is the default model: replace it instead", "model_id")
        del self.current[name]
        self.retired[old.version_id] = old
        return old

    def drop(self, version_id: str) -> None:
        """Forget a retired version (its requests ended, its Triton models unloaded)."""
        self.retired.pop(version_id, None)

    def _serve(self, name: str, engine_dir: str, loras_dir: str | None) -> ModelEntry:
        entry = ModelEntry(check_name(name), engine_dir, self.versions.get(name, 0) + 1, loras_dir)
        self.current[name] = entry
        self.versions[name] = entry.version
        return entry

    def _served(self, name: str) -> ModelEntry:
        if name not in self.current:
            raise NotFound(f"no model {name!r} (served: {', '.join([*self.current, *self.remotes])})", "model_id")
        return self.current[name]

    def _unnamed(self, name: str) -> None:
        """409 naming ``name`` where a model, served here or remote, has that name."""
        if name in self.current or name in self.remotes:
            instead = "replace it instead" if name in self.current else "a remote one: remove it first"
            raise Conflict(f"name: model {name!r} is served already ({instead})", "name")

    def to_json(self) -> dict:
        """The table as its file holds it."""
        return {
            "current": [asdict(entry) for entry in self.current.values()],
            "retired": [asdict(entry) for entry in self.retired.values()],
            "versions": self.versions,
            "remotes": self.remotes,
            "fallbacks": {name: list(links) for name, links in self.fallbacks.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping) -> ModelTable:
        """The table its file held."""
        current = [ModelEntry(**entry) for entry in data["current"]]
        retired = [ModelEntry(**entry) for entry in data.get("retired", ())]
        fallbacks = {name: tuple(links) for name, links in data.get("fallbacks", {}).items()}
        versions, remotes = dict(data.get("versions", {})), dict(data.get("remotes", {}))
        return cls({e.name: e for e in current}, {e.version_id: e for e in retired}, versions, remotes, fallbacks)

    def write(self, path: Path) -> None:
        """Replace the file at ``path`` with this table whole (written aside, then renamed)."""
        aside = path.with_name(f".{path.name}.{os.getpid()}")
        aside.write_text(json.dumps(self.to_json(), indent=2))
        aside.replace(path)

    @classmethod
    def read(cls, path: Path) -> ModelTable:
        """The table in the file at ``path``."""
        return cls.from_json(json.loads(path.read_text()))

    @classmethod
    def kept(cls, run_dir: Path) -> ModelTable | None:
        """The table the last run in ``run_dir`` left (None: none)."""
        path = run_dir / MODEL_TABLE
        return cls.read(path) if path.exists() else None


def start_said(kept: ModelTable | None, names: list[str], named: bool) -> str | None:
    """What a start whose command line names ``names`` changes in the ``kept`` table, in one line (None: nothing)."""
    if kept is None or not named:
        return None
    table = ModelTable.resumed(kept, {name: f"(this start's build of {name})" for name in names}, named=True)
    if not (changes := table.differences(kept)):
        return None
    others = [name for name in table.current if name not in names]
    rest = f"; kept from the last run: {', '.join(others)} (`easel models remove NAME` drops one)" if others else ""
    return (
        f"models: the command line wins for the models it names: {'; '.join(changes)}{rest}; --reset-models "
        "serves only the command line's"
    )


class ModelFolder(BaseModel):
    """``PUT /v1/models/{model_id}``'s body: the engine folder that becomes the model's next version."""

    model_config = ConfigDict(extra="forbid")

    engine_dir: str = Field(
        min_length=1,
        max_length=4096,
        description="Absolute path, on the stack's machine, of an engine folder `easel build` built (the `engines:` "
        "it prints; `easel models add` builds one and sends it); the stack installs and loads it.",
    )
    loras_dir: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="Absolute path of the model's LoRA registry folder, prepared for these LoRA-ready engines "
        "(`easel models add --loras DIR` prepares and sends it); absent: the model takes no LoRAs.",
    )
