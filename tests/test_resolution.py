"""The one-pass resolution, the name table and the declared plan fields."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from paramgroups import Plan, Rule, Stage
from paramgroups.errors import PlanError, RuleError
from paramgroups.inventory import inventory
from paramgroups.names import NameTable
from paramgroups.patterns import PatternList
from paramgroups.plan_fields import FIELDS


def test_assignments_and_groups_are_immutable_and_agree(toy):
    plan = Plan([Rule("stem", freeze=True), Rule("head", lr=0.1), Rule(kinds="bias", weight_decay=0)],
                lr=0.01, weight_decay=1e-4, stages=[Stage(epoch=2, unfreeze="stem.conv")])
    res = plan.resolve(toy)
    a, g = res.assignments[0], res.groups[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.lr = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.name = "x"
    for group in res.groups:
        assert [m.record.index for m in group.members] == [
            x.record.index for x in res.assignments if x.group == group.index]
        assert all((m.lr, m.weight_decay, m.frozen, m.events) == (group.lr, group.weight_decay, group.frozen,
                                                                  group.events) for m in group.members)
    by = {x.record.name: x for x in res.assignments}
    assert (by["stem.conv.weight"].frozen, by["stem.conv.weight"].frozen_by,
            by["stem.conv.weight"].events) == (True, "rule 0", ((0, "thaw"),))
    assert (by["head.bias"].lr, by["head.bias"].weight_decay, by["head.bias"].rules) == (0.1, 0, [1, 2])


def test_name_table_selects_records_by_module_and_exclusion(toy):
    records = inventory(toy)
    table = NameTable.of(records)
    names = [r.name for r in records]
    assert table.size == len(records)
    assert [names[i] for i in table.select(PatternList(["layers.{0..1}.norm", "!layers.0"]))] == [
        "layers.1.norm.weight", "layers.1.norm.bias"]
    assert table.select(PatternList("!layers")) == [i for i, n in enumerate(names) if not n.startswith("layers.")]
    assert table.closest("layer") == "; closest names: layers, layers.2, layers.1"


def test_the_field_table_is_the_keyword_signature():
    keywords = [p for p in inspect.signature(Plan).parameters
                if p not in ("_locations", "optimizer_options")]
    assert sorted(keywords) == sorted(f.name for f in FIELDS)


def test_from_dict_is_the_keyword_call():
    data = {"lr": 0.1, "momentum": 0.9, "layer_decay": 0.5, "layers": "blocks.{i}", "no_decay": True,
            "stages": [{"epoch": 1, "unfreeze": "fc"}], "rules": [{"match": "fc", "lr_mult": 2}]}
    assert Plan.from_dict(data) == Plan([Rule("fc", lr_mult=2)], lr=0.1, momentum=0.9, layer_decay=0.5,
                                        layers="blocks.{i}", no_decay=True, stages=[Stage(epoch=1, unfreeze="fc")])


def test_errors_carry_their_place(tmp_path):
    (tmp_path / "p.yaml").write_text("lr: 0.1\nrules:\n  - match: fc\n  - match: head\n    lr_mul: 2\n")
    with pytest.raises(RuleError) as exc:
        Plan.load(tmp_path / "p.yaml")
    assert (exc.value.where.rule, exc.value.where.line) == (1, 5)
    with pytest.raises(PlanError) as exc:
        Plan(layers="blocks.{i}")
    assert exc.value.where.field == "layers" and str(exc.value).startswith("layers is set but layer_decay")
