"""``easel contract check``: the API against its OpenAPI document, at scale (schemathesis' own runner)."""

from __future__ import annotations

from pathlib import Path

import click

from serve.cli.options import FOLDER, names_option, out_option


@click.group()
def contract() -> None:
    """The API against its OpenAPI document."""


@contract.command("check")
@names_option(
    "--key",
    ("generate", "admin"),
    "The kinds of key the cases carry, one run each on one stack: generate (only that scope: the other routes are "
    "403s), admin.",
)
@click.option(
    "--max-time",
    "max_time_s",
    default=300,
    show_default=True,
    type=click.IntRange(min=10),
    help="Seconds of testing: fuzzing and stateful phases repeat until they are spent.",
)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 16), help="Concurrent cases.")
@click.option("--seed", type=int, default=None, help="Schemathesis' seed (default: a fresh one, printed).")
@click.option("--url", default=None, help="A running stack's API instead of a scratch stack (with --api-key).")
@click.option("--api-key", envvar="EASEL_API_KEY", default=None, help="The key for --url (of the one --key kind).")
@out_option("out/contract", FOLDER, "Where the reports go (KIND/: schemathesis' JSON and JUnit).")
def contract_check(
    key: tuple[str, ...],
    max_time_s: int,
    workers: int,
    seed: int | None,
    url: str | None,
    api_key: str | None,
    out: Path,
) -> None:
    """Schemathesis, every check and phase, against a scratch stack (or --url) for --max-time (exit 1: a failure)."""
    from loadtests.contract import check

    if url is not None and (api_key is None or len(key) != 1):
        raise click.BadParameter("--url needs --api-key (or EASEL_API_KEY) and one --key kind", param_hint="--api-key")
    code = check(key, max_time_s, workers, out, seed=seed, url=url, key=api_key)
    if code != 0:
        raise SystemExit(code)
