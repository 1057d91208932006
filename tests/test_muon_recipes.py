"""The Muon + AdamW recipes (examples/plans/muon_*.yaml) on real models: who steps which
parameter, with which settings, and a few training steps that move every trainable parameter;
the example script that trains with the transformer recipe; the CLI's view of the split."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from paramgroups import Plan, audit
from paramgroups.composite import CompositeOptimizer

from conftest import run_cli, run_example

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
TRANSFORMER = ROOT / "examples" / "plans" / "muon_transformer.yaml"
CNN = ROOT / "examples" / "plans" / "muon_cnn.yaml"
EXAMPLE = ROOT / "examples" / "muon_hybrid.py"
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def llama(tied: bool = False) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                      max_position_embeddings=32, tie_word_embeddings=tied)
    return transformers.LlamaForCausalLM(config)


def routed(plan: Plan, model: nn.Module) -> dict[str, set[str]]:
    """optimizer name -> the canonical names of the parameters it steps."""
    out: dict[str, set[str]] = {}
    for a in plan.resolve(model).assignments:
        out.setdefault(a.optimizer, set()).add(a.record.name)
    return out


def train_moves_everything(model: nn.Module, opt: torch.optim.Optimizer, loss_of, steps: int = 3) -> None:
    """``steps`` steps; every trainable parameter ends different from where it started."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(steps):
        opt.zero_grad()
        loss_of(model).backward()
        opt.step()
    still = [n for n, p in model.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    assert still == []


def test_transformer_recipe_routes_the_hidden_matrices_to_muon():
    plan = Plan.load(TRANSFORMER)
    model = llama()
    muon = {f"model.layers.{i}.{m}.weight" for i in range(2) for m in PROJECTIONS}
    assert routed(plan, model) == {"muon": muon,
                                   "adamw": {n for n, _ in model.named_parameters()} - muon}
    assert "lm_head.weight" in routed(plan, model)["adamw"]
    tied = llama(tied=True)  # lm_head.weight is model.embed_tokens.weight: AdamW, one parameter
    assert routed(plan, tied) == {"muon": muon, "adamw": {n for n, _ in tied.named_parameters()} - muon}


def test_transformer_recipe_settings_and_training():
    plan = Plan.load(TRANSFORMER)
    model = llama()
    opt = plan.optimizer(model)
    assert isinstance(opt, CompositeOptimizer) and list(opt.optimizers) == ["adamw", "muon"]
    muon, adamw = opt.optimizers["muon"], opt.optimizers["adamw"]
    assert isinstance(muon, torch.optim.Muon) and type(adamw) is torch.optim.AdamW
    (mg,) = muon.param_groups
    assert (mg["lr"], mg["momentum"], mg["nesterov"], mg["weight_decay"], mg["ns_steps"]) == (0.02, 0.95, True, 0.01, 5)
    (ag,) = adamw.param_groups
    assert (ag["lr"], ag["betas"], ag["weight_decay"]) == (3e-4, (0.9, 0.95), 0.01)
    ids = torch.randint(0, 64, (2, 8))
    train_moves_everything(model, opt, lambda m: m(input_ids=ids, labels=ids).loss)


def test_transformer_recipe_audit():
    a = audit(llama(), Plan.load(TRANSFORMER))
    assert [(o["name"], o["class"], o["params"], o["implementation"]) for o in a.optimizers] == [
        ("adamw", "AdamW", 7, "fused"), ("muon", "Muon", 14, "for-loop")]
    assert a.problems == []


@pytest.mark.slow
def test_cnn_recipe_on_resnet_is_adamw_alone():
    """A ResNet's only 2-D weight is fc, its head: torch's Muon (2-D only) gets nothing."""
    plan = Plan.load(CNN)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    assert routed(plan, model) == {"adamw": {n for n, _ in model.named_parameters()}}
    opt = plan.optimizer(model)
    assert type(opt) is torch.optim.AdamW
    assert (opt.defaults["lr"], opt.defaults["betas"], opt.defaults["weight_decay"]) == (3e-4, (0.9, 0.95), 0.01)
    x = torch.randn(2, 3, 16, 16)
    train_moves_everything(model, opt, lambda m: m(x).square().mean(), steps=1)


def test_cnn_recipe_routes_convnext_mlps_to_muon():
    plan = Plan.load(CNN)
    with torch.device("meta"):
        model = torchvision.models.convnext_tiny(weights=None)
    linears = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert len(linears) == 2 * 18 + 1
    muon = linears - {"classifier.2.weight"}  # the head stays on AdamW
    assert routed(plan, model) == {"adamw": {n for n, _ in model.named_parameters()} - muon, "muon": muon}
    assert not any(len(p.shape) == 4 for n, p in model.named_parameters() if n in muon)


class SmallCNN(nn.Sequential):
    """Convolutions, a hidden Linear (a matrix for Muon) and a Linear head. (torch's Muon
    orthogonalizes in bfloat16, which the CPU multiplies slowly: a hidden layer of a real
    classifier, MobileNetV3's 1024x576, takes seconds per step here.)"""

    def __init__(self) -> None:
        super().__init__(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 32), nn.ReLU(),
                         nn.Linear(32, 10))


def test_cnn_recipe_training_with_a_hidden_classifier_layer():
    plan = Plan.load(CNN)
    torch.manual_seed(0)
    model = SmallCNN()
    assert routed(plan, model)["muon"] == {"6.weight"}
    opt = plan.optimizer(model)
    assert isinstance(opt, CompositeOptimizer)
    (mg,) = opt.optimizers["muon"].param_groups
    assert (mg["lr"], mg["momentum"], mg["weight_decay"]) == (0.02, 0.95, 0.01)
    x = torch.randn(4, 3, 8, 8)
    train_moves_everything(model, opt, lambda m: m(x).square().mean())


@pytest.mark.slow
def test_the_example_trains_with_the_hybrid():
    run = run_example(EXAMPLE, "--steps", 6)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    rows = [line.split() for line in out.splitlines() if re.match(r"(adamw|muon) +(AdamW|Muon) ", line)]
    assert [r[:4] for r in rows] == [["adamw", "AdamW", "1", "7"], ["muon", "Muon", "1", "14"]]
    assert "CompositeOptimizer (adamw: fused, muon: for-loop)" in out
    steps = re.findall(r"step (\d): loss ([\d.]+)  lr muon ([\d.e-]+)  adamw ([\d.e-]+)", out)
    assert [int(s[0]) for s in steps] == list(range(6))
    assert [(float(m), float(a)) for _, _, m, a in steps[:3]] == [(0.0, 0.0), (0.01, 0.00015), (0.02, 0.0003)]
    losses = [float(s[1]) for s in steps]
    assert losses[-1] < losses[2] < losses[0]


@pytest.mark.slow
def test_inspect_shows_the_split(capsys):
    code, out, _ = run_cli(capsys, "inspect", "convnext_tiny", "--rules", CNN, "--depth", "1")
    assert code == 0
    rows = [line.split() for line in out.splitlines() if re.match(r"(adamw|muon) +(AdamW|Muon) ", line)]
    assert [r[:5] for r in rows] == [["adamw", "AdamW", "1", "146", "2,710,600"],
                                     ["muon", "Muon", "1", "36", "25,878,528"]]
    code, out, _ = run_cli(capsys, "inspect", "resnet18", "--rules", CNN)
    assert code == 0 and out.splitlines()[-2].split() == ["optimizer", "step", "AdamW", "(fused)"]
    code, out, _ = run_cli(capsys, "check", "convnext_tiny", "--rules", CNN)
    assert (code, out) == (0, "ok: 182 parameters in 2 groups, 0 of 28,589,128 elements frozen, "
                              "0 expectation(s) hold\n")
