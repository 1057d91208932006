"""Tied weights: rules that give one tensor different values through its different names.

Tied weights (GPT-2's ``transformer.wte.weight`` is ``lm_head.weight``) are one tensor with
one setting; two rules that each name only one alias and disagree would otherwise resolve by
rule order, silently. Rules that select nested sets of the names (``**`` then ``lm_head``)
are an ordinary cascade.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from .errors import RuleError
from .inventory import ParamRecord
from .patterns import NameIndex

if TYPE_CHECKING:
    from .rules import Rule


class TieWatch:
    """Watches the cascade (:meth:`observe` per rule) for rules that disagree about a tied
    tensor through different names (:meth:`conflicts`)."""

    def __init__(self, records: Sequence[ParamRecord], index: NameIndex):
        self.records = records
        self.index = index
        self.tied = {r.index for r in records if r.aliases}
        self.seen: dict[int, list[tuple[int, frozenset[str]]]] = {}  # record -> (rule, names)

    def observe(self, rule_index: int, rule: Rule, selected: list[int]) -> None:
        """Note the names of tied tensors through which rule ``rule_index`` selected them."""
        hit = [i for i in selected if i in self.tied] if self.tied else []
        if not hit:
            return
        if rule.patterns.everything and not rule.patterns.exclude:
            for i in hit:
                self.seen.setdefault(i, []).append((rule_index, frozenset(self.records[i].names)))
            return
        include = None if rule.patterns.everything else rule.patterns.select(self.index)
        exclude = rule.patterns.select(self.index, "exclude") if rule.patterns.exclude else set()
        for i in hit:
            names = frozenset(n for n in self.records[i].names
                              if (include is None or _under(n, include)) and not _under(n, exclude))
            self.seen.setdefault(i, []).append((rule_index, names))

    def conflicts(self, rules: Sequence[Rule]) -> list[RuleError]:
        """One error per pair of rules that set a tied tensor to different values through
        names neither of which holds the other's, located at the later rule."""
        out = []
        for idx, hits in self.seen.items():
            for later, (j, names_j) in enumerate(hits):
                for i, names_i in hits[:later]:
                    if names_i <= names_j or names_j <= names_i:
                        continue
                    a, b = rules[i].settings(), rules[j].settings()
                    clash = [k for k in a if k in b and a[k] != b[k]]
                    if clash:
                        out.append(_tie_error(self.records[idx], rules, (i, names_i), (j, names_j), a, b, clash))
        return out


def _under(name: str, names: set[str]) -> bool:
    """Whether ``name`` or a module above it is in ``names``."""
    end = -1
    while True:
        end = name.find(".", end + 1)
        if (name if end < 0 else name[:end]) in names:
            return True
        if end < 0:
            return False


def _tie_error(rec: ParamRecord, rules: Sequence[Rule], first: tuple[int, frozenset[str]],
               second: tuple[int, frozenset[str]], a: dict[str, Any], b: dict[str, Any],
               keys: list[str]) -> RuleError:
    (i, names_i), (j, names_j) = first, second
    diff = "; ".join(f"{k}: {a[k]!r} vs {b[k]!r}" for k in keys)
    return RuleError(
        f"{' and '.join(rec.names)} are one tied tensor, but {rules[i].where(i)} sets it through "
        f"{', '.join(sorted(names_i))} and rule {j} through {', '.join(sorted(names_j))} to other "
        f"values ({diff}); rule {j} would win silently: give both names the same settings, or "
        f"select them in one rule", where=rules[j].location(j))
