"""``easel dashboards *``: push the Grafana dashboards, or render their panels from Prometheus; parse and wire only."""

from __future__ import annotations

from pathlib import Path

import click

from serve.cli.options import FILE, one_line_errors

DEFAULT_PROMETHEUS = "http://127.0.0.1:9090"


@click.group()
def dashboards() -> None:
    """Grafana dashboards (deployments/grafana/*.json): push them, or render their panels from Prometheus."""


@dashboards.command("push")
@click.option("--url", required=True, help="Grafana base URL, e.g. http://grafana:3000.")
@click.option("--token", required=True, envvar="GRAFANA_TOKEN", help="Service-account token (or $GRAFANA_TOKEN).")
@click.option(
    "--prometheus-url",
    default=DEFAULT_PROMETHEUS,
    show_default=True,
    help="Prometheus URL as Grafana's server reaches it (used when the datasource is created).",
)
def dashboards_push(url: str, token: str, prometheus_url: str) -> None:
    """Create the Easel folder and Prometheus datasource if missing, and create or update every dashboard."""
    from serve.observability.grafana import FOLDER_TITLE, GrafanaPushError, push

    with one_line_errors(GrafanaPushError):
        result = push(url, token, prometheus_url)
    click.echo(f"folder {FOLDER_TITLE}: {'created' if result.folder_created else 'present'}")
    click.echo(f"datasource: {'created' if result.datasource_created else 'present'}")
    click.echo("dashboards saved: " + ", ".join(result.dashboards))


@dashboards.command("render")
@click.option("--prometheus-url", default=DEFAULT_PROMETHEUS, show_default=True, help="Prometheus to query.")
@click.option("--dashboard", "uid", default="easel-text-to-image", show_default=True, help="Dashboard uid.")
@click.option("--panel", "titles", multiple=True, help="Only the panels with these titles (repeatable).")
@click.option("--minutes", default=15.0, show_default=True, help="Time range, ending now.")
@click.option("--out", type=FILE, default=Path("out/dashboard.png"))
def dashboards_render(prometheus_url: str, uid: str, titles: tuple[str, ...], minutes: float, out: Path) -> None:
    """Plot a dashboard's panels to a PNG with their own PromQL against a running Prometheus."""
    from serve.observability.dashboards import load_dashboards
    from serve.observability.prometheus import PrometheusError
    from serve.observability.render import render_dashboard

    found = {d["uid"]: d for d in load_dashboards()}
    if uid not in found:
        raise click.ClickException(f"no dashboard {uid!r}; choose from {', '.join(sorted(found))}")
    with one_line_errors(PrometheusError):
        click.echo(f"written to {render_dashboard(found[uid], prometheus_url, out, minutes, titles=titles)}")
