"""The reference docs that cannot drift: docs/API.md, docs/CLI.md and the architecture's picture, generated.

Each is drawn from what runs, found by the names the project publishes rather than by file paths: the ``easel``
command is ``pyproject.toml``'s console script, the API the application the Serve config imports
(``deployments/serve_config.yaml``' ``import_path``), the routes :data:`serve.routes.ROUTES` with
:data:`serve.errors.WIRE`, the picture docs/ARCHITECTURE.md's diagram and floor table. ``python -m serve.cli.reference``
writes them; ``--check`` says which are stale (a unit test runs the same comparison).
"""

from __future__ import annotations

import importlib
import tomllib
from collections.abc import Callable
from pathlib import Path

import yaml

from serve.paths import PROJECT_ROOT, SERVE_CONFIG

DOCS = PROJECT_ROOT / "docs"


def easel_command():
    """The ``easel`` click group: ``pyproject.toml``'s console script, wherever its module lives."""
    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["easel"].partition(":")
    return getattr(importlib.import_module(module), name)


def served_app():
    """The FastAPI app the Serve config's application serves (its ``import_path``'s module holds it)."""
    from fastapi import FastAPI

    application = yaml.safe_load(SERVE_CONFIG.read_text())["applications"][0]
    module = importlib.import_module(application["import_path"].replace(":", ".").rpartition(".")[0])
    apps = [value for value in vars(module).values() if isinstance(value, FastAPI)]
    if len(apps) != 1:
        raise LookupError(f"{module.__name__} holds {len(apps)} FastAPI apps, not one")
    return apps[0]


def generated() -> dict[Path, Callable[[], str]]:
    """Each generated file and what writes its text."""
    from serve.cli.reference.api import api_reference
    from serve.cli.reference.cli import cli_reference
    from serve.cli.reference.picture import architecture_svg

    return {
        DOCS / "API.md": lambda: api_reference(served_app().openapi()),
        DOCS / "CLI.md": lambda: cli_reference(easel_command()),
        DOCS / "architecture.svg": lambda: architecture_svg((DOCS / "ARCHITECTURE.md").read_text()),
    }


def stale() -> list[Path]:
    """The generated files whose text is not what their generator writes now."""
    return [path for path, text in generated().items() if not path.exists() or path.read_text() != text()]


def write() -> list[Path]:
    """Write every generated file; the ones that changed."""
    changed = []
    for path, text in generated().items():
        new = text()
        if not path.exists() or path.read_text() != new:
            path.write_text(new)
            changed.append(path)
    return changed
