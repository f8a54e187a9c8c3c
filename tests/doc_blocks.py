"""The docs' runnable blocks: fenced ```bash run``` / ```python run``` blocks, each with an optional ```text output```
block right after it, whose text the block's output must match (``...`` matches anything, as doctest's ELLIPSIS).

The README's quick start and the guides' blocks that run on the embedded default are run in order against one real
stack (tests/integration/test_cli.py); ``easel`` in a block is this checkout's CLI, and the documented addresses
(API 127.0.0.1:8000, gRPC 127.0.0.1:9000) are the stack's own free ports.
"""

from __future__ import annotations

import doctest
import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from serve.paths import PROJECT_ROOT

RUN_ORDER = ("README.md", *(f"docs/guides/{name}.md" for name in ("models", "images-in", "jobs", "moderation")))
RUN_ORDER += tuple(f"docs/guides/{name}.md" for name in ("vectorize", "operations", "keys-and-limits"))
"""Where the runnable blocks are, in the order they run: the quick start first, keys last (a key closes the API)."""
_FENCE = re.compile(r"^```(\w+)( run| output)?\n(.*?)^```\n", re.MULTILINE | re.DOTALL)
API, GRPC = "127.0.0.1:8000", "127.0.0.1:9000"


@dataclass(frozen=True)
class Block:
    """One runnable block: where it is, its language and code, the output it shows (None: none shown)."""

    where: str
    language: str
    code: str
    output: str | None


def runnable_blocks(relative: str) -> list[Block]:
    """The runnable blocks of the markdown file at ``relative`` (to the checkout), each with the output after it."""
    text = (PROJECT_ROOT / relative).read_text()
    fences = list(_FENCE.finditer(text))
    blocks = []
    for index, fence in enumerate(fences):
        if fence[2] != " run":
            continue
        after = fences[index + 1] if index + 1 < len(fences) else None
        shown = after[3] if after is not None and after[2] == " output" else None
        line = text[: fence.start()].count("\n") + 1
        blocks.append(Block(f"{relative}:{line}", fence[1], fence[3], shown))
    return blocks


def every_runnable_block() -> list[Block]:
    """The runnable blocks of :data:`RUN_ORDER`'s files, in order."""
    return [block for relative in RUN_ORDER for block in runnable_blocks(relative)]


class Stack:
    """Where the blocks' stack listens, and how a block is run against it."""

    def __init__(self, home: Path, api_port: int, grpc_port: int, dashboard_port: int) -> None:
        self.home, self.api_port, self.grpc_port, self.dashboard_port = home, api_port, grpc_port, dashboard_port
        self.work = home.parent / "docs-work"  # the blocks' working folder (not EASEL_HOME: its triton/ would shadow
        self.bin = self.work / "bin"  # the triton package for `python -c`)
        self.bin.mkdir(parents=True, exist_ok=True)
        shim = self.bin / "easel"  # `easel` is this checkout's CLI, whatever pip installed
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m serve.cli "$@"\n')
        shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
        self.env = {
            **os.environ,
            "EASEL_HOME": str(home),
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(PROJECT_ROOT),
        }
        self.env.pop("EASEL_API_KEY", None)

    def addressed(self, text: str) -> str:
        """``text`` with the documented addresses replaced by this stack's."""
        text = text.replace(API, f"127.0.0.1:{self.api_port}").replace("localhost:8000", f"localhost:{self.api_port}")
        return text.replace(GRPC, f"127.0.0.1:{self.grpc_port}")

    def run(self, block: Block, timeout_s: float = 600) -> subprocess.CompletedProcess:
        """Run ``block`` (a shell or Python block) against this stack; ``easel up`` on this stack's ports."""
        code = self.addressed(block.code)
        if block.language == "bash":
            ports = f" --port {self.api_port} --grpc-port {self.grpc_port} --dashboard-port {self.dashboard_port}"
            code = re.sub(r"^easel up\b(.*)$", rf"easel up\1{ports} --triton-ports 0,0,0", code, flags=re.MULTILINE)
            command = ["bash", "-eo", "pipefail", "-c", code]
        else:
            command = [sys.executable, "-c", code]
        return subprocess.run(
            command, env=self.env, cwd=self.work, capture_output=True, text=True, timeout=timeout_s, check=False
        )

    def matches(self, block: Block, printed: str) -> bool:
        """Whether ``printed`` is what ``block`` shows (its ``...`` match anything); True when it shows nothing."""
        if block.output is None:
            return True
        checker = doctest.OutputChecker()
        return checker.check_output(self.addressed(block.output), printed, doctest.ELLIPSIS)
