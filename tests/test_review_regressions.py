"""Regression tests for bugs found in review: each failed before its fix."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

from paramgroups import Plan, Rule, Stage, audit
from paramgroups.errors import PlanError
from paramgroups.norms import is_held
from paramgroups.schedules import Schedule
from paramgroups.snapshots import max_abs_diff

from conftest import run_cli as run
from stagenet import Net


def test_models_with_held_norms_pickle_deepcopy_and_torch_save():
    model = Net()
    Plan([Rule("stem", freeze=True)]).optimizer(model)
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        clone.train()
        assert is_held(clone.stem[1]) and clone.stem[1].training is False
        assert clone.layer1[1].training is True
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    # a whole-module pickle this test just wrote: loading one needs the full unpickler
    assert is_held(torch.load(buf, weights_only=False).stem[1])


def test_epochs_become_steps_for_step_schedules_too():
    plan = Plan(lr=0.1, schedule=Schedule("linear", total=300, unit="step"))
    assert [plan.factor_at(e, steps_per_epoch=100) * 0.1 for e in range(3)] == pytest.approx(
        [0.1, 0.1 * 2 / 3, 0.1 / 3], rel=1e-12)


def test_inspect_at_with_a_step_schedule_and_epoch_stages(capsys, tmp_path):
    (tmp_path / "p.yaml").write_text("lr: 0.1\nschedule: {main: linear, total: 300, unit: step}\n"
                                     "rules: [{match: layer4, freeze: true}]\n"
                                     "stages: [{epoch: 1, unfreeze: layer4}]\n")
    code, out, _ = run(capsys, "inspect", "resnet18", "--rules", tmp_path / "p.yaml", "--at", 2,
                       "--steps-per-epoch", 100, "--format", "json")
    assert code == 0
    import json

    row = {r["name"]: r for r in json.loads(out)["parameters"]}["layer4.0.conv1.weight"]
    assert row["trainable"] is True and row["lr"] == pytest.approx(0.1 / 3, rel=1e-12)


def test_fractional_stage_epochs_never_act_early():
    model = Net()
    plan = Plan([Rule("layer1", freeze=True)], lr=0.1, stages=[Stage(epoch=0.5, unfreeze="layer1")])
    opt = plan.optimizer(model)
    sched = plan.scheduler(opt, steps_per_epoch=3)
    seen = []
    for _ in range(4):
        seen.append(model.layer1[0].weight.requires_grad)
        opt.step()
        sched.step()
    assert seen == [False, False, True, True]  # epoch 0.5 of 3 steps is step 1.5: the first step after is 2
    plan = Plan([Rule("layer1", freeze=True)], lr=0.1, stages=[Stage(epoch=1.5, unfreeze="layer1")])
    sched = plan.scheduler(plan.optimizer(model))
    states = []
    for _ in range(3):
        states.append(model.layer1[0].weight.requires_grad)
        sched.optimizer.step()
        sched.step()
    assert states == [False, False, True]


@pytest.mark.parametrize("at", ["inf", "nan"])
def test_non_finite_at_is_bad_input(capsys, at):
    code, _, err = run(capsys, "inspect", "resnet18", "--at", at)
    assert code == 2 and err.count("\n") == 1 and "finite" in err


def test_checkpoints_with_non_string_keys_are_bad_input(capsys, tmp_path):
    torch.save({0: torch.zeros(3), "a.weight": torch.zeros(2)}, tmp_path / "intkey.pt")
    code, _, err = run(capsys, "inspect", tmp_path / "intkey.pt")
    assert code == 2 and "is not a name" in err


def test_tutorial_style_training_checkpoint_uses_the_model_state_dict(capsys, tmp_path, resnet18_meta):
    import torchvision

    model = torchvision.models.resnet18()
    torch.save({"epoch": 3, "model_state_dict": model.state_dict(), "loss": torch.tensor(0.25)},
               tmp_path / "ckpt.pt")
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    code, out, _ = run(capsys, "inspect", tmp_path / "ckpt.pt", "--format", "csv")
    assert code == 0 and len(out.splitlines()) == 63
    code, out, _ = run(capsys, "diff", tmp_path / "plain.pt", tmp_path / "ckpt.pt")
    assert (code, out) == (0, "0 of 122 tensors changed\n")


def test_diff_counts_canonical_tensors(capsys, tmp_path):
    sd = Net().state_dict()
    torch.save(sd, tmp_path / "a.pt")
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "b.pt")
    assert run(capsys, "diff", tmp_path / "a.pt", tmp_path / "b.pt")[1] == f"0 of {len(sd)} tensors changed\n"


def test_diff_resolves_the_plan_against_a_model_when_given(capsys, tmp_path):
    import torchvision

    model = torchvision.models.resnet18()
    torch.save(model.state_dict(), tmp_path / "a.pt")
    with torch.no_grad():
        model.bn1.weight.add_(1)
    torch.save(model.state_dict(), tmp_path / "b.pt")
    (tmp_path / "p.yaml").write_text("rules:\n  - modules: [BatchNorm2d]\n    freeze: true\n")
    code, out, _ = run(capsys, "diff", tmp_path / "a.pt", tmp_path / "b.pt", "--rules", tmp_path / "p.yaml",
                       "--model", "resnet18")
    assert code == 1 and "bn1.weight" in out and out.splitlines()[-1].endswith("1 frozen tensor(s) moved")


def test_cli_overrides_are_named_in_errors(capsys, tmp_path):
    (tmp_path / "a.yaml").write_text("optimizer: sgd\nlr: 0.1\n")
    code, _, err = run(capsys, "inspect", "resnet18", "--rules", tmp_path / "a.yaml", "--lr", "-1")
    assert code == 2 and err.startswith("paramgroups: error: --lr: lr must be a finite number >= 0")
    code, _, err = run(capsys, "inspect", "resnet18", "--rules", tmp_path / "a.yaml", "--optimizer", "adamw2")
    assert code == 2 and err.startswith("paramgroups: error: --optimizer: unknown optimizer 'adamw2'")


def test_huggingface_helper_refuses_an_epoch_warmup_without_steps_per_epoch():
    from paramgroups.integrations.huggingface import optimizers

    with pytest.raises(PlanError, match="give steps_per_epoch"):
        optimizers(Plan(lr=0.1, schedule=Schedule("constant", warmup=2)), Net())


def test_collapsed_rows_have_no_single_shape(resnet18_meta):
    rows = {r["name"]: r for r in audit(resnet18_meta).collapse(1).parameters}
    assert rows["bn1"]["shape"] == "mixed" and rows["bn1"]["numel"] == 128
    assert rows["conv1"]["shape"] == [64, 3, 7, 7]


def test_complex_differences_are_measured():
    a = torch.zeros(2, dtype=torch.complex64)
    b = torch.tensor([0, 1j], dtype=torch.complex64)
    assert max_abs_diff(a, b) == 1.0


def test_hand_built_optimizer_implementation_follows_torchs_default(toy):
    opt = torch.optim.AdamW(toy.parameters(), lr=0.1)  # foreach=None: torch decides by device
    assert audit(toy, optimizer=opt).implementation == "for-loop"  # CPU parameters
