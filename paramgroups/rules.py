"""Rules and the cascade that resolves them into one assignment per parameter.

Rules apply in order. Every rule that selects a parameter sets the fields it names; a later
rule overrides an earlier one field by field, like CSS. The result records, per parameter,
the final settings and the rules that touched it, so the audit can say why.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Sequence

from .errors import ParamgroupsError, RuleError, UnmatchedRuleError
from .inventory import KINDS, ParamRecord, module_names
from .patterns import NameIndex, PatternList
from .values import describe, is_finite_number

SETTINGS = ("lr", "lr_mult", "weight_decay", "wd_mult", "freeze", "group")
RULE_FIELDS = ("match", "modules", "within", "kinds", "optional", *SETTINGS)


def _as_list(value: Any, what: str) -> list[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise RuleError(f"{what} must be a string or a list of strings, got {value!r}")
    return list(items)


def check_number(name: str, value: Any, error: type[ParamgroupsError] = RuleError) -> float | None:
    """``None``, or a finite non-negative number (not a bool); else ``error`` saying so."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{name} must be a number, got {describe(value)}")
    if not is_finite_number(value) or value < 0:
        raise error(f"{name} must be a finite number >= 0, got {describe(value)}")
    return value


@dataclass
class Rule:
    """Select parameters by name, owning module class and kind, and set what they get.

    ``match`` is a pattern or a list of patterns (see DESIGN.md); ``modules`` filters by the
    owning module's class name (globs, base classes count); ``kinds`` by kind (``weight``,
    ``bias``, ``norm``, ``embedding``, ``ndim<=1``, and for PEFT models the active adapter's
    ``lora_A``, ``lora_B`` and ``adapter`` (any PEFT method's); any of them); ``within`` by the
    class of any module above the parameter, its owner included (globs, base classes and mixins
    count: ``LlamaAttention``, ``*DecoderLayer``, ``LoraLayer``). Settings left ``None`` are
    not touched by this rule. Extra keyword arguments are per-group optimizer options.
    """

    match: str | list[str] = "**"
    modules: str | list[str] | None = None
    within: str | list[str] | None = None
    kinds: str | list[str] | None = None
    optional: bool = False
    lr: float | None = None
    lr_mult: float | None = None
    weight_decay: float | None = None
    wd_mult: float | None = None
    freeze: bool | None = None
    group: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    source: str | None = field(default=None, compare=False, repr=False)
    line: int | None = field(default=None, compare=False, repr=False)

    def __init__(self, match: str | Sequence[str] = "**", *, modules: str | Sequence[str] | None = None,
                 within: str | Sequence[str] | None = None,
                 kinds: str | Sequence[str] | None = None, optional: bool = False,
                 lr: float | None = None, lr_mult: float | None = None,
                 weight_decay: float | None = None, wd_mult: float | None = None,
                 freeze: bool | None = None, group: str | None = None,
                 source: str | None = None, line: int | None = None, **optimizer_options: Any):
        self.match = match if isinstance(match, str) else list(match) if isinstance(match, (list, tuple)) else match
        self.patterns = PatternList(self.match)
        self.modules = _as_list(modules, "modules")
        self.within = _as_list(within, "within")
        if self.within == []:
            raise RuleError("within must name at least one class (a class name or glob: LlamaAttention)")
        self.kinds = _as_list(kinds, "kinds")
        for kind in self.kinds or ():
            if kind not in KINDS:
                close = difflib.get_close_matches(kind, KINDS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (kinds: {', '.join(KINDS)})"
                raise RuleError(f"unknown kind {kind!r}{hint}")
        if not isinstance(optional, bool):
            raise RuleError(f"optional must be true or false, got {optional!r}")
        if freeze is not None and not isinstance(freeze, bool):
            raise RuleError(f"freeze must be true or false, got {freeze!r}")
        if group is not None and not isinstance(group, str):
            raise RuleError(f"group must be a string, got {group!r}")
        self.optional = optional
        self.lr = check_number("lr", lr)
        self.lr_mult = check_number("lr_mult", lr_mult)
        self.weight_decay = check_number("weight_decay", weight_decay)
        self.wd_mult = check_number("wd_mult", wd_mult)
        self.freeze = freeze
        self.group = group
        self.options = dict(optimizer_options)
        self.source = source
        self.line = line

    def settings(self) -> dict[str, Any]:
        """The fields this rule sets (settings and optimizer options), without the ``None`` ones."""
        out = {k: getattr(self, k) for k in SETTINGS if getattr(self, k) is not None}
        out.update(self.options)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The plan-file form of this rule: only the fields that differ from the defaults."""
        out: dict[str, Any] = {"match": self.match}
        for key in ("modules", "within", "kinds"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value[0] if len(value) == 1 else list(value)
        if self.optional:
            out["optional"] = True
        out.update(self.settings())
        return out

    def where(self, index: int) -> str:
        """``file:line: rule N`` (or ``rule N``) for error messages."""
        loc = f"{self.source}:{self.line}: " if self.source and self.line else ""
        return f"{loc}rule {index}"

    def select(self, records: list[ParamRecord], covers: dict[str, list[int]],
               index: NameIndex) -> list[int]:
        """Indices of the records this rule selects, in model order."""
        if self.patterns.everything:
            chosen = set(range(len(records)))
        else:
            chosen = _covered(covers, self.patterns.select(index))
        if self.patterns.exclude:
            chosen -= _covered(covers, self.patterns.select(index, "exclude"))
        out = []
        inside: dict[frozenset[str], bool] = {}  # records share a handful of enclosing sets
        for idx in sorted(chosen):
            rec = records[idx]
            if self.modules is not None and not any(
                fnmatchcase(cls, pat) for cls in rec.module_classes for pat in self.modules
            ):
                continue
            if self.within is not None:
                if rec.enclosing not in inside:
                    inside[rec.enclosing] = any(fnmatchcase(c, p) for c in rec.enclosing for p in self.within)
                if not inside[rec.enclosing]:
                    continue
            if self.kinds is not None and not rec.kinds.intersection(self.kinds):
                continue
            out.append(idx)
        return out


def _covered(covers: dict[str, list[int]], names: set[str]) -> set[int]:
    found: set[int] = set()
    for name in names:
        found.update(covers[name])
    return found


@dataclass
class Assignment:
    """The resolved settings of one parameter and the rules that produced them."""

    record: ParamRecord
    lr: float
    weight_decay: float
    frozen: bool
    label: str | None
    options: dict[str, Any]
    rules: list[int]
    group: int | None = None  # index of its param group, set by grouping
    layer: int | None = None  # layer id under layer-wise LR decay
    lr_scale: float = 1.0     # the layer-decay scale already folded into ``lr``
    events: tuple = ()        # (stage index, "thaw" | "freeze") that change its frozen state
    frozen_by: str | None = None  # who set the state at step 0: "rule N", "model" or "dtype"


@dataclass
class Resolution:
    """The outcome of resolving rules against a model's inventory."""

    records: list[ParamRecord]
    assignments: list[Assignment]
    unmatched: list[int]
    problems: list[str]
    groups: list = field(default_factory=list)  # list[groups.Group], filled by the plan
    covers: dict[str, list[int]] = field(default_factory=dict, repr=False)
    index: NameIndex | None = field(default=None, repr=False)
    conflicts: list[str] = field(default_factory=list)  # tied names given different values

    def check_conflicts(self) -> None:
        """Raise on rules that disagree about one tied tensor: no optimizer is built on a coin flip."""
        if self.conflicts:
            raise RuleError(self.conflicts[0])


def closest_hint(pattern: str, covers: dict[str, list[int]], n: int = 3) -> str:
    """``; closest names: ...`` — the real names a pattern was probably meant to say, or ""."""
    text = pattern.lstrip("!")
    text = text[3:] if text.startswith("re:") else text
    close = difflib.get_close_matches(text, list(covers), n=n, cutoff=0.4)
    return f"; closest names: {', '.join(close)}" if close else ""


def name_table(records: list[ParamRecord]) -> tuple[dict[str, list[int]], NameIndex]:
    """The names patterns are tried on (with the records each covers) and their sorted index,
    built once per model and shared by rules, stages and layer lists."""
    covers = module_names(records)
    return covers, NameIndex(covers)


def resolve(records: list[ParamRecord], rules: Sequence[Rule], *, base_lr: float,
            base_weight_decay: float, strict: bool = True,
            layers: list[int] | None = None, scales: list[float] | None = None,
            covers: dict[str, list[int]] | None = None, index: NameIndex | None = None) -> Resolution:
    """Apply ``rules`` in order to ``records`` and return one assignment per record.

    ``layers``/``scales`` (one per record) apply layer-wise LR decay on top of the cascade;
    ``covers``/``index`` (from :func:`name_table`) are built here unless the caller has them.

    With ``strict``, a rule that matches nothing and is not optional raises
    :class:`UnmatchedRuleError`; otherwise it is reported in ``Resolution.problems``.
    """
    if covers is None or index is None:
        covers, index = name_table(records)
    fields: list[dict[str, Any]] = [{} for _ in records]
    touched: list[list[int]] = [[] for _ in records]
    freezer: dict[int, int] = {}  # record -> the last rule that set its ``freeze``
    unmatched, problems = [], []
    ties = TieWatch(records, index)
    for i, rule in enumerate(rules):
        selected = rule.select(records, covers, index)
        ties.observe(i, rule, selected)
        if not selected and not rule.optional:
            hint = closest_hint(str(rule.patterns.texts[0]), covers)
            msg = (f"{rule.where(i)}: {_describe(rule)} matches no parameter{hint} "
                   f"(mark the rule optional: true if that is expected)")
            if strict:
                raise UnmatchedRuleError(msg)
            unmatched.append(i)
            problems.append(msg)
        settings = rule.settings()
        for idx in selected:
            touched[idx].append(i)
            fields[idx].update(settings)
            if rule.freeze is not None:
                freezer[idx] = i
    conflicts = ties.conflicts(rules)
    problems.extend(conflicts)
    assignments = []
    for i, (rec, f, rules_hit) in enumerate(zip(records, fields, touched)):
        scale = scales[i] if scales is not None else 1.0
        lr = f.get("lr", base_lr) * f.get("lr_mult", 1.0) * scale
        wd = f.get("weight_decay", base_weight_decay) * f.get("wd_mult", 1.0)
        options = {k: v for k, v in f.items() if k not in SETTINGS}
        frozen, by = _start_state(rec, f.get("freeze"), freezer.get(i))
        if not (math.isfinite(lr) and math.isfinite(wd)):
            raise RuleError(f"{rec.name}: lr {lr:g} / weight_decay {wd:g} overflow (rules "
                            f"{rules_hit} multiply to infinity): use smaller values")
        assignments.append(Assignment(rec, lr, wd, frozen, f.get("group"), options, rules_hit,
                                      layer=layers[i] if layers is not None else None,
                                      lr_scale=scale, frozen_by=by))
    return Resolution(records, assignments, unmatched, problems, covers=covers, index=index,
                      conflicts=conflicts)


def _start_state(rec: ParamRecord, freeze: bool | None, rule: int | None) -> tuple[bool, str | None]:
    """(frozen, who decided) before any stage: a rule's ``freeze`` if one set it, else the
    model's own ``requires_grad`` (a plan changes only what it says); integers never train."""
    if not rec.is_float:
        return True, "dtype"
    if freeze is not None:
        return freeze, f"rule {rule}"
    frozen = not rec.param.requires_grad
    return frozen, "model" if frozen else None


class TieWatch:
    """Finds rules that give different values to different names of one tied tensor.

    Tied weights (GPT-2's ``transformer.wte.weight`` is ``lm_head.weight``) are one tensor with
    one setting; two rules that each name only one alias and disagree would otherwise resolve by
    rule order, silently. Rules that select nested sets of the names (``**`` then ``lm_head``)
    are an ordinary cascade.
    """

    def __init__(self, records: list[ParamRecord], index: NameIndex):
        self.records = records
        self.index = index
        self.tied = {r.index for r in records if r.aliases}
        self.seen: dict[int, list[tuple[int, frozenset[str]]]] = {}  # record -> (rule, names)

    def observe(self, rule_index: int, rule: Rule, selected: list[int]) -> None:
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

    def conflicts(self, rules: Sequence[Rule]) -> list[str]:
        out = []
        for idx, hits in self.seen.items():
            for later, (j, names_j) in enumerate(hits):
                for i, names_i in hits[:later]:
                    if names_i <= names_j or names_j <= names_i:
                        continue
                    clash = _clashing(rules[i].settings(), rules[j].settings())
                    if clash:
                        out.append(_tie_message(self.records[idx], rules, (i, names_i), (j, names_j), clash))
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


def _clashing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [k for k in a if k in b and a[k] != b[k]]


def _tie_message(rec: ParamRecord, rules: Sequence[Rule], first: tuple[int, frozenset[str]],
                 second: tuple[int, frozenset[str]], keys: list[str]) -> str:
    (i, names_i), (j, names_j) = first, second
    a, b = rules[i].settings(), rules[j].settings()
    diff = "; ".join(f"{k}: {a[k]!r} vs {b[k]!r}" for k in keys)
    return (f"{rules[j].where(j)}: {' and '.join(rec.names)} are one tied tensor, but "
            f"{rules[i].where(i)} sets it through {', '.join(sorted(names_i))} and rule {j} through "
            f"{', '.join(sorted(names_j))} to other values ({diff}); rule {j} would win silently: "
            f"give both names the same settings, or select them in one rule")


def rule_text(rule: Rule) -> tuple[str, bool]:
    """A short name for what ``rule`` selects, for group names, and whether it is by name:
    ``("layer4", True)``, ``("bias,norm", False)``, ``("", False)`` for everything."""
    if rule.patterns.exclude or not all(p.everything for p in rule.patterns.include):
        text = rule.match if isinstance(rule.match, str) else ",".join(rule.match)
        return text, True
    return ",".join([*(rule.modules or ()), *(rule.within or ()), *(rule.kinds or ())]), False


def _describe(rule: Rule) -> str:
    parts = [f"match {rule.match!r}"]
    if rule.modules is not None:
        parts.append(f"modules {rule.modules!r}")
    if rule.within is not None:
        parts.append(f"within {rule.within!r}")
    if rule.kinds is not None:
        parts.append(f"kinds {rule.kinds!r}")
    return " with ".join(parts)


def located_rule_error(exc: ParamgroupsError, rule_index: int, source: str | None = None,
                       line: int | None = None) -> ParamgroupsError:
    """Re-create ``exc`` (same class) with ``file:line: rule N:`` in front of its message."""
    loc = f"{source}:{line}: " if source and line else (f"{source}: " if source else "")
    return type(exc)(f"{loc}rule {rule_index}: {exc}")
