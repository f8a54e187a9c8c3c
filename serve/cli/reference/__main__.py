"""``python -m serve.cli.reference``: write docs/API.md, CLI.md and architecture.svg (``--check``: compare)."""

import sys

from serve.cli.reference import stale, write

if __name__ == "__main__":
    if "--check" in sys.argv[1:]:
        if old := stale():
            sys.exit(f"stale: {', '.join(str(p) for p in old)}; run `python -m serve.cli.reference`")
    else:
        for path in write():
            sys.stdout.write(f"wrote {path}\n")
