"""Checkpoints as the CLI reads them: training checkpoints that hold a state dict, keys that
are no names, DDP-prefixed names, and what `diff` counts and measures between two files."""

from __future__ import annotations

import torch
import torchvision

from paramgroups.snapshots import max_abs_diff

from conftest import run_cli as run
from stagenet import Net


def test_checkpoints_with_non_string_keys_are_bad_input(capsys, tmp_path):
    torch.save({0: torch.zeros(3), "a.weight": torch.zeros(2)}, tmp_path / "intkey.pt")
    code, _, err = run(capsys, "inspect", tmp_path / "intkey.pt")
    assert code == 2 and "is not a name" in err


def test_tutorial_style_training_checkpoint_uses_the_model_state_dict(capsys, tmp_path):
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
    model = torchvision.models.resnet18()
    torch.save(model.state_dict(), tmp_path / "a.pt")
    with torch.no_grad():
        model.bn1.weight.add_(1)
    torch.save(model.state_dict(), tmp_path / "b.pt")
    (tmp_path / "p.yaml").write_text("rules:\n  - modules: [BatchNorm2d]\n    freeze: true\n")
    code, out, _ = run(capsys, "diff", tmp_path / "a.pt", tmp_path / "b.pt", "--rules", tmp_path / "p.yaml",
                       "--model", "resnet18")
    assert code == 1 and "bn1.weight" in out and out.splitlines()[-1].endswith("1 frozen tensor(s) moved")


def test_complex_differences_are_measured():
    a = torch.zeros(2, dtype=torch.complex64)
    b = torch.tensor([0, 1j], dtype=torch.complex64)
    assert max_abs_diff(a, b) == 1.0
