"""``easel keys *``: create, list and revoke API keys and make their webhook secrets; parse and wire only."""

from __future__ import annotations

import getpass
import time

import click

from serve.access import open_key_store
from serve.access.audit import AuditEntry, AuditLog
from serve.access.keys import KeyLimits
from serve.cli.fields import field_type
from serve.cli.options import one_line_errors
from serve.moderation import Policy
from serve.paths import run_dir
from serve.routes import Scope
from serve.settings import StackOptions
from serve.stores import QUOTA_KINDS, StoreURLError, default_url, scheme, sqlite_path
from serve.webhooks import open_key_secrets, secret_text
from serve.webhooks.key_secrets import DEFAULT_GRACE_S


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


def _audited(store_url: str | None, command: str, key_id: str, detail: str) -> None:
    """A key's change written to the stack's audit log, by whoever runs the command on this machine.

    The log of the run folder: the SQLite store's folder, else ``$EASEL_HOME/run``.
    """
    url = store_url or default_url()
    folder = sqlite_path(url).parent if scheme(url) == "sqlite" else run_dir()
    entry = AuditEntry.now(None, f"easel keys {command}", key_id, 200, "cli", f"{detail} (by {getpass.getuser()})")
    AuditLog(folder).write(entry)


def _limit_option(flag: str, field: str, help_text: str, *more: str):
    """An option that sets ``field`` of the key's :class:`KeyLimits`, bounded as the field is (``more``: spellings)."""
    return click.option(flag, *more, field, type=field_type(KeyLimits, field), default=None, help=help_text)


FORMER_SPELLINGS = ("concurrent_jobs", "stored_items", "stored_bytes")
"""Quotas spelt ``--NAME`` before they had the stack's defaults, still taken."""


def _limit_options(function):
    """The options that set a key's limits, its quotas (one per :data:`QUOTA_KINDS` kind) and moderation policy."""
    for kind in reversed(QUOTA_KINDS):
        dashed = kind.name.replace("_", "-")
        more = (f"--{dashed}",) if kind.name in FORMER_SPELLINGS else ()
        what = f"The key's quota of {kind.unit} at once (default: easel up --quota-{dashed}; 0: no bound)."
        function = _limit_option(f"--quota-{dashed}", kind.name, what, *more)(function)
    function = click.option(
        "--moderation",
        type=click.Choice([str(policy) for policy in Policy]),
        default=None,
        help="The key's own moderation policy, over the stack's (easel up --moderation): off, flag or block.",
    )(function)
    for flag, field, what in reversed(
        (
            ("--rpm", "requests_per_minute", "Requests per minute."),
            ("--cost-per-minute", "cost_per_minute", "Generation cost per minute (see easel up --max-cost)."),
            ("--concurrent", "concurrent", "Requests in flight at once."),
            ("--per-day", "requests_per_day", "Requests per UTC day."),
        )
    ):
        function = _limit_option(flag, field, what)(function)
    return function


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
@_limit_options
@store_option
def keys_create(name: str, scopes: str, store_url: str | None, **limits: int | float | str | None) -> None:
    """Create a key and print it (only once: the store keeps its hash)."""
    try:
        chosen = {Scope(s.strip()) for s in scopes.split(",") if s.strip()}
    except ValueError as error:
        raise click.BadParameter(f"{error}; choose from {', '.join(Scope)}", param_hint="--scopes") from error
    record, key = _key_store(store_url).create(name, chosen, KeyLimits(**limits))
    _audited(store_url, "create", record.id, f"key {record.id} ({name}; scopes {', '.join(sorted(chosen))})")
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


@keys.command("update")
@click.argument("key_id")
@_limit_options
@store_option
def keys_update(key_id: str, store_url: str | None, **limits: int | float | str | None) -> None:
    """Change a key's limits and quotas (those given; the others stay), from its next request on."""
    store = _key_store(store_url)
    record = store.get(key_id)
    if record is None:
        raise click.ClickException(f"no key {key_id}")
    given = {name: value for name, value in limits.items() if value is not None}
    updated = store.update(key_id, KeyLimits(**record.limits.model_dump() | given))
    shown = ", ".join(f"{name}={value}" for name, value in given.items()) or "nothing"
    _audited(store_url, "update", key_id, f"key {key_id}: {shown}")
    click.echo(f"updated {updated.id}: {shown}")


@keys.command("revoke")
@click.argument("key_id")
@store_option
def keys_revoke(key_id: str, store_url: str | None) -> None:
    """Revoke a key at once (every Gateway replica refuses it from its next request)."""
    if not _key_store(store_url).revoke(key_id):
        raise click.ClickException(f"no key {key_id}")
    _audited(store_url, "revoke", key_id, f"key {key_id} revoked")
    click.echo(f"revoked {key_id}")


@keys.command("webhook-secret")
@click.argument("key_id")
@click.option(
    "--grace-s",
    type=click.FloatRange(min=0),
    default=DEFAULT_GRACE_S,
    show_default=True,
    help="How long the secret this one replaces still signs beside it, in seconds (0: not at all).",
)
@store_option
def keys_webhook_secret(key_id: str, grace_s: float, store_url: str | None) -> None:
    """Make the key's webhook secret, or rotate it, and print it once (whsec_...): its jobs' webhooks are signed so.

    Give it to the key's receivers' Standard Webhooks library (Webhook(secret).verify(body, headers)). A secret
    replaced still signs for --grace-s: each delivery then carries both signatures, and either secret verifies it.
    """
    url = store_url or default_url()
    if _key_store(url).get(key_id) is None:
        raise click.ClickException(f"no key {key_id}")
    secrets = open_key_secrets(url)
    replacing = bool(secrets.signing(key_id))
    secret = secrets.rotate(key_id, grace_s)
    _audited(store_url, "webhook-secret", key_id, f"key {key_id} webhook secret {'rotated' if replacing else 'made'}")
    click.echo(secret_text(secret))
    if replacing and grace_s > 0:
        click.echo(f"the secret it replaces still signs for {grace_s:g} s; keep this one now: it is not shown again")
    else:
        click.echo("keep it now: it is not shown again")
