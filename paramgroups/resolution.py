"""Resolving a plan against a model, in one pass: the assignment of every parameter and the
groups they form.

The pass: the model's inventory and name table; layer ids (under layer-wise LR decay); the
rule cascade; the settings of each distinct list of rules that touched a parameter; each
parameter's frozen state before any stage (a rule's ``freeze``, else what the model says);
the stage timelines (which stages thaw or freeze it); the group keys; then the groups.

Work per parameter is kept to a few list entries (a model has millions of tensors and a
handful of distinct settings): the immutable :class:`Assignment` of each parameter, already
holding its group, is made from those lists when first asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Sequence

from torch import nn

from . import optim, routing
from .errors import OptimizerError, RuleError
from .groups import Group, group_name, number, unique, with_optimizers
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
    ``layer``/``lr_scale`` its layer id and the layer-decay scale folded into ``lr``;
    ``optimizer`` the name of the optimizer that steps it.
    """

    record: ParamRecord
    optimizer: str
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
class Settings:
    """What a list of rules gives a parameter before layer decay and stages; ``key`` is the
    same for equal settings (options may be unhashable)."""

    optimizer: str
    lr: float
    weight_decay: float
    options: dict[str, Any]
    label: str | None
    freeze: bool | None
    freezer: int | None  # the last rule that set ``freeze``
    key: tuple

    @classmethod
    def of(cls, rules: Sequence[Rule], touched: Sequence[int], plan: Plan) -> "Settings":
        """The settings the rules ``touched`` give: the last rule's value of each field, else
        the defaults of the parameter's optimizer (the last ``optimizer`` a rule sets, else the
        plan's): its LR and weight decay under ``optimizers``, else the plan's."""
        fields, freezer = merged(rules, touched)
        name = fields.get("optimizer", plan.default_optimizer)
        lr = fields.get("lr", plan.base_lr_of(name)) * fields.get("lr_mult", 1.0)
        wd = fields.get("weight_decay", plan.base_weight_decay_of(name)) * fields.get("wd_mult", 1.0)
        options = {k: v for k, v in fields.items() if k not in SETTINGS}
        return cls(name, lr, wd, options, fields.get("group"), fields.get("freeze"), freezer,
                   (name, fields.get("group"), lr, wd, repr(sorted(options.items()))))


@dataclass(frozen=True)
class Columns:
    """Per record (lists indexed like ``records``): its settings, the rules that touched it,
    layer id and scale, frozen state and who decided it, stage events and group. Its
    ``assignments`` are made from the lists when first asked for."""

    records: list[ParamRecord]
    settings: list[Settings]
    touched: list[tuple[int, ...]]
    layers: list[int] | None
    scales: list[float] | None
    frozen: list[bool]
    frozen_by: list[str | None]
    events: list[tuple[Event, ...]]
    group_of: list[int | None]

    @cached_property
    def assignments(self) -> tuple[Assignment, ...]:
        """One :class:`Assignment` per record, in model order."""
        layers, scales = self.layers, self.scales
        return tuple(
            Assignment(rec, s.optimizer, s.lr * (scales[i] if scales else 1.0), s.weight_decay, fr, by, s.label,
                       s.options, list(hit), g, layers[i] if layers else None,
                       scales[i] if scales else 1.0, ev)
            for i, (rec, s, hit, fr, by, ev, g) in enumerate(zip(
                self.records, self.settings, self.touched, self.frozen, self.frozen_by,
                self.events, self.group_of)))


@dataclass(frozen=True)
class Resolution:
    """A plan resolved against a model: one assignment per record, the groups, and what did
    not fit (rules that matched nothing, tied weights given different values). ``optimizers``
    names the optimizers that step the groups, in the order they step (their first group's)."""

    records: list[ParamRecord]
    groups: tuple[Group, ...]
    unmatched: list[int]
    problems: list[str]
    conflicts: list[RuleError]
    names: NameTable = field(repr=False)
    columns: Columns = field(repr=False)
    optimizers: tuple[str, ...] = ()

    @property
    def assignments(self) -> tuple[Assignment, ...]:
        """One :class:`Assignment` per record, in model order (made when first asked for)."""
        return self.columns.assignments

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
    settings, key_of, rule_frozen, rule_by = _start(records, rules, done.touched, plan)
    if plan.stages or plan.norm_trainable:
        # norm_trainable overrides the plan's own freezing, never the model's (a PEFT base norm)
        keep = ([plan.norm_trainable and "norm" in rec.kinds and rec.is_float and by != "model"
                 for rec, by in zip(records, rule_by)] if plan.norm_trainable else [False] * len(records))
        events, frozen = timelines(records, plan.stages, [f and not k for f, k in zip(rule_frozen, keep)],
                                   keep, table)
        frozen_by = [by if fr == before else _by_stage(fr, ev, plan)
                     for by, before, fr, ev in zip(rule_by, rule_frozen, frozen, events)]
    else:  # no stage, nothing kept trainable: the rules' states are the states at step 0
        events, frozen, frozen_by = [()] * len(records), rule_frozen, rule_by
    group_of, first = number([
        None if by == "dtype" or (by == "model" and not ev) else (k, layer, fr, ev)
        for k, layer, fr, by, ev in zip(key_of, layers or [None] * len(records), frozen, frozen_by, events)])
    members: list[list[int]] = [[] for _ in first]
    for i, g in enumerate(group_of):
        if g is not None:
            members[g].append(i)
    columns = Columns(records, settings, done.touched, layers, scales, frozen, frozen_by, events, group_of)
    rule_names, stage_names = plan.rule_texts(rules), [stage_text(st) for st in plan.stages]
    names = [group_name(settings[i].label, done.touched[i], layers[i] if layers else None,
                        frozen[i], events[i], rule_names, stage_names) for i in first]
    optimizers = tuple(dict.fromkeys(settings[i].optimizer for i in first))
    if len(optimizers) > 1:
        names = with_optimizers(names, [settings[i].optimizer for i in first])
    groups = tuple(Group(g, name, settings[i].optimizer, settings[i].lr * (scales[i] if scales else 1.0),
                         settings[i].weight_decay, frozen[i], dict(settings[i].options), events[i],
                         tuple(members[g]), columns)
                   for g, (i, name) in enumerate(zip(first, unique(names))))
    _check(plan, records, done.touched, groups)
    routing.check(plan, rules, records, done.touched, groups, group_of)
    return Resolution(records, groups, done.unmatched, [str(e) for e in (*done.errors, *done.conflicts)],
                      done.conflicts, table, columns, optimizers)


def _start(records: Sequence[ParamRecord], rules: Sequence[Rule], touched: Sequence[tuple[int, ...]],
           plan: Plan) -> tuple[list[Settings], list[int], list[bool], list[str | None]]:
    """Per record: its :class:`Settings` (computed once per distinct list of rules), the number
    of its settings' ``key`` (equal keys, equal numbers: what groups compare), and its frozen
    state before any stage with who decided it: a rule's ``freeze`` if one set it, else the
    model's own ``requires_grad`` (a plan changes only what it says); parameters that are not
    floating point never train (``"dtype"``)."""
    known: dict[tuple[int, ...], tuple[Settings, int, str]] = {}
    numbers: dict[tuple, int] = {}
    settings, key_of, frozen, by = [], [], [], []
    for rec, hit in zip(records, touched):
        entry = known.get(hit)
        if entry is None:
            s = Settings.of(rules, hit, plan)
            if not (math.isfinite(s.lr) and math.isfinite(s.weight_decay)):
                raise _overflow(rec, s.lr, s.weight_decay, hit)
            entry = known[hit] = (s, numbers.setdefault(s.key, len(numbers)), f"rule {s.freezer}")
        s = entry[0]
        settings.append(s)
        key_of.append(entry[1])
        if not rec.is_float:
            frozen.append(True)
            by.append("dtype")
        elif s.freeze is not None:
            frozen.append(s.freeze)
            by.append(entry[2])
        else:
            off = not rec.param.requires_grad
            frozen.append(off)
            by.append("model" if off else None)
    return settings, key_of, frozen, by


def _overflow(rec: ParamRecord, lr: float, wd: float, rules: Sequence[int]) -> RuleError:
    return RuleError(f"{rec.name}: lr {lr:g} / weight_decay {wd:g} overflow (rules {list(rules)} "
                     f"multiply to infinity): use smaller values")


def _by_stage(frozen: bool, events: tuple[Event, ...], plan: Plan) -> str | None:
    """Who froze a parameter whose state at step 0 is not the rules' (``norm_trainable`` kept
    it trainable, or a stage at time 0 acted)."""
    at_zero = [i for i, _ in events if plan.stages[i].when == 0]
    return f"stage {at_zero[-1]}" if frozen and at_zero else None


def _check(plan: Plan, records: Sequence[ParamRecord], touched: Sequence[tuple[int, ...]],
           groups: Sequence[Group]) -> None:
    """Every LR stays finite (layer decay included, and under the schedule); no weight decay
    for an optimizer that takes none."""
    for g in groups:
        if not math.isfinite(g.lr):  # layer decay's scale on top of finite settings
            i = g.indices[0]
            raise _overflow(records[i], g.lr, g.weight_decay, touched[i])
    check_group_lrs(plan.schedule or Schedule(), plan.base_lr, [
        (g.name, g.lr, [plan.stages[i].lr_mult for i, act in g.events if act == "thaw"])
        for g in groups])
    for name in dict.fromkeys(g.optimizer for g in groups):
        cls = plan.optimizer_class_of(name)
        if not optim.takes(cls, "weight_decay"):
            wd = sorted({g.weight_decay for g in groups if g.optimizer == name and g.weight_decay})
            if wd:
                raise OptimizerError(f"optimizer {cls.__name__} does not take weight_decay, but "
                                     f"the plan gives {wd[0]:g}")
