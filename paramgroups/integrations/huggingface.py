"""The optimizer and scheduler of a plan, for transformers' ``Trainer(optimizers=...)``.

    optimizer, scheduler = paramgroups.integrations.huggingface.optimizers(plan, model)
    trainer = transformers.Trainer(model=model, args=args, optimizers=(optimizer, scheduler), ...)

``Trainer`` steps the scheduler after every optimizer step, so the plan's schedule counts
steps (``unit: step``), or ``steps_per_epoch`` says how long an epoch is.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import PlanError
from ..plan import Plan


def optimizers(plan: Plan, model: torch.nn.Module, steps_per_epoch: int | None = None
               ) -> tuple[torch.optim.Optimizer, Any]:
    """``(optimizer, scheduler)`` built from ``plan`` for ``model``."""
    schedule = plan.schedule
    epoch_based = (schedule is not None and schedule.unit == "epoch"
                   and (schedule.main != "constant" or schedule.warmup)
                   ) or any(st.epoch is not None for st in plan.stages)
    if epoch_based and steps_per_epoch is None:
        raise PlanError("transformers' Trainer steps the scheduler every optimizer step: give "
                        "steps_per_epoch, or write the plan's schedule and stages in steps (unit: step)")
    optimizer = plan.optimizer(model)
    return optimizer, plan.scheduler(optimizer, steps_per_epoch=steps_per_epoch)
