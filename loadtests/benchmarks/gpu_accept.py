"""Issue 74's acceptance lines, evaluated on what one ``easel bench gpu`` run measured: PASS, FAIL or NOT RUN each.

Pure functions of the run's JSON (:class:`loadtests.benchmarks.gpu_report.Report`'s data), so a run cut short still
says which lines it answered. A line whose rows were cut by the deadline says so (``partial``). On a CPU (the smoke
run) the embedded default stands in for SD 1.5 and the lines only exercise this evaluation: its numbers mean nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PASS, FAIL, NOT_RUN = "PASS", "FAIL", "NOT RUN"

LOOP_MERGED = "easel, loop in Triton, merged"
LOOP_ONE_STEP = "easel, loop in Triton, merged, 1 step"
ONE_AT_A_TIME = "one at a time"
WAVE = "a wave as one batch"
PARITY_BAR = 1e-2
PSNR_BAR_DB = 35.0
OVERHEAD_BAR_MS = 2.0


@dataclass(frozen=True)
class Verdict:
    """One acceptance line: what it says, its status, the value measured and the bar."""

    line: str
    status: str
    value: str = ""
    bar: str = ""

    def __str__(self) -> str:
        measured = f": {self.value}" if self.value else ""
        bar = f" (bar: {self.bar})" if self.bar else ""
        return f"{self.status:<8}{self.line}{measured}{bar}"


def _row(data: dict, model: str, method: str, concurrency: int) -> dict | None:
    """The row of ``model`` whose method contains ``method`` at ``concurrency`` images in flight (or in the wave)."""
    for row in data.get("rows", []):
        if row["model"] == model and row["concurrency"] == concurrency and _method_is(row["method"], method):
            return row
    return None


def _method_is(name: str, method: str) -> bool:
    if method == LOOP_MERGED:
        return name == LOOP_MERGED
    return name.startswith("diffusers") and name.endswith(method)


def _partial(*rows: dict) -> str:
    return " (partial row: cut by the deadline)" if any(r.get("partial") for r in rows) else ""


def _check(line: str, value: float | None, ok: bool, shown: str, bar: str, why: str) -> Verdict:
    if value is None:
        return Verdict(line, NOT_RUN, why, bar)
    return Verdict(line, PASS if ok else FAIL, shown, bar)


def served_lines(data: dict, model: str | None, label: str) -> list[Verdict]:
    """The SD 1.5 lines (``model`` in its role; None: not in this run)."""
    c1 = _row(data, model, LOOP_MERGED, 1) if model else None
    c8 = _row(data, model, LOOP_MERGED, 8) if model else None
    c16 = _row(data, model, LOOP_MERGED, 16) if model else None
    wave = _row(data, model, WAVE, 16) if model else None
    missing = "no such row in this run" if model else "SD 1.5 is not in this run"
    lines = []
    p50 = c1["p50_ms"] if c1 else None
    lines.append(
        _check(
            f"{label} c=1 p50",
            p50,
            p50 is not None and p50 <= 300,
            f"{p50:.0f} ms{_partial(c1)}" if c1 else "",
            "<= 300 ms",
            missing,
        )
    )
    rate = c16["per_s"] if c16 else None
    lines.append(
        _check(
            f"{label} c=16 images/s",
            rate,
            rate is not None and rate >= 8,
            f"{rate:.2f}{_partial(c16)}" if c16 else "",
            ">= 8",
            missing,
        )
    )
    ratio = c16["per_s"] / wave["per_s"] if c16 and wave and wave["per_s"] else None
    shown = f"{ratio:.2f}x ({c16['per_s']:.2f} vs {wave['per_s']:.2f} images/s){_partial(c16, wave)}" if ratio else ""
    lines.append(
        _check(
            f"{label} c=16 vs diffusers' static wave of 16",
            ratio,
            ratio is not None and ratio >= 1.15,
            shown,
            ">= 1.15x",
            missing,
        )
    )
    spread = c8["p95_ms"] / c1["p50_ms"] if c8 and c1 and c1["p50_ms"] else None
    shown = f"{spread:.2f}x ({c8['p95_ms']:.0f} / {c1['p50_ms']:.0f} ms){_partial(c1, c8)}" if spread else ""
    lines.append(
        _check(
            f"{label} p95 at c=8 over the c=1 p50",
            spread,
            spread is not None and spread <= 2.5,
            shown,
            "<= 2.5x",
            missing,
        )
    )
    return lines


def sdxl_lines(data: dict, model: str | None) -> list[Verdict]:
    """The SDXL lines (``model`` None: not in this run)."""
    c1 = _row(data, model, LOOP_MERGED, 1) if model else None
    c4 = _row(data, model, LOOP_MERGED, 4) if model else None
    wave = _row(data, model, WAVE, 4) if model else None
    missing = "no such row in this run" if model else "SDXL is not in this run"
    p50 = c1["p50_ms"] / 1000 if c1 else None
    first = _check(
        "SDXL 1024x1024 c=1 p50",
        p50,
        p50 is not None and p50 <= 1.0,
        f"{p50:.2f} s{_partial(c1)}" if c1 else "",
        "<= 1.0 s",
        missing,
    )
    ratio = c4["per_s"] / wave["per_s"] if c4 and wave and wave["per_s"] else None
    shown = f"{ratio:.2f}x ({c4['per_s']:.2f} vs {wave['per_s']:.2f} images/s){_partial(c4, wave)}" if ratio else ""
    second = _check(
        "SDXL c=4 vs diffusers' wave of 4", ratio, ratio is not None and ratio >= 1.1, shown, ">= 1.1x", missing
    )
    return [first, second]


def per_model_lines(data: dict, models: list[str]) -> list[Verdict]:
    """Per model run: the per-step overhead, the fp16 parity of every bucket, the fractional-timestep image."""
    lines = []
    for model in models:
        step = next((s for s in data.get("per_step", []) if s["model"] == model), None)
        overhead = step["overhead_ms"] if step and math.isfinite(step["overhead_ms"]) else None
        shown = (
            f"{overhead:.2f} ms (per step {step['per_step_ms']:.2f} ms through the loop, {step['replay']} "
            f"{step['replay_ms']:.2f} ms)"
            if overhead is not None
            else ""
        )
        lines.append(
            _check(
                f"{model}: per-step overhead over bare graph replay at c=1",
                overhead,
                overhead is not None and overhead <= OVERHEAD_BAR_MS,
                shown,
                f"<= {OVERHEAD_BAR_MS:g} ms",
                "not measured" if step is None else "no graph replay was timed",
            )
        )
        parity = [p for p in data.get("parity", []) if p["model"] == model]
        unmeasured = [s for s in data.get("skipped", []) if s.get("model") == model and "parity" in s]
        worst = max(parity, key=lambda p: p["relative_error"]) if parity else None
        shown = ""
        if worst:
            shown = (
                f"worst {worst['relative_error']:.1e} ({worst['engine']}, {worst['rows']} rows), {len(parity)} checks"
            )
            shown += f"; {len(unmeasured)} not measured (deadline)" if unmeasured else ""
        missed = [p for p in parity if p.get("missed_bucket")]
        shown += f"; {len(missed)} ran eager, not in their bucket's graph" if missed else ""
        error = worst["relative_error"] if worst else None
        lines.append(
            _check(
                f"{model}: fp16 parity against fp32, every captured bucket, padded ones too",
                error,
                error is not None and error <= PARITY_BAR and not missed,
                shown,
                f"<= {PARITY_BAR:.0e}",
                "not measured",
            )
        )
        image = next((f for f in data.get("fractional", []) if f["model"] == model), None)
        if image is not None:
            db = image["min_db"]
            lines.append(
                _check(
                    f"{model}: fractional-timestep image ({image['sampler']}), fp16 against fp32",
                    db,
                    db >= PSNR_BAR_DB,
                    f"{db:.1f} dB (min of {image['images']})",
                    f">= {PSNR_BAR_DB:g} dB",
                    "",
                )
            )
    return lines


def evaluate(data: dict) -> list[Verdict]:
    """Every acceptance line of issue 74 for the run ``data`` (its settings name the models and whether a smoke run).

    Its ``video_models`` (image-to-video, measured by the video stages) have no line of their own here.
    """
    settings = data.get("settings", {})
    models = [name for name in settings.get("models", ()) if name not in data.get("video_models", ())]
    smoke = bool(settings.get("smoke"))
    sd15 = "sd15" if "sd15" in models else ("tiny" if smoke and "tiny" in models else None)
    label = f"{sd15} (smoke, in SD 1.5's place)" if sd15 == "tiny" else "SD 1.5 512x512"
    lines = served_lines(data, sd15, label)
    lines += sdxl_lines(data, "sdxl" if "sdxl" in models else None)
    lines += per_model_lines(data, models)
    images = [f for f in data.get("fractional", []) if f["model"] in models]
    if not images:
        lines.append(
            Verdict("fractional-timestep image, fp16 against fp32", NOT_RUN, "not measured", f">= {PSNR_BAR_DB:g} dB")
        )
    lines.append(Verdict("the lines above over HTTP through `easel up --device cuda`", NOT_RUN, "Ray is not carried"))
    lines.append(
        Verdict(
            "a LoRA and an IP-Adapter request on the GPU against diffusers",
            NOT_RUN,
            "not measured by this bench",
            f">= {PSNR_BAR_DB:g} dB",
        )
    )
    return lines


def format_verdicts(data: dict) -> str:
    """The acceptance lines as text, the smoke run's marked."""
    head = "acceptance (issue 74)"
    if data.get("settings", {}).get("smoke"):
        head += ": SMOKE RUN on a CPU, the bars are a GPU's and the numbers mean nothing"
    return "\n".join([head, *(str(v) for v in evaluate(data))])
