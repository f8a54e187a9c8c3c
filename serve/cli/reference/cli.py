"""docs/CLI.md: every ``easel`` command with its arguments and options, from the click commands themselves.

``easel up``'s options are :class:`serve.settings.StackOptions`' fields (:func:`serve.cli.fields.model_options`), so
its table is the settings' too. Paths are shown relative to the checkout, and ``$EASEL_HOME``, ``$EASEL_ICONS_DEV``
and ``~`` as written,
so the file is the same on every machine.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import click

from serve.cli.fields import markdown_table
from serve.paths import ICONS_DEV, PROJECT_ROOT, easel_home

HEADER = """# CLI reference

<!-- Generated from the `easel` command by `python -m serve.cli.reference`: do not edit (a unit test compares). -->

Every command of `easel` and its options, as `easel COMMAND --help` prints them. The environment: `EASEL_HOME` (the
engine cache and the run folder, default `~/.cache/easel`), `EASEL_API_KEY` (the key Easel's own clients send once
keys exist), `EASEL_ICONS_DEV` (the development icon set the vectorize commands read by default). Exit codes: 0
done, 1 a one-line error (`Error: ...`), 2 a usage error (click's, naming the nearest options); `easel status`: 3
when no stack runs, 4 while one starts.
"""


def _commands(group: click.Group, prefix: str) -> list[tuple[str, click.Command]]:
    """Every command under ``group``, depth first, in the order ``--help`` lists them."""
    found = []
    context = click.Context(group, info_name=prefix)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if command is None or command.hidden:
            continue
        found.append((f"{prefix} {name}", command))
        if isinstance(command, click.Group):
            found += _commands(command, f"{prefix} {name}")
    return found


def _portable(text: str) -> str:
    """``text`` with this machine's ``$EASEL_HOME``, icon set, checkout and home folder as they read everywhere."""
    text = text.replace(str(easel_home()), "$EASEL_HOME").replace(str(ICONS_DEV), "$EASEL_ICONS_DEV")
    text = text.replace(f"{PROJECT_ROOT}/", "")
    return text.replace(str(PROJECT_ROOT.parent), "..").replace(str(Path.home()), "~")


def _section(path: str, command: click.Command) -> list[str]:
    context = click.Context(command, info_name=path)
    usage = " ".join(command.collect_usage_pieces(context))
    lines = [f"## `{path}`", "", f"`{path} {usage}`".rstrip(" `") + "`", ""]
    lines += [inspect.cleandoc(command.help or "").replace("\b\n", ""), ""]
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    if arguments:
        lines += ["| argument | meaning |", "|---|---|"]
        for argument in arguments:
            meaning = getattr(argument, "help", None) or ("required" if argument.required else "optional")
            lines.append(f"| `{argument.make_metavar(context)}` | {meaning} |")
        lines.append("")
    if isinstance(command, click.Group):
        sub = [name for name in command.list_commands(context) if not command.get_command(context, name).hidden]
        lines += [f"Commands: {', '.join(f'`{path} {name}`' for name in sub)}.", ""]
    if any(isinstance(p, click.Option) and not p.hidden for p in command.params):
        lines += [markdown_table(command).rstrip("\n"), ""]
    return lines


def cli_reference(root: click.Group, name: str = "easel") -> str:
    """docs/CLI.md's text: ``root`` and every command under it."""
    commands = [(name, root), *_commands(root, name)]
    index = ["| command | what it does |", "|---|---|"]
    index += [f"| [`{path}`](#{_anchor(path)}) | {command.get_short_help_str(100)} |" for path, command in commands]
    lines = [HEADER, *index, ""]
    for path, command in commands:
        lines += _section(path, command)
    return _portable("\n".join(lines).rstrip("\n") + "\n")


def _anchor(path: str) -> str:
    """The anchor GitHub gives the heading ``## `path` ``."""
    return path.replace(" ", "-").lower()
