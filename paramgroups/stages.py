"""Freezing and thawing parameters.

One-off ``freeze``/``unfreeze`` select parameters with the same pattern language as rules.
They only flip ``requires_grad``: parameters stay in whatever optimizer groups hold them, and
torch optimizers skip parameters whose ``.grad`` is ``None``.
"""

from __future__ import annotations

from torch import nn

from .inventory import inventory, module_names
from .patterns import to_path
from .rules import Rule, closest_names
from .errors import UnmatchedRuleError


def _select(model: nn.Module, patterns: tuple[str, ...]) -> list[nn.Parameter]:
    if not patterns:
        raise UnmatchedRuleError("give at least one pattern to select parameters")
    records = inventory(model)
    covers = module_names(records)
    paths = {name: to_path(name) for name in covers}
    rule = Rule(list(patterns))
    selected = rule.select(records, covers, paths)
    if not selected:
        close = closest_names(patterns[0], covers)
        hint = f"; closest names: {', '.join(close)}" if close else ""
        raise UnmatchedRuleError(f"{list(patterns)!r} matches no parameter{hint}")
    return [records[i].param for i in selected if records[i].is_float]


def freeze(model: nn.Module, *patterns: str) -> list[nn.Parameter]:
    """Set ``requires_grad=False`` on the parameters the patterns select; return them."""
    params = _select(model, patterns)
    for p in params:
        p.requires_grad_(False)
    return params


def unfreeze(model: nn.Module, *patterns: str) -> list[nn.Parameter]:
    """Set ``requires_grad=True`` on the parameters the patterns select; return them."""
    params = _select(model, patterns)
    for p in params:
        p.requires_grad_(True)
    return params
