"""Click options derived from a settings model's fields, and a command's options as a markdown table.

A pydantic model's fields become click options (:func:`model_options`): each option's name, type, default and help
are its field's, unless the field's :class:`~serve.spelling.Cli` marker spells them otherwise (its value type named in
:mod:`serve.cli.options`); a field marked :data:`~serve.spelling.NOT_ON_CLI` is left out. :func:`markdown_table`
writes a command's options as a markdown table (docs/CLI.md's, :mod:`serve.cli.reference.cli`).
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import annotated_types
import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from serve.cli import options
from serve.paths import PROJECT_ROOT
from serve.spelling import _FIELD_DEFAULT, Cli, NotOnCli


def _marker(field: FieldInfo, kind: type):
    return next((m for m in field.metadata if isinstance(m, kind)), None)


def _bare(annotation) -> Any:
    """``X`` of ``X | None``."""
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = [a for a in get_args(annotation) if a is not type(None)]
    return annotation


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def field_type(model: type[BaseModel], name: str):
    """The click type of ``model``'s field ``name``: its marker's, else its annotation's with its numeric bounds."""
    field = model.model_fields[name]
    cli = _marker(field, Cli) or Cli()
    if cli.type is not None:
        return getattr(options, cli.type)
    if cli.choices:
        return click.Choice(cli.choices)
    kind = _bare(field.annotation)
    if kind is Path:
        return click.Path(path_type=Path)
    if kind in (int, float):
        bounds = {}
        for m in field.metadata:
            if isinstance(m, annotated_types.Ge | annotated_types.Gt):
                bounds.update(min=getattr(m, "ge", getattr(m, "gt", None)), min_open=isinstance(m, annotated_types.Gt))
            if isinstance(m, annotated_types.Le | annotated_types.Lt):
                bounds.update(max=getattr(m, "le", getattr(m, "lt", None)), max_open=isinstance(m, annotated_types.Lt))
        if bounds:
            return (click.IntRange if kind is int else click.FloatRange)(**bounds)
    return kind


def _cli_default(field: FieldInfo, cli: Cli, kind) -> Any:
    default = field.get_default(call_default_factory=True) if cli.default is _FIELD_DEFAULT else cli.default
    show = getattr(kind, "show", None)
    return show(default) if show is not None and default is not None else default


_RANGE_METAVARS = {click.IntRange: "INTEGER", click.FloatRange: "FLOAT"}
"""A bounded number is shown as a number; ``--help`` gives its bounds beside its default."""


def field_options(model: type[BaseModel], name: str) -> list:
    """The click options that set ``model``'s field ``name``: its own, its ``off`` flag, its deprecated spellings."""
    field = model.model_fields[name]
    cli = _marker(field, Cli) or Cli()
    flag = cli.flag or f"--{name.replace('_', '-')}"
    kind = field_type(model, name)
    default = _cli_default(field, cli, kind)
    if kind is bool:
        spelling = f"{flag}/--no-{flag[2:]}" if default else flag
        options = [click.option(spelling, name, is_flag=True, default=default, help=field.description)]
    elif cli.multiple:
        options = [
            click.option(
                flag,
                name,
                type=kind,
                multiple=True,
                default=(),
                metavar=cli.metavar,
                help=field.description,
                callback=mapping_of_pairs if get_origin(_bare(field.annotation)) is dict else None,
            )
        ]
    else:
        metavar = cli.metavar or _RANGE_METAVARS.get(type(kind))
        shown = default is not None
        options = [
            click.option(
                flag, name, type=kind, default=default, show_default=shown, metavar=metavar, help=field.description
            )
        ]
    if cli.off is not None:
        options.append(click.option(cli.off, _dest(cli.off), is_flag=True, help=cli.off_help))
    for old in cli.deprecated:
        options.append(click.option(old, _dest(old), type=kind, hidden=True, deprecated=f"use {flag}"))
    return options


def mapping_of_pairs(ctx, param, pairs) -> dict:
    """A repeated option's ``(name, value)`` pairs as a mapping; a name given twice is an error."""
    names = [name for name, _ in pairs]
    twice = sorted({name or "the default model's" for name in names if names.count(name) > 1})
    if twice:
        raise click.BadParameter(f"{', '.join(twice)} given more than once", ctx, param)
    return dict(pairs)


def cli_fields(model: type[BaseModel]) -> list[str]:
    """The fields of ``model`` that a command line takes, in declaration order."""
    return [name for name, field in model.model_fields.items() if _marker(field, NotOnCli) is None]


def model_options(model: type[BaseModel], *names: str):
    """A decorator that adds the options of ``model``'s fields ``names`` (default: every one on the command line)."""

    def add(function):
        for name in reversed(names or cli_fields(model)):
            for option in reversed(field_options(model, name)):
                function = option(function)
        return function

    return add


def model_values(model: type[BaseModel], params: dict[str, Any]) -> dict[str, Any]:
    """The field values of ``model`` that a command's ``params`` give (``off`` flags and old spellings folded in)."""
    values = dict(params)
    for name, field in model.model_fields.items():
        cli = _marker(field, Cli)
        if cli is None:
            continue
        for old in cli.deprecated:
            given = values.pop(_dest(old), None)
            if given is not None:
                values[name] = given
        if cli.off is not None and values.pop(_dest(cli.off), False):
            values[name] = cli.off_value
    return values


def _shown(value: Any) -> str:
    """A default as docs/CLI.md shows it: a path in this checkout relative to it (the same on every machine)."""
    if isinstance(value, Path) and value.is_relative_to(PROJECT_ROOT):
        return str(value.relative_to(PROJECT_ROOT))
    return "" if value is None or value == () else str(value)


def markdown_table(command: click.Command) -> str:
    """``command``'s options (hidden ones aside) as a markdown table: option, default, meaning."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden:
            continue
        names = " / ".join([*param.opts, *param.secondary_opts])
        metavar = "" if param.is_flag else f" {param.make_metavar(click.Context(command))}"
        default = _shown(param.default) if not param.is_flag else ""
        cells = [f"`{names}{metavar}`", f"`{default}`" if default else "", (param.help or "").replace("|", "\\|")]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
