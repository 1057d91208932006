"""optim's routing checks: which parameters torch's Muon, SparseAdam and the dense optimizers
can take, said at resolve time instead of by torch at the first step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paramgroups import optim
from paramgroups.inventory import inventory


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.emb = nn.Embedding(10, 4, sparse=True)
        self.bag = nn.EmbeddingBag(10, 4, sparse=True)
        self.dense = nn.Embedding(10, 4)
        self.fc = nn.Linear(4, 2)


@pytest.fixture(scope="module")
def records():
    return {r.name: r for r in inventory(Mixed())}


def test_muon_takes_only_matrices(records):
    assert optim.unroutable(torch.optim.Muon, records["conv.weight"]) == (
        "conv.weight (shape [8, 3, 3, 3]) cannot go to Muon: Muon takes only 2-D parameters; send it "
        "to another optimizer (e.g. adamw), or route only matrices to Muon (kinds: matrix)")
    assert optim.unroutable(torch.optim.Muon, records["fc.bias"]) == (
        "fc.bias (shape [2]) cannot go to Muon: Muon takes only 2-D parameters; send it to another "
        "optimizer (e.g. adamw), or route only matrices to Muon (kinds: matrix)")
    assert optim.unroutable(torch.optim.Muon, records["fc.weight"]) is None
    assert optim.unroutable(torch.optim.Muon, records["dense.weight"]) is None  # a matrix, if routed
    assert "cannot go to MyMuon: Muon takes only 2-D" in optim.unroutable(type("MyMuon", (torch.optim.Muon,), {}), records["fc.bias"])


def test_muon_refuses_complex_parameters():
    (record,) = inventory(nn.ParameterDict({"z": nn.Parameter(torch.zeros(3, 3, dtype=torch.complex64))}))
    assert optim.unroutable(torch.optim.Muon, record) == (
        "z (shape [3, 3]) cannot go to Muon: Muon does not take complex parameters; send it to "
        "another optimizer (e.g. adamw)")


def test_sparseadam_takes_only_sparse_gradients(records):
    assert optim.unroutable(torch.optim.SparseAdam, records["fc.weight"]) == (
        "fc.weight (shape [2, 4]) cannot go to SparseAdam: SparseAdam takes only parameters with "
        "sparse gradients (nn.Embedding or nn.EmbeddingBag with sparse=True); send it to another "
        "optimizer (e.g. adamw)")
    assert optim.unroutable(torch.optim.SparseAdam, records["dense.weight"]).startswith(
        "dense.weight (shape [10, 4]) cannot go to SparseAdam")
    assert optim.unroutable(torch.optim.SparseAdam, records["emb.weight"]) is None
    assert optim.unroutable(torch.optim.SparseAdam, records["bag.weight"]) is None


def test_sparse_gradients_go_only_where_torch_takes_them(records):
    assert optim.unroutable(torch.optim.AdamW, records["emb.weight"]) == (
        "emb.weight (shape [10, 4]) has sparse gradients (Embedding with sparse=True) and AdamW "
        "does not take them; send it to sparseadam, sgd or adagrad, or build the embedding with "
        "sparse=False")
    assert optim.unroutable(torch.optim.Muon, records["bag.weight"]) == (
        "bag.weight (shape [10, 4]) has sparse gradients (EmbeddingBag with sparse=True) and Muon "
        "does not take them; send it to sparseadam, sgd or adagrad, or build the embedding with "
        "sparse=False")
    for cls in (torch.optim.SGD, torch.optim.Adagrad):
        assert optim.unroutable(cls, records["emb.weight"]) is None
    assert optim.unroutable(torch.optim.AdamW, records["dense.weight"]) is None


def test_each_refusal_is_what_torch_itself_refuses(records):
    """What unroutable refuses, torch refuses too (when built or at the first step)."""
    net = Mixed()
    by_name = dict(net.named_parameters())
    for cls, name in [(torch.optim.Muon, "conv.weight"), (torch.optim.SparseAdam, "fc.weight"),
                      (torch.optim.AdamW, "emb.weight"), (torch.optim.Adam, "bag.weight")]:
        assert optim.unroutable(cls, records[name]) is not None
        param = by_name[name]
        with pytest.raises((ValueError, RuntimeError)):
            opt = cls([param])
            param.grad = (torch.zeros_like(param).to_sparse() if name in ("emb.weight", "bag.weight")
                          else torch.zeros_like(param))
            opt.step()


def test_optimizers_outside_torch_are_not_judged(records):
    class Custom(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {})

    assert optim.unroutable(Custom, records["emb.weight"]) is None


def test_sparse_grad(records):
    assert [n for n, r in records.items() if optim.sparse_grad(r)] == ["emb.weight", "bag.weight"]


def test_muon_keeps_one_momentum_buffer_per_parameter():
    assert optim.state_multiplier(torch.optim.Muon, {}) == 1
    assert optim.state_multiplier(torch.optim.SparseAdam, {}) == 2


def test_implementation_per_optimizer(records):
    """Muon has neither fused nor foreach in torch 2.14; fused kernels refuse sparse gradients."""
    assert "fused" not in optim.accepted_options(torch.optim.Muon)[0]
    assert "foreach" not in optim.accepted_options(torch.optim.Muon)[0]
    assert optim.implementation(torch.optim.Muon, {}, [records["fc.weight"]]) == {}
    if torch.cuda.is_available():
        return
    assert optim.implementation(torch.optim.SGD, {}, [records["fc.weight"]]) == {"fused": True}
    assert optim.implementation(torch.optim.SGD, {}, [records["emb.weight"], records["fc.weight"]]) == {
        "foreach": True}
