"""Command-line spellings shared by Easel's commands (and the tooling's own groups): value parsers and path types.

A setting's :class:`~serve.spelling.Cli` marker names its value type here (``"SIZE"``, ``"NAMED_FOLDER"``, ...);
:mod:`serve.cli.fields` turns settings into options. :func:`one_line_errors` makes an error click's one-line
``Error: ...``; :data:`MODEL_OPTION` and :func:`check_model` are the one model folder of a command that takes one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from serve.errors import UnsupportedModel
from serve.names import DEFAULT_MODEL, NAME, NAME_RULE
from serve.paths import ICONS_DEV

STRING = click.STRING
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
    """``NAME=DIR``: a name (:data:`NAME`: it names a Triton model) and a folder.

    ``kind`` ``FILE``: a file instead (``--upscaler``); ``PATH``: either (``--scorer clip=DIR``, ``aesthetic=FILE``).
    """

    KINDS = {
        "DIR": ("named folder", Path.is_dir, "is not a folder"),
        "FILE": ("named file", Path.is_file, "is not a file"),
        "PATH": ("named path", Path.exists, "does not exist"),
    }
    """Each kind: its type's name, the check its path passes, and what the error says of one that does not."""

    def __init__(self, kind: str = "DIR") -> None:
        self.name, self._fits, self._unfit = self.KINDS[kind]
        self.form = f"NAME={kind} with NAME of {NAME_RULE}"

    def _names(self, name: str) -> bool:
        return bool(NAME.match(name))

    def _value(self, value, path: str, param, ctx) -> Path:
        if not self._fits(Path(path)):
            self.fail(f"{value!r}: {path} {self._unfit}", param, ctx)
        return Path(path)


class ModelFolder(NamedFolder):
    """A served model: ``NAME=DIR``, ``DIR`` (named after the folder) or ``NAME`` alone for an embedded model.

    ``embedded``: the names that stand alone for an embedded model (its folder None: the stack makes it).
    """

    def __init__(self, embedded: tuple[str, ...]) -> None:
        super().__init__("DIR")
        self.name, self.embedded = "model folder", embedded

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
    settings nest the keys by model (:func:`serve.adapters.by_model.per_model`).
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


class NamedJson(NamedValue):
    """``NAME=JSON``: a name and a JSON value (``--experiment 'logo-v={"variants": {"v1": 0.9, "v2": 0.1}}'``)."""

    name = "named json"
    form = "NAME=JSON"

    def _value(self, value, text: str, param, ctx) -> Any:
        try:
            return json.loads(text)
        except ValueError as error:
            self.fail(f"{value!r}: the part after = is not JSON ({error})", param, ctx)


class NamedList(NamedFolder):
    """``NAME=A,B``: a model's name and the names it lists, in order (``--fallback xl=sd15,remote``)."""

    name = "named list"
    form = f"NAME=A,B with names of {NAME_RULE}"

    def _value(self, value, rest: str, param, ctx) -> tuple[str, ...]:
        names = tuple(name.strip() for name in rest.split(",") if name.strip())
        if not names or not all(NAME.match(name) for name in names):
            self.fail(f"{value!r} is not {self.form}", param, ctx)
        return names


class NamedRemote(NamedFolder):
    """``NAME=URL[,OPTION=VALUE...]``: a remote model (``--remote b=http://127.0.0.1:8000,key_env=EASEL_REMOTE_B``)."""

    name = "named remote"
    form = f"NAME=URL[,OPTION=VALUE...] with NAME of {NAME_RULE}"

    def _value(self, value, rest: str, param, ctx) -> dict[str, str]:
        url, *options = rest.split(",")
        pairs = [option.partition("=") for option in options]
        if not url or any(not equals or not key for key, equals, _ in pairs):
            self.fail(f"{value!r} is not {self.form}", param, ctx)
        return {"url": url} | {key.strip(): option.strip() for key, _, option in pairs}


class HostList(click.ParamType):
    """Comma-separated host names or addresses, e.g. 127.0.0.1,localhost (compared without case)."""

    name = "hosts"

    def convert(self, value, param, ctx) -> tuple[str, ...]:
        """The hosts of ``value`` (a tuple passes through)."""
        if isinstance(value, tuple):
            return value
        return tuple(host.strip().lower() for host in str(value).split(",") if host.strip())

    @staticmethod
    def show(hosts: tuple[str, ...]) -> str:
        """``hosts`` as this type reads them back."""
        return ",".join(hosts)


class NameList(click.ParamType):
    """Comma-separated names, kept as written (``--remote-key-envs EASEL_REMOTE_*,B_KEY``: case counts)."""

    name = "names"

    def convert(self, value, param, ctx) -> tuple[str, ...]:
        """The names of ``value`` (a tuple passes through)."""
        if isinstance(value, tuple):
            return value
        return tuple(name.strip() for name in str(value).split(",") if name.strip())

    @staticmethod
    def show(names: tuple[str, ...]) -> str:
        """``names`` as this type reads them back."""
        return ",".join(names)


SIZE = Size()
HOST_LIST = HostList()
NAME_LIST = NameList()
INT_LIST = IntList()
NAMED_FOLDER = NamedFolder()
NAMED_FILE = NamedFolder("FILE")
NAMED_PATH = NamedFolder("PATH")
NAMED_JSON = NamedJson()
NAMED_LIST = NamedList()
NAMED_REMOTE = NamedRemote()
PORTS = IntList(3, 0, 65535, "three ports, HTTP,GRPC,METRICS (0: a free port)")


DEFAULT_MODEL_FOLDERS = ModelFolder((DEFAULT_MODEL,))
"""``--model [NAME=]DIR``: the served models, the embedded default by its name alone."""
MODEL_LORAS = ModelLoras()
ADAPTER_FOLDERS = ForModel(ModelFolder(()))
"""``--ip-adapter [MODEL:][NAME=]DIR``."""
CONTROL_FOLDERS = ForModel(NAMED_FOLDER)
"""``--controlnet [MODEL:]NAME=DIR``."""


@contextmanager
def one_line_errors(*kinds: type[Exception], hint: str = "") -> Iterator[None]:
    """Turn an error of ``kinds`` raised in the block into click's one-line ``Error: ...`` (exit code 1)."""
    try:
        yield
    except kinds as error:
        raise click.ClickException(f"{error}{hint}") from error


MODEL_OPTION = click.option(
    "--model", "model_dir", type=EXISTING_FOLDER, help="Local diffusers model folder. Default: the embedded model."
)
"""The one model folder of a command that takes one (``easel build``, the benchmarks)."""


def check_model(model_dir: Path | None) -> None:
    """Refuse a folder that is not a supported pipeline with a one-line error, before anything starts."""
    from serve.text_to_image.families import family_of_folder  # here: `easel --help` loads no torch

    if model_dir is not None:
        with one_line_errors(UnsupportedModel):
            family_of_folder(model_dir)


def out_option(default: str | None, kind: click.Path = FILE, help_text: str | None = None):
    """``--out PATH``: where a command writes what it measured."""
    return click.option("--out", type=kind, default=default and Path(default), show_default=True, help=help_text)


images_option = click.option(
    "--images", type=EXISTING_FOLDER, default=ICONS_DEV / "val", show_default=True, help="Icons to vectorize."
)


def names_option(option: str, known: tuple[str, ...], help_text: str):
    """``OPTION a,b``: some of ``known``, comma-separated (all of them by default)."""
    return click.option(
        option,
        default=",".join(known),
        show_default=True,
        callback=lambda _c, _p, value: _names(value, known, option),
        help=help_text,
    )


def _names(value: str, known, option: str) -> tuple[str, ...]:
    """A comma-separated list of names out of ``known``; an unknown one is a one-line error naming the known ones."""
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise click.BadParameter(f"{', '.join(unknown) or 'none'} not among {', '.join(known)}", param_hint=option)
    return names
