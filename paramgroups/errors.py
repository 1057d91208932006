"""Exceptions raised by paramgroups.

Every error the library raises for bad plans, bad patterns, bad models or bad files derives
from :class:`ParamgroupsError`, so callers (and the CLI) can catch one type. Messages say what
was wrong, where (rule index, file and line) and, where possible, how to fix it.
"""

from __future__ import annotations


class ParamgroupsError(Exception):
    """Base class of every error raised by paramgroups."""


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


def located(message: str, *, source: str | None = None, line: int | None = None,
            rule: int | None = None) -> str:
    """Prefix ``message`` with where it happened: ``file:line: rule N: message``."""
    where = []
    if source is not None:
        where.append(f"{source}:{line}" if line is not None else source)
    if rule is not None:
        where.append(f"rule {rule}")
    return ": ".join(where + [message])


class PlanWarning(UserWarning):
    """A plan that works but probably does not do what its author meant (a stage warmup that
    spends a whole epoch at LR 0, say)."""
