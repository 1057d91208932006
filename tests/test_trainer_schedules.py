"""Trainer-aware schedules: the wsd shape against transformers' ``get_wsd_schedule``, run length
and warmup from ``TrainingArguments``, Lightning's ``steps_per_epoch="auto"`` with ``max_steps``,
and schedulers for optimizers wrapped by accelerate or Lightning."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from paramgroups import Plan, Rule, Stage
from paramgroups.errors import PlanError
from paramgroups.schedules import DECAY_SHAPES, Schedule
from paramgroups.timeline import Timeline

import stagenet

transformers = pytest.importorskip("transformers", reason="transformers is an optional extra")
from transformers.optimization import get_wsd_schedule  # noqa: E402  (loads at collection, not in a test)

REL = 1e-12


def twin_optimizer(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """A plain SGD with one dummy parameter per group of ``opt``, at the same base LRs."""
    return torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": g.get("initial_lr", g["lr"])}
                            for g in opt.param_groups])


def lrs(opt: torch.optim.Optimizer, sched, steps: int) -> list[list[float]]:
    """Each group's LR before each of ``steps`` steps and after the last."""
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no optimizer.step() here: torch warns about the order
            sched.step()
    return out + [[g["lr"] for g in opt.param_groups]]


def assert_same(got: list[list[float]], want: list[list[float]]) -> None:
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        assert a == pytest.approx(b, rel=REL, abs=1e-300), f"step {k}"


# -- wsd -------------------------------------------------------------------------------------


@pytest.mark.parametrize("decay_shape", DECAY_SHAPES)
@pytest.mark.parametrize("warmup_shape", ["linear", "cosine", "1-sqrt"])
@pytest.mark.parametrize("floor", [0.0, 0.2])
def test_wsd_equals_transformers_at_every_step(decay_shape, warmup_shape, floor):
    plan = Plan([Rule("fc", lr_mult=10)], lr=0.1, schedule=Schedule(
        "wsd", unit="step", total=14, warmup=3, decay=5, decay_shape=decay_shape,
        warmup_shape=warmup_shape, warmup_start=floor, min_factor=floor))
    opt = plan.optimizer(stagenet.Net())
    ref_opt = twin_optimizer(opt)
    ref = get_wsd_schedule(ref_opt, num_warmup_steps=3, num_decay_steps=5, num_training_steps=14,
                           warmup_type=warmup_shape, decay_type=decay_shape, min_lr_ratio=floor)
    assert_same(lrs(opt, plan.scheduler(opt), 18), lrs(ref_opt, ref, 18))


def test_wsd_in_epochs_is_the_step_schedule_at_fractional_epochs():
    plan = Plan(lr=0.1, schedule={"main": "wsd", "total": 4, "warmup": 1, "decay": 2, "decay_shape": "linear"})
    opt = plan.optimizer(stagenet.Net())
    ref_opt = twin_optimizer(opt)
    ref = get_wsd_schedule(ref_opt, num_warmup_steps=3, num_decay_steps=6, num_stable_steps=3,
                           decay_type="linear")
    assert_same(lrs(opt, plan.scheduler(opt, steps_per_epoch=3), 14), lrs(ref_opt, ref, 14))


@pytest.mark.parametrize("kwargs,message", [
    ({"main": "wsd", "total": 10}, "main wsd needs decay"),
    ({"main": "cosine", "total": 10, "decay": 2}, "decay and decay_shape only apply to main: wsd"),
    ({"main": "wsd", "total": 10, "decay": 2, "decay_shape": "sqrt"}, "unknown decay_shape 'sqrt'"),
    ({"main": "wsd", "total": 10, "warmup": 4, "decay": 7}, "must fit in total (10)"),
    ({"main": "wsd", "decay": 2}, "main wsd needs total"),
])
def test_wsd_errors(kwargs, message):
    with pytest.raises(PlanError) as exc:
        Schedule(**kwargs)
    assert message in str(exc.value)


def test_wsd_round_trips_through_a_plan_file(tmp_path):
    (tmp_path / "p.yaml").write_text("lr: 0.1\nschedule:\n  main: wsd\n  unit: step\n  total: 20\n"
                                     "  decay: 4\n  decay_shape: 1-sqrt\n  min_factor: 0.1\nrules: []\n")
    plan = Plan.load(tmp_path / "p.yaml")
    assert plan.schedule == Schedule("wsd", unit="step", total=20, decay=4, decay_shape="1-sqrt",
                                     min_factor=0.1)
    assert Plan.from_dict(plan.to_dict()) == plan
    t = Timeline.of(plan)
    assert t.factor(t.step_of(16)) == 1.0 and t.factor(t.step_of(18)) == pytest.approx(0.1 + 0.9 * (1 - 0.5 ** 0.5))


# -- total left to the trainer ---------------------------------------------------------------


def test_a_plan_file_may_leave_total_until_an_lr_is_asked_for(tmp_path):
    (tmp_path / "p.yaml").write_text("lr: 0.1\nschedule:\n  main: cosine\n  unit: step\nrules: []\n")
    plan = Plan.load(tmp_path / "p.yaml")  # loads: a trainer helper may fill total in
    opt = plan.optimizer(stagenet.Net())
    with pytest.raises(PlanError, match=r"p.yaml:2: schedule: main cosine needs total"):
        plan.scheduler(opt)
    with pytest.raises(PlanError, match=r"p.yaml:2: schedule: main cosine needs total"):
        Timeline.of(plan).factor(Timeline.of(plan).step_of(1))
    with pytest.raises(PlanError, match="main cosine needs total"):
        Schedule("cosine")  # built in Python, the error comes at once


# -- transformers ----------------------------------------------------------------------------


def bert() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32, num_labels=2)
    return transformers.BertForSequenceClassification(config)


def training_args(tmp_path, **kwargs) -> "transformers.TrainingArguments":
    return transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2,
                                          report_to=[], save_strategy="no", logging_strategy="no",
                                          use_cpu=True, disable_tqdm=True, **kwargs)


def bert_plan(schedule: dict) -> Plan:
    return Plan.from_dict({"lr": 1e-3, "optimizer": "adamw", "weight_decay": 0.01, "no_decay": True,
                           "schedule": schedule, "rules": [{"match": "classifier", "lr_mult": 5}]})


def reference(opt: torch.optim.Optimizer, args, length: int, steps: int) -> list[list[float]]:
    """transformers' own scheduler for ``args`` (as ``Trainer.create_scheduler`` builds it).

    Past ``length`` its cosine rises again; the plan's holds its floor: compare up to ``length``.
    """
    ref_opt = twin_optimizer(opt)
    ref = transformers.get_scheduler(args.lr_scheduler_type, ref_opt,
                                     num_warmup_steps=args.get_warmup_steps(length),
                                     num_training_steps=length,
                                     scheduler_specific_kwargs=args.lr_scheduler_kwargs)
    return lrs(ref_opt, ref, steps)


HF_CASES = [  # plan schedule (total and warmup unset), TrainingArguments
    ({"main": "linear", "unit": "step"}, {"lr_scheduler_type": "linear", "warmup_steps": 3}),
    ({"main": "cosine", "unit": "step"}, {"lr_scheduler_type": "cosine", "warmup_steps": 0.25}),
    ({"main": "constant", "unit": "step"}, {"lr_scheduler_type": "constant_with_warmup", "warmup_steps": 0.1}),
    ({"main": "poly", "unit": "step", "power": 2.0},
     {"lr_scheduler_type": "polynomial", "warmup_steps": 2, "lr_scheduler_kwargs": {"power": 2.0, "lr_end": 0.0}}),
    ({"main": "wsd", "unit": "step", "decay": 4, "decay_shape": "1-sqrt"},
     {"lr_scheduler_type": "warmup_stable_decay", "warmup_steps": 0.2,
      "lr_scheduler_kwargs": {"num_decay_steps": 4, "decay_type": "1-sqrt"}}),
]


@pytest.mark.parametrize("schedule,hf", HF_CASES, ids=[c[0]["main"] for c in HF_CASES])
def test_length_and_warmup_from_training_args_equal_transformers(tmp_path, schedule, hf):
    args = training_args(tmp_path, max_steps=13, **hf)
    opt, sched = optimizers_for(bert_plan(schedule), args=args)
    assert_same(lrs(opt, sched, 13), reference(opt, args, 13, 13))  # the Trainer stops there


def optimizers_for(plan: Plan, **kwargs):
    from paramgroups.integrations.huggingface import optimizers

    return optimizers(plan, bert(), **kwargs)


def test_the_plans_own_total_and_warmup_win(tmp_path):
    args = training_args(tmp_path, max_steps=50, warmup_steps=3)
    _, sched = optimizers_for(bert_plan({"main": "cosine", "unit": "step", "total": 8, "warmup": 2}), args=args)
    assert (sched.schedule.total, sched.schedule.warmup) == (8, 2)
    _, sched = optimizers_for(bert_plan({"main": "cosine", "unit": "step", "total": 8}), args=args)
    assert (sched.schedule.total, sched.schedule.warmup) == (8, 3)


def test_epoch_schedules_take_the_run_in_epochs(tmp_path):
    args = training_args(tmp_path, max_steps=12, warmup_steps=3, lr_scheduler_type="cosine")
    opt, sched = optimizers_for(bert_plan({"main": "cosine"}), args=args, steps_per_epoch=4)
    assert (sched.schedule.total, sched.schedule.warmup) == (3, 0.75)
    assert_same(lrs(opt, sched, 12), reference(opt, args, 12, 12))
    with pytest.raises(PlanError, match="give steps_per_epoch, or write the plan's schedule"):
        optimizers_for(bert_plan({"main": "cosine"}), args=args)


def test_without_max_steps_the_length_is_asked_for(tmp_path):
    args = training_args(tmp_path, num_train_epochs=2, warmup_steps=0.5, lr_scheduler_type="linear")
    with pytest.raises(PlanError, match="pass num_training_steps="):
        optimizers_for(bert_plan({"main": "linear", "unit": "step"}), args=args)
    with pytest.raises(PlanError, match="pass num_training_steps="):  # a fractional warmup needs it too
        optimizers_for(bert_plan({"main": "constant", "unit": "step"}), args=args)
    opt, sched = optimizers_for(bert_plan({"main": "linear", "unit": "step"}), args=args, num_training_steps=9)
    assert_same(lrs(opt, sched, 10), reference(opt, args, 9, 10))
    with pytest.raises(PlanError, match="num_training_steps must be a whole number >= 1"):
        optimizers_for(bert_plan({"main": "linear", "unit": "step"}), num_training_steps=0)


@pytest.mark.slow
@pytest.mark.parametrize("schedule,hf", [HF_CASES[1], HF_CASES[4]], ids=["cosine", "wsd"])
def test_a_real_trainer_run_follows_transformers_own_schedule(tmp_path, schedule, hf):
    from paramgroups.integrations.huggingface import optimizers

    model = bert()
    plan = bert_plan(schedule)
    args = training_args(tmp_path, max_steps=6, **hf)
    opt, sched = optimizers(plan, model, args=args)
    seen = []

    class Record(transformers.TrainerCallback):
        def on_step_begin(self, *_, **__):
            seen.append([g["lr"] for g in opt.param_groups])

    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(0, 64, (8,), generator=g), "labels": torch.tensor(i % 2)}
            for i in range(12)]
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, optimizers=(opt, sched),
                                   callbacks=[Record()])
    trainer.train()
    assert sched.last_epoch == 6
    assert_same(seen + [[g["lr"] for g in opt.param_groups]], reference(opt, args, 6, 6))


# -- Lightning -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("accumulate", [1, 2])
def test_lightning_auto_steps_per_epoch_with_max_steps(tmp_path, accumulate):
    L = pytest.importorskip("lightning", reason="Lightning is an optional extra")
    from paramgroups.integrations.lightning import PlanCallback, PlanOptimizers

    class LitNet(PlanOptimizers, L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = stagenet.Net()

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(12, 3, 8, 8, generator=g), torch.randint(0, 3, (12,), generator=g))
    plan = Plan(lr=0.05, optimizer="sgd", schedule=Schedule("cosine", total=3, warmup=1, warmup_start=0.1))
    trainer = L.Trainer(max_steps=5, accumulate_grad_batches=accumulate,
                        callbacks=[PlanCallback(plan, steps_per_epoch="auto")], accelerator="cpu",
                        devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(LitNet(), DataLoader(data, batch_size=4))
    sched = trainer.lr_scheduler_configs[0].scheduler
    # Lightning's stepping batches per epoch: ceil(batches / accumulate)
    assert sched.steps_per_epoch == math.ceil(trainer.num_training_batches / accumulate) == (3, 2)[accumulate - 1]
    assert sched.last_epoch == 5
    t = Timeline.of(plan, None, sched.steps_per_epoch)
    assert sched.get_last_lr()[0] == pytest.approx(0.05 * t.factor(t.step_of(5 / sched.steps_per_epoch)), rel=REL)


# -- wrapped optimizers ----------------------------------------------------------------------


@pytest.fixture
def accelerator():
    accelerate = pytest.importorskip("accelerate", reason="accelerate is an optional extra")
    from accelerate.state import AcceleratorState

    yield accelerate.Accelerator(cpu=True)
    AcceleratorState._reset_state(True)  # the state is process-wide: leave none to later tests


def staged_plan() -> Plan:
    return Plan([Rule("**", freeze=True), Rule("fc", freeze=False)], lr=0.05, optimizer="sgd", momentum=0.9,
                stages=[Stage(step=2, unfreeze="layer2")],
                schedule=Schedule("cosine", unit="step", total=6, warmup=1, warmup_start=0.2))


def test_scheduler_for_an_accelerate_prepared_optimizer(accelerator):
    torch.manual_seed(0)
    model = stagenet.Net()
    plan = staged_plan()
    model, opt = accelerator.prepare(model, plan.optimizer(model))
    sched = accelerator.prepare(plan.scheduler(opt))
    inner = opt.optimizer
    assert sched.scheduler.optimizer is inner and opt.param_groups is inner.param_groups
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,))
    seen = []
    for _ in range(4):
        seen.append([g["lr"] for g in opt.param_groups])
        accelerator.backward(nn.functional.cross_entropy(model(x), y))
        opt.step()
        sched.step()
        opt.zero_grad()
    t = Timeline.of(plan)
    assert [row[-1] for row in seen] == pytest.approx([0.05 * t.factor(t.step_of(k)) for k in range(4)], rel=REL)
    assert model.layer2[0].weight.requires_grad and not model.stem[0].weight.requires_grad


def test_scheduler_for_a_lightning_optimizer():
    pytest.importorskip("lightning", reason="Lightning is an optional extra")
    from lightning.pytorch.core.optimizer import LightningOptimizer

    plan = staged_plan()
    opt = plan.optimizer(stagenet.Net())
    wrapped = LightningOptimizer(opt)
    sched = plan.scheduler(wrapped)
    assert sched.optimizer is opt and wrapped.param_groups is opt.param_groups


def test_a_wrapper_with_its_own_groups_is_not_unwrapped():
    plan = staged_plan()
    opt = plan.optimizer(stagenet.Net())

    class Copying(torch.optim.SGD):  # holds the plan's optimizer but steps groups of its own
        def __init__(self, inner):
            super().__init__([p for g in inner.param_groups for p in g["params"]], lr=0.1)
            self.optimizer = inner

    with pytest.raises(PlanError, match="needs the optimizer from plan.optimizer"):
        plan.scheduler(Copying(opt))
