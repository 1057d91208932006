"""The examples run end to end and their plans build the groups they claim."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from conftest import run_example


ROOT = Path(__file__).resolve().parents[1]
FINETUNE = ROOT / "examples" / "finetune_resnet18.py"


def _resnet18() -> nn.Module:
    return torchvision.models.resnet18(weights=None, num_classes=10)


def _expected(name: str, model: nn.Module) -> tuple[float, float, bool]:
    """(lr, weight_decay, frozen) that the example's plan should give parameter ``name``."""
    module = model.get_submodule(name.rpartition(".")[0])
    no_decay = name.endswith(".bias") or isinstance(module, nn.BatchNorm2d)
    return (1e-2 if name.startswith("fc.") else 1e-3, 0.0 if no_decay else 1e-4,
            name.startswith(("conv1.", "bn1.")))


@pytest.mark.slow  # runs the example script in a subprocess
def test_finetune_resnet18_runs():
    proc = run_example(FINETUNE, "--steps", 2, "--batch-size", 4, "--image-size", 32, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    rows = [line.split() for line in lines]
    assert ["name", "shape", "numel", "module", "group", "base", "lr", "lr@step0", "wd", "trainable",
            "rules"] in rows  # the audit's header row
    model = _resnet18()
    conv1, fc = model.conv1.weight, model.fc.weight
    assert ["conv1.weight", "x".join(map(str, conv1.shape)), f"{conv1.numel():,}", "Conv2d",
            "0", "0.001", "0.001", "0.0001", "no", "(rule", "0)", "0"] in rows
    assert ["fc.weight", "x".join(map(str, fc.shape)), f"{fc.numel():,}", "Linear",
            "4", "0.01", "0.01", "0.0001", "yes", "2"] in rows
    steps = [line for line in lines if line.startswith("step ")]
    assert [s.split("  loss ")[0] for s in steps] == ["step 1/2", "step 2/2"]
    assert lines[-3:-2] == [""] and lines[-2:] == steps  # the audit, a blank line, the steps


@pytest.mark.slow  # trains a ResNet-18 for two steps
def test_finetune_resnet18_training_keeps_the_stem_and_moves_the_head(capsys):
    ns = runpy.run_path(str(FINETUNE), run_name="finetune_resnet18")
    args = ns["parse_args"](["--steps", "2", "--batch-size", "4", "--image-size", "32"])
    model = _resnet18()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ns["train"](model, ns["make_plan"](), args)
    after = model.state_dict()
    stem = [k for k in before if k.startswith(("conv1.", "bn1."))]  # bn1's running statistics too
    head = [k for k in before if k.startswith("fc.")]
    assert (len(stem), head) == (6, ["fc.weight", "fc.bias"])
    assert [k for k in stem if not torch.equal(before[k], after[k])] == []
    assert [k for k in head if torch.equal(before[k], after[k])] == []
    assert [line.split("  loss ")[0] for line in capsys.readouterr().out.splitlines()] == ["step 1/2", "step 2/2"]


def test_finetune_resnet18_plan_groups():
    make_plan = runpy.run_path(str(FINETUNE), run_name="finetune_resnet18")["make_plan"]
    model = _resnet18()
    optimizer = make_plan().optimizer(model)

    expected: dict[tuple[float, float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():  # groups come in first-parameter order
        expected.setdefault(_expected(name, model), []).append(param)
    want = [(lr, wd, len(params)) for (lr, wd, frozen), params in expected.items()]
    got = [(g["lr"], g["weight_decay"], len(g["params"])) for g in optimizer.param_groups]
    assert got == want
    assert want == [(1e-3, 1e-4, 1), (1e-3, 0.0, 2), (1e-3, 1e-4, 19), (1e-3, 0.0, 38), (1e-2, 1e-4, 1),
                    (1e-2, 0.0, 1)]
    assert [g["name"] for g in optimizer.param_groups] == [  # named by the rules that make them
        "conv1,bn1, frozen", "conv1,bn1 + bias,norm, frozen", "layer*", "layer* + bias,norm", "fc",
        "fc + bias,norm"]
    for group, params in zip(optimizer.param_groups, expected.values()):
        assert [id(p) for p in group["params"]] == [id(p) for p in params]
        assert group["momentum"] == 0.9
    assert isinstance(optimizer, torch.optim.SGD)
    assert model.conv1.weight.requires_grad is False
    assert not model.bn1.weight.requires_grad and not model.bn1.bias.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith(("conv1.", "bn1.")))
