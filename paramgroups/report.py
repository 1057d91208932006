"""The audit: every parameter with its group, optimizer, LR, weight decay, trainable flag and
rules.

An :class:`Audit` is plain data (``parameters``, ``groups``, ``totals``, ``problems`` and
``optimizers``: who steps what). Its text forms (terminal table, Markdown,
CSV) are drawn by :mod:`paramgroups.tables`. The JSON field names are a contract: scripts and
CI checks read them; later versions add fields, never rename.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from torch import nn

from . import optim, tables
from .composite import CompositeOptimizer
from .errors import ParamgroupsError, ReportError
from .expectations import expectation_violations  # noqa: F401  (public names of this module
from .lr_table import schedule_table, schedule_times  # noqa: F401  before the text forms,
from .tables import percent  # noqa: F401  the LR table and the expectations moved out)
from .inventory import inventory
from .norms import has_running_stats, is_held
from .patterns import PatternList
from .plan import PLAN_TAG, Plan
from .timeline import Timeline

COLUMNS = ("name", "shape", "numel", "module", "group", "base_lr", "lr", "weight_decay", "trainable",
           "rules")
LAYER_COLUMNS = ("layer", "lr_scale")  # shown when layer-wise LR decay is in use
MIXED = "mixed"


@dataclass
class Audit:
    """The audit of one model against a plan or an optimizer.

    Every parameter and group row has an ``optimizer`` field (the name of the optimizer that
    steps it, ``"adamw"``, ``"muon"``; ``None`` for a parameter in no group) and ``optimizers``
    holds one record per optimizer in stepping order (``name``, ``class``, ``groups``,
    ``params``, ``numel``, ``trainable``, ``optimizer_state_bytes``, ``implementation``), so
    the JSON form has one schema whatever the plan. With more than one optimizer (a
    plan that routes parameters to Muon and AdamW, or a
    :class:`~paramgroups.composite.CompositeOptimizer`), ``implementation`` is theirs when they
    agree, else ``"mixed"``; the table, Markdown and CSV forms then gain an ``optimizer``
    column and the tables a table of the optimizers (with one optimizer they would only repeat
    its name, and stay as they always were).
    """

    model: str
    optimizer: str | None
    parameters: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    totals: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    implementation: str | None = None  # "fused", "foreach" or "for-loop": the step's code path
    lr_at: str = "step 0"  # when ``lr`` is taken; ``base_lr`` is before schedule and stages
    optimizers: list[dict[str, Any]] = field(default_factory=list)  # who steps what

    @property
    def several_optimizers(self) -> bool:
        return len(self.optimizers) > 1

    def to_dict(self) -> dict[str, Any]:
        out = {"model": self.model, "optimizer": self.optimizer,
               "implementation": self.implementation, "lr_at": self.lr_at, "optimizers": self.optimizers}
        return {**out, "parameters": self.parameters, "groups": self.groups, "totals": self.totals,
                "problems": self.problems}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def select(self, *, only: str | None = None, match: str | None = None) -> "Audit":
        """The audit restricted to ``only`` ("trainable"/"frozen") rows and/or a name pattern."""
        rows = self.parameters
        if only is not None:
            if only not in ("trainable", "frozen"):
                raise ReportError(f"only must be 'trainable' or 'frozen', got {only!r}")
            rows = [r for r in rows if r["trainable"] == (only == "trainable")]
        if match is not None:
            hit = _matching_names(PatternList(match), self.parameters)
            rows = [r for r in rows if hit(r)]
        return replace(self, parameters=rows)

    def collapse(self, depth: int) -> "Audit":
        """The audit with parameter rows merged into modules ``depth`` segments deep."""
        return replace(self, parameters=collapse(self.parameters, depth))

    def columns(self) -> tuple[str, ...]:
        """Parameter table (and CSV) columns: ``optimizer`` after ``group`` only with several
        optimizers, the layer columns only when some parameter has a layer id."""
        cols = COLUMNS
        if self.several_optimizers:
            at = cols.index("group") + 1
            cols = (*cols[:at], "optimizer", *cols[at:])
        layered = any(r.get("layer") is not None for r in self.parameters)
        return cols + LAYER_COLUMNS if layered else cols

    def group_columns(self) -> tuple[str, ...]:
        """Group table columns: ``optimizer`` after ``name`` only with several optimizers."""
        cols = tables.GROUP_COLUMNS
        if self.several_optimizers:
            at = cols.index("name") + 1
            cols = (*cols[:at], "optimizer", *cols[at:])
        return cols

    def to_table(self, tablefmt: str = "simple", width: int | None = tables.TABLE_WIDTH) -> str:
        """Parameters, groups, the optimizers (when several), totals and problems, as tabulate
        tables whose name columns wrap to fit ``width`` characters (``None``: never wrap)."""
        return tables.table(self, tablefmt, width)

    def to_markdown(self) -> str:
        return self.to_table("github")

    def to_csv(self) -> str:
        return tables.csv_text(self)


def _matching_names(pats: PatternList, rows: list[dict[str, Any]]) -> Callable[[dict[str, Any]], bool]:
    """Whether a row is selected: its name, an alias or a module above it matches. Patterns
    are tried on the names of all ``rows`` at once (a range counting from the end counts there)."""
    def candidates(row: dict[str, Any]) -> set[str]:
        names = [row["name"], *row.get("aliases", [])]
        return {".".join(n.split(".")[:d]) for n in names for d in range(1, n.count(".") + 2)}

    every = set().union(*map(candidates, rows))
    include = every if pats.everything else pats.hits(every)
    exclude = pats.hits(every, "exclude")
    return lambda row: bool((names := candidates(row)) & include) and not names & exclude


def collapse(rows: list[dict[str, Any]], depth: int) -> list[dict[str, Any]]:
    """Merge rows to modules ``depth`` segments deep; differing values become ``mixed``."""
    if depth < 1:
        raise ReportError(f"depth must be >= 1, got {depth}")
    merged: dict[str, dict[str, Any]] = {}
    for r in rows:
        key = ".".join(r["name"].split(".")[:depth])
        m = merged.get(key)
        if m is None:
            merged[key] = {**r, "name": key, "aliases": [], "rules": list(r["rules"])}
            continue
        m["numel"] += r["numel"]
        m["shape"] = MIXED  # one shape cannot describe several tensors
        m["rules"] = sorted(set(m["rules"]) | set(r["rules"]))
        m["kinds"] = sorted(set(m["kinds"]) | set(r["kinds"]))
        if r["stats"] is not None and m["stats"] != r["stats"]:  # layers without statistics don't vote
            m["stats"] = r["stats"] if m["stats"] is None else MIXED
        for col in ("dtype", "module", "group", "optimizer", "base_lr", "lr", "weight_decay", "trainable",
                    "frozen_by", "layer", "lr_scale"):
            if col in r and m[col] != r[col]:
                m[col] = MIXED
    return list(merged.values())


def audit(model: nn.Module, plan: Plan | None = None,
          optimizer: torch.optim.Optimizer | None = None, *, name: str | None = None,
          strict: bool = False, at: float | None = None,
          steps_per_epoch: int | None = None) -> "Audit":
    """Audit ``model`` against a plan, or against an optimizer someone built by hand.

    With a plan, groups and settings come from resolving it (rules that match nothing are
    reported as problems unless ``strict``). With an optimizer, they come from its param groups,
    and the audit reports trainable parameters in no group, parameters in several groups and
    frozen parameters that sit in a group. ``at`` shows the LRs at that epoch of the plan's
    schedule (at its first step, with ``steps_per_epoch`` for per-iteration schedules).
    """
    model_name = name or type(model).__name__
    if optimizer is not None:
        return _audit_optimizer(model, optimizer, plan, model_name)
    plan = plan or Plan()
    res = plan.resolve(model, strict=strict)
    problems = list(res.problems)
    try:
        plan.build_optimizer(res)
    except ParamgroupsError as exc:  # a plan whose optimizer cannot be built is not clean
        if str(exc) not in problems:
            problems.append(str(exc))
    timeline = Timeline.of(plan, res, steps_per_epoch)
    step = 0 if at is None else timeline.step_of(at)
    state = timeline.state(step)
    frozen = [state[a.group].frozen if a.group is not None else True for a in res.assignments]
    held = _held_norms(res, frozen) if plan.bn == "freeze" else set()
    f = timeline.factor(step)
    names = res.optimizers or (plan.default_optimizer,)
    several = len(names) > 1
    params = [_param_row(a.record, a.group, a.lr, state[a.group].lr if a.group is not None else a.lr * f,
                         a.weight_decay, not fr, a.rules, a.layer, a.lr_scale, _stats(a.record.owner, held), by,
                         a.optimizer if a.group is not None else None)
              for a, fr, by in zip(res.assignments, frozen, timeline.frozen_by(step))]
    groups = [_group_row(g.index, g.name, [a.record for a in g.members], g.lr, state[g.index].lr,
                         g.weight_decay, g.options, g.optimizer) for g in res.groups]
    found = []
    for name in names:  # as plan.build_optimizer builds them
        cls, options = plan.optimizer_class_of(name), plan.optimizer_defaults(name)
        mine = [g for g in res.groups if g.optimizer == name]
        nbytes = _state_bytes(cls, [([a.record for a in g.members if not state[g.index].frozen],
                                     {**options, **g.options}) for g in mine])
        records = [res.records[i] for g in mine for i in g.indices] if several else res.records
        chosen = optim.implementation(cls, options, records)
        found.append((name, cls, nbytes, _path({**options, **chosen}, cls)))
    return _finish(model_name, "CompositeOptimizer" if several else found[0][1].__name__,
                   params, groups, problems, found, "step 0" if at is None else f"epoch {at:g}")


def _finish(model_name: str, optimizer: str, params: list[dict[str, Any]], groups: list[dict[str, Any]],
            problems: list[str], found: list[tuple[Any, type, int | None, str]], lr_at: str = "step 0"
            ) -> Audit:
    """The audit from its rows and, per optimizer, (name, class, state bytes, implementation)."""
    states = [nbytes for _, _, nbytes, _ in found]
    paths = {path for *_, path in found}
    summary = []
    for name, cls, nbytes, path in found:
        mine = [r for r in params if r["optimizer"] == name]
        summary.append({"name": name, "class": cls.__name__,
                        "groups": sum(g["optimizer"] == name for g in groups), "params": len(mine),
                        "numel": sum(r["numel"] for r in mine),
                        "trainable": sum(r["numel"] for r in mine if r["trainable"]),
                        "optimizer_state_bytes": nbytes, "implementation": path})
    return Audit(model_name, optimizer, params, groups,
                 _totals(params, None if None in states else sum(states)), problems,
                 paths.pop() if len(paths) == 1 else MIXED, lr_at, summary)


# torch.optim classes whose only step is a loop over the parameters (no foreach/fused switch)
_LOOP_ONLY = frozenset({"Muon"})


def _path(options: dict[str, Any], cls: type) -> str:
    """Which step implementation torch runs for these constructor options."""
    if options.get("fused"):
        return "fused"
    if options.get("foreach"):
        return "foreach"
    if "foreach" in optim.accepted_options(cls)[0] or optim.torch_base(cls) in _LOOP_ONLY:
        return "for-loop"
    return "default"


def _held_norms(res, frozen: list[bool]) -> set[int]:
    """ids of norm modules with running statistics whose parameters are all frozen."""
    by_owner: dict[int, list[bool]] = {}
    for a, fr in zip(res.assignments, frozen):
        if has_running_stats(a.record.owner):
            by_owner.setdefault(id(a.record.owner), []).append(fr)
    return {owner for owner, flags in by_owner.items() if all(flags)}


def _stats(owner: nn.Module, held: set[int]) -> str | None:
    if not has_running_stats(owner):
        return None
    return "frozen" if id(owner) in held else "updating"


def _audit_optimizer(model: nn.Module, opt: torch.optim.Optimizer, plan: Plan | None,
                     model_name: str) -> Audit:
    records = inventory(model)
    where: dict[int, list[int]] = {}
    for gi, g in enumerate(opt.param_groups):
        for p in g["params"]:
            where.setdefault(id(p), []).append(gi)
    rules_of: dict[int, list[int]] = {}
    if plan is not None:
        res = plan.resolve(model, strict=False)
        rules_of = {a.record.index: a.rules for a in res.assignments}
    composite = isinstance(opt, CompositeOptimizer)
    inner = opt.optimizers if composite else {optim.optimizer_name(type(opt)): opt}
    params, problems = [], []
    # A plan keeps frozen parameters in their groups on purpose (stages thaw them later).
    from_plan = plan is not None or getattr(opt, PLAN_TAG, None) is not None
    for rec in records:
        gis = where.get(id(rec.param), [])
        g = opt.param_groups[gis[0]] if gis else None
        trainable = rec.param.requires_grad and rec.is_float
        params.append(_param_row(rec, gis[0] if gis else None, g and g.get("initial_lr", g.get("lr")),
                                 g and g.get("lr"),
                                 g and g.get("weight_decay"), trainable,
                                 rules_of.get(rec.index, []), None, g and g.get("lr_scale"),
                                 _live_stats(rec.owner),
                                 None if trainable else "model" if rec.is_float else "dtype",
                                 g and (g["optimizer"] if composite else next(iter(inner)))))
        if len(gis) > 1:
            problems.append(f"{rec.name} is in {len(gis)} param groups ({', '.join(map(str, gis))})")
        elif not gis and trainable:
            problems.append(f"{rec.name} is trainable but in no param group: it will never update")
        elif gis and not trainable and not from_plan:
            problems.append(f"{rec.name} is frozen (requires_grad=False) but sits in group {gis[0]}")
    known = {id(r.param) for r in records}
    for gi, g in enumerate(opt.param_groups):
        stray = sum(1 for p in g["params"] if id(p) not in known)
        if stray:
            problems.append(f"group {gi} holds {stray} tensor(s) that are not parameters of the model")
    by_id = {id(r.param): r for r in records}
    groups, state_input = [], {name: [] for name in inner}
    for gi, g in enumerate(opt.param_groups):
        name = g["optimizer"] if composite else next(iter(inner))
        recs = [by_id[id(p)] for p in g["params"] if id(p) in by_id]
        options = {k: v for k, v in g.items() if k not in ("params", "name", "lr", "weight_decay", "optimizer")
                   and inner[name].defaults.get(k, _MISSING) != v}
        groups.append(_group_row(gi, g.get("name", f"group {gi}"), recs, g.get("initial_lr", g.get("lr")),
                                 g.get("lr"), g.get("weight_decay"), options, name))
        state_input[name].append(([r for r in recs if r.param.requires_grad], dict(g)))
    found = []
    for name, o in inner.items():
        options = dict(o.defaults)
        if options.get("foreach") is None and not options.get("fused"):  # torch picks by device
            options["foreach"] = any(r.device.type == "cuda" for r in records)
        found.append((name, type(o), _state_bytes(type(o), state_input[name]), _path(options, type(o))))
    return _finish(model_name, type(opt).__name__, params, groups, problems, found)


_MISSING = object()


def _live_stats(owner: nn.Module) -> str | None:
    """Whether a norm layer's statistics update in train mode, as the model is now."""
    if not has_running_stats(owner):
        return None
    return "frozen" if is_held(owner) else "updating"


def _param_row(rec, group, base_lr, lr, wd, trainable, rules, layer, lr_scale, stats, frozen_by,
               optimizer) -> dict[str, Any]:
    return {"name": rec.name, "aliases": list(rec.aliases), "shape": list(rec.shape),
            "numel": rec.numel, "dtype": str(rec.dtype).replace("torch.", ""),
            "module": rec.module_class, "kinds": sorted(rec.kinds), "group": group,
            "optimizer": optimizer, "base_lr": _num(base_lr), "lr": _num(lr), "weight_decay": _num(wd),
            "trainable": bool(trainable),
            "frozen_by": frozen_by, "rules": list(rules), "layer": layer,
            "lr_scale": _num(lr_scale), "stats": stats}


def _group_row(index, name, recs, base_lr, lr, wd, options, optimizer) -> dict[str, Any]:
    return {"index": index, "name": name, "optimizer": optimizer,
            "params": len(recs),
            "numel": sum(r.numel for r in recs), "base_lr": _num(base_lr), "lr": _num(lr), "weight_decay": _num(wd),
            "options": {k: _jsonable(v) for k, v in options.items()}}


def _num(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return float(x.item()) if x.numel() == 1 else None
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(i) for i in v]
    if isinstance(v, torch.Tensor):
        return _num(v)
    return v if isinstance(v, (str, int, float, bool, list, type(None))) else repr(v)


def _state_bytes(cls: type, groups: list[tuple[list, dict[str, Any]]]) -> int | None:
    total = 0
    for recs, options in groups:
        mult = optim.state_multiplier(cls, options)
        if mult is None:
            return None
        total += mult * sum(r.numel * r.param.element_size() for r in recs)
    return total


def _totals(params: list[dict[str, Any]], state: int | None) -> dict[str, Any]:
    numel = sum(p["numel"] for p in params)
    trainable = sum(p["numel"] for p in params if p["trainable"])
    return {"params": len(params), "numel": numel, "trainable": trainable,
            "frozen": numel - trainable, "optimizer_state_bytes": state}
