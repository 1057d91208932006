"""Merging assignments with identical settings into torch param groups.

Fewer groups means fewer kernel launches in foreach/fused optimizers. Groups are ordered by
the first parameter (in ``named_parameters`` order) that lands in each, so the layout, and an
optimizer ``state_dict`` saved from it, is the same on every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .rules import Assignment


@dataclass
class Group:
    """One torch param group: its settings and the assignments (parameters) in it."""

    index: int
    name: str
    lr: float
    weight_decay: float
    frozen: bool
    options: dict[str, Any]
    events: tuple = ()
    members: list[Assignment] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return sum(a.record.numel for a in self.members)

    def to_torch(self, *, with_weight_decay: bool = True) -> dict[str, Any]:
        """The ``param_groups`` dict torch optimizers take; ``name`` rides along as metadata."""
        out: dict[str, Any] = {"params": [a.record.param for a in self.members],
                               "name": self.name, "lr": self.lr}
        if with_weight_decay:
            out["weight_decay"] = self.weight_decay
        out.update(self.options)
        return out


def _key(a: Assignment) -> tuple:
    return (a.label, a.layer, a.lr, a.weight_decay, a.frozen, a.events,
            repr(sorted(a.options.items())))


def _fmt(x: float) -> str:
    return f"{x:g}"


def group_name(a: Assignment) -> str:
    """A readable name: the rule's ``group`` label, or the settings that set the group apart."""
    if a.label:
        name = a.label
    else:
        name = "" if a.layer is None else f"layer{a.layer} "
        name += f"lr={_fmt(a.lr)} wd={_fmt(a.weight_decay)}"
        name += "".join(f" {k}={v}" for k, v in sorted(a.options.items()))
    name += " frozen" if a.frozen else ""
    changes = [f"{'thawed' if action == 'thaw' else 'frozen'} by stage {i}" for i, action in a.events]
    return name + (f" ({', '.join(changes)})" if changes else "")


def build_groups(assignments: list[Assignment]) -> list[Group]:
    """Group assignments by identical settings; set ``assignment.group`` to the group index.

    Parameters that never train stay outside every group: non-floating dtypes, and parameters
    the model itself froze that no rule or stage thaws (a PEFT base: no state, no work).
    """
    groups: dict[tuple, Group] = {}
    for a in assignments:
        if not a.record.is_float or (a.frozen_by == "model" and not a.events):
            a.group = None
            continue
        key = _key(a)
        group = groups.get(key)
        if group is None:
            group = Group(len(groups), group_name(a), a.lr, a.weight_decay, a.frozen,
                          dict(a.options), a.events)
            groups[key] = group
        group.members.append(a)
        a.group = group.index
    out = list(groups.values())
    _dedupe_names(out)
    return out


def _dedupe_names(groups: list[Group]) -> None:
    seen: dict[str, int] = {}
    for g in groups:
        count = seen.get(g.name, 0)
        seen[g.name] = count + 1
        if count:
            g.name = f"{g.name} #{count + 1}"
