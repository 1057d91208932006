"""The pattern language: globs, brace alternatives, numeric ranges, regexes and exclusions.

Names are dotted paths (``layer4.0.conv1.weight``). Globs are compiled once, through wcmatch,
into plain :mod:`re` patterns; matching a name is then one ``fullmatch``. Because wcmatch works
on ``/``-separated paths, braces are expanded first (``{0..5}`` would otherwise become
``{0//5}``), then ``.`` is mapped to ``/`` (PyTorch forbids dots inside a module's own name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import bracex
from wcmatch import glob as wcglob

from .errors import PatternError

_FLAGS = wcglob.GLOBSTAR | wcglob.BRACE | wcglob.DOTGLOB | wcglob.EXTGLOB
_GLOB_CHARS = set("*?[]{}()!@+|")
_MAX_EXPANSION = 10_000


def to_path(name: str) -> str:
    """Map a dotted name to the ``/``-separated form compiled globs are matched against."""
    return name.replace(".", "/")


@dataclass(frozen=True)
class Pattern:
    """One compiled pattern. ``text`` is what the user wrote (without a leading ``!``)."""

    text: str
    regex: re.Pattern[str]
    is_regex: bool
    literal: str | None  # set when the pattern has no wildcard: matched by equality

    def matches(self, name: str, path: str) -> bool:
        """Whether the dotted ``name`` (whose ``/`` form is ``path``) matches."""
        if self.literal is not None:
            return name == self.literal
        return self.regex.fullmatch(name if self.is_regex else path) is not None


def compile_pattern(text: str) -> Pattern:
    """Compile one pattern; raise :class:`PatternError` with the reason if it is invalid."""
    if not isinstance(text, str):
        raise PatternError(f"pattern {text!r} is not a string")
    if text.startswith("re:"):
        try:
            return Pattern(text, re.compile(text[3:]), True, None)
        except re.error as exc:
            raise PatternError(f"invalid regex {text[3:]!r}: {exc}") from None
    if not text or text.strip() != text:
        raise PatternError(f"invalid pattern {text!r}: empty or surrounded by spaces")
    if not _GLOB_CHARS & set(text):
        return Pattern(text, re.compile(re.escape(text)), False, text)
    try:
        expanded = bracex.expand(text, limit=_MAX_EXPANSION)
    except Exception as exc:  # bracex raises a bare ValueError/RuntimeError subclass
        raise PatternError(f"invalid pattern {text!r}: {exc}") from None
    regexes = []
    for alt in expanded:
        try:
            include, _ = wcglob.translate(to_path(alt), flags=_FLAGS)
        except Exception as exc:
            raise PatternError(f"invalid pattern {text!r}: {exc}") from None
        regexes.extend(include)
    joined = "|".join(f"(?:{r})" for r in regexes)
    try:
        return Pattern(text, re.compile(joined), False, None)
    except re.error as exc:  # pragma: no cover - wcmatch emits valid regexes
        raise PatternError(f"invalid pattern {text!r}: {exc}") from None


class PatternList:
    """A list of patterns with ``!`` exclusions, as used by a rule's ``match``.

    A name is selected when it matches an include pattern and no exclude pattern. A list of
    only exclusions includes everything (``["!fc"]`` is everything but ``fc``).
    """

    def __init__(self, patterns: str | Sequence[str]):
        if isinstance(patterns, str):
            patterns = [patterns]
        if not isinstance(patterns, (list, tuple)) or not patterns:
            raise PatternError(f"match must be a pattern or a non-empty list, got {patterns!r}")
        self.texts: tuple[str, ...] = tuple(patterns)
        self.include: list[Pattern] = []
        self.exclude: list[Pattern] = []
        for text in patterns:
            if isinstance(text, str) and text.startswith("!"):
                self.exclude.append(compile_pattern(text[1:]))
            else:
                self.include.append(compile_pattern(text))
        self.everything = not self.include

    def hits(self, names: Iterable[str], which: str = "include") -> set[str]:
        """The subset of ``names`` that any include (or exclude) pattern matches."""
        pats = self.include if which == "include" else self.exclude
        return {n for n in names if any(p.matches(n, to_path(n)) for p in pats)}

    def __repr__(self) -> str:
        return f"PatternList({list(self.texts)!r})"
