"""Param groups: parameters with identical settings share one torch param group.

Fewer groups means fewer kernel launches in foreach/fused optimizers. Groups are numbered by
the first parameter (in ``named_parameters`` order) that lands in each, so the layout, and an
optimizer ``state_dict`` saved from it, is the same on every run. Names say what a group is
(its label, or the rules and stages that define it) and depend only on the plan and the
model, so they too are the same on every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Hashable, Protocol, Sequence

from .inventory import ParamRecord
from .stages import Event

if TYPE_CHECKING:
    from .resolution import Assignment


class Members(Protocol):
    """Where a group's members live: the records of the model and, made when first asked for,
    their assignments (both indexed by record)."""

    records: Sequence[ParamRecord]

    @property
    def assignments(self) -> Sequence[Assignment]: ...


@dataclass(frozen=True)
class Group:
    """One torch param group: its settings and the parameters in it (``indices``, records of
    ``source``); ``members`` are their assignments. ``optimizer`` names the optimizer that
    steps it (the plan's names: :meth:`paramgroups.Plan.optimizer_class_of` gives its class)."""

    index: int
    name: str
    optimizer: str
    lr: float
    weight_decay: float
    frozen: bool
    options: dict[str, Any]
    events: tuple[Event, ...]
    indices: tuple[int, ...]
    source: Members = field(repr=False, compare=False)

    @property
    def members(self) -> tuple[Assignment, ...]:
        assignments = self.source.assignments
        return tuple(assignments[i] for i in self.indices)

    @property
    def numel(self) -> int:
        records = self.source.records
        return sum(records[i].numel for i in self.indices)

    def to_torch(self, *, with_weight_decay: bool = True, with_optimizer: bool = False) -> dict[str, Any]:
        """The ``param_groups`` dict torch optimizers take; ``name`` (and, ``with_optimizer``,
        ``optimizer``: what :class:`~paramgroups.composite.CompositeOptimizer` routes by) ride
        along as metadata."""
        records = self.source.records
        out: dict[str, Any] = {"params": [records[i].param for i in self.indices],
                               "name": self.name, "lr": self.lr}
        if with_optimizer:
            out["optimizer"] = self.optimizer
        if with_weight_decay:
            out["weight_decay"] = self.weight_decay
        out.update(self.options)
        return out


def number(keys: Sequence[Hashable | None]) -> tuple[list[int | None], list[int]]:
    """The group index of each item by its key (``None``: in no group), numbered by first
    appearance, and the first item of each group."""
    seen: dict[Hashable, int] = {}
    index: list[int | None] = []
    first: list[int] = []
    for i, key in enumerate(keys):
        if key is None:
            index.append(None)
            continue
        g = seen.get(key)
        if g is None:
            g = seen[key] = len(first)
            first.append(i)
        index.append(g)
    return index, first


def group_name(label: str | None, rules: Sequence[int], layer: int | None, frozen: bool,
               events: tuple[Event, ...], rule_names: Sequence[tuple[str, bool]],
               stage_names: Sequence[tuple[str, str]]) -> str:
    """What a group is: its ``group`` label, or the rules (and stage) that define it.

    ``rules`` are the rules that touched its parameters; ``rule_names[i]`` describes rule i:
    (its patterns, or the kinds/modules it selects, ``""`` for a rule that selects everything;
    whether it selects by name); ``stage_names[i]`` is stage i's (pattern it thaws or freezes,
    ``"epoch 4"``). Examples: ``fc + bias,norm``, ``layer 3: blocks.2``,
    ``layer3, thaws at epoch 4``.
    """
    if label:
        what = label
    else:
        names = [rule_names[i] for i in rules if rule_names[i][0]]
        if events:  # a staged group is named by what its first stage selects
            names = [(stage_names[events[0][0]][0], True), *(n for n in names if not n[1])]
        what = " + ".join(dict.fromkeys(text for text, _ in names)) or "default"
        if layer is not None:
            what = f"layer {layer}: {what}" if what != "default" else f"layer {layer}"
    changes = [f"{'thaws' if action == 'thaw' else 'freezes'} at {stage_names[i][1]}"
               for i, action in events]
    state = ["frozen"] if frozen and not events else []
    return ", ".join([what, *state, *changes])


def with_optimizers(names: Sequence[str], optimizers: Sequence[str]) -> list[str]:
    """``names`` with the optimizer added where groups of different optimizers would share a
    name: ``default (muon)``, ``default (adamw)``; names of one optimizer stay as they are."""
    seen: dict[str, set[str]] = {}
    for name, opt in zip(names, optimizers):
        seen.setdefault(name, set()).add(opt)
    return [f"{name} ({opt})" if len(seen[name]) > 1 else name for name, opt in zip(names, optimizers)]


def unique(names: Sequence[str]) -> list[str]:
    """``names`` with repeats numbered: ``fc``, ``fc #2``, ..."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(f"{name} #{count + 1}" if count else name)
    return out
