"""``easel bench start``: how long a stack takes to start and to stop, step by step.

Each round starts a scratch stack (:func:`serve.stack.scratch_stack`, engines already built) in this process and
stops it. The steps are read off the stack's own log records as they happen (its phases, Triton ready, Serve's
controller and proxies started, the app built, ready), each timed from the round's start. Every integration test
module pays one start and one stop, so this is most of the suite's time.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from serve.tables import text_table

logger = logging.getLogger(__name__)

STOPPED = "stopped"


@dataclass(frozen=True)
class Mark:
    """One step of a start, when it ended (seconds after the round began)."""

    what: str
    at_s: float


class _Marks(logging.Handler):
    """Collects the INFO records of the stack, its Triton and its managed processes as marks."""

    LOGGERS = ("serve.stack", "serve.triton.server", "serve.processes.managed")

    def __init__(self, start: float) -> None:
        super().__init__(logging.INFO)
        self.start, self.marks = start, []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.name.startswith(self.LOGGERS) and not message.startswith("stack stopped"):
            self.marks.append(Mark(_step_name(message), record.created - self.start))


def _step_name(message: str) -> str:
    """A log message without what changes from run to run (a stack's id, a pid, an address, a path)."""
    if message.startswith("stack ") and ": " in message:
        return "phase " + message.split(": ", 1)[1]
    return re.sub(r"\d+", "N", message.split(":", 1)[0].split(" (", 1)[0])


def one_round() -> list[Mark]:
    """A scratch stack started and stopped once: the marks of its start, then ``stopped`` (after ready)."""
    from serve.stack import scratch_stack

    root = logging.getLogger()
    handler = _Marks(time.time())
    root.addHandler(handler)
    level = root.level
    root.setLevel(min(level, logging.INFO))
    try:
        with scratch_stack():
            pass
        handler.marks.append(Mark(STOPPED, time.time() - handler.start))
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return handler.marks


def summarize(rounds: list[list[Mark]]) -> list[tuple[str, float, float]]:
    """Each step every round took, in the first round's order: (step, median seconds after start, seconds it added).

    Seconds added are since the step before. The last, ``stopped``, took what the stop took (its step before is
    ``phase ready``). A step only some rounds took (a retry's) is left out.
    """
    rows, previous = [], 0.0
    everywhere = set.intersection(*({m.what for m in marks} for marks in rounds))  # a retry's marks are one round's
    for what in [m.what for m in rounds[0] if m.what in everywhere]:
        at = statistics.median(next(m.at_s for m in marks if m.what == what) for marks in rounds)
        rows.append((what, at, at - previous))
        previous = at
    return rows


def run_benchmark(repeats: int, out: Path) -> str:
    """``easel bench start``: ``repeats`` starts and stops; a table of medians, every mark as JSON to ``out``."""
    rounds = []
    for index in range(repeats):
        rounds.append(one_round())
        logger.info("round %d of %d: ready-to-stopped %.1f s", index + 1, repeats, rounds[-1][-1].at_s)
    rows = summarize(rounds)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rounds": [[asdict(m) for m in marks] for marks in rounds]}, indent=2))
    columns = [("step (median of rounds)", "<58s"), ("at s", ">8.1f"), ("took s", ">8.1f")]
    return text_table(columns, rows) + f"\n{repeats} round(s); written to {out}"
