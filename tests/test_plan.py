"""Plans: grouping, emitted optimizers, option validation, plan files and their errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import paramgroups
from paramgroups import Plan, Rule
from paramgroups.errors import (ConfigError, OptimizerError, ParamgroupsError, PatternError,
                                PlanError, RuleError, UnmatchedRuleError)


def names(params, model):
    lookup = {id(p): n for n, p in model.named_parameters()}
    return [lookup[id(p)] for p in params]


PLAN = [Rule(["stem"], freeze=True), Rule("layers", lr=0.01), Rule("head", lr=0.1),
        Rule(kinds=["bias", "norm"], weight_decay=0)]


def test_groups_merge_identical_settings_in_model_order(toy):
    groups = Plan(PLAN, lr=0.05, weight_decay=1e-4).param_groups(toy)
    summary = [(g["name"], g["lr"], g["weight_decay"], names(g["params"], toy)) for g in groups]
    assert summary == [
        ("stem, frozen", 0.05, 1e-4, ["stem.conv.weight"]),
        ("stem + bias,norm, frozen", 0.05, 0.0, ["stem.conv.bias", "stem.norm.weight", "stem.norm.bias"]),
        ("layers", 0.01, 1e-4, [f"layers.{i}.conv.weight" for i in range(3)]),
        ("layers + bias,norm", 0.01, 0.0, [f"layers.{i}.{n}" for i in range(3)
                                           for n in ("conv.bias", "norm.weight", "norm.bias")]),
        ("default", 0.05, 1e-4, ["emb.weight"]),
        ("head", 0.1, 1e-4, ["head.weight"]),
        ("head + bias,norm", 0.1, 0.0, ["head.bias"]),
    ]


def test_group_order_is_deterministic_across_runs(toy):
    first = [(g["name"], names(g["params"], toy)) for g in Plan(PLAN).param_groups(toy)]
    for _ in range(3):
        assert [(g["name"], names(g["params"], toy)) for g in Plan(PLAN).param_groups(toy)] == first


def test_group_label_separates_and_names_groups(toy):
    groups = Plan([Rule("head", group="classifier"), Rule("emb", group="classifier")], lr=0.1).param_groups(toy)
    assert [g["name"] for g in groups] == ["default", "classifier"]
    assert names(groups[1]["params"], toy) == ["emb.weight", "head.weight", "head.bias"]


def test_per_group_options_pass_through(toy):
    plan = Plan([Rule("head", momentum=0.5)], optimizer="sgd", lr=0.1, momentum=0.9)
    opt = plan.optimizer(toy)
    assert [g["momentum"] for g in opt.param_groups] == [0.9, 0.5]
    assert opt.param_groups[1]["name"] == "head"


def test_optimizer_applies_freeze_and_frozen_params_get_no_state(toy):
    opt = Plan(PLAN, optimizer="adamw", lr=1e-3).optimizer(toy)
    assert isinstance(opt, torch.optim.AdamW)
    assert [n for n, p in toy.named_parameters() if not p.requires_grad] == [
        "stem.conv.weight", "stem.conv.bias", "stem.norm.weight", "stem.norm.bias"]
    before = toy.stem.conv.weight.detach().clone()
    x = torch.randn(2, 4, 5, 5)
    out = toy.layers[0].conv(toy.stem.conv(x)).sum() + toy.head(torch.randn(2, 4)).sum()
    out.backward()
    opt.step()
    assert torch.equal(toy.stem.conv.weight, before)
    assert toy.stem.conv.weight.grad is None
    assert toy.stem.conv.weight not in opt.state and toy.head.weight in opt.state


def test_lr_none_uses_optimizer_default(toy):
    assert Plan(optimizer="adam").param_groups(toy)[0]["lr"] == 1e-3
    assert Plan(optimizer="adagrad").param_groups(toy)[0]["lr"] == 1e-2


@pytest.mark.parametrize("spec,cls", [
    ("sgd", torch.optim.SGD), ("AdamW", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop),
    ("torch.optim:NAdam", torch.optim.NAdam), (torch.optim.RAdam, torch.optim.RAdam),
])
def test_optimizer_specs(toy, spec, cls):
    assert type(Plan(optimizer=spec, lr=0.01).optimizer(toy)) is cls


def test_timm_optimizer(toy):
    from timm.optim import Lamb

    assert type(Plan(optimizer="timm:lamb", lr=0.01).optimizer(toy)) is Lamb


def test_lbfgs_single_group_and_no_weight_decay(toy):
    opt = Plan(optimizer="lbfgs", lr=0.5).optimizer(toy)
    assert isinstance(opt, torch.optim.LBFGS) and "weight_decay" not in opt.param_groups[0]
    with pytest.raises(OptimizerError, match="LBFGS takes one param group, but this plan makes 2"):
        Plan([Rule("head", lr=0.1)], optimizer="lbfgs", lr=0.5).optimizer(toy)
    with pytest.raises(OptimizerError, match="does not take weight_decay"):
        Plan([Rule("head", weight_decay=0.1)], optimizer="lbfgs").param_groups(toy)


def test_lbfgs_closure_step(toy):
    opt = Plan(optimizer="lbfgs", lr=0.1).optimizer(toy)
    x, y = torch.randn(8, 4), torch.randn(8, 10)

    def closure():
        opt.zero_grad()
        loss = ((toy.head(x) - y) ** 2).mean()
        loss.backward()
        return loss

    first = closure().item()
    opt.step(closure)
    assert closure().item() < first


@pytest.mark.parametrize("make,err,message", [
    (lambda: Plan(optimizer="sgdd"), OptimizerError, "unknown optimizer 'sgdd'; did you mean sgd"),
    (lambda: Plan(optimizer="nope.module:Opt"), OptimizerError, "cannot import 'nope.module'"),
    (lambda: Plan(optimizer="torch.nn:Linear"), OptimizerError, "is not a torch.optim.Optimizer class"),
    (lambda: Plan(optimizer="timm:lambb"), OptimizerError, "unknown timm optimizer 'lambb'; did you mean lamb"),
    (lambda: Plan(optimizer="sgd", betas=(0.9, 0.99)), OptimizerError,
     "unknown field 'betas' (not a plan field nor an option of SGD"),
    (lambda: Plan(optimizer="adamw", amsgrd=True), OptimizerError, "did you mean 'amsgrad'?"),
    (lambda: Plan([Rule("fc", betas=(0.9, 0.9))], optimizer="sgd"), RuleError,
     "rule 0: unknown field 'betas'"),
    (lambda: Plan([{"match": "fc", "lr_mul": 2}]), RuleError, "rule 0: unknown field 'lr_mul' (not a plan field nor an option of SGD; did you mean 'lr_mult'?)"),
    (lambda: Plan([{"match": "re:("}]), PatternError, "rule 0: invalid regex '('"),
    (lambda: Plan([Rule("a"), "fc"]), RuleError, "rule 1: a rule must be a mapping"),
    (lambda: Plan(lr=-0.1), PlanError, "lr must be a finite number >= 0, got -0.1"),
    (lambda: Plan(lr="fast"), PlanError, "lr must be a number, got 'fast'"),
    (lambda: Plan(weight_decay=None), PlanError, "weight_decay must be a number"),
    (lambda: Plan(params=[]), PlanError, "'params' is not a plan field"),
])
def test_plan_errors(make, err, message):
    with pytest.raises(err) as exc:
        make()
    assert message in str(exc.value)
    assert isinstance(exc.value, ParamgroupsError)


def test_all_frozen_is_an_error(toy):
    with pytest.raises(PlanError, match="freezes every parameter"):
        Plan([Rule("**", freeze=True)]).optimizer(toy)


def test_model_without_parameters_is_an_error():
    with pytest.raises(paramgroups.errors.ModelError, match="has no parameters"):
        Plan().param_groups(nn.ReLU())


def test_freeze_and_unfreeze_helpers(toy):
    frozen = paramgroups.freeze(toy, "layers.{0..1}", "stem.conv")
    assert len(frozen) == 10
    assert [n for n, p in toy.named_parameters() if not p.requires_grad] == [
        "stem.conv.weight", "stem.conv.bias",
        *[f"layers.{i}.{m}.{w}" for i in range(2) for m in ("conv", "norm") for w in ("weight", "bias")]]
    paramgroups.unfreeze(toy, "**")
    assert all(p.requires_grad for p in toy.parameters())
    with pytest.raises(UnmatchedRuleError, match="closest names: layers"):
        paramgroups.freeze(toy, "layer")


# -- plan files ----------------------------------------------------------------------------

YAML = """\
optimizer: sgd
lr: 0.05
weight_decay: 0.0001
momentum: 0.9
rules:
  - match: stem
    freeze: true
  - match: "layers.*"
    lr: 0.01
  - match: head
    lr: 0.1
    momentum: 0.5
  - kinds: [bias, norm]
    weight_decay: 0
"""
TOML = """\
optimizer = "sgd"
lr = 0.05
weight_decay = 0.0001
momentum = 0.9

[[rules]]
match = "stem"
freeze = true

[[rules]]
match = "layers.*"
lr = 0.01

[[rules]]
match = "head"
lr = 0.1
momentum = 0.5

[[rules]]
kinds = ["bias", "norm"]
weight_decay = 0
"""
EXPECTED = Plan([Rule("stem", freeze=True), Rule("layers.*", lr=0.01), Rule("head", lr=0.1, momentum=0.5),
                 Rule(kinds=["bias", "norm"], weight_decay=0)], optimizer="sgd", lr=0.05,
                weight_decay=0.0001, momentum=0.9)


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".toml", ".json"])
def test_plan_files_load_the_same_plan(tmp_path, suffix):
    path = tmp_path / f"plan{suffix}"
    text = {".toml": TOML, ".json": json.dumps(EXPECTED.to_dict())}.get(suffix, YAML)
    path.write_text(text)
    assert Plan.load(path) == EXPECTED


def test_to_dict_round_trips(toy):
    again = Plan.from_dict(EXPECTED.to_dict())
    assert again == EXPECTED
    assert [(g["name"], g["lr"]) for g in again.param_groups(toy)] == [
        (g["name"], g["lr"]) for g in EXPECTED.param_groups(toy)]


def test_empty_yaml_is_the_default_plan(tmp_path):
    (tmp_path / "p.yaml").write_text("")
    assert Plan.load(tmp_path / "p.yaml") == Plan()


@pytest.mark.parametrize("suffix,text,err,message", [
    (".yaml", "rules:\n  - match: fc\n    lr: [1\n", ConfigError, "p.yaml:4: malformed YAML"),
    (".yaml", "rules:\n  - match: fc\n  - match: head\n    lr_mul: 2\n", RuleError,
     "p.yaml:4: rule 1: unknown field 'lr_mul'"),
    (".yaml", "rules:\n  - match: fc\n  - match: 're:('\n", PatternError, "p.yaml:3: rule 1: invalid regex"),
    (".yaml", "lr: -1\n", PlanError, "p.yaml:1: lr must be a finite number >= 0"),
    (".yaml", "optimizer: sgd\nbetas: [0.9, 0.9]\n", OptimizerError, "p.yaml:2: unknown field 'betas'"),
    (".yaml", "lr: abc\n", PlanError, "p.yaml:1: lr must be a number, got 'abc'"),
    (".yaml", "lr: .nan\n", PlanError, "p.yaml:1: lr must be a finite number"),
    (".yaml", "- a\n- b\n", ConfigError, "p.yaml: a plan must be a mapping of fields, got list"),
    (".yaml", "rules: fc\n", ConfigError, "p.yaml:1: rules must be a list of rules, got str"),
    (".yaml", "rules:\n  - fc\n", RuleError, "p.yaml:2: rule 0: a rule must be a mapping"),
    (".yaml", "rules:\n  - match: fc\n    lr: -2\n", RuleError, "p.yaml:2: rule 0: lr must be a finite number"),
    (".yaml", "rules:\n  - kinds: [normal]\n", RuleError, "rule 0: unknown kind 'normal' (did you mean 'norm'?)"),
    (".yaml", "!!python/object/apply:os.system ['true']\n", ConfigError, "malformed YAML"),
    (".toml", "lr = 0.1\n[[rules]]\nmatch = 'fc'\nlr_mul = 2\n", RuleError, "p.toml:4: rule 0: unknown field 'lr_mul'"),
    (".toml", "lr = \n", ConfigError, "p.toml:1: malformed TOML"),
    (".json", '{"rules": [\n  {"match": "fc",\n   "lr_mul": 2}]}', RuleError, "p.json:3: rule 0: unknown field 'lr_mul'"),
    (".json", '{"lr": 0.1,\n "rules": [}', ConfigError, "p.json:2: malformed JSON"),
    (".txt", "lr: 1", ConfigError, "unknown plan file type '.txt'"),
])
def test_plan_file_errors_are_located(tmp_path, suffix, text, err, message):
    path = tmp_path / f"p{suffix}"
    path.write_text(text)
    with pytest.raises(err) as exc:
        Plan.load(path)
    assert message in str(exc.value).replace(str(tmp_path) + "/", "")


def test_plan_file_missing_directory_and_binary(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        Plan.load(tmp_path / "missing.yaml")
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        Plan.load(tmp_path / "dir.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00lr")
    with pytest.raises(ConfigError, match="not UTF-8"):
        Plan.load(tmp_path / "bin.yaml")


@pytest.mark.parametrize("plan_kwargs,rule_kwargs,message", [
    ({"optimizer": "sgd", "momentum": "x"}, None, "option 'momentum' of SGD must be a finite number >= 0, got 'x'"),
    ({"optimizer": "sgd", "nesterov": 1}, None, "option 'nesterov' of SGD must be true or false"),
    ({"optimizer": "adam", "betas": [0.9]}, None, "option 'betas' of Adam must be 2 numbers"),
    ({"optimizer": "sgd"}, {"momentum": -0.5}, "rule 0: option 'momentum' of SGD must be a finite number >= 0"),
    ({"optimizer": "sgd"}, {"momentum": float("nan")}, "must be a finite number"),
])
def test_optimizer_option_values_are_checked(plan_kwargs, rule_kwargs, message):
    rules = [Rule("**", **rule_kwargs)] if rule_kwargs else []
    with pytest.raises(ParamgroupsError) as exc:
        Plan(rules, **plan_kwargs)
    assert message in str(exc.value)


def test_list_betas_from_files_become_tuples(toy):
    opt = Plan.from_dict({"optimizer": "adamw", "betas": [0.9, 0.95],
                          "rules": [{"match": "head", "betas": [0.8, 0.9]}]}).optimizer(toy)
    assert [g["betas"] for g in opt.param_groups] == [(0.9, 0.95), (0.8, 0.9)]


def test_cpu_parameters_get_fused_or_foreach_unless_the_plan_says(toy):
    for name in ("adam", "adamw", "sgd", "adagrad"):  # torch's fused CPU kernels
        defaults = Plan(optimizer=name, lr=0.1).optimizer(toy).defaults
        assert (defaults["fused"], defaults["foreach"]) == (True, None)
    assert Plan(optimizer="rmsprop").optimizer(toy).defaults["foreach"] is True
    assert Plan(optimizer="adamw", fused=False).optimizer(toy).defaults["fused"] is False
    assert Plan(optimizer="adamw", foreach=False).optimizer(toy).defaults["foreach"] is False
    assert Plan(optimizer="lbfgs").optimizer(toy).defaults.get("foreach") is None


@pytest.mark.cuda
def test_cuda_parameters_get_fused(toy):
    toy.cuda()
    opt = Plan(optimizer="adamw").optimizer(toy)
    assert opt.defaults["fused"] is True
    assert Plan(optimizer="rmsprop").optimizer(toy).defaults["foreach"] is True


def test_yaml_reads_scientific_notation(tmp_path):
    (tmp_path / "p.yaml").write_text("lr: 3e-4\nweight_decay: 5E-2\nrules:\n  - match: fc\n    lr: 1e-3\n")
    plan = Plan.load(tmp_path / "p.yaml")
    assert (plan.lr, plan.weight_decay, plan.rules[0].lr) == (3e-4, 5e-2, 1e-3)
