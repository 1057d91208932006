"""Exceptions raised by paramgroups, and where they happened.

Every error the library raises for bad plans, bad patterns, bad models or bad files derives
from :class:`ParamgroupsError`, so callers (and the CLI) can catch one type. Messages say what
was wrong and, where possible, how to fix it; *where* it happened (plan file, line, rule or
stage) travels beside the message as a :class:`Where` and is formatted once, by ``str()``:
``plan.yaml:7: rule 2: unknown field 'lr_mul' (did you mean 'lr_mult'?)``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

E = TypeVar("E", bound="ParamgroupsError")


@dataclass(frozen=True)
class Where:
    """A place in a plan: its file and line, and the rule or stage (indices from 0).

    ``field`` names the plan field the error is about (``lr``, ``schedule``); the message
    already says it, so it is not printed, but callers can read it.
    """

    source: str | None = None
    line: int | None = None
    rule: int | None = None
    stage: int | None = None
    field: str | None = None

    def prefix(self) -> str:
        """``file:line: rule N: `` (the parts that are known), or ``""``."""
        parts = []
        if self.source is not None:
            parts.append(f"{self.source}:{self.line}" if self.line is not None else self.source)
        if self.rule is not None:
            parts.append(f"rule {self.rule}")
        if self.stage is not None:
            parts.append(f"stage {self.stage}")
        return "".join(f"{p}: " for p in parts)

    def merged(self, other: "Where") -> "Where":
        """This place, with the parts it lacks taken from ``other`` (an enclosing place)."""
        return replace(self, **{f.name: getattr(other, f.name) for f in fields(self)
                                if getattr(self, f.name) is None})


class ParamgroupsError(Exception):
    """Base class of every error raised by paramgroups.

    ``message`` says what and how to fix it; ``where`` says where. ``str(error)`` is both.
    """

    def __init__(self, message: str = "", *, where: Where | None = None):
        super().__init__(message)
        self.message = message
        self.where = where or Where()

    def __str__(self) -> str:
        return self.where.prefix() + self.message

    def __reduce__(self) -> tuple[Any, ...]:  # keep ``where`` across pickling (processes)
        return (_rebuild, (type(self), self.message, self.where))

    def at(self: E, **where: Any) -> E:
        """Fill in the parts of the location this error does not know yet, and return it:
        ``raise exc.at(source=path, line=7, rule=2) from None``. Parts it knows stay (the
        innermost place is the most precise)."""
        self.where = self.where.merged(Where(**where))
        return self


def _rebuild(cls: type[E], message: str, where: Where) -> E:
    error = cls.__new__(cls)
    ParamgroupsError.__init__(error, message, where=where)
    return error


class PatternError(ParamgroupsError, ValueError):
    """A pattern (glob, range or regex) that cannot be compiled."""


class RuleError(ParamgroupsError, ValueError):
    """A rule with an unknown field or a value of the wrong type or range."""


class UnmatchedRuleError(RuleError):
    """A rule, not marked optional, that matches no parameter of the model."""


class PlanError(ParamgroupsError, ValueError):
    """A plan-level setting that is invalid or inconsistent with the optimizer."""


class ConfigError(ParamgroupsError, ValueError):
    """A plan file that cannot be read or parsed."""


class OptimizerError(ParamgroupsError, ValueError):
    """An optimizer that cannot be found, or options it does not take."""


class ModelError(ParamgroupsError, ValueError):
    """A model name, factory or checkpoint that cannot be resolved."""


class PlotError(ParamgroupsError, ValueError):
    """A picture that cannot be drawn or written: no matplotlib, an unknown image format."""


class ReportError(ParamgroupsError, ValueError):
    """An audit or table asked for with arguments it cannot take (a depth of 0, an unknown
    filter)."""


class PlanWarning(UserWarning):
    """A plan that works but probably does not do what its author meant (a stage warmup that
    spends a whole epoch at LR 0, say)."""
