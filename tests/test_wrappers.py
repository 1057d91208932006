"""One plan means the same on bare, compiled, checkpoint-wrapped and flattened models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from paramgroups import Plan, Rule, audit
from paramgroups.errors import ModelError

from conftest import run_cli as run
from stagenet import Net

PLAN = Plan([Rule("stem", freeze=True), Rule("layer{1,2}.0", lr=0.01), Rule("fc", lr=0.5),
             Rule(kinds=["bias", "norm"], weight_decay=0)], lr=0.05, weight_decay=1e-3)


def layout(model: nn.Module) -> list:
    res = PLAN.resolve(model)
    return [(a.record.name, a.group, a.lr, a.weight_decay, a.frozen, a.rules) for a in res.assignments]


def test_torch_compile_resolves_like_the_bare_model():
    net = Net()
    compiled = torch.compile(net, backend="eager")
    assert any(n.startswith("_orig_mod.") for n, _ in compiled.named_parameters())
    assert layout(compiled) == layout(net)
    assert [r["name"] for r in audit(compiled, PLAN).parameters] == [n for n, _ in net.named_parameters()]


def test_activation_checkpoint_wrapper_resolves_like_the_bare_model():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    net = Net()
    bare = layout(net)
    net.layer1 = checkpoint_wrapper(net.layer1)
    assert any("_checkpoint_wrapped_module" in n for n, _ in net.named_parameters())
    assert layout(net) == bare
    opt = PLAN.optimizer(net)  # and it trains through the wrapper
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()


def test_flattened_fsdp_parameters_are_refused():
    class Flat(nn.Module):  # what FSDP1 without use_orig_params leaves behind
        def __init__(self):
            super().__init__()
            self._fsdp_wrapped_module = nn.Module()
            self._fsdp_wrapped_module.register_parameter("_flat_param", nn.Parameter(torch.zeros(10)))

    with pytest.raises(ModelError, match="use_orig_params=True"):
        PLAN.param_groups(Flat())


def test_tied_alias_conflict_shows_in_the_audit(tied):
    plan = Plan([Rule("emb", lr=0.2), Rule("head", lr=0.3)], lr=0.1)
    row = {r["name"]: r for r in audit(tied, plan).parameters}["emb.weight"]
    assert (row["aliases"], row["lr"], row["rules"]) == (["head.weight"], 0.3, [0, 1])


@pytest.mark.slow
def test_hundred_thousand_tensors_and_hundred_rules():
    class Big(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.blocks = nn.ModuleList(nn.ModuleDict({"attn": nn.Linear(1, 1), "norm": nn.LayerNorm(1)})
                                        for _ in range(n))

    with torch.device("meta"):
        big = Big(25_000)
    rules = [Rule(f"blocks.{{{i * 250}..{i * 250 + 249}}}.attn", lr=0.001 * (i + 1)) for i in range(98)]
    rules += [Rule(kinds="bias", weight_decay=0), Rule("**.norm.weight", lr_mult=0.5)]
    groups = Plan(rules, lr=0.1, weight_decay=0.01).param_groups(big)
    assert sum(len(g["params"]) for g in groups) == 100_000
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert by_id[id(big.blocks[24_499].attn.weight)]["lr"] == pytest.approx(0.098)
    assert by_id[id(big.blocks[24_999].attn.weight)]["lr"] == 0.1  # past the last range rule
    assert by_id[id(big.blocks[0].attn.bias)]["weight_decay"] == 0
    assert by_id[id(big.blocks[7].norm.weight)]["lr"] == pytest.approx(0.05)


def test_billion_parameter_timm_model_inspects_on_meta(capsys):
    import json

    code, out, _ = run(capsys, "inspect", "timm:vit_giant_patch14_224", "--format", "json", "--optimizer", "adamw")
    assert code == 0
    data = json.loads(out)
    assert data["totals"]["numel"] == 1_012_611_432 and len(data["parameters"]) == 488
    assert data["totals"]["optimizer_state_bytes"] == 8 * 1_012_611_432
    from paramgroups.models import build_model

    assert {p.device.type for p in build_model("timm:vit_giant_patch14_224").parameters()} == {"meta"}


def test_a_users_own_module_called_module_keeps_its_name():
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(2))
            self.module = nn.Linear(2, 2)

    names = [r["name"] for r in audit(Holder()).parameters]
    assert names == ["weight", "module.weight", "module.bias"]
    assert [a.record.name for a in Plan([Rule("module", lr=0.5)]).resolve(Holder()).assignments
            if a.lr == 0.5] == ["module.weight", "module.bias"]


def test_ddp_state_dict_files_drop_the_module_prefix(tmp_path, capsys):
    torch.save({f"module.{k}": v for k, v in Net().state_dict().items()}, tmp_path / "ddp.pt")
    code, out, _ = run(capsys, "inspect", tmp_path / "ddp.pt", "--format", "csv")
    assert code == 0
    rows = [line.split(",")[0] for line in out.splitlines()[1:]]
    assert rows == [n for n, _ in Net().named_parameters()]
