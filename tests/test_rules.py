"""Resolution: selection by name, module class and kind; the cascade; tied weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paramgroups import Plan, Rule
from paramgroups.errors import RuleError, UnmatchedRuleError
from paramgroups.inventory import canonical_name, inventory


def by_name(plan: Plan, model: nn.Module):
    return {a.record.name: a for a in plan.resolve(model).assignments}


def selected(rule: Rule, model: nn.Module) -> list[str]:
    res = Plan([rule]).resolve(model, strict=False)
    return [a.record.name for a in res.assignments if a.rules]


def test_inventory_kinds(toy):
    recs = {r.name: r for r in inventory(toy)}
    assert len(recs) == 19
    assert recs["stem.norm.bias"].kinds == {"bias", "norm", "ndim<=1"}
    assert recs["stem.norm.weight"].kinds == {"weight", "norm", "ndim<=1"}
    assert recs["stem.conv.weight"].kinds == {"weight"}
    assert recs["stem.conv.bias"].kinds == {"bias", "ndim<=1"}
    assert recs["emb.weight"].kinds == {"weight", "embedding"}
    assert recs["layers.1.norm.bias"].module_class == "BatchNorm2d"
    assert "_BatchNorm" in recs["layers.1.norm.bias"].module_classes


def test_module_name_covers_subtree(toy):
    assert selected(Rule("layers.1"), toy) == [
        "layers.1.conv.weight", "layers.1.conv.bias", "layers.1.norm.weight", "layers.1.norm.bias"]
    assert selected(Rule("layers"), toy) == [n for n, _ in toy.named_parameters() if n.startswith("layers.")]


def test_glob_on_module_names(toy):
    assert selected(Rule("layers.*.norm"), toy) == [
        f"layers.{i}.norm.{w}" for i in range(3) for w in ("weight", "bias")]


def test_range_and_exclusion(toy):
    assert selected(Rule(["layers.{0..2}", "!layers.1"]), toy) == [
        f"layers.{i}.{m}.{w}" for i in (0, 2) for m in ("conv", "norm") for w in ("weight", "bias")]


def test_only_exclusions_means_everything_else(toy):
    names = [n for n, _ in toy.named_parameters()]
    assert selected(Rule(["!layers", "!emb"]), toy) == [
        n for n in names if not n.startswith(("layers.", "emb."))]


def test_regex_on_module_names(toy):
    assert selected(Rule(r"re:layers\.[02]"), toy) == [
        f"layers.{i}.{m}.{w}" for i in (0, 2) for m in ("conv", "norm") for w in ("weight", "bias")]


def test_select_by_module_class_and_base_class(toy):
    assert selected(Rule(modules="BatchNorm2d", kinds="weight"), toy) == [
        "stem.norm.weight", *[f"layers.{i}.norm.weight" for i in range(3)]]
    assert selected(Rule(modules="_BatchNorm"), toy) == selected(Rule(modules="*Norm*"), toy)
    assert selected(Rule(modules=["Linear", "Embedding"]), toy) == ["emb.weight", "head.weight", "head.bias"]


def test_select_by_kinds_is_any_of(toy):
    got = selected(Rule(kinds=["bias", "embedding"]), toy)
    assert got == [n for n, _ in toy.named_parameters() if n.endswith("bias") or n == "emb.weight"]


def test_timm_no_weight_decay_tokens_are_embeddings():
    class ViTish(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))
            self.extra = nn.Parameter(torch.zeros(4))
            self.proj = nn.Linear(4, 4)

        def no_weight_decay(self):
            return {"extra"}

    recs = {r.name: r for r in inventory(ViTish())}
    assert "embedding" not in recs["pos_embed"].kinds  # a declared list replaces the built-in one
    assert "embedding" in recs["extra"].kinds
    assert "embedding" not in recs["proj.weight"].kinds


def test_cascade_later_rules_win_field_by_field(toy):
    plan = Plan([
        Rule("**", lr=0.1, weight_decay=0.01),
        Rule("layers", lr=0.01),                       # lr only: weight decay stays 0.01
        Rule("layers.2", lr_mult=10),                  # multiplies the cascaded lr
        Rule(kinds="bias", weight_decay=0),
        Rule("head", wd_mult=0.5),
    ], lr=1.0, weight_decay=0.05)
    a = by_name(plan, toy)
    assert (a["stem.conv.weight"].lr, a["stem.conv.weight"].weight_decay) == (0.1, 0.01)
    assert (a["layers.0.conv.weight"].lr, a["layers.0.conv.weight"].weight_decay) == (0.01, 0.01)
    assert a["layers.2.conv.weight"].lr == pytest.approx(0.1, rel=1e-15)
    assert a["layers.2.conv.bias"].weight_decay == 0
    assert a["head.weight"].weight_decay == 0.005
    assert a["head.bias"].weight_decay == 0.0
    assert a["layers.2.conv.bias"].rules == [0, 1, 2, 3]
    assert a["head.bias"].rules == [0, 3, 4]


def test_lr_mult_applies_to_plan_lr_when_no_rule_sets_lr(toy):
    a = by_name(Plan([Rule("head", lr_mult=10)], lr=0.01), toy)
    assert a["head.weight"].lr == pytest.approx(0.1)
    assert a["emb.weight"].lr == 0.01


def test_later_freeze_false_overrides_earlier_freeze(toy):
    a = by_name(Plan([Rule("**", freeze=True), Rule("head", freeze=False)]), toy)
    assert [n for n, x in a.items() if not x.frozen] == ["head.weight", "head.bias"]


def test_unmatched_rule_is_an_error_with_closest_names(toy):
    with pytest.raises(UnmatchedRuleError, match=r"rule 1: match 'layer' matches no parameter; closest names: layers"):
        Plan([Rule("**"), Rule("layer")]).resolve(toy)
    res = Plan([Rule("layer", optional=True)]).resolve(toy)
    assert res.problems == [] and all(a.rules == [] for a in res.assignments)


def test_unmatched_because_of_filters_says_so(toy):
    with pytest.raises(UnmatchedRuleError, match="with modules"):
        Plan([Rule("head", modules="Conv2d")]).resolve(toy)


def test_non_strict_resolution_reports_problems(toy):
    res = Plan([Rule("nothing.here")]).resolve(toy, strict=False)
    assert res.unmatched == [0]
    assert len(res.problems) == 1 and "rule 0" in res.problems[0]


def test_tied_weights_appear_once_and_any_alias_matches(tied):
    recs = inventory(tied)
    assert len(recs) == 18
    emb = next(r for r in recs if r.name == "emb.weight")
    assert emb.aliases == ["head.weight"]
    a = by_name(Plan([Rule("head", lr=0.5)], lr=0.1), tied)
    assert a["emb.weight"].lr == 0.5  # the rule matched the alias head.weight
    groups = Plan([Rule("head", lr=0.5)], lr=0.1).param_groups(tied)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == 18


def test_tied_alias_conflict_is_a_problem_not_a_coin_flip(tied):
    plan = Plan([Rule("emb", lr=0.2), Rule("head", lr=0.3)], lr=0.1)
    with pytest.raises(RuleError, match=r"rule 1: emb.weight and head.weight are one tied tensor.*"
                                        r"lr: 0.2 vs 0.3"):
        plan.param_groups(tied)
    res = plan.resolve(tied)  # the audit: still the cascade, and a problem
    a = {x.record.name: x for x in res.assignments}
    assert a["emb.weight"].lr == 0.3 and a["emb.weight"].rules == [0, 1]
    assert len(res.problems) == 1 and "through emb.weight and rule 1 through head.weight" in res.problems[0]
    plan = Plan([Rule("head", lr=0.3), Rule("emb", lr=0.2)], lr=0.1)
    assert plan.resolve(tied, strict=False).assignments[-2].lr == 0.2


def test_canonical_names_drop_wrappers():
    assert canonical_name("module._orig_mod.fc.weight", frozenset({""})) == "fc.weight"
    assert canonical_name("module._orig_mod.fc.weight") == "module.fc.weight"  # not below a DDP
    assert canonical_name("_fsdp_wrapped_module.layer1._checkpoint_wrapped_module.0.w") == "layer1.0.w"
    assert canonical_name("a.module.b", frozenset({"a"})) == "a.b"


def test_plan_resolves_identically_on_wrapped_model(toy):
    Wrapper = nn.DataParallel  # noqa: N806 - on the CPU a pass-through with DDP's "module." naming
    plan = Plan([Rule("layers.1", lr=0.3), Rule(kinds="bias", weight_decay=0)], lr=0.1, weight_decay=0.01)
    bare = [(a.record.name, a.lr, a.weight_decay) for a in plan.resolve(toy).assignments]
    wrapped = [(a.record.name, a.lr, a.weight_decay) for a in plan.resolve(Wrapper(toy)).assignments]
    assert bare == wrapped


def test_non_float_and_zero_element_parameters(toy):
    toy.count = nn.Parameter(torch.zeros(3, dtype=torch.int64), requires_grad=False)
    toy.empty = nn.Parameter(torch.zeros(0))
    res = Plan().resolve(toy)
    a = {x.record.name: x for x in res.assignments}
    assert a["count"].frozen and a["count"].group is None
    assert not a["empty"].frozen and a["empty"].group == 0
    assert all(toy.count is not p for g in res.groups for p in (m.record.param for m in g.members))


@pytest.mark.parametrize("kwargs,message", [
    ({"lr": -1}, "lr must be a finite number >= 0, got -1"),
    ({"lr": "abc"}, "lr must be a number, got 'abc'"),
    ({"lr": float("nan")}, "lr must be a finite number >= 0"),
    ({"lr": True}, "lr must be a number, got True"),
    ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0"),
    ({"lr_mult": float("inf")}, "lr_mult must be a finite number >= 0"),
    ({"freeze": "yes"}, "freeze must be true or false"),
    ({"optional": 1}, "optional must be true or false"),
    ({"group": 3}, "group must be a string"),
    ({"kinds": "biass"}, "unknown kind 'biass' (did you mean 'bias'?)"),
    ({"kinds": [1]}, "kinds must be a string or a list of strings"),
    ({"modules": 5}, "modules must be a string or a list of strings"),
])
def test_rule_value_errors(kwargs, message):
    with pytest.raises(RuleError) as exc:
        Rule("**", **kwargs)
    assert message in str(exc.value)
