"""Where Easel keeps its files: caches, run state and the live model repository under ``$EASEL_HOME``.

The checkout's ``model_repository/`` is a template (the configs a build writes, checked against the specs): nothing
Easel runs writes it. A stack, and ``easel build``, install into the run folder's :func:`live_repository`.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODEL_REPOSITORY = PROJECT_ROOT / "model_repository"
"""The committed template of the repository (never written)."""
SERVE_CONFIG = PROJECT_ROOT / "deployments" / "serve_config.yaml"
# The shared icon data sits beside the checkout (../shared), as in development and CI; a git worktree elsewhere
# names it with $EASEL_ICONS_DEV.
ICONS_DEV = Path(os.environ.get("EASEL_ICONS_DEV", PROJECT_ROOT.parent / "shared" / "datasets" / "icons-dev"))


def easel_home() -> Path:
    """Cache root for models, engines and run state (``$EASEL_HOME``, default ``~/.cache/easel``)."""
    return Path(os.environ.get("EASEL_HOME", Path.home() / ".cache" / "easel"))


def run_dir() -> Path:
    """Where a running stack keeps its logs and state (``$EASEL_HOME/run``)."""
    return easel_home() / "run"


def live_repository(folder: Path | None = None) -> Path:
    """The Triton model repository that a stack with run folder ``folder`` (default: :func:`run_dir`) serves."""
    return (folder or run_dir()) / "model_repository"
