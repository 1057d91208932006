"""Norm layers known by what they are, held statistics of norms (without parameters, and
through pickling and copies), wrappers known by their class, and names with characters that
are glob syntax."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import yaml
from torch import nn

from paramgroups import Plan, Rule, Stage, audit
from paramgroups.inventory import inventory, is_norm, unwrap, wrapped_children
from paramgroups.norms import held_names, is_held, sync
from paramgroups.snapshots import snapshot

from conftest import run_cli as run
from stagenet import Net


# -- which layers are norms ----------------------------------------------------------------


class LayerNormLSTMCell(nn.Module):
    """An LSTM cell with layer-normalised gates: a recurrent cell, not a norm layer."""

    def __init__(self, dim: int = 4):
        super().__init__()
        self.weight_ih = nn.Parameter(torch.zeros(4 * dim, dim))
        self.weight_hh = nn.Parameter(torch.zeros(4 * dim, dim))
        self.ln = nn.LayerNorm(4 * dim)


@pytest.mark.slow  # imports timm, torchvision and transformers
def test_norm_classes_of_torch_timm_torchvision_and_transformers_are_norms():
    from timm.layers import BatchNormAct2d, EvoNorm2dB0, GroupNormAct, LayerNorm2d, RmsNorm
    from torchvision.ops import FrozenBatchNorm2d
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    norms = [nn.BatchNorm2d(4), nn.SyncBatchNorm(4), nn.InstanceNorm1d(4), nn.LayerNorm(4), nn.GroupNorm(2, 4),
             nn.RMSNorm(4), nn.LocalResponseNorm(2), LayerNorm2d(4), RmsNorm(4), BatchNormAct2d(4),
             GroupNormAct(4, 2), EvoNorm2dB0(4), FrozenBatchNorm2d(4), LlamaRMSNorm(4), T5LayerNorm(4)]
    assert [type(m).__name__ for m in norms if not is_norm(m)] == []
    others = [LayerNormLSTMCell(), nn.Linear(2, 2), nn.LSTMCell(2, 2), nn.Embedding(3, 2), nn.Sequential()]
    assert [type(m).__name__ for m in others if is_norm(m)] == []


def test_a_layernorm_lstm_cell_is_not_of_kind_norm():
    kinds = {r.name: r.kinds for r in inventory(LayerNormLSTMCell())}
    # a matrix of a non-norm module: a weight (and a hidden matrix: the cell is the root, no head), not a norm
    assert kinds["weight_ih"] == frozenset({"weight", "matrix"})
    assert kinds["ln.weight"] == frozenset({"weight", "norm", "ndim<=1"})


@pytest.mark.slow  # imports transformers
def test_transformers_models_from_config_have_norm_kinds_on_their_norm_layers():
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5Model

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    t5 = T5Model(T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2))
    for model in (llama, t5):  # input_layernorm, final_layer_norm, ...: only a weight each
        norm_kind = [r.name for r in inventory(model) if "norm" in r.kinds]
        assert norm_kind == [f"{n}.weight" for n, _ in model.named_modules() if "norm" in n.rpartition(".")[2]]
    assert len([r for r in inventory(llama) if "norm" in r.kinds]) == 3  # input, post-attention, final


# -- held statistics of norm layers without parameters -------------------------------------


class Bare(nn.Module):
    """Blocks whose norm layers have no parameters (``affine=False``, tracked InstanceNorm)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, affine=False),
                                  nn.InstanceNorm2d(4, track_running_stats=True))
        self.body = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, affine=False))
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(self.stem(x)).mean((2, 3)))


def stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


def test_parameterless_norms_follow_the_frozen_block_they_sit_in():
    torch.manual_seed(0)
    model = Bare()
    Plan([Rule("stem", freeze=True)], lr=0.1).apply(model)
    model.train()
    assert [is_held(m) for m in (model.stem[1], model.stem[2], model.body[1])] == [True, True, False]
    before = stats(model)
    model(torch.randn(2, 3, 6, 6))
    after = stats(model)
    assert [k for k in before if not torch.equal(before[k], after[k])] == ["body.1.running_mean",
                                                                           "body.1.running_var"]


def test_a_stage_that_thaws_the_block_releases_its_parameterless_norm():
    model = Bare()
    plan = Plan([Rule("stem", freeze=True)], lr=0.1, stages=[Stage(epoch=1, unfreeze="stem")])
    opt = plan.optimizer(model)
    sched = plan.scheduler(opt)
    model.train()
    assert model.stem[1].training is False
    opt.step(), sched.step()
    assert not is_held(model.stem[1]) and model.stem[1].training is True


def test_a_norm_directly_under_the_root_is_held_only_when_the_whole_model_is_frozen():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3, affine=False), nn.Linear(3, 3))
    model[0].weight.requires_grad_(False)
    sync(model)
    assert not is_held(model[1])
    for p in model.parameters():
        p.requires_grad_(False)
    sync(model)
    assert is_held(model[1])


def test_a_norm_the_user_put_in_eval_mode_keeps_it_when_nothing_holds_it():
    model = Net()
    model.train()
    model.layer1[1].eval()  # the user's own choice; no rule mentions layer1
    Plan([Rule("stem", freeze=True)], lr=0.1).apply(model)
    assert (model.layer1[1].training, is_held(model.stem[1])) == (False, True)


def test_held_names_take_the_nearest_module_with_parameters():
    frozen = {"a.conv.weight": True, "a.inner.lin.weight": True, "b.conv.weight": True, "b.fc.weight": False,
              "c.bn.weight": True, "c.bn.bias": True, "c.fc.weight": False}
    layers = ["a.bn", "a.inner.deep.bn", "b.bn", "c.bn", "d.bn"]
    assert held_names(frozen, layers) == {"a.bn", "a.inner.deep.bn", "c.bn"}
    assert held_names({}, ["bn"]) == set()


def test_diff_flags_moved_statistics_of_a_held_parameterless_norm(tmp_path, capsys):
    torch.manual_seed(0)
    model = Bare()
    torch.save(model.state_dict(), tmp_path / "a.pt")
    model.stem[1].running_mean += 1.0  # what an unheld layer does in model.train()
    model.body[1].running_mean += 1.0
    torch.save(model.state_dict(), tmp_path / "b.pt")
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(Plan([Rule("stem", freeze=True)]).to_dict()))
    code, out, _ = run(capsys, "diff", tmp_path / "a.pt", tmp_path / "b.pt", "--rules", tmp_path / "plan.yaml")
    out = out.splitlines()
    assert code == 1
    assert [line.split()[0] for line in out if line.endswith("FROZEN")] == ["stem.1.running_mean"]
    assert out[-1] == "2 of 15 tensors changed; 1 frozen tensor(s) moved"


def test_models_with_held_norms_pickle_deepcopy_and_torch_save():
    model = Net()
    Plan([Rule("stem", freeze=True)]).optimizer(model)
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        clone.train()
        assert is_held(clone.stem[1]) and clone.stem[1].training is False
        assert clone.layer1[1].training is True
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    # a whole module loads under weights_only=True once its classes are allowed by name
    from paramgroups.norms import _HeldTrain

    allowed = [Net, nn.Sequential, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Linear, _HeldTrain]
    with torch.serialization.safe_globals(allowed):
        assert is_held(torch.load(buf, weights_only=True).stem[1])


# -- wrappers known by their class -----------------------------------------------------------


class Own(nn.Module):
    """A model whose own children carry the names torch's wrappers use."""

    def __init__(self):
        super().__init__()
        self.module = nn.Linear(2, 2)
        self._orig_mod = nn.Linear(2, 2)
        self._checkpoint_wrapped_module = nn.Linear(2, 2)
        self._fsdp_wrapped_module = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fsdp_wrapped_module(self._checkpoint_wrapped_module(self._orig_mod(self.module(x))))


OWN_NAMES = [f"{c}.{p}" for c in ("module", "_orig_mod", "_checkpoint_wrapped_module", "_fsdp_wrapped_module")
             for p in ("weight", "bias")]


def test_a_users_children_named_like_wrappers_keep_their_names():
    from torch._dynamo.eval_frame import OptimizedModule  # noqa: F401 - loaded, as in a real run
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper  # noqa: F401

    own = Own()
    assert [r["name"] for r in audit(own).parameters] == OWN_NAMES
    assert list(snapshot(own)) == OWN_NAMES
    assert unwrap(own) is own and wrapped_children(own) == frozenset()
    plan = Plan([Rule("_orig_mod", lr=0.5)], lr=0.1, layer_decay=0.5,
                layers=["module", "_orig_mod", "_checkpoint_wrapped_module", "_fsdp_wrapped_module"])
    lrs = {a.record.name: a.lr for a in plan.resolve(own).assignments}
    assert lrs == {"module.weight": 0.0125, "module.bias": 0.0125, "_orig_mod.weight": 0.125,
                   "_orig_mod.bias": 0.125, "_checkpoint_wrapped_module.weight": 0.05,
                   "_checkpoint_wrapped_module.bias": 0.05, "_fsdp_wrapped_module.weight": 0.1,
                   "_fsdp_wrapped_module.bias": 0.1}


def test_compile_and_checkpoint_wrappers_around_a_users_module_child():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    own = Own()
    own.module = checkpoint_wrapper(own.module)
    compiled = torch.compile(own, backend="eager")
    assert wrapped_children(compiled) == {"_orig_mod", "_orig_mod.module._checkpoint_wrapped_module"}
    assert [r["name"] for r in audit(compiled).parameters] == OWN_NAMES
    assert unwrap(compiled) is own
    assert list(snapshot(compiled)) == OWN_NAMES
    compiled(torch.randn(1, 2)).sum().backward()  # it still runs through both wrappers


@pytest.fixture(scope="module")
def process_group(tmp_path_factory):
    import torch.distributed as dist

    store = tmp_path_factory.mktemp("pg") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_is_unwrapped_but_a_users_module_child_below_it_is_kept(process_group):
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(Own())
    assert wrapped_children(ddp) == {"module"}
    assert unwrap(ddp) is ddp.module
    assert [r["name"] for r in audit(ddp).parameters] == OWN_NAMES
    net = Net()
    plan = Plan([Rule("stem", freeze=True), Rule("layer1", lr=0.3)], lr=0.1, layer_decay=0.5,
                layers=["stem", "layer1", "layer2", "fc"])
    bare = [(a.record.name, a.lr, a.frozen) for a in plan.resolve(net).assignments]
    assert [(a.record.name, a.lr, a.frozen) for a in plan.resolve(DistributedDataParallel(net)).assignments] == bare


@pytest.mark.filterwarnings("ignore:FSDP is switching to use `NO_SHARD`")  # world size 1
def test_fsdp1_wrappers_are_unwrapped_around_a_users_module_child(process_group):
    from torch.distributed.fsdp import FullyShardedDataParallel

    own = Own()
    own._orig_mod = FullyShardedDataParallel(own._orig_mod, use_orig_params=True, device_id=torch.device("cpu"))
    fsdp = FullyShardedDataParallel(own, use_orig_params=True, device_id=torch.device("cpu"))
    assert wrapped_children(fsdp) == {"_fsdp_wrapped_module", "_fsdp_wrapped_module._orig_mod._fsdp_wrapped_module"}
    assert unwrap(fsdp) is own
    assert [r["name"] for r in audit(fsdp).parameters] == OWN_NAMES


# -- names with glob characters --------------------------------------------------------------


class Keyed(nn.Module):
    def __init__(self):
        super().__init__()
        self.d = nn.ModuleDict({k: nn.Linear(1, 1, bias=False) for k in ("a/b", "a", "a*b", "axb", "[0]", "0", "x y")})


def lr_of(plan: Plan, model: nn.Module) -> dict[str, float]:
    return {a.record.name: a.lr for a in plan.resolve(model).assignments}


def test_a_slash_in_a_module_dict_key_is_no_separator():
    model = Keyed()
    assert "d.a/b.weight" in dict(model.named_parameters())
    star = lr_of(Plan([Rule("d.*.weight", lr=0.5)], lr=0.1), model)
    assert star["d.a/b.weight"] == 0.5 and set(star.values()) == {0.5}
    under_a = lr_of(Plan([Rule("d.a.*", lr=0.5)], lr=0.1), model)
    assert [n for n, lr in under_a.items() if lr == 0.5] == ["d.a.weight"]
    slash = lr_of(Plan([Rule("d.a/*", lr=0.5)], lr=0.1), model)
    assert [n for n, lr in slash.items() if lr == 0.5] == ["d.a/b.weight"]


def test_names_with_glob_characters_can_be_written_out_or_escaped():
    model = Keyed()
    bracket = lr_of(Plan([Rule("d.[0].weight", lr=0.5)], lr=0.1), model)
    assert sorted(n for n, lr in bracket.items() if lr == 0.5) == ["d.0.weight", "d.[0].weight"]
    escaped = lr_of(Plan([Rule(r"d.a\*b", lr=0.5)], lr=0.1), model)
    assert [n for n, lr in escaped.items() if lr == 0.5] == ["d.a*b.weight"]
    spaced = lr_of(Plan([Rule("d.x y", lr=0.5)], lr=0.1), model)
    assert [n for n, lr in spaced.items() if lr == 0.5] == ["d.x y.weight"]


def test_holds_found_once_follow_every_later_flip_as_held_names_says():
    """A Holds built once (as the scheduler keeps one) holds exactly the layers held_names picks
    after each requires_grad flip, including parameterless norms that follow their block."""
    import random

    from paramgroups.norms import Holds, held_names, is_held

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4),
                          nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4, affine=False)),
                          nn.BatchNorm2d(4, affine=False), nn.Linear(4, 2))
    holds = Holds(model)
    params = dict(model.named_parameters())
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    rng = random.Random(0)
    seen = set()
    for _ in range(40):
        for p in params.values():
            p.requires_grad_(rng.random() < 0.5)
        holds.sync()
        expected = held_names({n: not p.requires_grad for n, p in params.items()}, layers)
        assert {n for n, m in layers.items() if is_held(m)} == expected
        assert all(not m.training for n, m in layers.items() if n in expected)
        seen.add(frozenset(expected))
    for p in params.values():
        p.requires_grad_(False)
    holds.sync()
    assert all(is_held(m) for m in layers.values())  # "3" follows the whole model, frozen now
    assert len(seen) == 4  # every combination of "1" and "2.1" came up
