"""How a setting is spelled on a command line, declared beside the setting (:mod:`serve.settings`).

A field's :class:`Cli` marker names its flag, its value type (by name: :mod:`serve.cli.options` holds the click types),
its choices, default and help; :data:`NOT_ON_CLI` leaves it off every command line. Only :mod:`serve.cli` reads these
markers into click options (:mod:`serve.cli.fields`): the settings themselves import no command-line library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    type: str | None = None  # the name of a value type in serve.cli.options (SIZE, NAMED_FOLDER, ...)
    choices: tuple[str, ...] = ()  # the values it may take (click.Choice)
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
