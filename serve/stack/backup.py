"""A run folder's stores copied while the stack serves (``easel backup DIR``), and put back (``easel restore DIR``).

What is copied is one declaration, :data:`PARTS` (a new store joins it): the store first, then the files beside it,
so every image row the copy holds has its bytes (an image's bytes are written before its row). The SQLite store
(keys, jobs, the webhook outbox, LoRA and reference entries, image rows, experiments, the caches: one file) is copied
by SQLite's online backup, one consistent snapshot while writers go on; a Redis store (``--store redis://``) as a
DUMP of each of its ``easel:*`` keys, all taken by one script (one instant of the whole store). Not copied: an
image store outside the run folder (``--image-store`` elsewhere, or S3), the engine cache and the models' folders
(the table names them), what a run makes anew (Ray's GCS, logs, Triton's repository).

A restore writes into a run folder where no stack runs; paths the copy names in the folder it came from (a LoRA's
prepared file, a model's LoRA folder) are rewritten for the folder it goes into.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from serve.access.audit import AUDIT_FILE, OLDER_FILE
from serve.models.table import MODEL_TABLE
from serve.processes.run_state import running_stack
from serve.results.tokens import SECRET_FILE
from serve.stores import default_url, redis_client, scheme, sqlite_path
from serve.vectorize.versions import VECTORIZE_TABLE
from serve.webhooks.signing import SECRET_FILE as WEBHOOK_SECRET_FILE

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
"""What a backup holds and where it came from, written last: a folder without it is not a backup."""
STORE_FILE = "easel.db"
"""The SQLite store in a backup (the stack's, whatever its file is called)."""
REDIS_FILE = "redis.jsonl"
"""A Redis store in a backup: one line per key (its name, its time to live in ms, its DUMP in base64)."""
REDIS_KEYS = "easel:*"
"""The keys of Easel's stores in a Redis database (Ray's GCS, kept there on a cluster, is not Easel's)."""
_TEMPORARY = (".incoming-", "upload-")  # a file still being written (an image's, an upload's): not copied


class BackupError(RuntimeError):
    """A backup or a restore that cannot be made, and why."""


@dataclass(frozen=True)
class Part:
    """One thing of the run folder a backup copies, by its file or folder name (``*``: several).

    ``names_paths``: its JSON names paths in the run folder (rewritten by a restore into another folder).
    """

    name: str
    holds: str
    names_paths: bool = False


PARTS = (
    Part(MODEL_TABLE, "the model table: models added or replaced, remote models, fallback chains", True),
    Part(VECTORIZE_TABLE, "the vectorize versions"),
    Part("images", "kept images' bytes (the default image store; its rows are the store's)"),
    Part("loras*", "each model's LoRA folder: prepared LoRAs and the uploaded files", True),
    Part(SECRET_FILE, "the secret that signs image URLs (URLs given out stay valid)"),
    Part(WEBHOOK_SECRET_FILE, "the secret that signs job webhooks"),
    Part(AUDIT_FILE, "the audit log"),
    Part(OLDER_FILE, "the audit log's older half"),
)
"""What a backup copies from the run folder beside the store, in this order (the store first: see the module)."""
STORE_TABLES_WITH_PATHS = {"loras": "entry"}
"""SQLite columns (table: column) whose JSON names paths in the run folder (a LoRA's prepared file)."""


def store_of(folder: Path) -> str:
    """The store of the stack whose run folder is ``folder``: the running one's, else the folder's SQLite file."""
    info = running_stack(folder)
    return (info and info.store_url) or default_url(folder)


def backup(folder: Path, out: Path, store_url: str | None = None) -> dict:
    """Copy the run folder ``folder``'s store and :data:`PARTS` into ``out`` (new or empty); the manifest written."""
    folder, out = Path(folder).resolve(), Path(out).resolve()
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} is not empty: back up into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    url = store_url or store_of(folder)
    started = time.time()
    if scheme(url) == "sqlite":
        store = {"kind": "sqlite", "file": STORE_FILE, "bytes": _sqlite_backup(sqlite_path(url), out / STORE_FILE)}
    else:
        store = {"kind": "redis", "file": REDIS_FILE, "keys": _redis_dump(url, out / REDIS_FILE)}
    parts = {}
    for part in PARTS:
        for path in sorted(folder.glob(part.name)):
            parts[path.name] = _copy(path, out / path.name)
    manifest = {
        "easel_backup": 1,
        "created_at": started,
        "run_folder": str(folder),
        "store": store,
        "parts": parts,
        "not_copied": "an image store outside the run folder (--image-store), engines, model folders, logs",
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    logger.info("backed up %s into %s: store %s, %d parts", folder, out, store["kind"], len(parts))
    return manifest


def restore(source: Path, folder: Path, store_url: str | None = None) -> dict:
    """Put the backup ``source`` back into the run folder ``folder``, where no stack may run; its manifest.

    ``store_url``: the store to restore into (default: the folder's SQLite file; a Redis backup needs one).
    """
    source, folder = Path(source).resolve(), Path(folder).resolve()
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError) as error:
        raise BackupError(f"{source} is not an Easel backup (no readable {MANIFEST}: {error})") from None
    if running_stack(folder) is not None:
        raise BackupError(f"a stack runs in {folder}: stop it first (`easel down`)")
    folder.mkdir(parents=True, exist_ok=True)
    url = store_url or default_url(folder)
    kind, old = manifest["store"]["kind"], manifest["run_folder"]
    if kind != scheme(url):
        raise BackupError(f"the backup holds a {kind} store; restore it into a {kind} store (--store), not {url}")
    if kind == "sqlite":
        _sqlite_restore(source / STORE_FILE, sqlite_path(url), old, str(folder))
    else:
        _redis_restore(source / REDIS_FILE, url)
    for name in manifest["parts"]:
        target = folder / name
        if target.is_dir():
            shutil.rmtree(target)
        _copy(source / name, target)
    if old != str(folder):
        _relocate_files(folder, old, str(folder))
    logger.info("restored %s into %s (store %s)", source, folder, url)
    return manifest


def _sqlite_backup(database: Path, copy: Path) -> int:
    """SQLite's online backup of ``database`` into ``copy``, in one step (one snapshot); its bytes."""
    if not database.exists():
        raise BackupError(f"no store at {database}: is this a run folder?")
    with closing(sqlite3.connect(database)) as source, closing(sqlite3.connect(copy)) as target:
        source.backup(target)  # every page in one step: one read transaction, one snapshot
    return copy.stat().st_size


def _sqlite_restore(copy: Path, database: Path, old: str, new: str) -> None:
    """``copy`` as the store ``database`` (its write-ahead log dropped), its paths moved from ``old`` to ``new``."""
    database.parent.mkdir(parents=True, exist_ok=True)
    for stale in (database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")):
        stale.unlink(missing_ok=True)
    partial = database.with_name(f".{database.name}.restoring")
    shutil.copyfile(copy, partial)
    if old != new:
        with closing(sqlite3.connect(partial)) as db, db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            for table, column in STORE_TABLES_WITH_PATHS.items():
                if table in tables:
                    db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (_quoted(old), _quoted(new)))
    os.replace(partial, database)


def _quoted(path: str) -> str:
    """``path`` followed by a separator, as JSON writes it (so ``/run`` never matches ``/run2``)."""
    return json.dumps(path + "/")[1:-1]


def _relocate_files(folder: Path, old: str, new: str) -> None:
    """Rewrite the paths under ``old`` that the restored JSON files of :data:`PARTS` name (``names_paths``)."""
    for part in PARTS:
        if not part.names_paths:
            continue
        for path in folder.glob(part.name):
            for file in [path] if path.is_file() else path.rglob("*.json"):
                if file.is_file() and not file.is_symlink():
                    text = file.read_text()
                    file.write_text(text.replace(_quoted(old), _quoted(new)))


def _copy(source: Path, target: Path) -> dict:
    """Copy a file, or a folder's files (links as links; a file gone or half-written meanwhile skipped): counts."""
    files, size = 0, 0
    sources = [source] if not source.is_dir() else sorted(source.rglob("*"))
    for path in sources:
        if path.name.startswith(_TEMPORARY) or path.suffix == ".partial":
            continue
        to = target / path.relative_to(source) if source.is_dir() else target
        try:
            if path.is_symlink():
                to.parent.mkdir(parents=True, exist_ok=True)
                to.unlink(missing_ok=True)
                to.symlink_to(os.readlink(path))
            elif path.is_dir():
                to.mkdir(parents=True, exist_ok=True)
            else:
                to.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, to)
                files, size = files + 1, size + to.stat().st_size
        except FileNotFoundError:  # removed while copied (a swept LoRA file, an image past retention)
            logger.info("backup: %s went away while copied", path)
    return {"files": files, "bytes": size}


_SNAPSHOT = """
local taken = {}
for _, name in ipairs(redis.call('KEYS', ARGV[1])) do
    table.insert(taken, name)
    table.insert(taken, redis.call('PTTL', name))
    table.insert(taken, redis.call('DUMP', name))
end
return taken
"""
"""Every key matching ``ARGV[1]`` with its time to live and its DUMP, in one script: Redis runs nothing else
meanwhile, so the copy is one instant of the whole store (its keys are a few thousand small ones: milliseconds)."""


def _redis_dump(url: str, out: Path) -> int:
    """Every ``easel:*`` key of the Redis store at ``url`` at one instant, DUMPed with its time to live into ``out``."""
    taken = redis_client(url, decode=False).eval(_SNAPSHOT, 0, REDIS_KEYS)
    with out.open("w") as file:
        for name, ttl, value in zip(taken[0::3], taken[1::3], taken[2::3], strict=True):
            key, dumped = base64.b64encode(name).decode(), base64.b64encode(value).decode()
            file.write(json.dumps({"key": key, "ttl_ms": max(ttl, 0), "dump": dumped}) + "\n")
    return len(taken) // 3


def _redis_restore(dump: Path, url: str) -> None:
    """The keys of ``dump`` RESTOREd into the Redis store at ``url`` (replacing keys of the same name)."""
    client = redis_client(url, decode=False)
    pipe = client.pipeline(transaction=False)
    for line in dump.read_text().splitlines():
        entry = json.loads(line)
        pipe.restore(base64.b64decode(entry["key"]), entry["ttl_ms"], base64.b64decode(entry["dump"]), replace=True)
    pipe.execute()
