"""Resolving a plan against a model, in one pass: the assignment of every parameter and the
groups they form.

The pass: the model's inventory and name table; layer ids (under layer-wise LR decay); the
rule cascade; each parameter's settings and its frozen state before any stage (a rule's
``freeze``, else what the model says); the stage timelines (which stages thaw or freeze it);
the group keys; then the immutable :class:`Assignment` of every parameter, already holding
its group, and the :class:`~paramgroups.groups.Group` objects holding their assignments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from torch import nn

from . import optim
from .errors import OptimizerError, RuleError
from .groups import Group, group_key, group_name, number, unique
from .inventory import ParamRecord, inventory
from .layers import layer_ids, layer_scales
from .names import NameTable
from .rules import SETTINGS, Rule, cascade, merged
from .schedules import Schedule, check_group_lrs
from .stages import Event, stage_text, timelines

if TYPE_CHECKING:
    from .plan import Plan


@dataclass(frozen=True)
class Assignment:
    """What one parameter gets, and why.

    ``frozen`` is its state at step 0 and ``frozen_by`` who decided it (``"rule N"``,
    ``"stage N"``, ``"model"``, ``"dtype"``; None when it trains); ``events`` are the
    (stage, ``"thaw"``/``"freeze"``) that change it later; ``rules`` the rules that touched it,
    in order; ``group`` the index of its param group (None: in none, it never trains);
    ``layer``/``lr_scale`` its layer id and the layer-decay scale folded into ``lr``.
    """

    record: ParamRecord
    lr: float
    weight_decay: float
    frozen: bool
    frozen_by: str | None
    label: str | None
    options: dict[str, Any]
    rules: list[int]
    group: int | None
    layer: int | None = None
    lr_scale: float = 1.0
    events: tuple[Event, ...] = ()


@dataclass(frozen=True)
class Resolution:
    """A plan resolved against a model: one assignment per record, the groups, and what did
    not fit (rules that matched nothing, tied weights given different values)."""

    records: list[ParamRecord]
    assignments: tuple[Assignment, ...]
    groups: tuple[Group, ...]
    unmatched: list[int]
    problems: list[str]
    conflicts: list[RuleError] = field(default_factory=list)
    names: NameTable | None = field(default=None, repr=False)

    def check_conflicts(self) -> None:
        """Raise on rules that disagree about one tied tensor: no optimizer is built on a coin flip."""
        if self.conflicts:
            first = self.conflicts[0]
            raise RuleError(first.message, where=first.where)


def resolve(plan: Plan, model: nn.Module, *, strict: bool = True) -> Resolution:
    """Resolve ``plan`` against ``model`` (see the module docstring for the pass)."""
    records = inventory(model)
    table = NameTable.of(records)
    layers = scales = None
    if plan.layer_decay is not None:
        layers = layer_ids(model, records, plan.layers, table)
        scales = layer_scales(layers, plan.layer_decay)
    rules = plan.all_rules
    done = cascade(records, rules, table, strict=strict)
    settings = _Settings(rules, plan.base_lr, plan.weight_decay)
    rows = [settings.of(rec, hit, scales[i] if scales else 1.0)
            for i, (rec, hit) in enumerate(zip(records, done.touched))]
    # norm_trainable overrides the plan's own freezing, never the model's (a PEFT base norm)
    keep = [plan.norm_trainable and "norm" in rec.kinds and rec.is_float and by != "model"
            for rec, (_, _, _, _, _, by) in zip(records, rows)]
    frozen = [row[4] and not k for row, k in zip(rows, keep)]
    events, start = timelines(records, plan.stages, frozen, keep, table)
    frozen_by = [_frozen_by(row[5], row[4], fr, ev, plan) for row, fr, ev in zip(rows, start, events)]

    layer_of = layers or [None] * len(records)
    keys = [None if not rec.is_float or (by == "model" and not ev) else
            group_key(label, layer, lr, wd, fr, ev, options)
            for rec, (lr, wd, options, label, _, _), layer, fr, by, ev
            in zip(records, rows, layer_of, start, frozen_by, events)]
    group_of, first = number(keys)
    rule_names, stage_names = plan.rule_texts(rules), [stage_text(st) for st in plan.stages]
    names = unique([group_name(rows[i][3], done.touched[i], layer_of[i], start[i], events[i],
                               rule_names, stage_names) for i in first])
    assignments = tuple(
        Assignment(rec, lr, wd, fr, by, label, options, list(hit), g, layer,
                   scales[i] if scales else 1.0, ev)
        for i, (rec, (lr, wd, options, label, _, _), hit, fr, by, ev, g, layer)
        in enumerate(zip(records, rows, done.touched, start, frozen_by, events, group_of, layer_of)))
    members: list[list[Assignment]] = [[] for _ in first]
    for a in assignments:
        if a.group is not None:
            members[a.group].append(a)
    groups = tuple(Group(g, name, assignments[i].lr, assignments[i].weight_decay, assignments[i].frozen,
                         dict(assignments[i].options), assignments[i].events, tuple(members[g]))
                   for g, (i, name) in enumerate(zip(first, names)))
    _check(plan, groups)
    return Resolution(records, assignments, groups, done.unmatched,
                      [str(e) for e in (*done.errors, *done.conflicts)], done.conflicts, table)


class _Settings:
    """A record's settings from the rules that touched it: computed once per distinct list
    of rules (a model has a handful), then only the per-record parts."""

    def __init__(self, rules: Sequence[Rule], base_lr: float, base_weight_decay: float):
        self.rules, self.base_lr, self.base_wd = rules, base_lr, base_weight_decay
        self.cache: dict[tuple[int, ...], tuple] = {}

    def of(self, rec: ParamRecord, touched: tuple[int, ...], scale: float) -> tuple:
        """(lr, weight_decay, options, label, frozen, frozen_by) of ``rec`` before any stage."""
        known = self.cache.get(touched)
        if known is None:
            fields, freezer = merged(self.rules, touched)
            known = self.cache[touched] = (
                fields.get("lr", self.base_lr) * fields.get("lr_mult", 1.0),
                fields.get("weight_decay", self.base_wd) * fields.get("wd_mult", 1.0),
                {k: v for k, v in fields.items() if k not in SETTINGS},
                fields.get("group"), fields.get("freeze"), freezer)
        lr, wd, options, label, freeze, freezer = known
        lr = lr * scale
        if not (math.isfinite(lr) and math.isfinite(wd)):
            raise RuleError(f"{rec.name}: lr {lr:g} / weight_decay {wd:g} overflow (rules "
                            f"{list(touched)} multiply to infinity): use smaller values")
        frozen, by = _start_state(rec, freeze, freezer)
        return lr, wd, options, label, frozen, by


def _start_state(rec: ParamRecord, freeze: bool | None, rule: int | None) -> tuple[bool, str | None]:
    """(frozen, who decided) before any stage: a rule's ``freeze`` if one set it, else the
    model's own ``requires_grad`` (a plan changes only what it says); integers never train."""
    if not rec.is_float:
        return True, "dtype"
    if freeze is not None:
        return freeze, f"rule {rule}"
    frozen = not rec.param.requires_grad
    return frozen, "model" if frozen else None


def _frozen_by(by: str | None, before: bool, frozen: bool, events: tuple[Event, ...],
               plan: Plan) -> str | None:
    """Who decided the state at step 0, once ``norm_trainable`` and stages at time 0 acted."""
    if frozen == before:
        return by
    at_zero = [i for i, _ in events if plan.stages[i].when == 0]
    return f"stage {at_zero[-1]}" if frozen and at_zero else None


def _check(plan: Plan, groups: Sequence[Group]) -> None:
    """Every group's LR stays finite under the schedule; no weight decay for an optimizer
    that takes none."""
    check_group_lrs(plan.schedule or Schedule(), plan.base_lr, [
        (g.name, g.lr, [plan.stages[i].lr_mult for i, act in g.events if act == "thaw"])
        for g in groups])
    if not optim.takes(plan.optimizer_class, "weight_decay"):
        wd = sorted({g.weight_decay for g in groups if g.weight_decay})
        if wd:
            raise OptimizerError(f"optimizer {plan.optimizer_class.__name__} does not take "
                                 f"weight_decay, but the plan gives {wd[0]:g}")
