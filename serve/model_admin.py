"""``easel models``: add, replace and remove models on the running stack, nothing in flight dropped.

The command builds the engine folder here (``easel build``'s code: export, parity checks, memory measured), then
hands it to the stack's admin route (``POST /v1/models``, ``PUT`` or ``DELETE /v1/models/{id}``), which installs it
in Triton's repository, loads it and switches the model table (:mod:`serve.text_to_image.residency`). The stack is
found through its run state, as ``easel down`` finds it; a key with scope ``admin`` goes in ``$EASEL_API_KEY``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import click
import httpx

from serve.access.keys import client_headers
from serve.cli_options import ModelFolder, one_line_errors
from serve.errors import UnsupportedModel

logger = logging.getLogger(__name__)

CALL_TIMEOUT_S = 600.0
"""A change waits for the new version's load (seconds for the embedded models, minutes for full-size ones)."""


class ChangeRefused(click.ClickException):
    """The stack refused a change (its one-line error), or there is no stack to change."""


def stack_api() -> str:
    """The API of the running stack (``easel up``), or :class:`ChangeRefused` when none runs."""
    from serve.stack import running_stack  # here: `easel --help` starts nothing heavy

    info = running_stack()
    if info is None:
        raise ChangeRefused("no stack is running (start one with `easel up`)")
    return info.api_url


def built_engines(model_dir: Path) -> Path:
    """``model_dir``'s engine folder, built (or found in the engine cache) and measured, not installed."""
    from build_engines.text_to_image.build import build

    with one_line_errors(UnsupportedModel):
        return build(model_dir, repository=None).path


def call(api_url: str, method: str, path: str, body: dict | None = None) -> dict:
    """One admin call: its answer, or :class:`ChangeRefused` with the stack's one-line error."""
    try:
        response = httpx.request(
            method, f"{api_url}{path}", json=body, headers=client_headers(), timeout=CALL_TIMEOUT_S
        )
    except httpx.HTTPError as error:
        raise ChangeRefused(f"{api_url} did not answer: {error}") from None
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise ChangeRefused(f"{response.status_code}: {message}")
    return response.json()


def add(api_url: str, name: str, engine_dir: Path) -> dict:
    """Serve ``engine_dir`` (built) as a new model ``name``."""
    return call(api_url, "POST", "/v1/models", {"name": name, "engine_dir": str(engine_dir.resolve())})


def replace(api_url: str, name: str, engine_dir: Path) -> dict:
    """Serve ``engine_dir`` (built) as model ``name``'s next version."""
    return call(api_url, "PUT", f"/v1/models/{name}", {"engine_dir": str(engine_dir.resolve())})


def remove(api_url: str, name: str) -> dict:
    """Stop serving model ``name``."""
    return call(api_url, "DELETE", f"/v1/models/{name}")


def _said(model: dict) -> str:
    state = "loaded" if model["loaded"] else "loads on its first request"
    return f"{model['id']}: {model['family']}, version {model['version']}, {state}"


@click.group()
def models() -> None:
    """The running stack's models: list, add, replace, remove (a request finishes on the version it began on)."""


@models.command("list")
def models_list() -> None:
    """The models the running stack serves (the default first)."""
    for model in call(stack_api(), "GET", "/v1/models")["data"]:
        click.echo(_said(model))


MODEL_ARGUMENT = click.argument("model", type=ModelFolder(()), metavar="NAME=DIR")


def _built_and_sent(change: Callable[[str, str, Path], dict], model: tuple[str, Path]) -> str:
    """Build the engines of ``model`` (NAME, DIR) and send them to the stack as ``change``; what it answered."""
    name, model_dir = model
    api_url = stack_api()  # first: with no stack up, nothing is built
    return _said(change(api_url, name, built_engines(model_dir)))


@models.command("add")
@MODEL_ARGUMENT
def models_add(model: tuple[str, Path]) -> None:
    """Build DIR's engines and serve them as a new model NAME (DIR alone: named after its folder)."""
    click.echo(f"added {_built_and_sent(add, model)}")


@models.command("replace")
@MODEL_ARGUMENT
def models_replace(model: tuple[str, Path]) -> None:
    """Build DIR's engines and serve them as model NAME's next version; the old one finishes what it started."""
    click.echo(f"replaced {_built_and_sent(replace, model)}")


@models.command("remove")
@click.argument("name")
def models_remove(name: str) -> None:
    """Stop serving model NAME: its requests in flight finish; its background jobs not started fail naming it."""
    removed = remove(stack_api(), name)
    click.echo(f"removed {removed['id']} (version {removed['version']} unloads once its requests have ended)")
