"""UNet engine calls with and without IP-Adapters (``easel bench ip-unet ENGINE_DIR...``).

Each built engine folder's ``unet`` runs in one ONNX Runtime session in this process, the folders' calls interleaved
round by round (so a busy machine slows them alike), at a guided batch of 2 rows and a few sizes. Inputs are random
(zeros for LoRA banks and scales: the cost of a row's attention does not depend on them). The table of median
milliseconds per call is returned (the command prints it), and the JSON written.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np

from serve.tables import text_table

SIDES = (64, 256, 512)  # output pixels a side; the latent is an eighth
ROUNDS = 15
ROWS = 2  # a guided request's negative and prompt rows


def feeds(session, latent: int) -> dict[str, np.ndarray]:
    """Inputs for every graph input of ``session`` at a ``latent`` side (LoRA banks empty, IP scales zero)."""
    rng = np.random.default_rng(0)
    out = {}
    for tensor in session.get_inputs():
        shape = [_dim(dim, latent) for dim in tensor.shape]
        if "int64" in tensor.type:
            out[tensor.name] = np.zeros(shape, np.int64)
        elif tensor.name.startswith(("lora_", "ip_scale")):
            out[tensor.name] = np.zeros(shape, np.float32)
        else:
            out[tensor.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def _dim(dim, latent: int) -> int:
    if isinstance(dim, int):
        return dim
    if dim == "batch":
        return ROWS
    if dim.startswith("rank") or dim == "loras":
        return 1
    if dim.startswith("ip_mask_"):  # ip_mask_{level}_height: the latent downsampled level times
        return -(-latent // 2 ** int(dim.split("_")[2]))
    return latent


def measure(folders: list[Path]) -> dict[str, dict[str, float]]:
    """Median seconds per UNet call of each folder at each side."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    sessions = {
        folder.name.split("-opset")[0]: ort.InferenceSession(
            str(folder / "unet" / "model.onnx"), options, ["CPUExecutionProvider"]
        )
        for folder in folders
    }
    result: dict[str, dict[str, float]] = {name: {} for name in sessions}
    for side in SIDES:
        inputs = {name: feeds(session, side // 8) for name, session in sessions.items()}
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for round_ in range(ROUNDS + 1):
            for name, session in sessions.items():
                start = time.perf_counter()
                session.run(None, inputs[name])
                if round_:  # the first round warms up
                    times[name].append(time.perf_counter() - start)
        for name in sessions:
            result[name][f"{side}x{side}"] = statistics.median(times[name])
    return result


def run(folders: list[Path], out: Path) -> str:
    """Measure ``folders``' UNets, write ``out`` (JSON), and return the table."""
    result = measure(folders)
    columns = [("engine folder (to -opset)", "<52"), *((f"{side}px ms", ">12.1f") for side in SIDES)]
    rows = [(name, *(seconds * 1000 for seconds in sizes.values())) for name, sizes in result.items()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": ROWS, "rounds": ROUNDS, "seconds": result}, indent=2))
    return text_table(columns, rows)
