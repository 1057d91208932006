"""The language-model recipes: examples/plans/*.yaml on tiny Llamas, the LoRA example, and
mixture-of-experts models (fused expert tensors, routers)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch

from paramgroups import Plan, Rule
from paramgroups.timeline import Timeline

from conftest import run_example

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
PLANS = ROOT / "examples" / "plans"
LORA_EXAMPLE = ROOT / "examples" / "lora_llama.py"


def llama(layers: int = 2, device: str = "meta") -> torch.nn.Module:
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=layers, num_attention_heads=2,
                                      num_key_value_heads=1, max_position_embeddings=32)
    with torch.device(device):
        return transformers.LlamaForCausalLM(config)


def settings(plan: Plan, model: torch.nn.Module) -> dict[str, tuple[float, float, bool]]:
    """name -> (lr, weight decay, frozen) at step 0."""
    return {a.record.name: (a.lr, a.weight_decay, a.frozen) for a in plan.resolve(model).assignments}


def is_no_decay(name: str) -> bool:
    return name.endswith("norm.weight") or name == "model.embed_tokens.weight"


def test_full_finetune_lm() -> None:
    plan = Plan.load(PLANS / "full_finetune_lm.yaml")
    got = settings(plan, llama(2))
    assert len(got) == 21
    for name, (lr, wd, frozen) in got.items():
        assert not frozen, name
        assert lr == pytest.approx(2e-6 if name == "model.embed_tokens.weight" else 2e-5), name
        assert wd == (0.0 if is_no_decay(name) else 0.1), name
    assert got["lm_head.weight"] == (pytest.approx(2e-5), 0.1, False)
    assert got["model.layers.1.mlp.down_proj.weight"] == (pytest.approx(2e-5), 0.1, False)
    assert got["model.norm.weight"] == (pytest.approx(2e-5), 0.0, False)


@pytest.mark.parametrize("layers", [2, 4])
def test_last_n_layers(layers: int) -> None:
    plan = Plan.load(PLANS / "last_n_layers.yaml")
    got = settings(plan, llama(layers))
    top = (f"model.layers.{layers - 2}.", f"model.layers.{layers - 1}.", "model.norm.", "lm_head.")
    trainable = {n for n, (_, _, frozen) in got.items() if not frozen}
    assert trainable == {n for n in got if n.startswith(top)}
    assert len(trainable) == 2 * 9 + 2
    if layers == 4:
        assert "model.layers.1.self_attn.q_proj.weight" not in trainable
        assert "model.layers.2.self_attn.q_proj.weight" in trainable
    assert "model.embed_tokens.weight" not in trainable
    for name, (lr, wd, _) in got.items():
        assert lr == pytest.approx(1e-5) and wd == (0.0 if is_no_decay(name) else 0.01), name


def test_staged_unfreeze_lm() -> None:
    plan = Plan.load(PLANS / "staged_unfreeze_lm.yaml")
    model = llama(4)
    res = plan.resolve(model)
    names = [a.record.name for a in res.assignments]

    def trainable(epoch: float) -> set[str]:
        t = Timeline.of(plan, res)
        return {n for n, by in zip(names, t.frozen_by(t.step_of(epoch))) if by is None}

    head = {"model.norm.weight", "lm_head.weight"}
    layer = lambda i: {n for n in names if n.startswith(f"model.layers.{i}.")}  # noqa: E731
    assert trainable(0) == head
    assert trainable(1) == head | layer(2) | layer(3)
    assert trainable(2) == head | layer(0) | layer(1) | layer(2) | layer(3)
    assert trainable(3) == set(names)
    for a in res.assignments:
        assert a.lr == pytest.approx(1e-5)
        assert a.weight_decay == (0.0 if is_no_decay(a.record.name) else 0.01), a.record.name


def test_loraplus_plan_on_peft_llama() -> None:
    model = peft.get_peft_model(llama(2, "cpu"), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    plan = Plan.load(PLANS / "loraplus.yaml")
    got = settings(plan, model)
    lora = {n for n in got if ".lora_" in n}
    assert len(lora) == 8
    assert {n for n, (_, _, frozen) in got.items() if not frozen} == lora  # the base stays as peft froze it
    for name in lora:
        lr, wd, _ = got[name]
        assert lr == pytest.approx(3.2e-3 if ".lora_B." in name else 2e-4) and wd == 0.01, name
    optimizer = plan.optimizer(model)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    named = {a.record.name: a.record.param for a in plan.resolve(model).assignments}
    assert {n for n, p in named.items() if id(p) in in_optimizer} == lora  # peft's frozen base: not in it
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".lora_" not in n)


@pytest.mark.slow  # runs the example script in a subprocess
def test_lora_llama_example_runs() -> None:
    proc = run_example(LORA_EXAMPLE, "--steps", 3, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [line.split(": loss ")[0] for line in lines[-3:]] == ["step 0", "step 1", "step 2"]
    assert "model.layers.0.self_attn.q_proj.lora_B.default.weight" in proc.stdout


def test_lora_llama_example_trains_only_the_adapters(capsys) -> None:
    ns = runpy.run_path(str(LORA_EXAMPLE), run_name="lora_llama")
    torch.manual_seed(0)
    model = ns["make_model"]()
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    adapters = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    ns["train"](model, ns["make_plan"](), steps=3, batch_size=4)
    params = dict(model.named_parameters())
    assert (len(base), len(adapters)) == (21, 8)
    assert {n for n, p in params.items() if not p.requires_grad} == set(base)  # still as peft froze it
    assert [n for n, v in base.items() if not torch.equal(params[n], v)] == []
    assert [n for n, v in adapters.items() if torch.equal(params[n], v)] == []
    assert [line.split(": loss ")[0] for line in capsys.readouterr().out.splitlines()] == [
        "step 0", "step 1", "step 2"]


def mixtral(layers: int = 2) -> torch.nn.Module:
    config = transformers.MixtralConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                                        num_local_experts=4, num_experts_per_tok=2)
    with torch.device("meta"):
        return transformers.MixtralForCausalLM(config)


def test_fused_moe_experts_are_weights() -> None:
    from paramgroups.inventory import inventory

    recs = {r.name: r for r in inventory(mixtral())}
    assert recs["model.layers.0.mlp.experts.gate_up_proj"].shape == (4, 64, 16)
    for name in ("model.layers.0.mlp.experts.gate_up_proj", "model.layers.1.mlp.experts.down_proj"):
        assert recs[name].kinds == frozenset({"weight"}), name
    assert recs["model.layers.0.mlp.gate.weight"].kinds == frozenset({"weight", "matrix"})  # the router
    assert recs["model.layers.0.mlp.gate.weight"].module_class == "MixtralTopKRouter"
    assert recs["model.embed_tokens.weight"].kinds == frozenset({"weight", "embedding"})
    assert recs["model.norm.weight"].kinds == frozenset({"weight", "norm", "ndim<=1"})


def test_rule_freezes_exactly_the_moe_routers() -> None:
    model = mixtral()
    plan = Plan([Rule("**.mlp.gate", freeze=True)], lr=1e-4, optimizer="adamw")
    got = settings(plan, model)
    assert {n for n, (_, _, frozen) in got.items() if frozen} == {
        "model.layers.0.mlp.gate.weight", "model.layers.1.mlp.gate.weight"}
    by_class = Plan([Rule(within="MixtralTopKRouter", freeze=True)], lr=1e-4, optimizer="adamw")
    assert settings(by_class, model) == got


def test_no_decay_leaves_fused_experts_decayed() -> None:
    plan = Plan([Rule("model.layers.{-1..-1}.mlp.experts", lr_mult=0.5)], lr=1e-4, weight_decay=0.1,
                optimizer="adamw", no_decay=True)
    got = settings(plan, mixtral())
    assert got["model.layers.0.mlp.experts.gate_up_proj"] == (pytest.approx(1e-4), 0.1, False)
    assert got["model.layers.0.mlp.experts.down_proj"] == (pytest.approx(1e-4), 0.1, False)
    # one LR for all the experts of a layer: the fused tensor is one parameter
    assert got["model.layers.1.mlp.experts.gate_up_proj"] == (pytest.approx(5e-5), 0.1, False)
    assert got["model.layers.1.mlp.experts.down_proj"] == (pytest.approx(5e-5), 0.1, False)
    assert got["model.layers.1.mlp.gate.weight"] == (pytest.approx(1e-4), 0.1, False)
    assert got["model.norm.weight"][1] == 0.0 and got["model.embed_tokens.weight"][1] == 0.0
    weights = Plan([Rule(kinds=["weight"], lr_mult=2.0)], lr=1e-4, optimizer="adamw")
    assert settings(weights, mixtral())["model.layers.0.mlp.experts.down_proj"][0] == pytest.approx(2e-4)
