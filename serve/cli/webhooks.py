"""``easel webhooks *``: the secret that signs job webhooks, and a job's deliveries; parse and wire only."""

from __future__ import annotations

import time

import click

from serve.cli.keys import store_option
from serve.cli.options import one_line_errors
from serve.files import stack_secret
from serve.paths import run_dir
from serve.stores import StoreURLError, default_url
from serve.webhooks import SECRET_FILE, open_outbox, secret_text


@click.group()
def webhooks() -> None:
    """Job webhooks: a job that names a webhook is POSTed, signed, to it when it ends (docs/RESULTS.md)."""


@webhooks.command("secret")
def webhooks_secret() -> None:
    """Print the secret this machine's stack signs an open API's webhooks with ($EASEL_HOME/run/webhook_secret).

    Printed as whsec_..., for a receiver's Standard Webhooks library (Webhook(secret).verify(body, headers)). It is
    made once, by this command or the stack's first start, and kept across restarts. It signs the jobs submitted
    without a key; a key's jobs are signed with the key's own secret (easel keys webhook-secret KEY).
    """
    click.echo(secret_text(stack_secret(run_dir() / SECRET_FILE)))


@webhooks.command("deliveries")
@click.argument("job_id")
@store_option
def webhooks_deliveries(job_id: str, store_url: str | None) -> None:
    """A job's webhook deliveries: id, status, attempts, the last attempt's outcome, when it was made."""
    with one_line_errors(StoreURLError):
        outbox = open_outbox(store_url or default_url())
    found = outbox.of_source(job_id)
    if not found:
        raise click.ClickException(f"no webhook delivery for {job_id}")
    for delivery in found:
        made = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(delivery.created_at))
        click.echo(f"{delivery.id}  {delivery.status.value:9}  {delivery.attempts}  {made}  {delivery.outcome or '-'}")
