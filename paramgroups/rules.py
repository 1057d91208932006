"""Rules and the cascade: which rules touch each parameter, in order.

Rules apply in order. Every rule that selects a parameter sets the fields it names; a later
rule overrides an earlier one field by field, like CSS. :func:`cascade` records, per parameter,
the rules that touched it; :func:`merged` turns such a list into the final fields, so the
audit can say why a parameter got what it got.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Sequence

from . import optim
from .errors import RuleError, UnmatchedRuleError, Where
from .inventory import KINDS, ParamRecord
from .names import NameTable
from .patterns import PatternList
from .ties import TieWatch
from .values import check_flag, check_number, hint

SETTINGS = ("lr", "lr_mult", "weight_decay", "wd_mult", "freeze", "group", "optimizer")
RULE_FIELDS = ("match", "modules", "within", "kinds", "optional", *SETTINGS)


def _as_list(value: Any, what: str) -> list[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise RuleError(f"{what} must be a string or a list of strings, got {value!r}")
    return list(items)


@dataclass
class Rule:
    """Select parameters by name, owning module class and kind, and set what they get.

    ``match`` is a pattern or a list of patterns (see DESIGN.md); ``modules`` filters by the
    owning module's class name (globs, base classes count); ``kinds`` by kind (``weight``,
    ``bias``, ``norm``, ``embedding``, ``ndim<=1``, ``matrix`` (a 2-D weight that is not a
    norm, embedding or head: what Muon takes), ``head`` (the output layer:
    ``get_output_embeddings()``, timm's ``get_classifier()``, else the last ``nn.Linear``), and
    for PEFT models the active adapter's ``lora_A``, ``lora_B`` and ``adapter``; see
    :mod:`paramgroups.kinds`; any of them); ``within`` by the
    class of any module above the parameter, its owner included (globs, base classes and mixins
    count: ``LlamaAttention``, ``*DecoderLayer``, ``LoraLayer``). Settings left ``None`` are
    not touched by this rule. ``optimizer`` routes the parameters to another optimizer than the
    plan's (any name the plan's ``optimizer`` takes, kept as :func:`optim.optimizer_name` gives
    it). Extra keyword arguments are per-group optimizer options.
    ``source``/``line`` say where the rule was written (a plan file), for messages.
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
    optimizer: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    source: str | None = field(default=None, compare=False, repr=False)
    line: int | None = field(default=None, compare=False, repr=False)

    def __init__(self, match: str | Sequence[str] = "**", *, modules: str | Sequence[str] | None = None,
                 within: str | Sequence[str] | None = None,
                 kinds: str | Sequence[str] | None = None, optional: bool = False,
                 lr: float | None = None, lr_mult: float | None = None,
                 weight_decay: float | None = None, wd_mult: float | None = None,
                 freeze: bool | None = None, group: str | None = None,
                 optimizer: str | type | None = None, source: str | None = None,
                 line: int | None = None, **optimizer_options: Any):
        self.match = match if isinstance(match, str) else list(match) if isinstance(match, (list, tuple)) else match
        self.patterns = PatternList(self.match)
        self.modules = _as_list(modules, "modules")
        self.within = _as_list(within, "within")
        if self.within == []:
            raise RuleError("within must name at least one class (a class name or glob: LlamaAttention)")
        self.kinds = _as_list(kinds, "kinds")
        for kind in self.kinds or ():
            if kind not in KINDS:
                raise RuleError(f"unknown kind {kind!r} ({hint(kind, KINDS, what='kinds:')})")
        self.optional = check_flag("optional", optional, RuleError)
        self.freeze = None if freeze is None else check_flag("freeze", freeze, RuleError)
        if group is not None and not isinstance(group, str):
            raise RuleError(f"group must be a string, got {group!r}")
        self.lr = check_number("lr", lr, RuleError)
        self.lr_mult = check_number("lr_mult", lr_mult, RuleError)
        self.weight_decay = check_number("weight_decay", weight_decay, RuleError)
        self.wd_mult = check_number("wd_mult", wd_mult, RuleError)
        self.group = group
        self.optimizer = None if optimizer is None else optim.optimizer_name(optimizer)
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

    def location(self, index: int) -> Where:
        """Where this rule, rule ``index`` of its plan, was written."""
        return Where(source=self.source, line=self.line, rule=index)

    def where(self, index: int) -> str:
        """``file:line: rule N`` (or ``rule N``), to name this rule inside a message."""
        return self.location(index).prefix().removesuffix(": ")

    def select(self, records: Sequence[ParamRecord], table: NameTable) -> list[int]:
        """Indices of the records this rule selects, in model order (``table``: the model's
        :class:`NameTable`)."""
        chosen = table.select(self.patterns)
        if self.modules is None and self.within is None and self.kinds is None:
            return chosen
        if self.modules is None and self.within is None:  # by kind only: one test per set of kinds
            wanted = self.kinds
            of: dict[frozenset[str], bool] = {}  # records share a handful of kind sets
            out = []
            for idx in chosen:
                kinds = records[idx].kinds
                ok = of.get(kinds)
                if ok is None:
                    ok = of[kinds] = not kinds.isdisjoint(wanted)
                if ok:
                    out.append(idx)
            return out
        out = []
        inside: dict[frozenset[str], bool] = {}  # records share a handful of enclosing sets
        for idx in chosen:
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
            if self.kinds is not None and rec.kinds.isdisjoint(self.kinds):
                continue
            out.append(idx)
        return out

    def describe(self) -> str:
        """What the rule selects by: ``match 'fc' with kinds ['bias']``."""
        parts = [f"match {self.match!r}"]
        for key in ("modules", "within", "kinds"):
            if getattr(self, key) is not None:
                parts.append(f"{key} {getattr(self, key)!r}")
        return " with ".join(parts)


@dataclass(frozen=True)
class Cascade:
    """What the rules did to a model: per record, the rules that touched it (in order); rules
    that matched nothing (``unmatched``, with their errors) and tied-weight ``conflicts``."""

    touched: list[tuple[int, ...]]
    unmatched: list[int]
    errors: list[UnmatchedRuleError]
    conflicts: list[RuleError]


def cascade(records: Sequence[ParamRecord], rules: Sequence[Rule], table: NameTable, *,
            strict: bool = True) -> Cascade:
    """Apply ``rules`` in order to ``records``: which rules touch each record.

    With ``strict``, a rule that matches nothing and is not optional raises
    :class:`UnmatchedRuleError`; otherwise it is listed in ``Cascade.unmatched``.
    """
    touched: list[list[int]] = [[] for _ in records]
    unmatched, errors = [], []
    ties = TieWatch(records, table.index)
    for i, rule in enumerate(rules):
        selected = rule.select(records, table)
        ties.observe(i, rule, selected)
        if not selected and not rule.optional:
            error = UnmatchedRuleError(
                f"{rule.describe()} matches no parameter{table.closest(str(rule.patterns.texts[0]))} "
                f"(mark the rule optional: true if that is expected)", where=rule.location(i))
            if strict:
                raise error
            unmatched.append(i)
            errors.append(error)
        for idx in selected:
            touched[idx].append(i)
    return Cascade([tuple(t) for t in touched], unmatched, errors, ties.conflicts(rules))


def merged(rules: Sequence[Rule], touched: Sequence[int]) -> tuple[dict[str, Any], int | None]:
    """The fields the rules ``touched`` (indices, in order) give, later ones winning field by
    field, and the last of them that set ``freeze`` (None if none did)."""
    fields: dict[str, Any] = {}
    freezer = None
    for i in touched:
        fields.update(rules[i].settings())
        if rules[i].freeze is not None:
            freezer = i
    return fields, freezer


def rule_text(rule: Rule) -> tuple[str, bool]:
    """A short name for what ``rule`` selects, for group names, and whether it is by name:
    ``("layer4", True)``, ``("bias,norm", False)``, ``("", False)`` for everything."""
    if rule.patterns.exclude or not all(p.everything for p in rule.patterns.include):
        text = rule.match if isinstance(rule.match, str) else ",".join(rule.match)
        return text, True
    return ",".join([*(rule.modules or ()), *(rule.within or ()), *(rule.kinds or ())]), False
