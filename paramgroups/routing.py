"""Which optimizer steps each parameter: the checks a plan's routing passes at resolve time.

A rule's ``optimizer`` (else the plan's) decides where each parameter goes. Whatever that
optimizer cannot take is an error here, naming the parameter, the rule that routed it (or the
plan's ``optimizer`` field) and the fix, never a failure inside torch at its first step:
a parameter it refuses (:func:`optim.unroutable`: a 4-D convolution or a 1-D bias to Muon, a
dense parameter to SparseAdam) and an option it does not take (``betas`` for Muon).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from . import optim
from .errors import PlanError, RuleError, Where
from .groups import Group
from .inventory import ParamRecord
from .rules import Rule

if TYPE_CHECKING:  # pragma: no cover
    from .plan import Plan


def check(plan: Plan, rules: Sequence[Rule], records: Sequence[ParamRecord],
          touched: Sequence[tuple[int, ...]], groups: Sequence[Group],
          group_of: Sequence[int | None]) -> None:
    """Every group's optimizer takes its options and every parameter in it.

    Only Muon and SparseAdam (:func:`optim.refuses_dense`) are asked about every parameter of
    their groups; any other optimizer can refuse only the weight of an embedding (sparse
    gradients), so it is asked only about its records of kind ``embedding`` (``group_of``:
    each record's group), found in one pass when first needed."""
    embeddings: dict[int | None, list[int]] | None = None
    for g in groups:
        cls = plan.optimizer_class_of(g.optimizer)
        first = g.indices[0]
        for key in g.options:
            if not optim.takes(cls, key):
                j = _last(rules, touched[first], lambda r: key in r.options)
                raise RuleError(
                    f"{records[first].name} goes to {cls.__name__} ({g.optimizer!r}), which does "
                    f"not take {key!r}, set by this rule: narrow the rule to parameters of "
                    f"optimizers that take it, or give it under optimizers: in the entry of the "
                    f"optimizer it is for", where=_where(plan, rules, j, key))
        if optim.refuses_dense(cls):
            asked: Sequence[int] = g.indices
        else:
            if embeddings is None:
                embeddings = {}
                for i, rec in enumerate(records):
                    if "embedding" in rec.kinds:  # every nn.Embedding's parameter is of this kind
                        embeddings.setdefault(group_of[i], []).append(i)
            asked = embeddings.get(g.index, ())
        refused = optim.first_unroutable(cls, [records[i] for i in asked]) if asked else None
        if refused is not None:
            position, why = refused
            j = _last(rules, touched[asked[position]], lambda r: r.optimizer is not None)
            if j is None:
                raise PlanError(f"{why} (the plan's optimizer {g.optimizer!r} steps every "
                                f"parameter no rule routes elsewhere)", where=Where(field="optimizer"))
            raise RuleError(f"{why} (this rule routes it to {g.optimizer!r})",
                            where=_where(plan, rules, j, "optimizer"))


def _last(rules: Sequence[Rule], touched: Sequence[int], sets: Callable[[Rule], bool]) -> int | None:
    """The last of the rules ``touched`` that ``sets`` says sets the field, or None."""
    return next((j for j in reversed(touched) if sets(rules[j])), None)


def _where(plan: Plan, rules: Sequence[Rule], j: int, key: str) -> Where:
    """Rule ``j`` at the line of its ``key`` (a plan file's), else at its own."""
    return Where(source=rules[j].source, line=plan.locations.line("rules", j, key) or rules[j].line,
                 rule=j)
