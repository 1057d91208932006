"""Merging assignments with identical settings into torch param groups.

Fewer groups means fewer kernel launches in foreach/fused optimizers. Groups are ordered by
the first parameter (in ``named_parameters`` order) that lands in each, so the layout, and an
optimizer ``state_dict`` saved from it, is the same on every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

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


def group_name(a: Assignment, rule_names: Sequence[tuple[str, bool]],
               stage_names: Sequence[tuple[str, str]]) -> str:
    """What the group is: its ``group`` label, or the rules (and stage) that define it.

    ``rule_names[i]`` describes rule i: (its patterns, or the kinds/modules it selects, ``""``
    for a rule that selects everything; whether it selects by name); ``stage_names[i]`` is
    stage i's (pattern it thaws or freezes, ``"epoch 4"``). Names depend only on the plan and the model,
    so they are the same on every run (state dicts). Examples: ``fc + bias,norm``,
    ``layer 3: blocks.2``, ``layer3, thaws at epoch 4``.
    """
    if a.label:
        what = a.label
    else:
        names = [rule_names[i] for i in a.rules if rule_names[i][0]]
        if a.events:  # a staged group is named by what its first stage selects
            names = [(stage_names[a.events[0][0]][0], True), *(n for n in names if not n[1])]
        what = " + ".join(dict.fromkeys(text for text, _ in names)) or "default"
        if a.layer is not None:
            what = f"layer {a.layer}: {what}" if what != "default" else f"layer {a.layer}"
    changes = [f"{'thaws' if action == 'thaw' else 'freezes'} at {stage_names[i][1]}"
               for i, action in a.events]
    state = ["frozen"] if a.frozen and not a.events else []
    return ", ".join([what, *state, *changes])


def build_groups(assignments: list[Assignment], rule_names: Sequence[tuple[str, bool]] = (),
                 stage_names: Sequence[tuple[str, str]] = ()) -> list[Group]:
    """Group assignments by identical settings; set ``assignment.group`` to the group index.

    ``rule_names``/``stage_names`` describe the plan's rules and stages for the group names
    (see :func:`group_name`).

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
            group = Group(len(groups), group_name(a, rule_names, stage_names), a.lr, a.weight_decay, a.frozen,
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
