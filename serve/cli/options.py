"""Command-line spellings shared by Easel's commands: value parsers, path types, and options derived from settings.

A pydantic model's fields become click options (:func:`model_options`): each option's name, type, default and help
are its field's, unless the field's :class:`Cli` marker spells them otherwise; a field marked :data:`NOT_ON_CLI` is
left out. :func:`markdown_table` writes a command's options as a markdown table (the README's ``easel up`` table,
checked by a unit test).
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import annotated_types
import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from serve.paths import PROJECT_ROOT

FOLDER = click.Path(file_okay=False, path_type=Path)
EXISTING_FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)
FILE = click.Path(dir_okay=False, path_type=Path)
EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


class Size(click.ParamType):
    """A size in bytes: 8GiB, 512MiB, 2G, 1500000000."""

    name = "size"
    _FORM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(i?)b?)?\s*$", re.IGNORECASE)

    def convert(self, value, param, ctx) -> int:
        """The number of bytes ``value`` says (an int passes through)."""
        if isinstance(value, int):
            return value
        match = self._FORM.match(str(value))
        if not match:
            self.fail(f"{value!r} is not a size like 8GiB, 512MiB or 2G", param, ctx)
        number, unit, binary = match.groups()
        power = "kmgt".index(unit.lower()) + 1 if unit else 0
        size = int(float(number) * (1024 if binary else 1000) ** power)
        if size <= 0:
            self.fail(f"{value!r}: the size must be positive", param, ctx)
        return size

    @staticmethod
    def show(size: int) -> str:
        """``size`` as this type reads it back: 1073741824 -> 1GiB."""
        for power, unit in ((4, "T"), (3, "G"), (2, "M"), (1, "K")):
            if size % 1024**power == 0:
                return f"{size // 1024**power}{unit}iB"
        return str(size)


class IntList(click.ParamType):
    """Comma-separated integers, e.g. 1,4,8; ``count`` of them within [``low``, ``high``] where given."""

    name = "list"

    def __init__(self, count: int | None = None, low: int | None = None, high: int | None = None, what: str = ""):
        self.count, self.low, self.high, self.what = count, low, high, what

    def convert(self, value, param, ctx) -> tuple[int, ...]:
        """The integers of ``value`` (a tuple passes through)."""
        if isinstance(value, tuple):
            return value
        try:
            numbers = tuple(int(part) for part in str(value).split(","))
        except ValueError:
            numbers = ()
        in_range = all((self.low is None or n >= self.low) and (self.high is None or n <= self.high) for n in numbers)
        if not numbers or (self.count is not None and len(numbers) != self.count) or not in_range:
            self.fail(self.what or f"{value!r} is not a comma-separated list of integers", param, ctx)
        return numbers

    @staticmethod
    def show(numbers: tuple[int, ...]) -> str:
        """``numbers`` as this type reads them back: 1,4,8."""
        return ",".join(map(str, numbers))


NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
"""A name that names Triton models and files (a ControlNet's, a served model's)."""
NAME_RULE = "lower case letters, digits, - and _ (at most 32, the first a letter or digit)"


class ModelName(click.ParamType):
    """A served model's name, checked with the server's rule (:data:`NAME`) before anything is sent."""

    name = "model name"

    def convert(self, value, param, ctx) -> str:
        """``value`` if it may name a model."""
        if not NAME.match(str(value)):
            self.fail(f"{value!r} cannot name a model: use {NAME_RULE}", param, ctx)
        return str(value)


class NamedValue(click.ParamType):
    """``NAME=VALUE``: a name (:meth:`_names`) and what follows ``=``, read by :meth:`_value`."""

    form = "NAME=VALUE"
    """How the error for a value that is not one spells the form."""

    def convert(self, value, param, ctx) -> tuple[str, Any]:
        """``(name, value)`` of ``value`` (a pair passes through)."""
        if isinstance(value, tuple):
            return value
        name, equals, rest = str(value).partition("=")
        if not equals or not self._names(name):
            self.fail(f"{value!r} is not {self.form}", param, ctx)
        return name, self._value(value, rest, param, ctx)

    def _names(self, name: str) -> bool:
        return bool(name)

    def _value(self, value, rest: str, param, ctx) -> Any:
        return rest


class NamedFolder(NamedValue):
    """``NAME=DIR``: a name (:data:`NAME`: it names a Triton model) and a folder."""

    name = "named folder"
    form = f"NAME=DIR with NAME of {NAME_RULE}"

    def _names(self, name: str) -> bool:
        return bool(NAME.match(name))

    def _value(self, value, folder: str, param, ctx) -> Path:
        path = Path(folder)
        if not path.is_dir():
            self.fail(f"{value!r}: {folder} is not a folder", param, ctx)
        return path


class NamedFile(NamedFolder):
    """``NAME=FILE``: a name (:data:`NAME`: it names a Triton model) and a file (``--upscaler``)."""

    name = "named file"
    form = f"NAME=FILE with NAME of {NAME_RULE}"

    def _value(self, value, path: str, param, ctx) -> Path:
        if not Path(path).is_file():
            self.fail(f"{value!r}: {path} is not a file", param, ctx)
        return Path(path)


class ModelFolder(NamedFolder):
    """A served model: ``NAME=DIR``, ``DIR`` (named after the folder) or ``NAME`` alone for an embedded model.

    ``embedded``: the names that stand alone for an embedded model (its folder None: the stack makes it).
    """

    name = "model folder"

    def __init__(self, embedded: tuple[str, ...]) -> None:
        self.embedded = embedded

    def convert(self, value, param, ctx) -> tuple[str, Path | None]:
        """``(name, folder)`` of ``value``; ``(name, None)`` for an embedded model."""
        if isinstance(value, tuple):
            return value
        if "=" in str(value):
            return super().convert(value, param, ctx)
        if value in self.embedded and not Path(value).is_dir():
            return value, None
        path = self._value(value, value, param, ctx)
        name = path.resolve().name.lower()
        if not NAME.match(name):
            self.fail(f"{value!r}: the folder's name cannot name a model ({NAME_RULE}); give NAME={value}", param, ctx)
        return name, path


class ForModel(click.ParamType):
    """``[MODEL:]VALUE``: ``inner``'s ``(name, value)`` of a served model's adapter, keyed ``MODEL:NAME``.

    No ``MODEL:`` (``--ip-adapter face=DIR``): the key is ``inner``'s name alone, the default model's; the stack's
    settings nest the keys by model (:func:`per_model`).
    """

    def __init__(self, inner: NamedValue) -> None:
        self.inner, self.name = inner, inner.name

    def convert(self, value, param, ctx) -> tuple[str, Any]:
        """``(key, value)`` of ``value`` (a pair passes through)."""
        if isinstance(value, tuple):
            return value
        model, colon, rest = str(value).partition(":")
        if not colon or not NAME.match(model):
            return self.inner.convert(value, param, ctx)
        name, found = self.inner.convert(rest, param, ctx)
        return f"{model}:{name}", found


class ModelLoras(click.ParamType):
    """``[MODEL=]DIR``: a served model's LoRA folder, ``("", DIR)`` for the default model's (``--loras DIR``)."""

    name = "model loras"

    def convert(self, value, param, ctx) -> tuple[str, Path]:
        """``(model, folder)`` of ``value`` (a pair passes through)."""
        if isinstance(value, tuple):
            return value
        model, equals, folder = str(value).partition("=")
        if not equals or not NAME.match(model):
            model, folder = "", str(value)
        return model, EXISTING_FOLDER.convert(folder, param, ctx)


def per_model(given: Any, leaf: type | tuple[type, ...]) -> dict[str, Any]:
    """Settings of adapters by served model: ``MODEL:NAME`` keys (:class:`ForModel`) nested as ``{MODEL: {NAME: v}}``.

    A key without ``MODEL:`` goes under ``""``, the default model; a mapping whose values are not ``leaf`` is taken
    as nested already.
    """
    nested: dict[str, Any] = {}
    for key, value in dict(given or {}).items():
        if not isinstance(value, leaf):
            nested.setdefault(key, {}).update(value)
            continue
        model, _, name = key.rpartition(":")
        nested.setdefault(model, {})[name] = value
    return nested


class NamedJson(NamedValue):
    """``NAME=JSON``: a name and a JSON value (``--experiment 'logo-v={"variants": {"v1": 0.9, "v2": 0.1}}'``)."""

    name = "named json"
    form = "NAME=JSON"

    def _value(self, value, text: str, param, ctx) -> Any:
        try:
            return json.loads(text)
        except ValueError as error:
            self.fail(f"{value!r}: the part after = is not JSON ({error})", param, ctx)


SIZE = Size()
INT_LIST = IntList()
NAMED_FOLDER = NamedFolder()
NAMED_FILE = NamedFile()
NAMED_JSON = NamedJson()
PORTS = IntList(3, 0, 65535, "three ports, HTTP,GRPC,METRICS (0: a free port)")


_FIELD_DEFAULT = object()


@dataclass(frozen=True)
class Cli:
    """How a setting is spelled on the command line, where that is not ``--field-name`` of the field's own type.

    ``default``: the command's default where it is not the field's (``easel up`` listens on fixed ports; a stack
    started in-process, free ones). ``off``: a flag that sets the setting to ``off_value`` (``--no-cache``).
    ``deprecated``: old spellings still taken, left out of ``--help``. ``multiple``: the option repeats, each a
    ``(name, value)`` pair of a mapping (``--controlnet NAME=DIR``) or, for a tuple, one of its items (``--pin``).
    """

    flag: str | None = None
    type: click.ParamType | None = None
    default: Any = _FIELD_DEFAULT
    metavar: str | None = None
    off: str | None = None
    off_help: str = ""
    off_value: Any = 0
    deprecated: tuple[str, ...] = ()
    multiple: bool = False


class NotOnCli:
    """Marks a setting that no command line takes (a library's or a test's choice)."""


NOT_ON_CLI = NotOnCli()


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
        return cli.type
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


@contextmanager
def one_line_errors(*kinds: type[Exception], hint: str = "") -> Iterator[None]:
    """Turn an error of ``kinds`` raised in the block into click's one-line ``Error: ...`` (exit code 1)."""
    try:
        yield
    except kinds as error:
        raise click.ClickException(f"{error}{hint}") from error


def _shown(value: Any) -> str:
    """A default as the README shows it: a path in this checkout relative to it (the same on every machine)."""
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
