"""The LR of every group at every epoch and stage boundary: the table ``paramgroups schedule``
prints and the schedule plot draws, asked of the plan's timeline."""

from __future__ import annotations

from typing import Any

from torch import nn

from .errors import ReportError
from .plan import Plan
from .timeline import Timeline
from .values import check_count


def schedule_table(plan: Plan, model: nn.Module | None, epochs: int,
                   steps_per_epoch: int | None = None) -> tuple[list[str], list[list[Any]]]:
    """The LR of every group at the first step of every epoch and at stage boundaries.

    Returns ``(headers, rows)``; a frozen group's LR is ``None``. Without a model there are no
    groups: the one column is the plan's base LR. A plateau schedule is shown without
    reductions (they depend on metrics).
    """
    check_count("epochs", epochs, ReportError)
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
