"""PEFT models: canonical names without PEFT's wrapper segments, adapter kinds (active adapter
only), `within`, and LoRA+ equal to peft's own create_loraplus_optimizer, parameter by
parameter. Tiny Llama from a LlamaConfig on the CPU; nothing downloads."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from paramgroups import Plan, Rule, audit
from paramgroups.inventory import inventory

pytestmark = pytest.mark.slow  # importing transformers and peft alone takes seconds

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

TARGETS = ["q_proj", "v_proj", "embed_tokens"]


def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                   num_attention_heads=2, num_key_value_heads=2)
    return transformers.LlamaForCausalLM(cfg)


def lora_llama(targets: list[str] = TARGETS) -> torch.nn.Module:
    return peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=2, target_modules=targets))


def names(model: torch.nn.Module, **rule) -> set[str]:
    res = Plan([Rule(**rule, lr=1.0)], lr=0.1).resolve(model)
    return {a.record.name for a in res.assignments if a.lr == 1.0}


def test_canonical_names_drop_peft_wrappers():
    bare, wrapped = tiny_llama(), lora_llama()
    records = inventory(wrapped)
    base = [r.name for r in records if "lora_" not in r.name]
    assert base == [n for n, _ in bare.named_parameters()]
    assert "model.layers.0.self_attn.q_proj.lora_A.default.weight" in {r.name for r in records}
    q = next(r for r in records if r.name == "model.layers.0.self_attn.q_proj.weight")
    assert (q.module, q.module_class) == ("model.layers.0.self_attn.q_proj", "Linear")
    rows = audit(wrapped).parameters
    assert rows[0]["name"] == "model.embed_tokens.weight"


def test_one_plan_gives_the_same_base_settings_bare_and_wrapped():
    plan = Plan.from_dict({"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.1, "no_decay": True, "rules": [
        {"match": "model.layers.{-1..-1}", "lr_mult": 2.0},
        {"match": "**.self_attn.{q,v}_proj", "weight_decay": 0.01},
        {"modules": "Embedding", "lr": 1e-4},
        {"match": "lm_head", "freeze": True}]})
    bare, wrapped = plan.resolve(tiny_llama()), plan.resolve(lora_llama())
    want = {a.record.name: (a.lr, a.weight_decay, a.rules) for a in bare.assignments}
    got = {a.record.name: (a.lr, a.weight_decay, a.rules) for a in wrapped.assignments
           if "adapter" not in a.record.kinds}
    assert got == want
    assert {a.record.name for a in wrapped.assignments if a.frozen_by == "rule 3"} == {"lm_head.weight"}


def test_adapter_kinds_select_the_active_adapter_only():
    model = lora_llama()
    model.add_adapter("second", peft.LoraConfig(r=2, target_modules=["q_proj"]))
    by_name = names(model, match="**.lora_*")
    assert {n.split(".")[-2] for n in by_name if ".lora_A." in n or ".lora_B." in n} == {"default", "second"}
    adapter = names(model, kinds="adapter")
    trainable = {r.name for r in inventory(model) if r.param.requires_grad}
    assert adapter == trainable == {n for n in by_name if "second" not in n}
    assert "model.embed_tokens.lora_embedding_A.default" in adapter
    assert names(model, kinds="lora_A") == {n for n in adapter if ".lora_A.default." in n}
    assert names(model, kinds="lora_B") == {n for n in adapter if ".lora_B.default." in n}
    model.set_adapter("second")
    assert names(model, kinds="adapter") == {n for n in by_name if "second" in n}


@pytest.mark.parametrize("config", [
    lambda: peft.IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]),
    lambda: peft.LoHaConfig(r=2, target_modules=["q_proj", "v_proj"]),
])
def test_adapter_kind_covers_other_peft_methods(config):
    model = peft.get_peft_model(tiny_llama(), config())
    adapter = names(model, kinds="adapter")
    assert adapter and adapter == {r.name for r in inventory(model) if r.param.requires_grad}
    assert not names(model, kinds="adapter", match="**.base_layer.**", optional=True)


def test_importing_paramgroups_imports_no_peft():
    code = "import sys, paramgroups; print('peft' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# -- within ------------------------------------------------------------------------------


def test_within_selects_by_an_enclosing_class():
    bare, wrapped = tiny_llama(), lora_llama()
    attention = {n for n, _ in bare.named_parameters() if ".self_attn." in n}
    assert names(bare, within="LlamaAttention") == attention
    assert names(bare, within=["*DecoderLayer"]) == {n for n, _ in bare.named_parameters() if ".layers." in n}
    assert names(bare, within="LlamaAttention", kinds="weight", match="model.layers.{-1..-1}") == {
        n for n in attention if n.startswith("model.layers.2.")}
    # LoraLayer is a mixin, not an nn.Module base; a LoRA layer encloses its base layer too
    assert names(wrapped, within="LoraLayer") == {
        r.name for r in inventory(wrapped) if any(f"{t}." in r.name for t in TARGETS)}
    assert names(wrapped, within="LoraLayer", kinds="adapter") == names(wrapped, kinds="adapter")


def test_within_round_trips_and_is_validated():
    plan = Plan.from_dict({"lr": 0.1, "rules": [{"within": "LlamaAttention", "lr_mult": 2.0},
                                                {"within": ["*MLP", "LoraLayer"], "weight_decay": 0.0}]})
    assert plan.to_dict()["rules"] == [{"match": "**", "within": "LlamaAttention", "lr_mult": 2.0},
                                       {"match": "**", "within": ["*MLP", "LoraLayer"], "weight_decay": 0.0}]
    assert Plan.from_dict(plan.to_dict()) == plan
    from paramgroups.errors import RuleError, UnmatchedRuleError

    with pytest.raises(RuleError, match="within must be a string or a list of strings"):
        Rule(within=3)
    with pytest.raises(RuleError, match="within must name at least one class"):
        Rule(within=[])
    with pytest.raises(UnmatchedRuleError, match=r"within \['GPT2Block'\] matches no parameter"):
        Plan([Rule(within="GPT2Block", lr=1.0)], lr=0.1).resolve(tiny_llama())
