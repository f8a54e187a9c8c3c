"""The running stack's admin routes for its models, as ``easel models`` (in :mod:`serve.cli`) calls them.

``easel models`` builds the engine folder (``easel build``'s code: export, parity checks, memory measured), then
hands it to the stack's admin route (``POST /v1/models``, ``PUT`` or ``DELETE /v1/models/{id}``), which installs it
in Triton's repository, loads it and switches the model table (:mod:`serve.text_to_image.residency`). The stack is
found through its run state, as ``easel down`` finds it; a key with scope ``admin`` goes in ``$EASEL_API_KEY``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click
import httpx

from serve.access.keys import client_headers
from serve.processes.run_state import running_stack

logger = logging.getLogger(__name__)

CALL_TIMEOUT_S = 600.0
"""A change waits for the new version's load (seconds for the embedded models, minutes for full-size ones)."""


class ChangeRefused(click.ClickException):
    """The stack refused a change (its one-line error), or there is no stack to change."""


def stack_api() -> str:
    """The API of the running stack (``easel up``), or :class:`ChangeRefused` when none runs."""
    info = running_stack()
    if info is None:
        raise ChangeRefused("no stack is running (start one with `easel up`)")
    if info.api_url is None:
        raise ChangeRefused(f"the stack is still starting ({info.phase}, pid {info.pid}); try again once it is up")
    return info.api_url


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
