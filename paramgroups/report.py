"""The audit: every parameter with its group, LR, weight decay, trainable flag and rules.

An :class:`Audit` is plain data (``parameters``, ``groups``, ``totals``, ``problems``) with
renderers for a terminal table, JSON, CSV and Markdown. The JSON field names are a contract:
scripts and CI checks read them; later versions add fields, never rename.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import optim
from .errors import ParamgroupsError, ReportError
from .norms import has_running_stats, is_held
from .inventory import inventory
from .patterns import PatternList
from .plan import PLAN_TAG, Plan
from .timeline import Timeline

COLUMNS = ("name", "shape", "numel", "module", "group", "base_lr", "lr", "weight_decay", "trainable",
           "rules")
WIDTHS = {"name": 48, "module": 20, "rules": 14, "options": 28}  # wrap columns past these widths
TABLE_WIDTH = 120  # a terminal's width: tables wrap their name column to fit
LAYER_COLUMNS = ("layer", "lr_scale")  # shown when layer-wise LR decay is in use
MIXED = "mixed"


@dataclass
class Audit:
    """The audit of one model against a plan or an optimizer."""

    model: str
    optimizer: str | None
    parameters: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    totals: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    implementation: str | None = None  # "fused", "foreach" or "for-loop": the step's code path
    lr_at: str = "step 0"  # when ``lr`` is taken; ``base_lr`` is before schedule and stages

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer,
                "implementation": self.implementation, "lr_at": self.lr_at,
                "parameters": self.parameters, "groups": self.groups, "totals": self.totals,
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
        """Table columns: the layer columns only when some parameter has a layer id."""
        layered = any(r.get("layer") is not None for r in self.parameters)
        return COLUMNS + LAYER_COLUMNS if layered else COLUMNS

    def to_table(self, tablefmt: str = "simple", width: int | None = TABLE_WIDTH) -> str:
        """Parameters, then groups, then totals and problems, as tabulate tables whose name
        columns wrap to fit ``width`` characters (``None``: never wrap)."""
        from tabulate import tabulate

        cols = self.columns()
        params = [[_rich_cell(r, c) for c in cols] for r in self.parameters]
        group_cols = ("index", "name", "params", "numel", "base_lr", "lr", "weight_decay", "options")
        groups = [[_rich_cell(g, c) for c in group_cols] for g in self.groups]
        parts = [_fit(params, self._headers(cols), tablefmt, [WIDTHS.get(c) for c in cols], 0, width),
                 _fit(groups, self._headers(("group", *group_cols[1:])), tablefmt,
                      [WIDTHS.get(c) for c in group_cols], 1, width),
                 tabulate(self.totals_rows(), tablefmt=tablefmt, disable_numparse=True)]
        if self.problems:
            parts.append("\n".join(f"problem: {p}" for p in self.problems))
        return "\n\n".join(parts)

    def _headers(self, cols: Sequence[str]) -> list[str]:
        """Column titles; the two LR columns say which LR they show."""
        titles = {"base_lr": "base lr", "lr": f"lr@{self.lr_at.replace(' ', '')}", "weight_decay": "wd"}
        return [titles.get(c, c) for c in cols]

    def totals_rows(self) -> list[list[str]]:
        t = self.totals
        pct = (lambda n: percent(n, t["numel"])) if t["numel"] else (lambda n: "-")
        state = t["optimizer_state_bytes"]
        return [["parameters", f"{t['params']:,}"], ["numel", f"{t['numel']:,}"],
                ["trainable", f"{t['trainable']:,} ({pct(t['trainable'])})"],
                ["frozen", f"{t['frozen']:,} ({pct(t['frozen'])})"],
                ["optimizer state", "unknown" if state is None else _bytes(state)],
                ["optimizer step", f"{self.optimizer} ({self.implementation})"]]

    def to_markdown(self) -> str:
        return self.to_table("github")

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        cols = self.columns()
        writer.writerow(cols)
        for r in self.parameters:
            writer.writerow([_cell(r[c], c) for c in cols])
        return buf.getvalue()


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


def _fit(rows: list[list[str]], headers: list[str], tablefmt: str, widths: list[int | None],
         wrap: int, limit: int | None) -> str:
    """A tabulate table whose column ``wrap`` (the names) wraps at dots and spaces so the table
    stays within ``limit`` characters, down to 16 characters for that column (``None``: no
    limit, no wrapping)."""
    from tabulate import tabulate

    widths = list(widths) if limit is not None else [None] * len(widths)
    cap, widths[wrap] = widths[wrap], None  # that column is wrapped here, at name boundaries

    def render(width: int | None) -> str:
        cells = rows if width is None else [[*r[:wrap], _wrap_name(r[wrap], width), *r[wrap + 1:]]
                                            for r in rows]
        return tabulate(cells, headers=headers, tablefmt=tablefmt, disable_numparse=True,
                        maxcolwidths=widths)

    width = cap
    for _ in range(3):  # wrapping at boundaries may land short of the width asked for
        text = render(width)
        over = max(map(len, text.splitlines()), default=0) - (limit or 0)
        if limit is None or not rows or over <= 0:
            return text
        now = max(len(line) for r in rows for line in
                  (_wrap_name(r[wrap], width) if width else str(r[wrap])).splitlines())
        if now <= 16:
            return text
        width = max(16, now - over)
    return render(width)


def _wrap_name(text: str, width: int) -> str:
    """``text`` in lines of at most ``width``, broken after dots, commas and spaces (inside a
    segment only when one segment alone is wider)."""
    lines, line = [], ""
    for piece in re.split(r"(?<=[., ])", text):
        if line and len(line) + len(piece) > width:
            lines.append(line)
            line = ""
        while len(piece) > width:
            lines.append(piece[:width])
            piece = piece[width:]
        line += piece
    lines.append(line)
    return "\n".join(x.rstrip() for x in lines if x.strip())


def percent(part: int, whole: int) -> str:
    """``part`` of ``whole`` to one decimal, never rounding a non-zero share to 0.0% or a
    partial one to 100.0%."""
    value = 100.0 * part / whole
    if 0 < value < 0.05:
        return "<0.1%"
    if 99.95 <= value < 100:
        return ">99.9%"
    return f"{value:.1f}%"


def _rich_cell(row: dict[str, Any], column: str) -> str:
    """A table cell: counts with thousands separators, tied names show their other names,
    frozen rows say who froze them."""
    value = row[column]
    if column in ("numel", "params") and isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    text = _cell(value, column)
    if column == "name" and row.get("aliases"):
        return f"{text} (= {', '.join(row['aliases'])})"
    if column == "trainable" and row["trainable"] is False and row.get("frozen_by"):
        return f"{text} ({row['frozen_by']})"
    return text


def _cell(value: Any, column: str = "") -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if column == "shape" and isinstance(value, list):
        return "x".join(map(str, value)) or "scalar"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if value is None:
        return "-"
    return str(value)


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,} B" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


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
        for col in ("dtype", "module", "group", "base_lr", "lr", "weight_decay", "trainable", "frozen_by",
                    "layer", "lr_scale"):
            if m[col] != r[col]:
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
    cls = plan.optimizer_class
    timeline = Timeline.of(plan, res, steps_per_epoch)
    step = 0 if at is None else timeline.step_of(at)
    state = timeline.state(step)
    frozen = [state[a.group].frozen if a.group is not None else True for a in res.assignments]
    held = _held_norms(res, frozen) if plan.bn == "freeze" else set()
    f = timeline.factor(step)
    params = [_param_row(a.record, a.group, a.lr, state[a.group].lr if a.group is not None else a.lr * f,
                         a.weight_decay, not fr, a.rules, a.layer, a.lr_scale, _stats(a.record.owner, held), by)
              for a, fr, by in zip(res.assignments, frozen, timeline.frozen_by(step))]
    groups = [_group_row(g.index, g.name, [a.record for a in g.members], g.lr, state[g.index].lr,
                         g.weight_decay, g.options) for g in res.groups]
    merged = [dict(plan.optimizer_options, **g.options) for g in res.groups]
    nbytes = _state_bytes(cls, [([a.record for a in g.members if not state[g.index].frozen], m)
                                for g, m in zip(res.groups, merged)])
    chosen = optim.implementation(cls, plan.optimizer_options, res.records)
    path = _path({**plan.optimizer_options, **chosen}, cls)
    return Audit(model_name, cls.__name__, params, groups, _totals(params, nbytes), problems, path,
                 "step 0" if at is None else f"epoch {at:g}")


def _path(options: dict[str, Any], cls: type) -> str:
    """Which step implementation torch runs for these constructor options."""
    if options.get("fused"):
        return "fused"
    if options.get("foreach"):
        return "foreach"
    return "for-loop" if "foreach" in optim.accepted_options(cls)[0] else "default"


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
                                 None if trainable else "model" if rec.is_float else "dtype"))
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
    groups, state_input = [], []
    for gi, g in enumerate(opt.param_groups):
        recs = [by_id[id(p)] for p in g["params"] if id(p) in by_id]
        options = {k: v for k, v in g.items() if k not in ("params", "name", "lr", "weight_decay")
                   and opt.defaults.get(k, _MISSING) != v}
        groups.append(_group_row(gi, g.get("name", f"group {gi}"), recs, g.get("initial_lr", g.get("lr")),
                                 g.get("lr"),
                                 g.get("weight_decay"), options))
        state_input.append(([r for r in recs if r.param.requires_grad], dict(g)))
    state = _state_bytes(type(opt), state_input)
    options = dict(opt.defaults)
    if options.get("foreach") is None and not options.get("fused"):  # torch picks by device
        options["foreach"] = any(r.device.type == "cuda" for r in records)
    return Audit(model_name, type(opt).__name__, params, groups, _totals(params, state), problems,
                 _path(options, type(opt)))


_MISSING = object()


def _live_stats(owner: nn.Module) -> str | None:
    """Whether a norm layer's statistics update in train mode, as the model is now."""
    if not has_running_stats(owner):
        return None
    return "frozen" if is_held(owner) else "updating"


def _param_row(rec, group, base_lr, lr, wd, trainable, rules, layer, lr_scale, stats, frozen_by
               ) -> dict[str, Any]:
    return {"name": rec.name, "aliases": list(rec.aliases), "shape": list(rec.shape),
            "numel": rec.numel, "dtype": str(rec.dtype).replace("torch.", ""),
            "module": rec.module_class, "kinds": sorted(rec.kinds), "group": group,
            "base_lr": _num(base_lr), "lr": _num(lr), "weight_decay": _num(wd), "trainable": bool(trainable),
            "frozen_by": frozen_by, "rules": list(rules), "layer": layer,
            "lr_scale": _num(lr_scale), "stats": stats}


def _group_row(index, name, recs, base_lr, lr, wd, options) -> dict[str, Any]:
    return {"index": index, "name": name, "params": len(recs),
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


def expectation_violations(report: Audit, pattern: str, trainable: bool) -> list[str]:
    """One line per module (or parameter) that ``pattern`` selects and that is not
    ``trainable`` as expected: the largest modules whose selected parameters all break it."""
    rows = report.select(match=pattern).parameters
    if not rows:
        return [f"expectation {pattern!r} selects no parameter"]
    bad = {r["name"] for r in rows if r["trainable"] != trainable}
    under: dict[str, list[str]] = {}  # module name -> the selected parameters below it
    for r in rows:
        parts = r["name"].split(".")
        for depth in range(1, len(parts)):
            under.setdefault(".".join(parts[:depth]), []).append(r["name"])
    want, wrong = ("trainable", "frozen") if trainable else ("frozen", "trainable")
    out, done = [], set()
    for r in rows:
        name = r["name"]
        if name not in bad or name in done:
            continue
        parts = name.split(".")
        top = next((".".join(parts[:d]) for d in range(1, len(parts))
                    if all(n in bad for n in under[".".join(parts[:d])])), None)
        if top is None:
            out.append(f"{name} is {wrong}, expected {want} (by {pattern!r})")
            done.add(name)
            continue
        members = under[top]
        done.update(members)
        count = f"{len(members):,} parameter{'s' if len(members) > 1 else ''}"
        out.append(f"{top} ({count}) is {wrong}, expected {want} (by {pattern!r})")
    return out


def schedule_table(plan: Plan, model: nn.Module | None, epochs: int,
                   steps_per_epoch: int | None = None) -> tuple[list[str], list[list[Any]]]:
    """The LR of every group at the first step of every epoch and at stage boundaries.

    Returns ``(headers, rows)``; a frozen group's LR is ``None``. Without a model there are no
    groups: the one column is the plan's base LR. A plateau schedule is shown without
    reductions (they depend on metrics).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ReportError(f"epochs must be a whole number >= 1, got {epochs!r}")
    timeline = Timeline.of(plan, plan.resolve(model) if model is not None else None, steps_per_epoch)
    rows = [[t, *timeline.lrs(timeline.step_of(t))] for t in schedule_times(plan, epochs, steps_per_epoch)]
    return ["epoch", *(g.name for g in timeline.groups)], rows


def schedule_times(plan: Plan, epochs: int, steps_per_epoch: int | None = None) -> list[float]:
    """The times :func:`schedule_table` shows: every epoch below ``epochs`` and every stage
    boundary before it (a ``step=`` stage only with ``steps_per_epoch``)."""
    times = set(range(epochs))
    for st in plan.stages:
        when = st.epoch if st.epoch is not None else (st.step / steps_per_epoch if steps_per_epoch else None)
        if when is not None and when < epochs:
            times.add(when)
    return sorted(times)
