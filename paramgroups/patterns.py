"""The pattern language: globs, brace alternatives, numeric ranges, regexes and exclusions.

Names are dotted paths (``layer4.0.conv1.weight``). Globs are compiled once, through wcmatch,
into plain :mod:`re` patterns; matching a name is then one ``fullmatch``. Because wcmatch works
on ``/``-separated paths, braces are expanded first (``{0..5}`` would otherwise become
``{0//5}``), then ``.`` is mapped to ``/`` (PyTorch forbids dots inside a module's own name).
PyTorch allows every other character in a name (``ModuleDict({"a/b": ...})``), so a ``/`` in a
name or pattern is first mapped to a private-use character: it stays inside its segment. A glob
also matches the one name spelled exactly like it, so a name with glob characters
(``d.[0].weight``) can always be selected by writing it out; a backslash escapes one character.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Iterable, Sequence

import bracex
from wcmatch import glob as wcglob

from .errors import PatternError

_FLAGS = wcglob.GLOBSTAR | wcglob.BRACE | wcglob.DOTGLOB | wcglob.EXTGLOB
_GLOB_CHARS = set("*?[]{}()!@+|")
_MAX_EXPANSION = 10_000
_SLASH = "\ue000"  # stands in for a ``/`` that is part of a name, not a separator
_TO_PATH = str.maketrans({"/": _SLASH, ".": "/"})
# ``{a..b}`` / ``{a..b..step}`` with plain integer ends (no zero padding): a number check, one
# regex for the whole range instead of one alternative per number; a negative end counts from
# the end of its level (``layers.{-4..-1}``), so the range is resolved against each model
_RANGE = re.compile(r"(?<!\\)\{(-?(?:0|[1-9][0-9]*))\.\.(-?(?:0|[1-9][0-9]*))(?:\.\.([1-9][0-9]*))?\}")
_PLACEHOLDER = 0xE100  # private-use characters stand in for ranges while braces expand
_INDEX = re.compile(r"0|[1-9][0-9]*")
_GLOB_ESCAPE = re.compile(r"([*?\[\]{}()!@+|\\])")


def to_path(name: str) -> str:
    """Map a dotted name to the ``/``-separated form compiled globs are matched against."""
    return name.translate(_TO_PATH)


class NameIndex:
    """The names patterns are tried on (parameters and modules), sorted, with their ``/`` forms.

    Built once per model; lets a glob look only at the names that start with its literal
    prefix (a bisect), end with its literal suffix and contain its longest literal, so
    resolving many rules against many parameters stays fast.
    """

    def __init__(self, names: Iterable[str]):
        # a dict (the name table's own ``covers``) is read, not copied; it sorts when asked
        self._known = names.keys() if isinstance(names, dict) else frozenset(names)

    def __contains__(self, name: str) -> bool:
        return name in self._known

    @cached_property
    def names(self) -> list[str]:
        """Every name, sorted (for prefix lookups)."""
        return sorted(self._known)

    @cached_property
    def levels(self) -> dict[str, int]:
        """Each name that has numbered children (``model.layers``; ``""`` for the root) and
        their count, the largest index + 1: what a range counting from the end counts in."""
        out: dict[str, int] = {}
        for name in self._known:
            parent, _, last = name.rpartition(".")
            if _INDEX.fullmatch(last):
                out[parent] = max(out.get(parent, 0), int(last) + 1)
        return out

    def with_prefix(self, prefix: str, depth: int | None = None) -> list[str]:
        """The names that start with ``prefix`` (of ``depth`` segments, when given)."""
        names = self.names if depth is None else self._depths.get(depth, [])
        if not prefix:
            return names
        lo = bisect.bisect_left(names, prefix)
        hi = bisect.bisect_left(names, prefix + "\U0010ffff", lo)
        return names[lo:hi]

    def with_leaf(self, start: str) -> list[str]:
        """The names whose last segment starts with ``start``."""
        leaves, by_leaf = self._leaves
        lo = bisect.bisect_left(leaves, start)
        hi = bisect.bisect_left(leaves, start + "\U0010ffff", lo)
        if hi - lo == 1:
            return by_leaf[leaves[lo]]
        return [n for leaf in leaves[lo:hi] for n in by_leaf[leaf]]

    @cached_property
    def _depths(self) -> dict[int, list[str]]:
        """The names (sorted) by their number of segments."""
        out: dict[int, list[str]] = {}
        for name in self.names:
            out.setdefault(name.count(".") + 1, []).append(name)
        return out

    @cached_property
    def _leaves(self) -> tuple[list[str], dict[str, list[str]]]:
        """The distinct last segments (sorted) and the names that end with each (in the
        order the table holds them)."""
        by_leaf: dict[str, list[str]] = {}
        for name in self._known:
            by_leaf.setdefault(name[name.rfind(".") + 1:], []).append(name)
        return sorted(by_leaf), by_leaf


_LITERAL_EDGE = re.compile(r"^[^*?\[\]{}()!@+|\\]*")
_SIMPLE_SEGMENT = re.compile(r"\*\*|[^?\[\]{}()!@+|\\]*")  # literals and ``*``, or ``**`` alone


def _longest_literal(glob: str) -> str:
    """The longest run of literal characters every match must contain (outside extglob
    groups and character classes, without the dots next to a wildcard), or ``""``."""
    runs, run, depth, i = [], "", 0, 0
    while i < len(glob):
        ch = glob[i]
        if ch == "\\":
            i += 1  # an escaped character: the run ends (conservative)
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        elif ch == "[":
            close = glob.find("]", i + 2)
            i = close if close > 0 else i
        if ch in _GLOB_CHARS or ch == "\\" or depth:
            runs.append(run)
            run = ""
        else:
            run += ch
        i += 1
    runs.append(run)
    return max((r.strip(".") for r in runs), key=len)


def _range_regex(lo: int, hi: int) -> str:
    """A regex for the integers ``lo..hi`` (both >= 0) written without leading zeros."""
    lo, hi = min(lo, hi), max(lo, hi)
    parts = []
    for digits in range(len(str(lo)), len(str(hi)) + 1):
        first = max(lo, 10 ** (digits - 1) if digits > 1 else 0)
        parts += _same_length(str(first), str(min(hi, 10 ** digits - 1)))
    return f"(?:{'|'.join(parts)})"


def _same_length(a: str, b: str) -> list[str]:
    """Regex alternatives for the digit strings from ``a`` to ``b`` (same length, a <= b)."""
    if not a:
        return [""]
    if a[0] == b[0]:
        return [a[0] + r for r in _same_length(a[1:], b[1:])]
    rest = len(a) - 1
    if a[1:] == "0" * rest and b[1:] == "9" * rest:
        return [f"[{a[0]}-{b[0]}]" + "[0-9]" * rest]
    out = [a[0] + r for r in _same_length(a[1:], "9" * rest)]
    if int(b[0]) - int(a[0]) > 1:
        out.append(f"[{int(a[0]) + 1}-{int(b[0]) - 1}]" + "[0-9]" * rest)
    return out + [b[0] + r for r in _same_length("0" * rest, b[1:])]


def _counted(match: re.Match[str]) -> bool:
    """Whether a ``_RANGE`` match counts from the end (a negative end)."""
    return match.group(1).startswith("-") or match.group(2).startswith("-")


def _from_end(text: str, index: NameIndex) -> list[str]:
    """``text`` (one brace alternative) with its first range that counts from the end
    resolved against ``index``: one pattern per level its prefix selects, with plain indices
    (``model.layers.{-2..-1}`` -> ``model.layers.{10..11}`` on a 12-layer model)."""
    m = next(m for m in _RANGE.finditer(text) if _counted(m))
    prefix, rest = text[:m.start()].removesuffix("."), text[m.end():]
    a, b, step = int(m.group(1)), int(m.group(2)), int(m.group(3) or 1)
    levels = index.levels
    parents = [""] if not prefix else [p for p in levels if p and _compiled(prefix).matches(p, to_path(p))]
    out = []
    for parent in parents:
        size = levels.get(parent, 0)
        first, last = a + size if a < 0 else a, b + size if b < 0 else b
        sign = 1 if first <= last else -1
        numbers = range(first, last + sign, sign * step)  # as bracex expands it; keep 0..size-1
        if sign > 0:
            start, stop = max(0, -(first // step)), (size - 1 - first) // step + 1
        else:
            start, stop = max(0, -((size - 1 - first) // step)), first // step + 1
        members = list(numbers[start:max(start, stop)])
        if not members:
            continue
        lo, hi = min(members), max(members)
        number = str(lo) if lo == hi else (f"{{{lo}..{hi}}}" if len(members) == hi - lo + 1
                                            else "{" + ",".join(map(str, members)) + "}")
        out.append(f"{_escaped(parent)}.{number}{rest}" if parent else number + rest)
    return out


def _escaped(name: str) -> str:
    """``name`` as a pattern that matches only it: glob characters behind a backslash."""
    return _GLOB_ESCAPE.sub(r"\\\1", name)


@lru_cache(maxsize=4096)
def _compiled(text: str) -> Pattern:
    return compile_pattern(text)


def _simple_regex(glob: str, ranges: dict[str, str] | None = None) -> re.Pattern[str] | None:
    """A brace-free glob of literals, ``*`` and whole-segment ``**`` as a regex over
    ``name + "."`` (each segment carries its dot), or None for anything else. It selects what
    wcmatch's translation selects on dotted names, several times faster (no look-arounds).
    ``ranges`` maps the characters that stand in for numeric ranges to their regexes.
    """
    ranges = ranges or {}
    segments = glob.split(".")
    if not all(_SIMPLE_SEGMENT.fullmatch(seg) and (seg == "**" or "**" not in seg) for seg in segments):
        return None
    out = []
    for seg in segments:
        if seg == "**":
            out.append(r"(?:[^.]+\.)*")
        elif not seg:
            return None
        else:
            out.append("".join("[^.]*" if ch == "*" else ranges.get(ch) or re.escape(ch) for ch in seg) + r"\.")
    return re.compile("".join(out))


@dataclass(frozen=True)
class _Alternative:
    """One brace alternative of a glob and the literals that every name it matches has."""

    prefix: str
    suffix: str
    needle: str  # the longest literal inside
    leaf: str  # the literal start of the last segment, unless that segment is ``**``
    regex: re.Pattern[str]  # wcmatch's, on the ``/`` form
    simple: re.Pattern[str] | None  # the same selection on ``name + "."``, when the glob is simple
    covered: bool = False  # ``x.**`` next to ``x``: selects only names below those ``x`` selects
    depth: int | None = None  # the number of segments of every match (a simple glob without ``**``)
    spelled: tuple[str, ...] | None = None  # every name it matches, for a literal with numeric ranges

    def candidates(self, index: NameIndex, text: str) -> list[str]:
        """The names of ``index`` this alternative matches, except one spelled like ``text``.

        The regex runs only on names that have the literal parts: looked up by the literal
        start of the last segment when there is one, else by the prefix (and depth)."""
        if self.spelled is not None:
            return [n for n in self.spelled if n in index and n != text]
        prefix, suffix, needle = self.prefix, self.suffix, self.needle
        if self.leaf:
            names = [n for n in index.with_leaf(self.leaf)
                     if n.startswith(prefix) and n.endswith(suffix) and needle in n]
        else:
            names = [n for n in index.with_prefix(prefix, self.depth) if n.endswith(suffix) and needle in n]
        if self.simple is not None:
            fast = self.simple.fullmatch
            return [n for n in names if n != text and fast(n + ".")]
        regex = self.regex.fullmatch
        return [n for n in names if n != text and regex(to_path(n))]


@dataclass(frozen=True)
class Pattern:
    """One compiled pattern. ``text`` is what the user wrote (without a leading ``!``).

    A glob is kept as one regex per brace alternative, each with the literal prefix and
    suffix every match must have.
    """

    text: str
    regex: re.Pattern[str]
    is_regex: bool
    literal: str | None  # set when the pattern has no wildcard: matched by equality
    alternatives: tuple[_Alternative, ...] = ()
    everything: bool = False  # ``**``: every name
    relative: tuple[str, ...] = ()  # alternatives with a range counting from the end (per model)

    def matches(self, name: str, path: str) -> bool:
        """Whether the dotted ``name`` (whose ``/`` form is ``path``) matches; alternatives that
        count from the end need the other names (:meth:`select`) and are not tried here."""
        if not self.is_regex and name == self.text:
            return True
        if self.literal is not None:
            return False
        return self.regex.fullmatch(name if self.is_regex else path) is not None

    def select(self, index: NameIndex) -> list[str]:
        """The names of ``index`` this pattern matches, or, for ``x.**`` next to ``x``, the
        top-most of them: a name covers the names below it, so selections stay the same."""
        if self.everything:
            return index.names
        if self.literal is not None:
            return [self.literal] if self.literal in index else []
        if self.is_regex:
            return [n for n in index.names if self.regex.fullmatch(n)]
        out = [self.text] if self.text in index else []  # the name spelled like the glob
        for alt in self.alternatives:
            if not alt.covered:
                out.extend(alt.candidates(index, self.text))
        for alt_text in self.relative:
            for concrete in _from_end(alt_text, index):
                out.extend(_compiled(concrete).select(index))
        return out


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
    ranges: dict[str, re.Match[str]] = {}  # stand-in character -> its numeric range

    def stand_in(m: re.Match[str]) -> str:
        if m.group(3) and not _counted(m):  # a stepped range: bracex expands it
            return m.group(0)
        ranges[chr(_PLACEHOLDER + len(ranges))] = m
        return chr(_PLACEHOLDER + len(ranges) - 1)

    try:
        expanded = bracex.expand(_RANGE.sub(stand_in, text), keep_escapes=True, limit=_MAX_EXPANSION)
    except Exception as exc:  # bracex raises a bare ValueError/RuntimeError subclass
        raise PatternError(f"invalid pattern {text!r}: {exc}") from None
    numbers = {ch: _range_regex(int(m.group(1)), int(m.group(2))) for ch, m in ranges.items() if not _counted(m)}
    alternatives, relative = [], []
    try:
        # ``a.**`` is zero or more segments after ``a``: ``a`` itself too
        expanded = [x for alt in expanded for x in ((alt[:-3], alt) if alt.endswith(".**") else (alt,))]
        unique = dict.fromkeys(expanded)
        for alt in unique:
            if any(ch in alt and ch not in numbers for ch in ranges):
                relative.append(_counting_alternative(text, alt, ranges))
                continue
            include, _ = wcglob.translate(to_path(alt), flags=_FLAGS)
            regex = re.compile("|".join(f"(?:{_with_numbers(r, numbers)})" for r in include))
            # literal filters treat a range as ``*``; the separator next to a ``**`` is
            # optional (``**.fc`` matches ``fc``): filter without it
            starred = _with_numbers(alt, dict.fromkeys(numbers, "*"))
            prefix = _LITERAL_EDGE.match(starred).group(0).rstrip(".")
            suffix = _LITERAL_EDGE.match(starred[::-1]).group(0)[::-1].lstrip(".")
            last = starred.rpartition(".")[2]
            leaf = "" if "**" in last else _LITERAL_EDGE.match(last).group(0)
            literal = "" if regex.flags & re.IGNORECASE else _longest_literal(starred)
            simple = None if regex.flags & re.IGNORECASE else _simple_regex(alt, numbers)
            depth = starred.count(".") + 1 if simple is not None and "**" not in alt else None
            alternatives.append(_Alternative(prefix, suffix, literal, leaf, regex, simple,
                                             alt.endswith(".**") and alt[:-3] in unique, depth,
                                             _spelled(alt, ranges)))
    except PatternError:
        raise
    except Exception as exc:  # wcmatch's own errors for malformed globs
        raise PatternError(f"invalid pattern {text!r}: {exc}") from None
    joined = re.compile("|".join(f"(?:{a.regex.pattern})" for a in alternatives) or "(?!)")
    return Pattern(text, joined, False, None, tuple(alternatives), everything=text == "**",
                   relative=tuple(relative))


def _spelled(alt: str, ranges: dict[str, re.Match[str]]) -> tuple[str, ...] | None:
    """Every name ``alt`` matches when it is a literal apart from numeric ranges that list at
    most :data:`_MAX_EXPANSION` names (``blocks.{0..11}``): looked up instead of matched."""
    used = [(ch, m) for ch, m in ranges.items() if ch in alt]
    if not used or any(_counted(m) for _, m in used) or _GLOB_CHARS & set(alt) or "\\" in alt:
        return None
    spans = [range(min(int(m.group(1)), int(m.group(2))), max(int(m.group(1)), int(m.group(2))) + 1)
             for _, m in used]
    if math.prod(len(r) for r in spans) > _MAX_EXPANSION:
        return None
    out = [alt]
    for (ch, _), span in zip(used, spans):
        out = [text.replace(ch, str(k), 1) for text in out for k in span]
    return tuple(out)


def _with_numbers(text: str, numbers: dict[str, str]) -> str:
    """``text`` with each stand-in character of a numeric range replaced by its regex."""
    for ch, regex in numbers.items():
        text = text.replace(ch, regex)
    return text


def _counting_alternative(text: str, alt: str, ranges: dict[str, re.Match[str]]) -> str:
    """A brace alternative with a range counting from the end, written out again (resolved per
    model by :func:`_from_end`); such a range must be a whole segment."""
    for ch, m in ranges.items():
        at = alt.find(ch)
        if at >= 0 and _counted(m) and not (alt[at - 1:at] in ("", ".") and alt[at + 1:at + 2] in ("", ".")):
            raise PatternError(f"invalid pattern {text!r}: a range counting from the end "
                               f"({m.group(0)}) must be a whole segment, as in layers.{{-2..-1}}")
    return _with_numbers(alt, {ch: m.group(0) for ch, m in ranges.items()})


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
                self.exclude.append(_compiled(text[1:]))
            else:
                self.include.append(_compiled(text) if isinstance(text, str) else compile_pattern(text))
        self.everything = not self.include

    def hits(self, names: Iterable[str], which: str = "include") -> set[str]:
        """The subset of ``names`` that any include (or exclude) pattern matches; a range
        counting from the end counts in ``names`` (give every name, modules too)."""
        pats = self.include if which == "include" else self.exclude
        names = list(names)
        out = {n for n in names if any(p.matches(n, to_path(n)) for p in pats)}
        counting = [p for p in pats if p.relative]
        if counting:
            index = NameIndex(names)
            out.update(n for p in counting for n in p.select(index))
        return out

    def select(self, index: NameIndex, which: str = "include") -> set[str]:
        """The names of ``index`` that any include (or exclude) pattern matches."""
        pats = self.include if which == "include" else self.exclude
        return {n for p in pats for n in p.select(index)}

    def __repr__(self) -> str:
        return f"PatternList({list(self.texts)!r})"
