"""``easel bench gpu``'s three files in its out folder, all rewritten as the run goes.

``gpu.json`` (raw), ``gpu.txt`` (table and acceptance lines), ``gpu.log`` (the log, each Triton log's tail appended
after its stage).

A lent GPU machine returns at most 8 files from its out folder: everything else the run writes (model repository,
engines, Triton's own logs) lives in a work folder outside it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from loadtests.benchmarks import loop
from loadtests.benchmarks.gpu_accept import format_verdicts

logger = logging.getLogger(__name__)

JSON, TEXT, LOG = "gpu.json", "gpu.txt", "gpu.log"
OUT_FILES = (JSON, TEXT, LOG)
"""What a run writes into its out folder, and nothing else."""
MAX_LOG_BYTES = 6 * 2**20
TRITON_TAIL_BYTES = 2**20
KINDS = ("rows", "parity", "fractional", "per_step", "psnr", "vae", "video", "skipped", "failed")


class Report:
    """The run's JSON and table, written again after every entry so that a run cut short keeps what it measured."""

    def __init__(self, out: Path, **context) -> None:
        self.out, self.started = out, time.monotonic()
        self.path = out / JSON
        self.data: dict = {**context, **{kind: [] for kind in KINDS}}
        self.write()

    def add(self, kind: str, entry: dict) -> None:
        """Add ``entry`` to the list ``kind`` and write the files."""
        self.data[kind].append(entry)
        self.write()
        logger.info("%s: %s", kind, entry)

    def write(self) -> None:
        """Write ``gpu.json`` (its elapsed seconds included) and ``gpu.txt``."""
        self.data["elapsed_s"] = round(time.monotonic() - self.started, 1)
        self.out.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2, default=str))
        (self.out / TEXT).write_text(self.text() + "\n")

    def text(self) -> str:
        """The table of rows, each check, what was skipped or failed, and the acceptance lines."""
        d = self.data
        rows = [
            loop.BenchRow(**{k: r[k] for k in loop.BenchRow.__dataclass_fields__} | {"method": _method(r)})
            for r in d["rows"]
        ]
        lines = [f"device: {d.get('device')}, torch {d.get('torch')}, {d['elapsed_s']:.0f} s", format_verdicts(d), ""]
        lines += [loop.format_table(rows, "img")] if rows else ["no rows"]
        lines += [
            f"peak memory {r['model']} {_method(r)} c={r['concurrency']}: {r['peak_memory_gib']} GiB"
            for r in d["rows"]
            if r.get("peak_memory_gib")
        ]
        lines += [_parity(p) for p in d["parity"]]
        lines += [
            f"per step {s['model']}: ({s['p50_steps_ms']:.1f} - {s['p50_one_step_ms']:.1f} ms) / {s['steps'] - 1} = "
            f"{s['per_step_ms']:.2f} ms through the loop at c=1; {s['replay']} {s['replay_ms']:.2f} ms; overhead "
            f"{s['overhead_ms']:.2f} ms"
            for s in d["per_step"]
        ]
        lines += [
            f"fractional {f['model']} ({f['sampler']}, timesteps {f['timesteps']}): {f['min_db']:.1f} dB (min), "
            f"{f['mean_db']:.1f} dB (mean) fp16 against fp32"
            for f in d["fractional"]
        ]
        lines += [
            f"psnr {p['model']}{' against ' + p['against'] if p.get('against') else ''}: {p['min_db']:.1f} dB (min), "
            f"{p['mean_db']:.1f} dB (mean)"
            for p in d["psnr"]
        ]
        lines += [
            f"vae {v['model']}: fp32 {v['fp32_ms']:.1f} ms, bf16 {v['bf16_ms']:.1f} ms per decode; bf16 relative error "
            f"{v['relative_error']:.1e} against fp32"
            for v in d["vae"]
        ]
        lines += [_video(v) for v in d.get("video", [])]
        lines += [f"skipped {s}" for s in d["skipped"]]
        lines += [
            f"failed {f.get('model')} {f.get('stage') or f.get('method') or ''}: {f['error']}" for f in d["failed"]
        ]
        return "\n".join([*lines, f"raw: {self.path}"])


def _parity(check: dict) -> str:
    where = f"in bucket {check['bucket']}" if check["bucket"] else "eager"
    where += " (MISSED: ran eager)" if check.get("missed_bucket") else ""
    return (
        f"parity {check['model']} {check['engine']} ({check['dtype']} vs fp32) {check['rows']} rows {where}: "
        f"relative error {check['relative_error']:.1e}"
    )


def _video(entry: dict) -> str:
    head = f"video {entry['model']} {entry['method']} c={entry['concurrency']}: "
    if "ms_per_new_frame" in entry:
        return head + f"{entry['ms_per_new_frame']:.1f} ms per new frame ({entry['new_frames']} frames)"
    clip = f"{entry['frames']} frames x {entry['steps']} steps at {entry['size']}"
    return head + f"{entry['ms_per_frame_step']:.1f} ms per frame-step ({clip})"


def _method(row: dict) -> str:
    return row["method"] + (" (partial)" if row.get("partial") else "")


class CappedLog(logging.FileHandler):
    """``gpu.log``: every record until :data:`MAX_LOG_BYTES`, then one line saying the rest was cut."""

    def __init__(self, path: Path, append: bool = False) -> None:
        super().__init__(path, mode="a" if append else "w", encoding="utf-8")
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        self._full = False

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` while under the cap."""
        if not self._room():
            return
        super().emit(record)

    def append(self, title: str, path: Path, limit: int = TRITON_TAIL_BYTES) -> None:
        """Append the last ``limit`` bytes of the file ``path`` (a Triton log) under ``title``."""
        try:
            with path.open("rb") as file:
                size = file.seek(0, 2)
                file.seek(max(0, size - limit))
                tail = file.read().decode("utf-8", errors="replace")
        except OSError as error:
            tail = f"(unreadable: {error})"
            size = 0
        cut = f", its last {limit} bytes" if size > limit else ""
        with self.lock:
            if self._room() and self.stream is not None:
                self.stream.write(f"----- {title} ({size} bytes{cut}) -----\n{tail}\n----- end of {title} -----\n")
                self.flush()

    def _room(self) -> bool:
        if self._full:
            return False
        if self.stream is not None and self.stream.tell() > MAX_LOG_BYTES:
            self._full = True
            self.stream.write(f"----- the log is cut here at {MAX_LOG_BYTES} bytes -----\n")
            self.flush()
            return False
        return True
