"""A plan changes requires_grad only where it says so; frozen means not moving; tied conflicts.

The PEFT, PatchTST and GPT-2 cases are the ones where the defects were found, on the real
libraries (tiny models built from config objects, on the CPU; nothing downloads).
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from paramgroups import Plan, Rule, Stage, audit
from conftest import run_cli
from paramgroups.errors import RuleError


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2)
    return LlamaForCausalLM(cfg)


def _lora_llama():
    from peft import LoraConfig, get_peft_model

    return get_peft_model(_tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_plan_leaves_a_peft_base_frozen_and_out_of_the_optimizer():
    model = _lora_llama()
    before = _trainable(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert before == 512 and len(frozen) == 21
    opt = Plan(lr=1e-2, optimizer="adamw").optimizer(model)
    assert _trainable(model) == before
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters() if p.requires_grad}
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    for _ in range(4):
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())


def test_audit_without_a_plan_reports_the_models_real_requires_grad():
    model = _lora_llama()
    a = audit(model)
    assert a.totals["trainable"] == 512 and a.totals["numel"] == 7760
    rows = {r["name"]: r for r in a.parameters}
    base = rows["model.embed_tokens.weight"]  # canonical: no PEFT wrapper segments
    assert (base["trainable"], base["frozen_by"], base["group"]) == (False, "model", None)
    lora = rows["model.layers.0.self_attn.q_proj.lora_A.default.weight"]
    assert (lora["trainable"], lora["frozen_by"]) == (True, None)
    assert a.problems == []
    assert "no (model)" in a.to_table()


def test_patchtst_sincos_positions_do_not_move():
    from transformers import PatchTSTConfig, PatchTSTForPrediction

    torch.manual_seed(0)
    cfg = PatchTSTConfig(num_input_channels=2, context_length=32, patch_length=8, patch_stride=8,
                         prediction_length=4, d_model=16, num_attention_heads=2, num_hidden_layers=1,
                         ffn_dim=32, positional_encoding_type="sincos")
    model = PatchTSTForPrediction(cfg)
    pos = model.model.encoder.positional_encoder.position_enc
    assert not pos.requires_grad
    before = pos.detach().clone()
    opt = Plan(lr=1e-2, weight_decay=0.1, optimizer="adamw").optimizer(model)
    assert not pos.requires_grad
    out = model(past_values=torch.randn(3, 32, 2), future_values=torch.randn(3, 4, 2))
    out.loss.backward()
    opt.step()
    assert torch.equal(pos, before)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.body = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.norm(self.body(self.stem(x))))


def _net(frozen: str | None = None) -> Net:
    torch.manual_seed(0)
    net = Net()
    if frozen:
        getattr(net, frozen).requires_grad_(False)
    return net


def test_freeze_false_is_the_explicit_thaw():
    net = _net("stem")
    Plan().apply(net)
    assert not net.stem.weight.requires_grad  # nothing in the plan mentions stem
    Plan([Rule("body", lr=0.5)]).apply(net)
    assert not net.stem.weight.requires_grad  # a rule that sets other fields does not thaw
    Plan([Rule("stem", freeze=False)]).apply(net)
    assert net.stem.weight.requires_grad and net.stem.bias.requires_grad


def test_frozen_by_says_rule_stage_or_model():
    net = _net("stem")
    plan = Plan([Rule("body", freeze=True)], stages=[Stage(epoch=0, freeze="head"),
                                                     Stage(epoch=2, freeze="norm")])
    rows = {r["name"]: r for r in audit(net, plan).parameters}
    assert [rows[f"{m}.weight"]["frozen_by"] for m in ("stem", "body", "head", "norm")] == \
        ["model", "rule 0", "stage 0", None]
    later = {r["name"]: r for r in audit(net, plan, at=2).parameters}
    assert later["norm.weight"]["frozen_by"] == "stage 1"
    assert later["stem.weight"]["group"] is None  # frozen by the model for the whole run: no group
    assert later["body.weight"]["group"] is not None  # frozen by a rule: kept in its group


def test_a_stage_may_thaw_what_the_model_froze():
    net = _net("stem")
    plan = Plan(stages=[Stage(epoch=1, unfreeze="stem")], lr=0.1)
    opt = plan.optimizer(net)
    sched = plan.scheduler(opt)
    assert any(net.stem.weight is p for g in opt.param_groups for p in g["params"])
    assert not net.stem.weight.requires_grad
    sched.step()
    assert net.stem.weight.requires_grad


def test_norm_trainable_does_not_thaw_a_norm_the_model_froze():
    net = _net("norm")
    Plan([Rule("**", freeze=True)], norm_trainable=True).apply(_net())  # the plan's own freeze
    plan = Plan([Rule("body", freeze=True)], norm_trainable=True)
    plan.apply(net)
    assert not net.norm.weight.requires_grad and not net.body.weight.requires_grad
    own = _net()
    Plan([Rule("**", freeze=True), Rule("head", freeze=False)], norm_trainable=True).apply(own)
    assert own.norm.weight.requires_grad  # norm_trainable overrides the plan's own freezing


OPTIMIZERS = {
    "sgd": dict(momentum=0.9, weight_decay=0.1),
    "sgd_nesterov": dict(momentum=0.9, nesterov=True, weight_decay=0.1),
    "adam": dict(weight_decay=0.1),
    "adamw": dict(weight_decay=0.1),
    "nadam": dict(weight_decay=0.1),
    "radam": dict(weight_decay=0.1),
    "adamax": dict(weight_decay=0.1),
    "rmsprop": dict(momentum=0.9, weight_decay=0.1),
    "adagrad": dict(weight_decay=0.1),
    "adadelta": dict(weight_decay=0.1),
    "asgd": dict(weight_decay=0.1),
}


@pytest.mark.parametrize("accumulate", [1, 3])
@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_stage_freeze_stops_every_optimizer_whatever_the_loop(name, set_to_none, accumulate):
    net = _net()
    spec = "sgd" if name.startswith("sgd") else name
    plan = Plan(lr=0.05, optimizer=spec, stages=[Stage(epoch=1, freeze=["stem", "body"])],
                **OPTIMIZERS[name])
    opt = plan.optimizer(net)
    sched = plan.scheduler(opt, steps_per_epoch=2)
    gen = torch.Generator().manual_seed(0)
    held = None
    for step in range(6):
        opt.zero_grad(set_to_none=set_to_none)
        for _ in range(accumulate):
            net(torch.randn(5, 4, generator=gen)).pow(2).mean().backward()
        opt.step()
        sched.step()
        if step == 1:  # the stage has just frozen stem and body
            assert not net.stem.weight.requires_grad and net.stem.weight.grad is None
            held = {n: p.detach().clone() for n, p in net.named_parameters() if n.startswith(("stem", "body"))}
            head = net.head.weight.detach().clone()
    for n, p in net.named_parameters():
        if n in held:
            assert torch.equal(p, held[n]), f"{name}: {n} moved after its stage froze it"
    assert not torch.equal(net.head.weight, head)


def test_applying_a_freeze_drops_a_stale_gradient():
    net = _net()
    net(torch.randn(2, 4)).sum().backward()
    opt = Plan([Rule("stem", freeze=True)], lr=0.1, momentum=0.9, weight_decay=0.1).optimizer(net)
    assert net.stem.weight.grad is None
    before = net.stem.weight.detach().clone()
    opt.zero_grad(set_to_none=False)
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    assert torch.equal(net.stem.weight, before)


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16,
                                      bos_token_id=0, eos_token_id=0))


def test_tied_gpt2_rules_that_disagree_are_a_problem_naming_both_names():
    model = _gpt2()
    plan = Plan([Rule("transformer.wte", lr=1e-4), Rule("lm_head", lr=1e-3)], lr=1e-3)
    with pytest.raises(RuleError, match="transformer.wte.weight and lm_head.weight are one tied tensor"):
        plan.optimizer(model)
    a = audit(model, plan)
    assert len(a.problems) == 1
    assert "rule 0 sets it through transformer.wte.weight and rule 1 through lm_head.weight" in a.problems[0]
    assert "lr: 0.0001 vs 0.001" in a.problems[0]
    assert "transformer.wte.weight (= lm_head.weight)" in a.to_table(width=None)


@pytest.mark.parametrize("rules", [
    [Rule("transformer.wte", lr=1e-4), Rule("lm_head", lr=1e-4)],        # they agree
    [Rule("**", lr=1e-4), Rule("lm_head", lr=1e-3)],                     # general, then specific
    [Rule(["transformer.wte", "lm_head"], lr=1e-4), Rule("lm_head", lr=1e-3)],  # nested names
    [Rule("transformer.wte", lr=1e-4), Rule("lm_head", weight_decay=0.0)],  # other fields
])
def test_tied_rules_that_do_not_conflict_stay_clean(rules):
    assert audit(_gpt2(), Plan(rules, lr=1e-3)).problems == []


def test_check_fails_on_a_tied_conflict(tmp_path, monkeypatch, capsys):
    (tmp_path / "tiedmodels.py").write_text(
        "from torch import nn\n"
        "class M(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.emb = nn.Embedding(10, 4)\n"
        "        self.out = nn.Linear(4, 10, bias=False)\n"
        "        self.out.weight = self.emb.weight\n"
        "def build(**kw):\n"
        "    return M()\n")
    plan = tmp_path / "plan.yaml"
    plan.write_text("lr: 0.1\nrules:\n  - match: emb\n    lr: 0.01\n  - match: out\n    lr: 0.02\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rc, out, err = run_cli(capsys, "check", "tiedmodels:build", "--rules", plan)
    assert rc == 1, err
    assert out.count("violation:") == 1
    assert "emb.weight and out.weight are one tied tensor" in out and "plan.yaml:5: rule 1" in out
    rc, out, _ = run_cli(capsys, "inspect", "tiedmodels:build", "--rules", plan, "--format", "json")
    data = json.loads(out)
    assert rc == 0 and data["parameters"][0]["aliases"] == ["out.weight"]
