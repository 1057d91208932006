"""The audit as a person reads it: group names, the two LR columns, widths, counts, warnings."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from paramgroups import Plan, Rule, Stage, audit
from paramgroups.errors import PlanWarning
from paramgroups.report import percent


@pytest.fixture(scope="module")
def resnet50_meta() -> nn.Module:
    import torchvision

    with torch.device("meta"):
        return torchvision.models.resnet50(weights=None)


def test_groups_are_named_by_the_rules_and_stages_that_define_them(resnet50_meta):
    plan = Plan([Rule(["conv1", "bn1"], freeze=True), Rule("layer*", lr=1e-3), Rule("fc", lr=1e-2),
                 Rule(kinds=["bias", "norm"], weight_decay=0)], lr=1e-3, weight_decay=1e-4)
    assert [g.name for g in plan.resolve(resnet50_meta).groups] == [
        "conv1,bn1, frozen", "conv1,bn1 + bias,norm, frozen", "layer*", "layer* + bias,norm", "fc",
        "fc + bias,norm"]
    progressive = Plan.progressive(["fc", "layer4", "layer3"], every=4, lr=0.01, weight_decay=1e-4,
                                   no_decay=True)
    assert [g.name for g in progressive.resolve(resnet50_meta).groups] == [
        "default, frozen", "no_decay, frozen", "layer3, thaws at epoch 8",
        "layer3 + no_decay, thaws at epoch 8", "layer4, thaws at epoch 4",
        "layer4 + no_decay, thaws at epoch 4", "fc", "fc + no_decay"]


def test_group_names_with_layer_decay_labels_and_step_stages():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
    plan = Plan([Rule("2", group="head")], layer_decay=0.5, layers=["0", "1", "2"],
                stages=[Stage(step=10, freeze="1")], schedule={"main": "constant", "unit": "step"})
    assert [g.name for g in plan.resolve(net).groups] == [
        "layer 0", "layer 1: 1, freezes at step 10", "head"]


def test_lr_columns_say_which_lr_they_show():
    net = nn.Sequential(nn.Linear(2, 2))
    plan = Plan(lr=0.1, schedule={"main": "cosine", "total": 10, "warmup": 2, "warmup_lr": 0.001})
    a = audit(net, plan)
    assert (a.parameters[0]["base_lr"], a.parameters[0]["lr"], a.lr_at) == (0.1, 0.001, "step 0")
    assert (a.groups[0]["base_lr"], a.groups[0]["lr"]) == (0.1, 0.001)
    at2 = audit(net, plan, at=2)
    assert (at2.parameters[0]["lr"], at2.lr_at) == (pytest.approx(0.1), "epoch 2")
    header = a.to_table().splitlines()[0].split()
    assert header[header.index("base") + 1:header.index("base") + 3] == ["lr", "lr@step0"]
    assert "lr@epoch2" in at2.to_table().splitlines()[0]


@pytest.mark.parametrize("part, whole, text", [
    (0, 10, "0.0%"), (1, 10**6, "<0.1%"), (1, 2, "50.0%"), (999_999, 10**6, ">99.9%"), (5, 5, "100.0%"),
    (1, 1000, "0.1%"), (999, 1000, "99.9%")])
def test_percentages_never_round_a_share_away(part, whole, text):
    assert percent(part, whole) == text


def test_resnet50_table_fits_120_columns_with_separators(resnet50_meta):
    plan = Plan([Rule("layer4", freeze=True)], lr=0.1)
    table = audit(resnet50_meta, plan).to_table()
    assert max(len(line) for line in table.splitlines()) <= 120
    assert "2,359,296" in table  # a 512x512x3x3 convolution's count, with separators
    assert "frozen           14,964,736 (" in table


def test_long_language_model_names_wrap_to_fit():
    names = nn.ModuleDict({"model": nn.ModuleDict({"layers": nn.ModuleList(
        nn.ModuleDict({"self_attention_with_a_rather_long_name": nn.Linear(2, 2)}) for _ in range(12))})})
    table = audit(names, Plan(lr=0.1)).to_table()
    assert max(len(line) for line in table.splitlines()) <= 120


def test_a_meta_audit_reports_the_training_device_code_path(resnet50_meta):
    assert audit(resnet50_meta, Plan(optimizer="adamw", lr=1e-3)).implementation == "fused"
    assert audit(resnet50_meta, Plan(optimizer="rmsprop", lr=1e-3)).implementation == "foreach"


def test_a_stage_warmup_stepped_once_per_epoch_is_warned_about():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    plan = Plan([Rule("0", freeze=True)], lr=0.1, stages=[Stage(epoch=2, unfreeze="0", warmup=1)])
    opt = plan.optimizer(net)
    with pytest.warns(PlanWarning, match=r"stage 0 warms up over 1 epoch\(s\) but the scheduler steps "
                                         r"once per epoch: epoch 2 trains at 0 x its LR \(nothing moves\)"):
        plan.scheduler(opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan.scheduler(opt, steps_per_epoch=10)  # ramps per iteration: no warning


def test_cli_prints_the_warning_as_one_line(capsys, tmp_path):
    from paramgroups.cli.main import main

    (tmp_path / "p.yaml").write_text("lr: 0.1\nrules:\n  - match: fc\n    freeze: true\n"
                                     "stages:\n  - epoch: 1\n    unfreeze: fc\n    warmup: 2\n")
    assert main(["schedule", "resnet18", "--rules", str(tmp_path / "p.yaml"), "--epochs", "3"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("paramgroups: warning: stage 0 warms up over 2 epoch(s)") and err.count("\n") == 1
    assert main(["schedule", "resnet18", "--rules", str(tmp_path / "p.yaml"), "--epochs", "3",
                 "--steps-per-epoch", "5"]) == 0
    assert capsys.readouterr().err == ""


def _scheduler(main: str):
    net = nn.Sequential(nn.Linear(2, 2))
    plan = Plan(lr=0.1, schedule={"main": main, "total": 10} if main != "plateau" else {"main": "plateau"})
    return plan.scheduler(plan.optimizer(net))


@pytest.mark.parametrize("main", ["cosine", "plateau"])
def test_deprecated_step_epoch_is_refused(main):
    from paramgroups.errors import PlanError

    sched = _scheduler(main)
    with pytest.raises(PlanError, match=r"deprecated scheduler.step\(epoch\) is not supported"):
        sched.step(epoch=3)
    with pytest.raises(PlanError, match=r"deprecated scheduler.step\(epoch\)"):
        sched.step(3)  # positional: an epoch number, never read as a metric
    assert sched.last_epoch == 0


def test_plateau_takes_float_and_keyword_metrics():
    sched = _scheduler("plateau")
    sched.step(0.5)
    sched.step(metrics=torch.tensor(0.4))
    assert sched.last_epoch == 2 and sched.best == pytest.approx(0.4)
