"""Vectorize model versions: each trained set (predictor, policy, tier-1 table) installed as Triton models of its own.

A trained folder (what ``easel train vectorize`` writes) becomes version N of the ``vectorize`` ensemble; its four
Triton models are named as text-to-image versions are (:meth:`serve.models.served.ServedModels.prefix`): version
1, what the stack starts with, keeps the bare names (``vectorize``, ``vectorize_features``...), version N is ``NAME.vN``
(``vectorize.v2``, ``vectorize_features.v2``...), its ensemble calling its own steps.

:class:`VectorizeTable` is what the stack serves now: the versions installed (side by side, each loaded) and the current
one, which a request without ``model_version`` gets. It is a file in the run folder that the ``ModelResidency`` writes
(:class:`serve.models.residency.ModelResidency`, the one writer of model tables) and every Vectorizer replica
reads again when it changes. A restart serves the versions the API installed again, and keeps the current one
(:meth:`VectorizeTable.kept`), as text-to-image models are kept. A replace installs and loads the new version before it
becomes current, and leaves the old one loaded: nothing in flight is dropped, and a rollback (a replace with the
previous folder) serves its bytes again.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve.errors import Conflict, InvalidInput
from serve.integers import json_int
from serve.schema_rules import exactly_one
from serve.triton.engine_files import ONNX
from serve.triton.repository import install_model, uninstall_model
from serve.triton.spec import Backend, ModelSpec
from serve.vectorize.spec import ENSEMBLE, FEATURES, POLICY, QUALITY
from serve.vectorize.tiers import TIER1_FILE, Tier1Map

logger = logging.getLogger(__name__)

VECTORIZE_TABLE = "vectorize_models.json"
"""The run folder's file naming the vectorize versions installed and the current one (:class:`VectorizeTable`)."""
ENGINES = (QUALITY, POLICY)
"""The trained ONNX engines of a version, each ``<name>.onnx`` in its trained folder."""


_TRAINED_DIR = (
    "A folder `easel train vectorize` wrote, on the stack's machine (ONNX predictor and policy, tier1.json): "
    "installed as a new version."
)


class NewVersion(BaseModel):
    """The body of ``POST /v1/vectorize/models``: a trained folder to install."""

    model_config = ConfigDict(extra="forbid")

    trained_dir: str = Field(min_length=1, max_length=4096, description=_TRAINED_DIR)


class VersionChange(BaseModel):
    """The body of ``PUT /v1/vectorize/models``: a trained folder to install, or a version, made current."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=exactly_one(trained_dir="string", version="integer"))

    trained_dir: str | None = Field(None, min_length=1, max_length=4096, description=_TRAINED_DIR)
    version: json_int(ge=1) | None = Field(
        None, description="Or an installed version to make current again (a rollback)."
    )

    @model_validator(mode="after")
    def _one(self) -> VersionChange:
        if (self.trained_dir is None) == (self.version is None):
            raise ValueError("give trained_dir or version (one of them)")
        return self


def version_specs(version: int) -> tuple[ModelSpec, ...]:
    """The Triton specs of vectorize version ``version``: its steps first, the ensemble (calling them) last."""
    suffix = "" if version == 1 else f".v{version}"
    steps = tuple(replace(spec, name=spec.name + suffix) for spec in (FEATURES, QUALITY, POLICY))
    names = {spec.name: step.name for spec, step in zip((FEATURES, QUALITY, POLICY), steps, strict=True)}
    ensemble = tuple(replace(step, model=names[step.model]) for step in ENSEMBLE.ensemble)
    return (*steps, replace(ENSEMBLE, name=ENSEMBLE.name + suffix, ensemble=ensemble))


def variant_name(version: int) -> str:
    """Version ``version`` as an experiment names it among its variants (``vectorize.v2``)."""
    return f"{ENSEMBLE.name}.v{version}"


def variant_version(name: str) -> int | None:
    """The version an experiment's variant names (None: the variant is no vectorize version)."""
    prefix = f"{ENSEMBLE.name}.v"
    number = name[len(prefix) :] if name.startswith(prefix) else ""
    return int(number) if number.isdigit() else None


def ensemble_name(version: int) -> str:
    """The Triton model a request of vectorize version ``version`` calls."""
    return version_specs(version)[-1].name


def check_trained_folder(trained_dir: str | Path, field_name: str = "trained_dir") -> Path:
    """``trained_dir`` resolved, if it holds a servable trained set; else a 400 naming ``field_name`` and the fault.

    Checked before anything is installed: the folder, both ONNX engines (readable, with the inputs and outputs the
    ensemble wires) and the tier-1 table (readable, consistent shapes).
    """
    import onnx  # a few ms; only an admin change reads it

    try:
        folder = Path(trained_dir).expanduser()
        folder_there = folder.is_dir()
    except (OSError, RuntimeError, ValueError):  # a name too long, a user ~ does not know, a character no name has
        folder_there = False
    if not folder_there:
        raise InvalidInput(f"{field_name}: {str(trained_dir)!r} is not a folder", field_name)
    for spec in ENGINES:
        path = folder / f"{spec.name}.onnx"
        try:
            graph = onnx.load(str(path), load_external_data=False).graph
        except Exception as error:  # noqa: BLE001 - missing, unreadable or not protobuf: the folder's fault
            message = f"{field_name}: {path.name} is missing or not an ONNX model ({str(error)[:200]})"
            raise InvalidInput(message, field_name) from None
        inputs, outputs = {t.name for t in graph.input}, {t.name for t in graph.output}
        wanted_in, wanted_out = {t.name for t in spec.inputs}, {t.name for t in spec.outputs}
        if not (wanted_in <= inputs and wanted_out <= outputs):
            raise InvalidInput(
                f"{field_name}: {path.name} must take {sorted(wanted_in)} and give {sorted(wanted_out)}; "
                f"it takes {sorted(inputs)} and gives {sorted(outputs)}",
                field_name,
            )
    try:
        Tier1Map.load(folder / TIER1_FILE)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InvalidInput(f"{field_name}: {TIER1_FILE} is missing or malformed ({error})", field_name) from None
    return folder.resolve()


def install_version(
    repository: Path, trained_dir: Path, version: int, backend: Backend = Backend.PYTHON_ONNX
) -> tuple[str, ...]:
    """Install version ``version`` of the trained set in ``trained_dir``; its Triton model names, in load order."""
    features, quality, policy, ensemble = version_specs(version)
    for spec, engine in ((quality, QUALITY), (policy, POLICY)):
        install_model(spec, repository, {ONNX: trained_dir / f"{engine.name}.onnx"}, backend)
    install_model(features, repository, {TIER1_FILE: trained_dir / TIER1_FILE}, backend)
    install_model(ensemble, repository, backend=backend)
    return tuple(spec.name for spec in (features, quality, policy, ensemble))


def uninstall_version(repository: Path, version: int) -> None:
    """Remove version ``version``'s Triton models from the repository (version 1, `easel up`'s, stays)."""
    if version > 1:
        for spec in version_specs(version):
            uninstall_model(spec.name, repository)


def uninstall_stale_versions(repository: Path) -> None:
    """Remove every version but 1 from the repository (a stack's start: its table names version 1 only)."""
    for spec in version_specs(1):
        for folder in repository.glob(f"{spec.name}.v*"):
            uninstall_model(folder.name, repository)


def start_table(path: Path, repository: Path, trained_dir: Path) -> None:
    """Write the vectorize table of a stack's start at ``path``: version 1 is ``trained_dir``.

    An earlier run's table there keeps the versions the API installed (:meth:`VectorizeTable.kept`), installed again
    into ``repository``; the current one stays current.
    """
    uninstall_stale_versions(repository)  # what an earlier run left: installed again below if kept
    table = VectorizeTable.start(trained_dir)
    if path.exists():
        table = VectorizeTable.read(path).kept(trained_dir)
        for version, folder in table.versions.items():
            if version > 1:
                install_version(repository, Path(folder), version)
        logger.info("vectorize versions %s, %d current", sorted(table.versions), table.current)
    table.write(path)


@dataclass
class VectorizeTable:
    """The vectorize versions installed (version -> trained folder) and the current one.

    Versions are never reused (``last`` is the highest ever installed), so an old version's Triton models are never
    mistaken for a new one's.
    """

    current: int
    versions: dict[int, str]
    last: int = 0
    removed: list[int] = field(default_factory=list)  # taken out of service, unloaded once their requests have ended

    def __post_init__(self) -> None:
        self.last = max(self.last, *self.versions)

    @classmethod
    def start(cls, trained_dir: str | Path) -> VectorizeTable:
        """The table of a stack's start: version 1, the committed (or given) trained set."""
        return cls(1, {1: str(trained_dir)})

    def kept(self, trained_dir: str | Path) -> VectorizeTable:
        """This table (an earlier run's) at a new start whose version 1 is ``trained_dir``.

        The versions the API installed stay, under their numbers, while their folders still hold a servable trained
        set (one that no longer does is dropped, with a warning); the current one stays current if it stayed.
        """
        versions = {1: str(trained_dir)}
        for version, folder in sorted(self.versions.items()):
            if version == 1:
                continue
            try:
                versions[version] = str(check_trained_folder(folder))
            except InvalidInput as error:
                logger.warning("vectorize version %d is not served again: %s", version, error.message)
        current = self.current if self.current in versions else 1
        return VectorizeTable(current, versions, self.last)

    def add(self, trained_dir: str | Path) -> int:
        """A new version of ``trained_dir`` beside the others (not current); its number."""
        self.last += 1
        self.versions[self.last] = str(trained_dir)
        return self.last

    def resolve(self, requested: int | None, field_name: str = "model_version") -> int:
        """The version a request gets: the current one, or the one it names (400 naming the field if none)."""
        if requested is None:
            return self.current
        if requested not in self.versions:
            served = ", ".join(str(v) for v in sorted(self.versions))
            raise InvalidInput(f"{field_name}: no vectorize version {requested} (installed: {served})", field_name)
        return requested

    def serve(self, version: int) -> int:
        """Make ``version`` current; the version it replaces."""
        old, self.current = self.current, self.resolve(version, "version")
        return old

    def remove(self, version: int) -> str:
        """Take ``version`` out of service (409 for the current one); its trained folder."""
        if self.resolve(version, "version") == self.current:
            raise Conflict(f"version: {version} is the current vectorize version: replace it first", "version")
        self.removed.append(version)
        return self.versions.pop(version)

    def variant_names(self) -> list[str]:
        """The installed versions as experiments name them (``vectorize.vN``)."""
        return [variant_name(version) for version in sorted(self.versions)]

    def listing(self) -> list[dict]:
        """Every installed version, the current one marked, with its Triton ensemble and trained folder."""
        return [
            {"version": v, "current": v == self.current, "triton_model": ensemble_name(v), "trained_dir": path}
            for v, path in sorted(self.versions.items())
        ]

    def to_json(self) -> dict:
        """The table as its file holds it."""
        return {"current": self.current, "versions": self.versions, "last": self.last, "removed": self.removed}

    @classmethod
    def from_json(cls, data: dict) -> VectorizeTable:
        """The table its file held."""
        versions = {int(v): path for v, path in data["versions"].items()}
        return cls(int(data["current"]), versions, int(data.get("last", 0)), list(data.get("removed", [])))

    def write(self, path: Path) -> None:
        """Replace the file at ``path`` with this table whole (written aside, then renamed)."""
        aside = path.with_name(f".{path.name}.{os.getpid()}")
        aside.write_text(json.dumps(self.to_json(), indent=2))
        aside.replace(path)

    @classmethod
    def read(cls, path: Path) -> VectorizeTable:
        """The table in the file at ``path``."""
        return cls.from_json(json.loads(Path(path).read_text()))


class TableReader:
    """The table at a path as it is now, read again only when the file changed (a replica's view)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._stamp: tuple[int, int] | None = None
        self._table = VectorizeTable(1, {1: ""})  # without a file: version 1 only (a cluster, an offline test)

    def now(self) -> VectorizeTable:
        """The table its file holds now."""
        if self.path is None:
            return self._table
        stat = self.path.stat()
        stamp = (stat.st_mtime_ns, stat.st_ino)
        if stamp != self._stamp:
            self._table, self._stamp = VectorizeTable.read(self.path), stamp
        return self._table
