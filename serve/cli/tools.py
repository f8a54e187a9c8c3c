"""``easel loadtest``, ``easel chaos``, ``easel soak``: a stack driven under load from outside; parse and wire only.

The benchmarks' group, ``easel bench``, is :mod:`serve.cli.bench`.
"""

from __future__ import annotations

from pathlib import Path

import click

from serve.cli.fields import model_options
from serve.cli.options import FOLDER, images_option, one_line_errors, out_option
from serve.settings import StackOptions

memory_budget_option = model_options(StackOptions, "memory_budget_bytes")


@click.command()
@click.argument("scenario")
@images_option
@out_option(None, FOLDER, "Where locust's CSV/HTML go (default out/loadtest/SCENARIO).")
@click.option(
    "--docs",
    type=FOLDER,
    default=None,
    help="A scenario with stages (ramp): also write its ramp.json, ramp.md and ramp.png here (e.g. docs).",
)
def loadtest(scenario: str, images: Path, out: Path | None, docs: Path | None) -> None:
    """Run a bounded locust SCENARIO (loadtests/scenarios/*.yaml) against the stack, starting it if it is down.

    A scenario with stages (``ramp``) runs on a scratch stack with Prometheus and records TextToImage's replicas,
    requests in flight and latency over time (table, JSON, plot).
    """
    from loadtests import scenario as lt
    from loadtests.benchmarks.ramp import run_ramp

    with one_line_errors(FileNotFoundError, ValueError):
        spec = lt.Scenario.load(scenario)
    out = out or Path("out") / "loadtest" / Path(scenario).stem
    if spec.stages:
        code, summary = run_ramp(spec, images, out, docs)
    else:
        code, summary = lt.run_scenario(spec, images, out)
    click.echo(summary)
    click.echo(f"locust CSV and HTML in {out} (exit code {code})")
    if code != 0:
        raise SystemExit(code)


@click.command()
@click.option("--clients", default=4, show_default=True, help="Concurrent clients of the background load.")
@click.option("--window", "window_s", default=20.0, show_default=True, help="Seconds each fault plays out.")
@memory_budget_option
@out_option("out/chaos.json")
def chaos(clients: int, window_s: float, memory_budget_bytes: int | None, out: Path) -> None:
    """Kill Triton, the UNet stub, a TextToImage and a Gateway replica, and send the largest requests, under load."""
    from loadtests.chaos import run

    click.echo(run(out, clients=clients, window_s=window_s, memory_budget_bytes=memory_budget_bytes))


@click.command()
@click.option(
    "--minutes", default=20.0, show_default=True, type=click.FloatRange(min=1.0), help="How long the load runs."
)
@click.option("--seed", default=0, show_default=True, help="Seeds the load and the fault schedule.")
@click.option(
    "--clients", default=4, show_default=True, type=click.IntRange(1, 128), help="Concurrent clients (users)."
)
@click.option(
    "--think",
    "think_s",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0.0),
    help="Each client's mean pause between requests in seconds, as a user's (0: back to back).",
)
@click.option(
    "--availability-target",
    type=click.FloatRange(0.0, 1.0),
    help="Judge availability (served / asked, 429 refusals apart) against this, e.g. 0.995; else reported only.",
)
@click.option(
    "--fault-every",
    "fault_every_s",
    default=90.0,
    show_default=True,
    type=click.FloatRange(min=10.0),
    help="Seconds between faults (the first after as long).",
)
@click.option(
    "--store",
    type=click.Choice(["sqlite", "redis"]),
    default="sqlite",
    show_default=True,
    help="The stack's store: the embedded SQLite (on a small tmpfs, so the disk can fill) or a Redis it restarts.",
)
@memory_budget_option
@out_option("out/soak.json")
def soak(
    minutes: float,
    seed: int,
    clients: int,
    think_s: float,
    availability_target: float | None,
    fault_every_s: float,
    store: str,
    memory_budget_bytes: int | None,
    out: Path,
) -> None:
    """Mixed load on a scratch stack for MINUTES with faults in the middle; checks what must hold (exit 1 if not)."""
    from loadtests.soak import run

    passed, tables = run(
        out,
        minutes,
        seed=seed,
        clients=clients,
        think_s=think_s,
        availability_target=availability_target,
        fault_every_s=fault_every_s,
        store=store,
        memory_budget_bytes=memory_budget_bytes,
    )
    click.echo(tables)
    if not passed:
        raise SystemExit(1)
