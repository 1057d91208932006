"""The optimizer and scheduler of a plan, for transformers' ``Trainer(optimizers=...)``.

    optimizer, scheduler = paramgroups.integrations.huggingface.optimizers(plan, model)
    trainer = transformers.Trainer(model=model, args=args, optimizers=(optimizer, scheduler), ...)

``Trainer`` steps the scheduler after every optimizer step, so the plan's schedule counts
steps (``unit: step``), or ``steps_per_epoch`` says how long an epoch is.

Given ``args=`` (the ``TrainingArguments``) or ``num_training_steps=``, what the plan's
schedule leaves unset comes from the run: an unset ``total`` is the run's length
(``num_training_steps``, else ``args.max_steps``), a ``warmup`` of 0 is
``args.get_warmup_steps(length)`` (transformers' rounding: ``warmup_steps`` >= 1 counts steps,
below 1 it is a fraction of the run, rounded up). What the plan sets wins; the plan's main
shape wins over ``args.lr_scheduler_type``.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch

from ..errors import PlanError
from ..plan import Plan
from ..schedules import NEEDS_TOTAL
from ..values import check_count

_PER_STEP = ("transformers' Trainer steps the scheduler every optimizer step: give steps_per_epoch, "
             "or write the plan's schedule and stages in steps (unit: step)")


def optimizers(plan: Plan, model: torch.nn.Module, steps_per_epoch: int | None = None, *,
               args: Any = None, num_training_steps: int | None = None
               ) -> tuple[torch.optim.Optimizer, Any]:
    """``(optimizer, scheduler)`` built from ``plan`` for ``model``; see the module's docs."""
    plan = _with_run(plan, args, num_training_steps, steps_per_epoch)
    schedule = plan.schedule
    epoch_based = (schedule is not None and schedule.unit == "epoch"
                   and (schedule.main != "constant" or schedule.warmup)
                   ) or any(st.epoch is not None for st in plan.stages)
    if epoch_based and steps_per_epoch is None:
        raise PlanError(_PER_STEP)
    optimizer = plan.optimizer(model)
    return optimizer, plan.scheduler(optimizer, steps_per_epoch=steps_per_epoch)


def _with_run(plan: Plan, args: Any, num_training_steps: int | None,
              steps_per_epoch: int | None) -> Plan:
    """``plan`` with the schedule's unset ``total`` and ``warmup`` taken from the run."""
    schedule = plan.schedule
    if schedule is None or (args is None and num_training_steps is None):
        return plan
    length = _run_length(args, num_training_steps)
    fill_total = schedule.total is None and schedule.main in NEEDS_TOTAL
    fill_warmup = (args is not None and schedule.warmup == 0 and schedule.main != "onecycle"
                   and args.warmup_steps > 0)
    if not (fill_total or fill_warmup):
        return plan
    if length is None and (fill_total or args.warmup_steps < 1):
        raise PlanError("the plan's schedule leaves its total (or a warmup fraction) to the Trainer, "
                        "but args.max_steps is not set: pass num_training_steps= (the run's optimizer "
                        "steps), set max_steps in TrainingArguments, or give the schedule a total")
    if schedule.unit == "epoch" and steps_per_epoch is None:
        raise PlanError(_PER_STEP)

    def in_unit(steps: int) -> float:
        return steps / steps_per_epoch if schedule.unit == "epoch" else steps

    changes: dict[str, float] = {}
    if fill_total:
        changes["total"] = in_unit(length)
    if fill_warmup:  # with warmup_steps >= 1 transformers ignores the length
        changes["warmup"] = in_unit(args.get_warmup_steps(length if length is not None else 0))
    run = copy.copy(plan)  # the optimizer and scheduler both belong to this plan
    run.schedule = dataclasses.replace(schedule, **changes)
    return run


def _run_length(args: Any, num_training_steps: int | None) -> int | None:
    if num_training_steps is not None:
        return check_count("num_training_steps", num_training_steps, PlanError)
    return args.max_steps if args is not None and args.max_steps > 0 else None
