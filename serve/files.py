"""Content hashes of files and folders (how Easel names what a file or a folder holds), and a stack's secrets."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

_CHUNK = 1 << 20


def _update(digest, path: Path) -> None:
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)


def file_hash(path: Path) -> str:
    """SHA-256 of one file's bytes (hex)."""
    digest = hashlib.sha256()
    _update(digest, path)
    return digest.hexdigest()


def files_hash(paths: Iterable[Path], root: Path, extra: bytes = b"") -> str:
    """SHA-256 over each file's path relative to ``root`` and its bytes, in sorted order, then ``extra`` (hex)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.relative_to(root).as_posix().encode())
        _update(digest, path)
    digest.update(extra)
    return digest.hexdigest()


def content_hash(folder: Path) -> str:
    """SHA-256 over every file's relative path and bytes under ``folder`` (hex)."""
    return files_hash((p for p in folder.rglob("*") if p.is_file()), folder)


def stack_secret(path: Path) -> bytes:
    """A stack's secret in the file ``path`` in its run folder (made once: 32 random bytes, 0600).

    Every Gateway replica of a stack reads it, and the first ones start together: the secret is written whole to a
    file of the writer's own and linked into place, so no reader sees it half written and only one secret wins.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        handle = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(handle, "wb") as file:
            file.write(secrets.token_bytes(32))
        try:
            os.link(draft, path)  # atomic, and refused where another writer's is already in place
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_bytes()
