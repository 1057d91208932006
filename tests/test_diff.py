"""`paramgroups diff` and snapshot/changed: what moved, and whether the plan said it was frozen."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import save_file

import paramgroups
from paramgroups import Plan, Rule

from conftest import run_cli as run
import stagenet


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    """Checkpoints of stagenet's progressive run at steps 0, 3 (epoch 1) and 9 (epoch 3)."""
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model, opt, sched = stagenet.setup("cosine")
    torch.save(model.state_dict(), d / "s0.pt")
    stagenet.train(model, opt, sched, 0, 3)
    torch.save({"model": model.state_dict(), "epoch": 1}, d / "s3.pt")
    stagenet.train(model, opt, sched, 3, 9)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "s9.safetensors"))
    (d / "plan.yaml").write_text(yaml.safe_dump(stagenet.make_plan("cosine").to_dict()))
    return d


def test_diff_lists_changed_tensors_and_passes_when_frozen_ones_held(capsys, run_files):
    d = run_files
    code, out, err = run(capsys, "diff", d / "s0.pt", d / "s3.pt", "--rules", d / "plan.yaml")
    assert (code, err) == (0, "")
    names = [line.split()[0] for line in out.splitlines()[2:-1]]
    assert names == ["fc.weight", "fc.bias"]
    assert out.splitlines()[-1] == "2 of 23 tensors changed; 0 frozen tensor(s) moved"


def test_diff_judged_at_an_epoch_flags_what_thawed_later(capsys, run_files):
    d = run_files
    code, out, _ = run(capsys, "diff", d / "s0.pt", d / "s9.safetensors", "--rules", d / "plan.yaml", "--at", 1)
    assert code == 1
    flagged = sorted(line.split()[0] for line in out.splitlines() if line.endswith("FROZEN"))
    assert flagged == ["layer2.0.bias", "layer2.0.weight", "layer2.1.bias", "layer2.1.num_batches_tracked",
                       "layer2.1.running_mean", "layer2.1.running_var", "layer2.1.weight"]
    assert out.splitlines()[-1] == "9 of 23 tensors changed; 7 frozen tensor(s) moved"
    code, _, _ = run(capsys, "diff", d / "s0.pt", d / "s9.safetensors", "--rules", d / "plan.yaml")
    assert code == 0  # layer2 thaws at epoch 2: not frozen for the whole run


def test_diff_catches_statistics_that_moved_in_a_frozen_layer(capsys, tmp_path):
    torch.manual_seed(0)
    model = stagenet.Net()
    torch.save(model.state_dict(), tmp_path / "a.pt")
    Plan([Rule("stem", freeze=True)], bn="train").optimizer(model)  # torch's behaviour: stats move
    model.train()
    model(torch.randn(4, 3, 8, 8))
    torch.save(model.state_dict(), tmp_path / "b.pt")
    (tmp_path / "p.yaml").write_text("rules:\n  - match: stem\n    freeze: true\n")
    code, out, _ = run(capsys, "diff", tmp_path / "a.pt", tmp_path / "b.pt", "--rules", tmp_path / "p.yaml")
    assert code == 1
    assert "stem.1.running_mean" in [line.split()[0] for line in out.splitlines() if line.endswith("FROZEN")]


def test_diff_without_plan_and_identical_files(capsys, run_files):
    d = run_files
    code, out, _ = run(capsys, "diff", d / "s0.pt", d / "s0.pt")
    assert (code, out) == (0, "0 of 23 tensors changed\n")


@pytest.mark.parametrize("args,needle", [
    (["diff", "missing.pt", "missing2.pt"], "missing.pt: no such file"),
    (["diff", "{d}/s0.pt"], "Missing argument 'AFTER'"),
    (["diff", "{d}/s0.pt", "{d}/s3.pt", "--at", "x"], "--at"),
])
def test_diff_bad_input(capsys, run_files, args, needle):
    code, out, err = run(capsys, *[a.format(d=run_files) for a in args])
    assert code == 2 and out == "" and err.count("\n") == 1 and needle in err


def test_snapshot_and_changed():
    torch.manual_seed(0)
    model = stagenet.Net()
    snap = paramgroups.snapshot(model)
    assert paramgroups.changed(model, snap) == {}
    with torch.no_grad():
        model.fc.bias.add_(0.5)
    assert paramgroups.changed(model, snap) == {"fc.bias": pytest.approx(0.5)}
