"""The audit of a plan that routes parameters to several optimizers (Muon for the hidden
matrices, AdamW for the rest): who steps each parameter and group, each optimizer's step
implementation, and the optimizer state they keep, equal to what torch allocates."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
from torch import nn

from paramgroups import Plan, Rule, audit
from paramgroups.composite import CompositeOptimizer
from paramgroups.report import COLUMNS


class Net(nn.Module):
    """emb (embedding), blocks.{0,1}.{up,norm,down} (hidden matrices, a norm, biases), head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.blocks = nn.ModuleList(nn.ModuleDict({"up": nn.Linear(8, 16), "norm": nn.LayerNorm(16),
                                                   "down": nn.Linear(16, 8, bias=False)}) for _ in range(2))
        self.head = nn.Linear(8, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        for b in self.blocks:
            x = x + b["down"](torch.relu(b["norm"](b["up"](x))))
        return self.head(x)


MATRICES = ["blocks.0.up.weight", "blocks.0.down.weight", "blocks.1.up.weight", "blocks.1.down.weight"]


def hybrid(*rules: Rule) -> Plan:
    return Plan([Rule(kinds="matrix", optimizer="muon"), *rules], optimizer="adamw", lr=3e-4,
                weight_decay=0.01, optimizers={"muon": {"lr": 0.02}, "adamw": {"betas": (0.9, 0.95)}})


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net()


def real_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of the parameter-sized state tensors torch allocated (AdamW's scalar step counters
    are not parameter-sized: the estimate leaves them out, as for one optimizer)."""
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
               if isinstance(t, torch.Tensor) and t.dim() > 0)


def one_step(net: Net, opt: torch.optim.Optimizer) -> None:
    net(torch.arange(6).reshape(2, 3)).sum().backward()
    opt.step()


def test_every_parameter_and_group_says_its_optimizer(net):
    a = audit(net, hybrid())
    assert {r["name"]: r["optimizer"] for r in a.parameters} == {
        n: "muon" if n in MATRICES else "adamw" for n, _ in net.named_parameters()}
    assert [(g["name"], g["optimizer"], g["params"], g["numel"]) for g in a.groups] == [
        ("default", "adamw", 9, 80 + 2 * (16 + 32) + 36), ("matrix", "muon", 4, 4 * 128)]
    rows = {r["name"]: r for r in a.parameters}
    assert list(rows["blocks.0.up.weight"])[6:10] == ["kinds", "group", "optimizer", "base_lr"]
    assert (rows["blocks.0.up.weight"]["base_lr"], rows["head.weight"]["base_lr"]) == (0.02, 3e-4)
    assert list(a.groups[0])[:3] == ["index", "name", "optimizer"]


def test_optimizers_their_implementation_and_state(net):
    a = audit(net, hybrid())
    adamw_numel, muon_numel = 80 + 2 * (16 + 32) + 36, 4 * 128
    assert a.optimizers == [
        {"name": "adamw", "class": "AdamW", "groups": 1, "params": 9, "numel": adamw_numel,
         "trainable": adamw_numel, "optimizer_state_bytes": 2 * 4 * adamw_numel, "implementation": "fused"},
        {"name": "muon", "class": "Muon", "groups": 1, "params": 4, "numel": muon_numel,
         "trainable": muon_numel, "optimizer_state_bytes": 4 * muon_numel, "implementation": "for-loop"}]
    assert (a.optimizer, a.implementation) == ("CompositeOptimizer", "mixed")
    assert a.totals["optimizer_state_bytes"] == 2 * 4 * adamw_numel + 4 * muon_numel
    assert a.problems == []


def test_state_bytes_equal_what_torch_allocates_after_a_step(net):
    plan = hybrid(Rule("blocks.1.down", freeze=True), Rule("head.bias", freeze=True))
    a = audit(net, plan)
    opt = plan.optimizer(net)
    one_step(net, opt)
    assert isinstance(opt, CompositeOptimizer)
    assert a.totals["optimizer_state_bytes"] == real_state_bytes(opt) == 2 * 4 * (80 + 2 * (16 + 32) + 32) + 4 * 3 * 128
    assert [o["optimizer_state_bytes"] for o in a.optimizers] == [
        real_state_bytes(opt.optimizers[name]) for name in ("adamw", "muon")]
    assert [o["trainable"] for o in a.optimizers] == [80 + 2 * (16 + 32) + 32, 3 * 128]


def test_the_built_optimizer_audits_the_same(net):
    plan = hybrid(Rule("blocks.1.down", freeze=True))
    opt = plan.optimizer(net)
    from_plan, built = audit(net, plan), audit(net, optimizer=opt)
    assert built.problems == []
    assert [r["optimizer"] for r in built.parameters] == [r["optimizer"] for r in from_plan.parameters]
    assert [(g["name"], g["optimizer"], g["options"]) for g in built.groups] == [
        (g["name"], g["optimizer"], g["options"]) for g in from_plan.groups]
    one_step(net, opt)
    assert built.optimizers == from_plan.optimizers
    assert built.totals == from_plan.totals
    assert built.totals["optimizer_state_bytes"] == real_state_bytes(opt)


def test_a_composite_built_by_hand(net):
    matrices = [p for n, p in net.named_parameters() if n in MATRICES]
    rest = [p for n, p in net.named_parameters() if n not in MATRICES and n != "head.bias"]
    opt = CompositeOptimizer({"muon": torch.optim.Muon(matrices, lr=0.02),
                              "sgd": torch.optim.SGD([{"params": rest}, {"params": [], "nesterov": False}],
                                                     lr=0.1, momentum=0.9, nesterov=True)})
    a = audit(net, optimizer=opt)
    assert a.problems == ["head.bias is trainable but in no param group: it will never update"]
    rows = {r["name"]: r for r in a.parameters}
    assert (rows["blocks.0.up.weight"]["optimizer"], rows["emb.weight"]["optimizer"],
            rows["head.bias"]["optimizer"], rows["head.bias"]["group"]) == ("muon", "sgd", None, None)
    assert [(g["optimizer"], g["options"]) for g in a.groups] == [
        ("muon", {}), ("sgd", {}), ("sgd", {"nesterov": False})]
    assert [(o["name"], o["class"], o["implementation"]) for o in a.optimizers] == [
        ("muon", "Muon", "for-loop"), ("sgd", "SGD", "for-loop")]
    assert a.implementation == "for-loop"  # both agree
    one_step(net, opt)
    assert a.totals["optimizer_state_bytes"] == real_state_bytes(opt)


def test_every_output_carries_the_optimizer(net):
    a = audit(net, hybrid())
    data = json.loads(a.to_json())
    assert list(data)[:5] == ["model", "optimizer", "implementation", "lr_at", "optimizers"]
    assert data["optimizers"] == a.optimizers
    assert all("optimizer" in r for r in data["parameters"]) and all("optimizer" in g for g in data["groups"])
    rows = list(csv.DictReader(io.StringIO(a.to_csv())))
    assert list(rows[0]) == [*COLUMNS[:5], "optimizer", *COLUMNS[5:]]
    assert {r["name"]: r["optimizer"] for r in rows}["blocks.1.down.weight"] == "muon"
    table = a.to_table(width=None)
    params, groups, optimizers, totals = table.split("\n\n")
    assert params.splitlines()[0].split()[:6] == ["name", "shape", "numel", "module", "group", "optimizer"]
    assert groups.splitlines()[0].split()[:3] == ["group", "name", "optimizer"]
    assert optimizers.splitlines()[0].split() == [
        "optimizer", "class", "groups", "params", "numel", "trainable", "state", "step"]
    assert optimizers.splitlines()[2].split() == ["adamw", "AdamW", "1", "9", "212", "(29.3%)", "212",
                                                  "1.7", "KiB", "fused"]
    assert totals.splitlines()[-2].split(None, 2) == [
        "optimizer", "step", "CompositeOptimizer (adamw: fused, muon: for-loop)"]
    assert "| optimizer" in a.to_markdown()


def test_collapse_and_select_keep_the_optimizer(net):
    a = audit(net, hybrid())
    rows = {r["name"]: r for r in a.collapse(2).parameters}
    assert (rows["blocks.0"]["optimizer"], rows["emb.weight"]["optimizer"]) == ("mixed", "adamw")
    assert {r["optimizer"] for r in a.select(match="**.down").parameters} == {"muon"}
    assert a.select(only="frozen").optimizers == a.optimizers  # the optimizers stay whole


def test_one_optimizer_audits_as_before(net):
    for plan in (Plan(optimizer="adamw", lr=0.1), Plan([Rule(kinds="matrix", optimizer="adamw")], lr=0.1,
                                                       optimizer="adamw")):
        a = audit(net, plan)
        # the JSON says who steps what for every plan; the tables and CSV would only repeat "adamw"
        assert [(o["name"], o["class"], o["params"]) for o in a.optimizers] == [("adamw", "AdamW", 13)]
        assert a.to_dict()["optimizers"] == a.optimizers
        assert {r["optimizer"] for r in a.parameters + a.groups} == {"adamw"}
        assert a.columns() == COLUMNS
        assert next(csv.reader(io.StringIO(a.to_csv()))) == list(COLUMNS)
        assert a.to_table().count("\n\n") == 2  # parameters, groups, totals
        assert (a.optimizer, a.implementation) == ("AdamW", "fused")


def test_a_plan_whose_rules_route_everything_to_muon_audits_one_muon():
    net = nn.Sequential(nn.Linear(4, 8, bias=False), nn.Linear(8, 2, bias=False))
    a = audit(net, Plan([Rule(optimizer="muon")], optimizer="adamw", optimizers={"muon": {"lr": 0.02}}))
    assert (a.optimizer, a.implementation) == ("Muon", "for-loop")
    assert [(o["name"], o["params"], o["optimizer_state_bytes"]) for o in a.optimizers] == [("muon", 2, 4 * 48)]
    assert a.totals["optimizer_state_bytes"] == 4 * (32 + 16)
    assert "Muon (for-loop)" in a.to_table()


def test_a_composite_of_one_optimizer_audits_as_that_optimizer(net):
    opt = CompositeOptimizer({"adamw": torch.optim.AdamW(net.parameters(), lr=0.1, foreach=False)})
    a = audit(net, optimizer=opt)
    assert (a.optimizer, a.implementation, a.problems) == ("CompositeOptimizer", "for-loop", [])
    assert [(o["name"], o["class"], o["implementation"]) for o in a.optimizers] == [("adamw", "AdamW", "for-loop")]
    assert a.groups[0]["options"] == {} and a.groups[0]["optimizer"] == "adamw"
    assert a.columns() == COLUMNS
    one_step(net, opt)
    assert a.totals["optimizer_state_bytes"] == real_state_bytes(opt)
