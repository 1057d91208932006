"""The inventory's one walk: records in named_parameters order, and the name table it notes on
the way equal to the one built from the names afterwards."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paramgroups.inventory import Inventory, inventory
from paramgroups.names import NameTable, _covers


def covers_as_sets(covers) -> dict[str, set[int]]:
    return {name: set(indices) for name, indices in covers.items()}


def shared_blocks() -> nn.Module:
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Sequential(shared, nn.Linear(2, 1)))
    model.empty = nn.Sequential(nn.ReLU())  # no parameters: named by no pattern
    return model


def checkpointed() -> nn.Module:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    return nn.Sequential(checkpoint_wrapper(nn.Linear(2, 2)), nn.Sequential(checkpoint_wrapper(nn.Linear(2, 3))))


def lora() -> nn.Module:
    peft = pytest.importorskip("peft")
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    return peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["0", "2"]))


@pytest.mark.parametrize("build", [shared_blocks, checkpointed, lora, lambda: torch.compile(shared_blocks())],
                         ids=["shared", "checkpoint", "lora", "compiled"])
def test_walk_covers_equal_the_names_covers(build):
    model = build()
    records = inventory(model)
    assert isinstance(records, Inventory)
    assert covers_as_sets(records.covers) == covers_as_sets(_covers(list(records)))
    table, from_names = NameTable.of(records), NameTable.of(list(records))
    assert sorted(table.index.names) == sorted(from_names.index.names)


def test_walk_order_names_and_aliases(tied):
    records = inventory(tied)
    assert sorted(n for r in records for n in r.names) == sorted(
        n for n, _ in tied.named_parameters(remove_duplicate=False))
    assert [r.name for r in records] == [n for n, _ in tied.named_parameters()]
    assert {r.name: r.aliases for r in records if r.aliases} == {"emb.weight": ["head.weight"]}
    assert covers_as_sets(records.covers) == covers_as_sets(_covers(list(records)))
    emb = next(r for r in records if r.name == "emb.weight")
    assert emb.index in records.covers["head"]


def test_shared_module_names_cover_the_first_records():
    model = shared_blocks()
    records = inventory(model)
    assert [(r.name, r.aliases) for r in records] == [
        ("0.weight", ["2.weight", "3.0.weight"]), ("0.bias", ["2.bias", "3.0.bias"]),
        ("3.1.weight", []), ("3.1.bias", [])]
    assert covers_as_sets(records.covers) == {
        "0": {0, 1}, "0.weight": {0}, "0.bias": {1}, "2": {0, 1}, "2.weight": {0}, "2.bias": {1},
        "3": {0, 1, 2, 3}, "3.0": {0, 1}, "3.0.weight": {0}, "3.0.bias": {1},
        "3.1": {2, 3}, "3.1.weight": {2}, "3.1.bias": {3}}


def test_record_fields_read_from_the_parameter():
    model = nn.Sequential(nn.Linear(3, 2).to(torch.float64))
    rec = inventory(model)[0]
    assert (rec.index, rec.name, rec.module, rec.module_class, rec.module_classes) == (0, "0.weight", "0", "Linear",
                                                                                       ("Linear",))
    assert (rec.shape, rec.numel, rec.dtype, rec.device, rec.is_float) == ((2, 3), 6, torch.float64,
                                                                           torch.device("cpu"), True)
    assert rec.param is model[0].weight and rec.owner is model[0] and "Sequential" in rec.enclosing
