"""Layer-wise LR decay (timm parity, slot patterns, pattern lists) and the no_decay shorthand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paramgroups import Plan, Rule, audit
from paramgroups.errors import PlanError


@pytest.fixture(scope="module")
def vit():
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10)


def test_layer_decay_equals_timm_param_groups_layer_decay(vit):
    from timm.optim import param_groups_layer_decay

    # as timm.optim.create_optimizer_v2 calls it: with the model's no_weight_decay() names
    timm_groups = param_groups_layer_decay(vit, weight_decay=0.05, layer_decay=0.75,
                                           no_weight_decay_list=vit.no_weight_decay())
    expected = {}
    names = {id(p): n for n, p in vit.named_parameters()}
    for g in timm_groups:
        for p in g["params"]:
            expected[names[id(p)]] = (1e-3 * g["lr_scale"], g["weight_decay"])
    plan = Plan(lr=1e-3, weight_decay=0.05, layer_decay=0.75, no_decay=True, optimizer="adamw")
    ours = {}
    for g in plan.param_groups(vit):
        for p in g["params"]:
            ours[names[id(p)]] = (g["lr"], g["weight_decay"])
    assert ours.keys() == expected.keys()
    for name, (lr, wd) in expected.items():
        assert ours[name][0] == pytest.approx(lr, rel=1e-12), name
        assert ours[name][1] == wd, name
    rows = {r["name"]: r for r in audit(vit, plan).parameters}
    assert (rows["cls_token"]["layer"], rows["head.weight"]["layer"]) == (0, 13)
    assert rows["blocks.3.attn.qkv.weight"]["layer"] == 4
    assert rows["blocks.3.attn.qkv.weight"]["lr_scale"] == pytest.approx(0.75 ** 9)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(2, 2)
        self.blocks = nn.Sequential(*[nn.Linear(2, 2) for _ in range(3)])
        self.norm = nn.LayerNorm(2)
        self.head = nn.Linear(2, 2)


def layer_of(plan: Plan, model: nn.Module) -> dict[str, tuple[int, float]]:
    return {a.record.name: (a.layer, a.lr) for a in plan.resolve(model).assignments}


def test_slot_pattern_follows_beit_convention():
    got = layer_of(Plan(lr=1.0, layer_decay=0.5, layers="blocks.{i}"), Tiny())
    assert got["embed.weight"] == (0, 0.5 ** 4)
    assert got["blocks.0.weight"] == (1, 0.5 ** 3)
    assert got["blocks.2.bias"] == (3, 0.5)
    assert got["norm.weight"] == (4, 1.0) and got["head.bias"] == (4, 1.0)


def test_pattern_list_one_id_each_in_order():
    got = layer_of(Plan(lr=1.0, layer_decay=0.5, layers=["embed", "blocks.{0,1}", "blocks.2", "**"]), Tiny())
    assert [got[n][0] for n in ("embed.weight", "blocks.1.weight", "blocks.2.weight", "head.weight")] == [0, 1, 2, 3]
    assert got["embed.bias"][1] == 0.125


def test_layer_decay_and_rules_multiply():
    got = layer_of(Plan([Rule("head", lr_mult=10)], lr=1.0, layer_decay=0.5, layers="blocks.{i}"), Tiny())
    assert got["head.weight"][1] == 10.0 and got["blocks.2.weight"][1] == 0.5


def test_groups_follow_layers_and_are_named():
    groups = Plan(lr=1.0, layer_decay=0.5, layers="blocks.{i}").param_groups(Tiny())
    assert [g["name"] for g in groups] == [f"layer {i}" for i in range(5)]
    assert [g["lr"] for g in groups] == [0.5 ** (4 - i) for i in range(5)]


@pytest.mark.parametrize("kwargs,message", [
    ({"layer_decay": 0.5}, "layer_decay needs layers"),
    ({"layer_decay": 0.5, "layers": "blocks.{i}.{i}"}, "exactly one {i} slot"),
    ({"layer_decay": 0.5, "layers": "stages.{i}"}, "matches no module"),
    ({"layer_decay": 0.5, "layers": ["embed", "nothing"]}, "layers[1] 'nothing' matches no parameter"),
    ({"layers": "blocks.{i}"}, "layers is set but layer_decay is not"),
    ({"layer_decay": -1}, "layer_decay must be a finite number >= 0"),
])
def test_layer_errors(kwargs, message):
    with pytest.raises(PlanError) as exc:
        Plan(lr=1.0, **kwargs).resolve(Tiny())
    assert message in str(exc.value)


def test_no_decay_shorthand_is_a_last_rule():
    m = Tiny()
    plan = Plan([Rule("**", weight_decay=0.1)], weight_decay=0.05, no_decay=True)
    a = {x.record.name: x for x in plan.resolve(m).assignments}
    assert a["head.weight"].weight_decay == 0.1 and a["head.bias"].weight_decay == 0.0
    assert a["norm.weight"].weight_decay == 0.0 and a["norm.weight"].rules == [0, 1]
    assert plan.to_dict()["no_decay"] is True and Plan.from_dict(plan.to_dict()) == plan
