"""The running stack's admin routes for its models and LoRAs, as ``easel models`` and ``easel loras`` call them.

``easel models`` builds the engine folder (``easel build``'s code: export, parity checks, memory measured), then
hands it to the stack's admin route (``POST /v1/models``, ``PUT`` or ``DELETE /v1/models/{id}``), which installs it
in Triton's repository, loads it and switches the model table (:mod:`serve.models.residency`). The stack is
found through its run state, as ``easel down`` finds it; a key with scope ``admin`` goes in ``$EASEL_API_KEY``.
A model's name is checked with the server's own rule (:data:`serve.cli.options.NAME`) before any call, and every
part of a URL's path is quoted: no name reaches another resource.

``easel loras`` (here: it builds nothing) uploads a LoRA file to ``POST /v1/loras`` or ``PUT /v1/loras/{name}``,
removes one with ``DELETE`` and lists them (a key with scope ``adapters`` or ``admin``); a LoRA's name is checked
with the adapter registry's rule (:data:`serve.adapters.registry.NAME`) the same way.

``easel vectorize models`` (here too: a trained folder is installed by the stack) lists, adds, replaces (or rolls
back) and removes the vectorize ensemble's versions through ``/v1/vectorize/models``; ``easel vectorize
export-feedback`` writes the recorded answers for retraining.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import quote

import click
import httpx

from serve.access.keys import client_headers
from serve.adapters.registry import NAME as LORA_NAME
from serve.names import NAME, NAME_RULE
from serve.processes.run_state import running_stack
from serve.processes.tls import client_verify

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


def api_path(*parts: str) -> str:
    """The API path of ``parts``, each quoted whole (a ``/``, ``?`` or ``%`` in one stays in it)."""
    return "".join("/" + quote(part, safe="") for part in parts)


def model_name(name: str) -> str:
    """``name`` if the server takes it as a model's name, else :class:`ChangeRefused` saying the rule."""
    if not NAME.match(name):
        raise ChangeRefused(f"{name!r} cannot name a model: use {NAME_RULE}")
    return name


def lora_name(name: str) -> str:
    """``name`` if the server takes it as a LoRA's name, else :class:`ChangeRefused` saying the rule."""
    if not LORA_NAME.fullmatch(name):
        raise ChangeRefused(f"{name!r} cannot name a LoRA: use letters, digits, '.', '_' and '-' (at most 64)")
    return name


def call(api_url: str, method: str, path: str, body: dict | None = None, file: Path | None = None) -> dict:
    """One admin call: its answer, or :class:`ChangeRefused` with the stack's one-line error.

    ``file``: sent as the multipart form's ``file``, with ``body`` as its fields (else ``body`` is JSON). The running
    stack's HTTPS is verified with its own certificate.
    """
    info = running_stack()
    verify = client_verify(info.tls_cert if info is not None and info.api_url == api_url else None)
    try:
        if file is None:
            response = httpx.request(
                method, f"{api_url}{path}", json=body, headers=client_headers(), timeout=CALL_TIMEOUT_S, verify=verify
            )
        else:
            with file.open("rb") as sent:
                response = httpx.request(
                    method,
                    f"{api_url}{path}",
                    data=body,
                    files={"file": (file.name, sent, "application/octet-stream")},
                    headers=client_headers(),
                    timeout=CALL_TIMEOUT_S,
                    verify=verify,
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


def _folders(engine_dir: Path, loras_dir: Path | None) -> dict:
    """The body's folders: the engines, and (LoRA-ready engines) the model's LoRA registry folder."""
    folders = {"engine_dir": str(engine_dir.resolve())}
    return folders | ({"loras_dir": str(loras_dir.resolve())} if loras_dir is not None else {})


def add(api_url: str, name: str, engine_dir: Path, loras_dir: Path | None = None) -> dict:
    """Serve ``engine_dir`` (built) as a new model ``name``, with its LoRA registry folder ``loras_dir``."""
    return call(api_url, "POST", "/v1/models", {"name": name, **_folders(engine_dir, loras_dir)})


def add_remote(api_url: str, name: str, declaration: dict) -> dict:
    """Serve the model another service draws, as ``declaration`` declares it, as a new model ``name``."""
    return call(api_url, "POST", "/v1/models", {"name": name, "remote": declaration})


def chain(api_url: str, name: str, links: tuple[str, ...]) -> dict:
    """Make ``links`` model ``name``'s fallback chain (none: no chain)."""
    return call(api_url, "PUT", api_path("v1", "models", model_name(name), "fallback"), {"chain": list(links)})


def replace(api_url: str, name: str, engine_dir: Path, loras_dir: Path | None = None) -> dict:
    """Serve ``engine_dir`` (built) as model ``name``'s next version, with its LoRA registry folder ``loras_dir``."""
    return call(api_url, "PUT", api_path("v1", "models", model_name(name)), _folders(engine_dir, loras_dir))


def remove(api_url: str, name: str) -> dict:
    """Stop serving model ``name``."""
    return call(api_url, "DELETE", api_path("v1", "models", model_name(name)))


# -- easel loras ------------------------------------------------------------------------------------------------------


def _said_lora(lora: dict) -> str:
    model = lora.get("model") or "the default model"
    if lora.get("status") != "ready":
        return f"{lora['name']}: cannot be served: {lora.get('error')}"
    return f"{lora['name']}: {model}, rank {lora['rank']}, {lora['bytes'] / 2**20:.1f} MiB, {lora.get('source')}"


LORA_FILE = click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))


@click.group()
def loras() -> None:
    """The running stack's LoRA adapters: list, add, replace, remove (a request keeps the weights it began with)."""


@loras.command("list")
def loras_list() -> None:
    """Every LoRA adapter of the running stack: its model, rank and size, or why it cannot be served."""
    for lora in call(stack_api(), "GET", "/v1/loras")["data"]:
        click.echo(_said_lora(lora))


@loras.command("add")
@click.argument("name")
@LORA_FILE
@click.option("--model", default="", help="The served model it is for (default: the stack's default model).")
def loras_add(name: str, file: Path, model: str) -> None:
    """Upload FILE (.safetensors, any format diffusers reads) as LoRA adapter NAME, checked against the model."""
    added = call(stack_api(), "POST", "/v1/loras", {"name": lora_name(name), "model": model}, file)
    click.echo(f"added {_said_lora(added)}")


@loras.command("replace")
@click.argument("name")
@LORA_FILE
def loras_replace(name: str, file: Path) -> None:
    """Upload FILE as LoRA adapter NAME's new weights; requests in flight finish on the old ones."""
    replaced = call(stack_api(), "PUT", api_path("v1", "loras", lora_name(name)), {}, file)
    click.echo(f"replaced {_said_lora(replaced)}")


@loras.command("remove")
@click.argument("name")
def loras_remove(name: str) -> None:
    """Remove LoRA adapter NAME: new requests naming it are refused; those in flight finish."""
    call(stack_api(), "DELETE", api_path("v1", "loras", lora_name(name)))
    click.echo(f"removed {name}")


# -- easel vectorize models: the running stack's vectorize versions (serve.vectorize.version_admin) -----------------


@click.group()
def vectorize() -> None:
    """The running stack's vectorize ensemble."""


@vectorize.group("models")
def vectorize_models() -> None:
    """Vectorize model versions: list, add, replace (or roll back), remove; each a trained folder."""


def _version_said(entry: dict) -> str:
    current = ", current" if entry["current"] else ""
    return f"vectorize version {entry['version']} ({entry['triton_model']}{current}): {entry['trained_dir']}"


@vectorize_models.command("list")
def vectorize_models_list() -> None:
    """The vectorize versions installed (the current one answers requests without model_version)."""
    for entry in call(stack_api(), "GET", "/v1/vectorize/models")["data"]:
        click.echo(_version_said(entry))


@vectorize_models.command("add")
@click.argument("trained_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def vectorize_models_add(trained_dir: Path) -> None:
    """Install TRAINED_DIR (`easel train vectorize`'s output) as a new version beside the current one."""
    body = {"trained_dir": str(trained_dir.resolve())}
    click.echo(f"added {_version_said(call(stack_api(), 'POST', '/v1/vectorize/models', body))}")


@vectorize_models.command("replace")
@click.argument("target")
def vectorize_models_replace(target: str) -> None:
    """Make TARGET current: a trained folder (installed as a new version) or an installed version's number."""
    body = {"version": int(target)} if target.isdigit() else {"trained_dir": str(Path(target).resolve())}
    entry = call(stack_api(), "PUT", "/v1/vectorize/models", body)
    click.echo(f"now serving {_version_said(entry)}")


@vectorize_models.command("remove")
@click.argument("version", type=int)
def vectorize_models_remove(version: int) -> None:
    """Stop serving VERSION (not the current one); it is unloaded once its requests have ended."""
    call(stack_api(), "DELETE", f"/v1/vectorize/models/{version}")
    click.echo(f"removed vectorize version {version}")


@vectorize.command("export-feedback")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="The folder written.")
@click.option("--store", "store_url", metavar="URL", help="The stack's store (default: the embedded one).")
def vectorize_export_feedback(out: Path, store_url: str | None) -> None:
    """Write the recorded vectorize answers: OUT/records.jsonl, and OUT/images/ (`easel train vectorize --data`)."""
    from serve.stores import default_url
    from serve.vectorize.records import export, open_record_store

    counts = export(open_record_store(store_url or default_url()), out)
    click.echo(f"wrote {counts['rows']} records ({counts['images']} with their image) to {counts['out']}")
