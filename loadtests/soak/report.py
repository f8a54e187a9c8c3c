"""A soak's report read by people: its checks, faults, windows and trends as plain-text tables, and a figure."""

from __future__ import annotations

from pathlib import Path

from serve.tables import text_table


def format_report(report: dict) -> str:
    """The checks, the faults and the windows as plain-text tables."""
    requests = "\n".join(f"  {kind}: {counts}" for kind, counts in report["requests"].items())
    trends = _trends_table(report["trends"])
    return "\n\n".join(
        [
            f"soak: {report['minutes']} min, seed {report['seed']}, {report['clients']} clients, jobs {report['jobs']}",
            f"requests by kind and status:\n{requests}",
            f"availability: {report['availability']}",
            _faults_table(report["faults"]),
            _windows_table(report["windows"]),
            trends or "trends: no process sampled long enough after the warm-up",
            _checks_table(report["checks"]),
        ]
    )


def _checks_table(checks: list[dict]) -> str:
    """Each check's name, PASS / FAIL / not judged, and its detail."""
    return text_table(
        [("check", "<88"), ("result", "<12"), ("detail", "<")],
        [
            (c["name"][:87], {True: "PASS", False: "FAIL", None: "not judged"}[c["passed"]], c["detail"][:600])
            for c in checks
        ],
    )


def _faults_table(faults: list[dict]) -> str:
    """Each fault: when, what, on what, how long, and how soon the stack was ready again."""
    return text_table(
        [("at s", ">6.0f"), ("fault", ">15"), ("target", ">42"), ("lasted s", ">9"), ("ready again s", ">15")],
        [
            (
                f["at_s"],
                f["kind"],
                f["target"][:39],
                f["lasted_s"],
                "-" if f["ready_again_s"] is None else f["ready_again_s"],
            )
            for f in faults
        ],
    )


def _windows_table(windows: list[dict]) -> str:
    """Each window's requests, failures, generation latencies and load average."""
    return text_table(
        [
            ("from s", ">7.0f"),
            ("requests", ">9"),
            ("failed", ">7"),
            ("gen p50 s", ">10"),
            ("gen p95 s", ">10"),
            ("load avg", ">9"),
        ],
        [
            (
                w["from_s"],
                w["requests"],
                w["failed"],
                w["generate_p50_s"] or "-",
                w["generate_p95_s"] or "-",
                w["load_average"] or "-",
            )
            for w in windows
        ],
    )


def _trends_table(trends: list[dict]) -> str | None:
    """The 12 processes growing fastest in RSS: their growth per minute (None: no process sampled long enough)."""
    rows = sorted(trends, key=lambda r: -r["rss_mib_per_min"])[:12]
    if not rows:
        return None
    return text_table(
        [
            ("process", "<40"),
            ("min", ">5"),
            ("RSS MiB", ">16"),
            ("MiB/min", ">8"),
            ("fds/min", ">8"),
            ("thr/min", ">8"),
        ],
        [
            (
                r["label"][:39],
                r["minutes"],
                f"{r['rss_first_mib']}->{r['rss_last_mib']}",
                r["rss_mib_per_min"],
                r["fds_per_min"],
                r["threads_per_min"],
            )
            for r in rows
        ],
    )


def plot(report: dict, path: Path) -> Path:
    """Requests and failures, generations' p95, RSS, open fds per process over the run; faults marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["windows"]
    width = rows[1]["from_s"] - rows[0]["from_s"] if len(rows) > 1 else 30.0
    mid = [w["from_s"] + width / 2 for w in rows]
    figure, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    axes[0].plot(mid, [w["requests"] / width for w in rows], label="requests/s")
    axes[0].plot(mid, [w["failed"] / width for w in rows], label="failed/s (503/429, gRPC UNAVAILABLE)")
    load = [float("nan") if w["load_average"] is None else w["load_average"] for w in rows]
    shared = axes[0].twinx()  # the machine is shared: its load on a scale of its own
    shared.plot(mid, load, color="grey", linestyle=":")
    shared.set_ylabel("machine load average, 1 min (dotted)", fontsize=8, color="grey")
    axes[1].plot(mid, [float("nan") if w["generate_p95_s"] is None else w["generate_p95_s"] for w in rows], label="p95")
    axes[1].plot(mid, [float("nan") if w["generate_p50_s"] is None else w["generate_p50_s"] for w in rows], label="p50")
    for series in report["series"]:
        axes[2].plot(series["t"], series["rss_mib"], linewidth=0.8)
        axes[3].plot(series["t"], series["fds"], linewidth=0.8)
    labels = ("requests", "sync generation (s, 30 s window)", "RSS per process (MiB)", "open fds per process")
    for axis, label in zip(axes, labels, strict=True):
        axis.set_ylabel(label, fontsize=9)
        axis.grid(alpha=0.3)
        for fault in report["faults"]:
            axis.axvline(fault["at_s"], color="red", alpha=0.4, linewidth=0.8)
    for axis in axes[:2]:
        axis.legend(fontsize=8, loc="upper right")
    for fault in report["faults"]:
        axes[0].annotate(
            fault["kind"],
            (fault["at_s"], 1.0),
            xycoords=("data", "axes fraction"),
            fontsize=7,
            rotation=90,
            va="top",
            ha="right",
            color="red",
        )
    axes[2].set_yscale("log")
    axes[3].set_yscale("log")
    axes[3].set_xlabel("seconds since the load started (red: faults)")
    figure.suptitle(
        f"easel soak: {report['minutes']} min, seed {report['seed']}, {report['clients']} clients", fontsize=11
    )
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
