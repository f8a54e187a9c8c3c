"""Prompt checks: a blocklist file of words and patterns (``easel up --prompt-blocklist FILE``).

The file has one entry a line; blank lines and lines starting with ``#`` are skipped:

- ``word`` or ``a phrase``: matches as whole words, whatever the case;
- ``re:PATTERN``: a Python regular expression, searched case-insensitively;
- ``CATEGORY: ENTRY``: either of the above in its own category (lower case letters, digits, ``_``, ``-`` and ``/``,
  e.g. ``violence: gore``); an entry without one is in :data:`DEFAULT_CATEGORY`.

A text is flagged in every category one of whose entries it matches (:meth:`Blocklist.check`); a line that is not an
entry (a bad pattern, an empty entry) is refused with its line number when the file is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from serve.moderation import Verdict

DEFAULT_CATEGORY = "blocklist"
"""The category of an entry that names none."""
_CATEGORY = re.compile(r"^([a-z0-9_/-]+):\s*(.*)$")
_PATTERN = "re:"


@dataclass(frozen=True)
class Entry:
    """One line of the blocklist: what it matches and in which category."""

    category: str
    pattern: re.Pattern

    @classmethod
    def parse(cls, line: str) -> Entry:
        """The entry a line states (a ValueError saying why if it states none)."""
        category, text = DEFAULT_CATEGORY, line
        named = _CATEGORY.match(line)
        if named and named.group(1) + ":" != _PATTERN:
            category, text = named.group(1), named.group(2).strip()
        if text in ("", _PATTERN):
            raise ValueError("an empty entry")
        if text.startswith(_PATTERN):
            source = text.removeprefix(_PATTERN)
            try:
                pattern = re.compile(source, re.IGNORECASE)
            except re.error as error:
                raise ValueError(f"{source!r} is not a regular expression: {error}") from None
        else:
            pattern = re.compile(rf"(?<!\w){re.escape(text)}(?!\w)", re.IGNORECASE)
        if pattern.search(""):
            raise ValueError(f"{text!r} matches every text")
        return cls(category, pattern)


@dataclass(frozen=True)
class Blocklist:
    """The entries of a blocklist file, checked on a text."""

    entries: tuple[Entry, ...] = ()

    @classmethod
    def parse(cls, text: str, source: str = "the blocklist") -> Blocklist:
        """The blocklist ``text`` states; a ValueError naming ``source`` and the line if a line is no entry."""
        entries = []
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                entries.append(Entry.parse(line))
            except ValueError as error:
                raise ValueError(f"{source}, line {number}: {error}") from None
        return cls(tuple(entries))

    @classmethod
    def read(cls, path: Path | None) -> Blocklist:
        """The blocklist in file ``path`` (None: an empty one, which flags nothing)."""
        if path is None:
            return cls()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: cannot be read: {error}") from None
        return cls.parse(text, str(path))

    @property
    def categories(self) -> list[str]:
        """Its categories, each once, in the order the file first names them."""
        return list(dict.fromkeys(entry.category for entry in self.entries))

    def check(self, text: str) -> Verdict:
        """``text``'s verdict: each category flagged (score 1) if one of its entries matches, else not (score 0)."""
        matched = {entry.category for entry in self.entries if entry.pattern.search(text)}
        flags = {category: category in matched for category in self.categories}
        return Verdict(flags, {category: float(flag) for category, flag in flags.items()})
