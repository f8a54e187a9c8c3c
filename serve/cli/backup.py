"""``easel backup DIR`` and ``easel restore DIR``: a run folder's stores copied while the stack serves, and put back.

Parse and wire only: :mod:`serve.stack.backup` copies.
"""

from __future__ import annotations

from pathlib import Path

import click

from serve.cli.options import one_line_errors
from serve.paths import run_dir
from serve.stores import StoreURLError

_FOLDER = click.Path(file_okay=False, path_type=Path)


def _run_folder_option(help_text: str):
    return click.option("--run-folder", "folder", type=_FOLDER, default=None, help=f"{help_text} ($EASEL_HOME/run).")


def _store_option(help_text: str):
    return click.option("--store", "store_url", metavar="URL", default=None, help=help_text)


@click.command("backup")
@click.argument("out", type=_FOLDER)
@_run_folder_option("The run folder of the stack backed up")
@_store_option("The stack's store (default: the running stack's, else the run folder's easel.db).")
def backup(out: Path, folder: Path | None, store_url: str | None) -> None:
    """Copy the stack's stores into a new folder OUT while it serves.

    Keys, jobs, the webhook outbox, the model table, LoRAs, references, kept images (rows and bytes), experiments,
    the secrets and the audit log. SQLite's online backup (one snapshot); a Redis store as a DUMP of each easel:*
    key. An image store outside the run folder (--image-store elsewhere, S3) is not copied: back it up where it lives.
    """
    from serve.stack.backup import BackupError
    from serve.stack.backup import backup as copy

    with one_line_errors(BackupError, StoreURLError, OSError):
        manifest = copy(folder or run_dir(), out, store_url)
    store = manifest["store"]
    size = store.get("bytes", 0) + sum(part["bytes"] for part in manifest["parts"].values())
    click.echo(f"backed up {manifest['run_folder']} into {out}: {store['kind']} store, {len(manifest['parts'])} parts")
    click.echo(f"{size / 2**20:.1f} MiB; `easel restore {out}` puts it back into a stopped run folder")


@click.command("restore")
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_run_folder_option("The run folder restored into; no stack may run there")
@_store_option("The store restored into (default: the run folder's easel.db; a Redis backup needs redis://).")
def restore(source: Path, folder: Path | None, store_url: str | None) -> None:
    """Put a backup (SOURCE, made by `easel backup`) into a run folder where no stack runs; `easel up` serves it.

    What the backup holds replaces what the folder has; paths it names in the folder it came from are rewritten.
    """
    from serve.stack.backup import BackupError
    from serve.stack.backup import restore as put_back

    target = folder or run_dir()
    with one_line_errors(BackupError, StoreURLError, OSError):
        manifest = put_back(source, target, store_url)
    click.echo(f"restored the backup of {manifest['run_folder']} ({manifest['store']['kind']} store) into {target}")
