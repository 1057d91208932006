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


# -- LoRA+ -------------------------------------------------------------------------------


class Small(torch.nn.Module):
    """An embedding, a LayerNorm (its parameters trained: B without decay) and two linears."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 8)
        self.fc = torch.nn.Linear(8, 8)
        self.ln = torch.nn.LayerNorm(8)
        self.head = torch.nn.Linear(8, 2)


def lora_models():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, attention_bias=True)
    llama = peft.get_peft_model(transformers.LlamaForCausalLM(cfg), peft.LoraConfig(
        r=2, target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"], bias="all"))
    llama.base_model.model.model.norm.weight.requires_grad_(True)  # 1-d, not a LayerNorm: B with decay
    small = peft.get_peft_model(Small(), peft.LoraConfig(r=2, target_modules=["emb", "fc", "head"]))
    for p in small.base_model.model.ln.parameters():
        p.requires_grad_(True)
    return {"llama": llama, "small": small}


def settings_by_param(optimizer: torch.optim.Optimizer) -> dict[int, tuple[float, float]]:
    return {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


@pytest.mark.parametrize("which", ["llama", "small"])
@pytest.mark.parametrize("embedding_lr, weight_decay", [(None, 0.05), (1e-5, 0.0)])
def test_loraplus_equals_peft_parameter_by_parameter(which, embedding_lr, weight_decay):
    from peft.optimizers import create_loraplus_optimizer

    model = lora_models()[which]
    extra = {} if embedding_lr is None else {"loraplus_lr_embedding": embedding_lr}
    theirs = settings_by_param(create_loraplus_optimizer(
        model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16, loraplus_weight_decay=weight_decay, **extra))
    loraplus = {"ratio": 16} if embedding_lr is None else {"ratio": 16, "embedding_lr": embedding_lr}
    plan = Plan(optimizer="adamw", lr=1e-3, weight_decay=weight_decay, loraplus=loraplus)
    ours = settings_by_param(plan.optimizer(model))
    names = {id(p): n for n, p in model.named_parameters()}
    assert len(theirs) == sum(p.requires_grad for p in model.parameters())
    assert {names[i]: ours[i] for i in theirs} == {names[i]: v for i, v in theirs.items()}
    lrs = {v[0] for v in theirs.values()}
    assert lrs == {1e-3, 16e-3, embedding_lr or 1e-6}  # all three LRs occur
    if weight_decay:
        assert {v[1] for v in theirs.values()} == {0.0, weight_decay}  # and B without decay


def test_loraplus_weight_decay_and_plan_file():
    model = lora_models()["llama"]
    plan = Plan.from_dict({"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.1,
                           "loraplus": {"ratio": 8, "weight_decay": 0.01}})
    assert plan.to_dict()["loraplus"] == {"ratio": 8, "embedding_lr": 1e-6, "weight_decay": 0.01}
    assert Plan.from_dict(plan.to_dict()) == plan
    res = plan.resolve(model)
    trained = [a for a in res.assignments if not a.frozen]
    assert {a.weight_decay for a in trained} == {0.0, 0.01}
    assert any("loraplus" in g.name for g in res.groups)  # the audit says which rules made a group
    from paramgroups.errors import PlanError

    with pytest.raises(PlanError, match="loraplus needs ratio"):
        Plan(lr=0.1, loraplus={"embedding_lr": 1e-5})
    with pytest.raises(PlanError, match="unknown field 'ration'.*did you mean 'ratio'"):
        Plan(lr=0.1, loraplus={"ration": 16})
    with pytest.raises(PlanError, match="loraplus ratio must be a finite number"):
        Plan(lr=0.1, loraplus={"ratio": -1})
