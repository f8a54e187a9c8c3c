"""``easel contract check``: schemathesis' own runner against a stack, every check and every phase, for a time budget.

What the project's contract test (``tests/integration/test_contract.py``) does in CI's few minutes, at the scale of a
nightly run: the examples, coverage, fuzzing and stateful phases, fuzzing and stateful repeated until ``--max-time``
is spent, every check of schemathesis with positive-data acceptance as the document has it
(:mod:`loadtests.contract_hooks`). By default on a scratch stack started as the test's (a tiny cost ceiling, no result
cache), with a fresh key of one kind: ``generate`` (only the generate scope) or ``admin``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from serve.paths import PROJECT_ROOT

logger = logging.getLogger(__name__)

MAX_COST = 0.05
"""The scratch stack's cost ceiling, as the contract test's: most generations are refused for it, the rest are fast."""
HOOKS = "loadtests.contract_hooks"
KEY_SCOPES = {"admin": ("admin",), "generate": ("generate",)}
"""The kinds of key a run may take, by the scopes each has."""


def schemathesis_command(url: str, key: str, max_time_s: int, workers: int, report_dir: Path, seed: int | None):
    """The ``st run`` command line: every check (positive-data acceptance as documented), every phase."""
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",  # the hooks' positive_data_acceptance_as_documented runs instead
        "--max-time",
        str(max_time_s),
        "--workers",
        str(workers),
        "--header",
        f"Authorization: Bearer {key}",
        "--suppress-health-check",
        "all",
        "--request-timeout",
        "120",
        "--report",
        "json,junit",
        "--report-dir",
        str(report_dir),
    ]
    return command + (["--seed", str(seed)] if seed is not None else [])


def run_schemathesis(url: str, key: str, max_time_s: int, workers: int, report_dir: Path, seed: int | None) -> int:
    """Run schemathesis against ``url`` with ``key`` (its output to this process's); its exit code."""
    report_dir = report_dir.resolve()  # the command runs in it
    report_dir.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"SCHEMATHESIS_HOOKS": HOOKS}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    command = schemathesis_command(url, key, max_time_s, workers, report_dir, seed)
    # In the report folder (schemathesis keeps its example database where it runs: .schemathesis/), and never
    # longer than its budget and a grace for the last cases and the report.
    return subprocess.run(command, env=env, cwd=report_dir, check=False, timeout=max_time_s + 600).returncode  # noqa: S603


@contextlib.contextmanager
def scratch_api(kinds: tuple[str, ...], folder: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A scratch stack as the contract test's, and a fresh key of each of ``kinds``: (the API's URL, kind -> key)."""
    from serve.access import open_key_store
    from serve.access.keys import KeyLimits
    from serve.routes import Scope
    from serve.stack import scratch_stack

    with scratch_stack(folder=folder, max_cost=MAX_COST) as stack:
        store = open_key_store(stack.options.store)
        keys = {
            kind: store.create(f"contract-{kind}", {Scope(s) for s in KEY_SCOPES[kind]}, KeyLimits())[1]
            for kind in kinds
        }
        yield stack.info.api_url, keys


def check(
    kinds: tuple[str, ...],
    max_time_s: int,
    workers: int,
    out: Path,
    seed: int | None = None,
    url: str | None = None,
    key: str | None = None,
) -> int:
    """Schemathesis for ``max_time_s`` with a key of each of ``kinds`` in turn; the first failing run's exit code, or 0.

    On ``url`` with ``key`` (of the one kind), or else on one scratch stack.
    """
    if url is not None:
        (kind,) = kinds
        return run_schemathesis(url.rstrip("/"), key, max_time_s, workers, out / kind, seed)
    codes = []
    with scratch_api(kinds, out / "stack") as (api_url, keys):
        for kind in kinds:
            logger.info("contract check with a %s key: %d s", kind, max_time_s)
            codes.append(run_schemathesis(api_url, keys[kind], max_time_s, workers, out / kind, seed))
    return next((code for code in codes if code), 0)
