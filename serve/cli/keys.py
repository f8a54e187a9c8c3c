"""``easel keys *``: create, list and revoke API keys in the stack's store; parse and wire only."""

from __future__ import annotations

import time

import click

from serve.access import open_key_store
from serve.access.keys import KeyLimits
from serve.cli.fields import field_type
from serve.cli.options import one_line_errors
from serve.moderation import Policy
from serve.routes import Scope
from serve.settings import StackOptions
from serve.stores import StoreURLError, default_url


def store_option(function):
    """``--store URL``: the stack's store, as ``easel up --store`` names it."""
    return click.option(
        "--store",
        "store_url",
        default=None,
        metavar="URL",
        help=f"{StackOptions.model_fields['store_url'].description} The same as `easel up --store`.",
    )(function)


def _key_store(store_url: str | None):
    with one_line_errors(StoreURLError):
        return open_key_store(store_url or default_url())


def _limit_option(flag: str, field: str, help_text: str):
    """An option that sets ``field`` of the key's :class:`KeyLimits`, bounded as the field is."""
    return click.option(flag, field, type=field_type(KeyLimits, field), default=None, help=help_text)


@click.group()
def keys() -> None:
    """API keys: once one exists, every route but /healthz and /readyz needs `Authorization: Bearer <key>`."""


@keys.command("create")
@click.option("--name", required=True, help="Who or what the key is for.")
@click.option(
    "--scopes",
    default="generate,vectorize,jobs",
    show_default=True,
    help="Comma-separated: generate, vectorize, jobs, admin (admin: every route).",
)
@_limit_option("--rpm", "requests_per_minute", "Requests per minute.")
@_limit_option("--cost-per-minute", "cost_per_minute", "Generation cost per minute (see easel up --max-cost).")
@_limit_option("--concurrent", "concurrent", "Requests in flight at once.")
@_limit_option("--per-day", "requests_per_day", "Requests per UTC day.")
@_limit_option("--concurrent-jobs", "concurrent_jobs", "Unfinished background jobs at once.")
@_limit_option("--stored-items", "stored_items", "References and LoRA uploads kept at once.")
@_limit_option("--stored-bytes", "stored_bytes", "Their bytes (references' embeddings, LoRA files).")
@click.option(
    "--moderation",
    type=click.Choice([str(policy) for policy in Policy]),
    default=None,
    help="The key's own moderation policy, over the stack's (easel up --moderation): off, flag or block.",
)
@store_option
def keys_create(name: str, scopes: str, store_url: str | None, **limits: int | float | str | None) -> None:
    """Create a key and print it (only once: the store keeps its hash)."""
    try:
        chosen = {Scope(s.strip()) for s in scopes.split(",") if s.strip()}
    except ValueError as error:
        raise click.BadParameter(f"{error}; choose from {', '.join(Scope)}", param_hint="--scopes") from error
    record, key = _key_store(store_url).create(name, chosen, KeyLimits(**limits))
    click.echo(f"created key {record.id} ({name}; scopes {', '.join(sorted(chosen))})")
    click.echo(f"{key}\nkeep it now: it is not shown again")


@keys.command("list")
@store_option
def keys_list(store_url: str | None) -> None:
    """The keys: id, name, scopes, limits, created, revoked."""
    for record in _key_store(store_url).list():
        shown = record.limits.model_dump(mode="json", exclude_none=True).items()
        limits = ", ".join(f"{k}={v:g}" if isinstance(v, float | int) else f"{k}={v}" for k, v in shown) or "-"
        state = "revoked" if record.revoked_at else "live"
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(record.created_at))
        click.echo(f"{record.id}  {state:7}  {created}  {record.name}  [{','.join(sorted(record.scopes))}]  {limits}")


@keys.command("revoke")
@click.argument("key_id")
@store_option
def keys_revoke(key_id: str, store_url: str | None) -> None:
    """Revoke a key at once (every Gateway replica refuses it from its next request)."""
    if not _key_store(store_url).revoke(key_id):
        raise click.ClickException(f"no key {key_id}")
    click.echo(f"revoked {key_id}")
