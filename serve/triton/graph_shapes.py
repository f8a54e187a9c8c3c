"""The shapes a stack's torch-runtime engines capture CUDA graphs at, beside their native size and one prompt chunk.

``easel up --graph-size HxW --graph-chunks N`` writes them at the repository's root (:data:`GRAPH_SHAPES`, as
``python_paths.txt`` is), where every torch-runtime engine's Triton model and every loop model reads them when it
starts (:meth:`TorchEngine.capture_shapes <serve.triton.torch_runtime.TorchEngine.capture_shapes>` turns them into
each engine's latent shapes). A call at any other shape runs eager: logged once per shape and counted
(``easel_engine_eager_calls_total``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GRAPH_SHAPES = "graph_shapes.json"


@dataclass(frozen=True)
class GraphShapes:
    """Image sizes (height, width in pixels) and the most prompt chunks whose graphs every engine captures."""

    sizes: tuple[tuple[int, int], ...] = ()
    chunks: int = 1

    def write(self, repository: Path) -> None:
        """Write them at ``repository``'s root."""
        body = {"sizes": [list(size) for size in self.sizes], "chunks": self.chunks}
        (repository / GRAPH_SHAPES).write_text(json.dumps(body) + "\n")

    @classmethod
    def read(cls, repository: Path) -> GraphShapes:
        """Those written at ``repository``'s root (none: the native size, one chunk)."""
        path = repository / GRAPH_SHAPES
        if not path.is_file():
            return cls()
        body = json.loads(path.read_text())
        return cls(tuple((int(h), int(w)) for h, w in body.get("sizes", ())), int(body.get("chunks", 1)))


def parse_size(text: str) -> tuple[int, int]:
    """``HxW`` as (height, width); a ValueError names what is wrong."""
    height, _, width = text.lower().partition("x")
    if not (height.isdigit() and width.isdigit()) or int(height) <= 0 or int(width) <= 0:
        raise ValueError(f"{text!r} is not HEIGHTxWIDTH in pixels (e.g. 768x768)")
    return int(height), int(width)
