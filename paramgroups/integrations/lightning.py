"""A Lightning callback that builds the optimizer and scheduler from a plan and runs its stages.

    class Model(PlanOptimizers, lightning.LightningModule):   # no configure_optimizers to write
        ...

    trainer = lightning.Trainer(callbacks=[PlanCallback(plan)], ...)

The callback supplies the module's ``configure_optimizers``, so freezing, param groups, the
LR schedule and staged thawing all come from the plan. Lightning checks that the module's
class defines ``configure_optimizers`` before any callback runs; the :class:`PlanOptimizers`
mixin defines one that says what is missing if the callback is not there. Resuming from a
Lightning checkpoint restores the scheduler's state, and with it the frozen set, exactly.
"""

from __future__ import annotations

import math
from typing import Any

try:
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - the standalone package name
    from pytorch_lightning import Callback  # type: ignore[no-redef]

from ..errors import PlanError
from ..plan import Plan


class PlanOptimizers:
    """Mixin for a LightningModule whose optimizers come from :class:`PlanCallback`."""

    def configure_optimizers(self) -> Any:
        raise PlanError("this module's optimizers come from a plan: add "
                        "paramgroups.integrations.lightning.PlanCallback(plan) to the Trainer's callbacks")


class PlanCallback(Callback):
    """Optimizer, scheduler and stages from ``plan``.

    ``steps_per_epoch``: ``None`` steps the scheduler once per epoch; ``"auto"`` steps it
    every optimizer step, with the epoch length from the trainer (its training batches per
    epoch over ``accumulate_grad_batches``, rounded up, as Lightning counts stepping batches;
    with ``max_epochs`` or ``max_steps``); a number sets it. A
    ``plateau`` schedule watches ``monitor`` (logged metric name, default ``val_loss``).
    """

    def __init__(self, plan: Plan, steps_per_epoch: int | str | None = None,
                 monitor: str = "val_loss"):
        if not isinstance(plan, Plan):
            raise PlanError(f"PlanCallback needs a paramgroups.Plan, got {type(plan).__name__}")
        self.plan = plan
        self.steps_per_epoch = steps_per_epoch
        self.monitor = monitor

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return

        def configure_optimizers() -> dict[str, Any]:
            optimizer = self.plan.optimizer(pl_module)
            spe = self._steps_per_epoch(trainer)
            scheduler = self.plan.scheduler(optimizer, steps_per_epoch=spe)
            per_step = spe is not None or (self.plan.schedule and self.plan.schedule.unit == "step")
            config = {"scheduler": scheduler, "interval": "step" if per_step else "epoch", "frequency": 1}
            if self.plan.schedule is not None and self.plan.schedule.main == "plateau":
                config.update(monitor=self.monitor, reduce_on_plateau=True)
            return {"optimizer": optimizer, "lr_scheduler": config}

        pl_module.configure_optimizers = configure_optimizers

    def _steps_per_epoch(self, trainer: Any) -> int | None:
        if self.steps_per_epoch != "auto":
            return self.steps_per_epoch
        if trainer.train_dataloader is None:  # as estimated_stepping_batches loads it
            trainer.fit_loop.setup_data()
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            raise PlanError('steps_per_epoch="auto" needs training data with a length (an iterable '
                            'dataset has no epoch length): give steps_per_epoch=N, or write the '
                            "plan's schedule and stages in steps (unit: step) and leave steps_per_epoch unset")
        return max(1, math.ceil(batches / trainer.accumulate_grad_batches))
