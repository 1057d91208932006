"""The audit: rows, groups, totals and problems, for plans and hand-built optimizers."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch

from paramgroups import Plan, Rule, audit
from paramgroups.errors import ParamgroupsError, ReportError
from paramgroups.lr_table import schedule_table

JSON_PARAM_KEYS = {"name", "aliases", "shape", "numel", "dtype", "module", "kinds", "group", "optimizer", "base_lr", "lr",
                   "weight_decay", "trainable", "frozen_by", "rules", "layer", "lr_scale", "stats"}


def test_plan_audit_rows_groups_totals(toy):
    plan = Plan([Rule("stem", freeze=True), Rule("head", lr=0.1), Rule(kinds="bias", weight_decay=0)],
                optimizer="adamw", lr=0.01, weight_decay=0.05)
    a = audit(toy, plan)
    rows = {r["name"]: r for r in a.parameters}
    assert list(rows) == [n for n, _ in toy.named_parameters()]
    assert rows["head.bias"] == {
        "name": "head.bias", "aliases": [], "shape": [10], "numel": 10, "dtype": "float32",
        "module": "Linear", "kinds": ["bias", "head", "ndim<=1"], "group": rows["head.bias"]["group"],
        "optimizer": "adamw", "base_lr": 0.1, "lr": 0.1, "weight_decay": 0.0, "trainable": True, "frozen_by": None, "rules": [1, 2],
        "layer": None, "lr_scale": 1.0, "stats": None}
    assert rows["stem.conv.weight"]["trainable"] is False and rows["stem.conv.weight"]["rules"] == [0]
    assert rows["stem.conv.weight"]["frozen_by"] == "rule 0"
    numel = sum(p.numel() for p in toy.parameters())
    frozen = sum(p.numel() for p in toy.stem.parameters())
    assert a.totals == {"params": 19, "numel": numel, "trainable": numel - frozen, "frozen": frozen,
                        "optimizer_state_bytes": 2 * 4 * (numel - frozen)}
    assert a.optimizer == "AdamW" and a.model == "Toy" and a.problems == []
    assert sum(g["params"] for g in a.groups) == 19
    for g in a.groups:
        members = [r for r in a.parameters if r["group"] == g["index"]]
        assert g["params"] == len(members) and g["numel"] == sum(r["numel"] for r in members)
        assert {(r["lr"], r["weight_decay"]) for r in members} == {(g["lr"], g["weight_decay"])}


def test_json_contract(toy):
    data = json.loads(audit(toy, Plan(lr=0.1)).to_json())
    assert set(data) >= {"model", "optimizer", "parameters", "groups", "totals"}
    assert all(set(r) == JSON_PARAM_KEYS for r in data["parameters"])
    assert set(data["groups"][0]) == {"index", "name", "optimizer", "params", "numel", "base_lr", "lr",
                                      "weight_decay", "options"}
    assert data["optimizers"] == [{"name": "sgd", "class": "SGD", "groups": 1, "params": 19,
                                   "numel": data["totals"]["numel"], "trainable": data["totals"]["numel"],
                                   "optimizer_state_bytes": 0, "implementation": data["implementation"]}]
    assert {r["optimizer"] for r in data["parameters"]} == {g["optimizer"] for g in data["groups"]} == {"sgd"}
    assert set(data["totals"]) == {"params", "numel", "trainable", "frozen", "optimizer_state_bytes"}


@pytest.mark.parametrize("optimizer,options,mult", [
    ("sgd", {}, 0), ("sgd", {"momentum": 0.9}, 1), ("adam", {}, 2), ("adam", {"amsgrad": True}, 3),
    ("rmsprop", {"momentum": 0.9, "centered": True}, 3), ("adagrad", {}, 1),
])
def test_optimizer_state_bytes(toy, optimizer, options, mult):
    a = audit(toy, Plan(optimizer=optimizer, lr=0.1, **options))
    numel = sum(p.numel() for p in toy.parameters())
    assert a.totals["optimizer_state_bytes"] == mult * 4 * numel
    # The estimate is what torch really allocates after one step.
    opt = Plan(optimizer=optimizer, lr=0.1, **options).optimizer(toy)
    for p in toy.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    real = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
               if isinstance(t, torch.Tensor) and t.shape != torch.Size([]))
    assert real == a.totals["optimizer_state_bytes"]


def test_unknown_optimizer_state_is_null(toy):
    assert audit(toy, Plan(optimizer="timm:lamb", lr=0.1)).totals["optimizer_state_bytes"] is None


def test_hand_built_optimizer_problems(toy):
    toy.stem.requires_grad_(False)
    opt = torch.optim.SGD([
        {"params": list(toy.stem.parameters()), "lr": 0.1},           # frozen but in a group
        {"params": list(toy.layers.parameters()) + [toy.head.bias], "lr": 0.01},
    ], lr=0.1)
    # torch refuses duplicates at construction; code that edits param_groups does not
    opt.param_groups.append({"params": [toy.head.bias, torch.nn.Parameter(torch.zeros(2))], "lr": 0.5})
    a = audit(toy, optimizer=opt)
    assert a.problems == [
        "stem.conv.weight is frozen (requires_grad=False) but sits in group 0",
        "stem.conv.bias is frozen (requires_grad=False) but sits in group 0",
        "stem.norm.weight is frozen (requires_grad=False) but sits in group 0",
        "stem.norm.bias is frozen (requires_grad=False) but sits in group 0",
        "emb.weight is trainable but in no param group: it will never update",
        "head.weight is trainable but in no param group: it will never update",
        "head.bias is in 2 param groups (1, 2)",
        "group 2 holds 1 tensor(s) that are not parameters of the model",
    ]
    rows = {r["name"]: r for r in a.parameters}
    assert rows["layers.0.conv.weight"]["group"] == 1 and rows["layers.0.conv.weight"]["lr"] == 0.01
    assert rows["emb.weight"]["group"] is None and rows["emb.weight"]["lr"] is None
    assert [g["name"] for g in a.groups] == ["group 0", "group 1", "group 2"]


def test_plan_built_optimizer_audits_clean(toy):
    plan = Plan([Rule("stem", freeze=True), Rule("head", lr=0.1)], lr=0.01)
    opt = plan.optimizer(toy)
    a = audit(toy, plan, opt)
    assert a.problems == []
    assert {r["name"]: r["rules"] for r in a.parameters}["head.bias"] == [1]
    assert audit(toy, optimizer=opt).problems == []  # tagged as plan-built: frozen members by design


def test_select_and_collapse(toy):
    a = audit(toy, Plan([Rule("stem", freeze=True)]))
    assert [r["name"] for r in a.select(only="frozen").parameters] == [
        "stem.conv.weight", "stem.conv.bias", "stem.norm.weight", "stem.norm.bias"]
    assert [r["name"] for r in a.select(match="layers.1.**").parameters] == [
        "layers.1.conv.weight", "layers.1.conv.bias", "layers.1.norm.weight", "layers.1.norm.bias"]
    assert len(a.select(only="trainable", match="stem").parameters) == 0
    rows = a.collapse(1).parameters
    assert [r["name"] for r in rows] == ["stem", "layers", "emb", "head"]
    stem = rows[0]
    assert stem["numel"] == sum(p.numel() for p in toy.stem.parameters())
    assert stem["trainable"] is False and stem["module"] == "mixed" and stem["shape"] == "mixed"
    assert rows[3]["module"] == "Linear"


def test_renderers(toy):
    a = audit(toy, Plan([Rule("head", lr=0.5)], lr=0.1))
    table = a.to_table()
    assert "head.weight" in table and "10x4" in table and "parameters" in table
    assert "19" in table.split("parameters")[-1].splitlines()[0]
    rows = list(csv.reader(io.StringIO(a.to_csv())))
    assert rows[0] == ["name", "shape", "numel", "module", "group", "base_lr", "lr", "weight_decay", "trainable",
                       "rules"]
    assert rows[-1] == ["head.bias", "10", "10", "Linear", "1", "0.5", "0.5", "0", "yes", "0"]
    md = a.to_markdown()
    assert md.splitlines()[0].startswith("| name") and md.splitlines()[1].startswith("|---")
    assert "| head.bias " in md


@pytest.mark.parametrize("ask,message", [
    (lambda a, plan: a.select(only="all"), "only must be 'trainable' or 'frozen', got 'all'"),
    (lambda a, plan: a.collapse(0), "depth must be >= 1, got 0"),
    (lambda a, plan: schedule_table(plan, None, 0), "epochs must be a whole number >= 1, got 0"),
    (lambda a, plan: schedule_table(plan, None, 2.0), "epochs must be a whole number >= 1, got 2.0"),
])
def test_report_arguments_it_cannot_take_are_report_errors(toy, ask, message):
    plan = Plan([Rule("stem", freeze=True)])
    with pytest.raises(ReportError) as exc:
        ask(audit(toy, plan), plan)
    assert str(exc.value) == message
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, ParamgroupsError)


def test_problems_show_in_table(toy):
    a = audit(toy, Plan([Rule("nope")]))
    assert a.problems and a.to_table().splitlines()[-1].startswith("problem: rule 0: match 'nope'")


def test_resnet18_totals(resnet18_meta):
    a = audit(resnet18_meta)
    assert len(a.parameters) == 62 and a.totals["numel"] == 11_689_512


def test_timm_vit_kinds_and_no_weight_decay():
    from paramgroups.models import build_model

    model = build_model("timm:vit_tiny_patch16_224")
    rows = {r["name"]: r for r in audit(model).parameters}
    assert "embedding" in rows["pos_embed"]["kinds"] and "embedding" in rows["cls_token"]["kinds"]
    assert rows["blocks.0.norm1.weight"]["kinds"] == ["ndim<=1", "norm", "weight"]
    assert next(model.parameters()).device.type == "meta"


def test_collapse_merges_norm_statistics(resnet18_meta):
    plan = Plan.progressive(["fc", "layer4"], every=1, lr=0.1)
    rows = {r["name"]: r["stats"] for r in audit(resnet18_meta, plan, at=1).collapse(1).parameters}
    assert rows == {"conv1": None, "bn1": "frozen", "layer1": "frozen", "layer2": "frozen",
                    "layer3": "frozen", "layer4": "updating", "fc": None}
    half = Plan([Rule("layer4.0", freeze=True)])  # layer4.0's norms held, layer4.1's updating
    mixed = {r["name"]: r["stats"] for r in audit(resnet18_meta, half).collapse(1).parameters}
    assert (mixed["layer4"], mixed["layer3"]) == ("mixed", "updating")


def test_audit_says_which_step_implementation_runs(toy):
    assert audit(toy, Plan(optimizer="adamw")).implementation == "fused"
    assert audit(toy, Plan(optimizer="adamw", foreach=False)).implementation == "for-loop"
    assert audit(toy, Plan(optimizer="lbfgs")).implementation == "default"
    assert audit(toy, optimizer=torch.optim.SGD(toy.parameters(), lr=0.1, foreach=False)).implementation == "for-loop"
    assert "AdamW (fused)" in audit(toy, Plan(optimizer="adamw")).to_table()
    assert json.loads(audit(toy, Plan(optimizer="adamw")).to_json())["implementation"] == "fused"
