"""Why a Triton start failed, in one line: the models it could not load and its reasons, read from its log.

Triton says which model failed only in its log ("failed to load 'unet' version 1: ...", "failed to poll model
'sd.unet': model not found in any model repository"); its exit says "failed to load all models". ``easel up`` names
the model and the reason instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

_MODEL_FAILED = re.compile(r"failed to (?:poll model|load) '(?P<model>[^']+)'(?: version \d+)?: (?P<reason>.+)")
_ERROR_LINE = re.compile(r'^E\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] "?(?P<message>.+?)"?$')
_HARMLESS = ("CudaDriverHelper", "CUDA driver version", "unable to create stream", "failed to load all models")
"""Error lines a CPU machine always logs, and the summary that names no model."""
_REASON_CHARS = 300
PYTHON_BACKEND_ABORT = "boost::interprocess::lock_exception"
"""What Triton's log ends with when its python backend aborted the server, now and then, while a stub started on a
busy machine (triton-inference-server/server issue 8882): nothing about the models is wrong."""


def _reason(text: str) -> str:
    """A reason as one short line: its first line, Triton's quoting and trailing period off."""
    first = (text.strip().strip('"').splitlines() or [""])[0].strip().rstrip('".').strip()
    return first if len(first) <= _REASON_CHARS else first[: _REASON_CHARS - 3] + "..."


def failed_models(log: str) -> dict[str, str]:
    """The models Triton's ``log`` says it could not load, each with its reason (the first said), in log order."""
    failed: dict[str, str] = {}
    for match in _MODEL_FAILED.finditer(log):
        failed.setdefault(match["model"], _reason(match["reason"]))
    return failed


def start_failure(log: str, log_path: object = None) -> str | None:
    """One line naming what failed in a Triton start and why (the models it could not load, else its last error).

    None when ``log`` names nothing (a crash with no error line).
    """
    where = f" (Triton's log: {log_path})" if log_path else ""
    if failed := failed_models(log):
        (model, reason), *others = failed.items()
        more = f"; and {len(others)} more: {', '.join(name for name, _ in others)}" if others else ""
        return f"Triton could not load model '{model}': {reason}{more}{where}"
    errors = [m["message"] for line in log.splitlines() if (m := _ERROR_LINE.match(line.strip()))]
    errors = [_reason(message) for message in errors if not any(harmless in message for harmless in _HARMLESS)]
    errors = [message for message in errors if message]
    return f"Triton did not start: {errors[-1]}{where}" if errors else None


class StartLog:
    """The lines one start of Triton appends to its log, and what they say failed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0  # where this start's lines begin (the log is appended to)

    def begin(self) -> None:
        """A start begins now: its lines are those written from here on."""
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def text(self) -> str:
        """This start's lines so far."""
        if not self.path.exists():
            return ""
        with self.path.open("rb") as log:
            log.seek(self.offset)
            return log.read().decode(errors="replace")

    def python_backend_aborted(self) -> bool:
        """Whether this start ended in the python backend's abort (:data:`PYTHON_BACKEND_ABORT`)."""
        return PYTHON_BACKEND_ABORT in self.text()

    def failure(self, needed: Iterable[str], exited: bool) -> str | None:
        """Why this start cannot become ready, in one line (None while nothing says so).

        A model in ``needed`` that Triton could not load; once the server ``exited``, its last error.
        """
        text = self.text()
        if exited or failed_models(text).keys() & set(needed):
            return start_failure(text, self.path)
        return None
