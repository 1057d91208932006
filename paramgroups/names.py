"""The name table: every name a pattern is tried on, and the parameters each one covers.

A pattern is tried on a parameter's name and on every module name above it, so a module match
covers its subtree (DESIGN.md). The table maps each of those names to the records (inventory
indices) it covers, beside a sorted :class:`~paramgroups.patterns.NameIndex` of them that lets a
glob look only at the names its literal parts allow. It is built once per model and shared by
rules, stages, layer lists and one-off freezing.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Sequence

from .inventory import ParamRecord
from .patterns import NameIndex, PatternList


@dataclass(frozen=True)
class NameTable:
    """``covers``: name -> indices of the records it covers (in model order); ``index``: the
    same names, sorted, for pattern lookups; ``size``: the number of records."""

    covers: dict[str, Sequence[int]] = field(repr=False)
    index: NameIndex = field(repr=False)
    size: int

    @classmethod
    def of(cls, records: Sequence[ParamRecord]) -> "NameTable":
        """The table of a model's records: parameter names, aliases of tied weights, and every
        module name above them (found by the inventory's walk, else from the names)."""
        covers = getattr(records, "covers", None)
        if covers is None:
            covers = _covers(records)
        return cls(covers, NameIndex(covers), len(records))

    def select(self, patterns: PatternList) -> list[int]:
        """Indices (sorted) of the records ``patterns`` select: covered by an include pattern
        and by no exclude pattern; a list of only exclusions starts from every record."""
        if patterns.everything or any(p.everything for p in patterns.include):  # ``**``: no lookups
            if not patterns.exclude:
                return list(range(self.size))
            chosen = set(range(self.size))
        else:
            chosen = self._covered(patterns.select(self.index))
        if patterns.exclude:
            chosen -= self._covered(patterns.select(self.index, "exclude"))
        return sorted(chosen)

    def _covered(self, names: set[str]) -> set[int]:
        found: set[int] = set()
        update, covers = found.update, self.covers
        for name in names:
            update(covers[name])
        return found

    def closest(self, pattern: str, n: int = 3) -> str:
        """``; closest names: ...``: the real names ``pattern`` was probably meant to say, or ""."""
        text = pattern.lstrip("!")
        text = text[3:] if text.startswith("re:") else text
        close = difflib.get_close_matches(text, list(self.covers), n=n, cutoff=0.4)
        return f"; closest names: {', '.join(close)}" if close else ""


def _covers(records: Sequence[ParamRecord]) -> dict[str, list[int]]:
    """Every parameter name, and every module name above one, mapped to the records under it
    (a record may repeat in a list when an alias of a tied weight sits in the same subtree)."""
    covers: dict[str, list[int]] = {}
    below: dict[str, list[int]] = {}  # module -> the records whose names sit right in it
    for rec in records:
        for name in rec.names:
            covers.setdefault(name, []).append(rec.index)
            module = name.rpartition(".")[0]
            if module:
                below.setdefault(module, []).append(rec.index)
    for module, indices in below.items():
        name = module
        while True:
            covers.setdefault(name, []).extend(indices)
            cut = name.rfind(".")
            if cut < 0:
                break
            name = name[:cut]
    return covers
