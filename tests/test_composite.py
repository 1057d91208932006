"""CompositeOptimizer: torch's own Muon, AdamW and SparseAdam behind one optimizer, bitwise equal
to the same optimizers stepped by hand, checkpointed in torch's layout, driven by torch's LR
schedulers, Lightning, the Hugging Face Trainer and accelerate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import composite_worker as cw
from paramgroups.composite import CompositeOptimizer
from paramgroups.errors import OptimizerError


def assert_same(net_a: nn.Module, state_a, net_b: nn.Module, state_b) -> None:
    """Every parameter and every optimizer state tensor bitwise equal (``state_x(p)`` gives a
    parameter's optimizer state)."""
    for (name, a), b in zip(net_a.named_parameters(), net_b.parameters()):
        assert torch.equal(a, b), name
        sa, sb = state_a(a), state_b(b)
        assert sa.keys() == sb.keys() and sa, name
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), (name, key)


def by_hand(optimizers: list) -> callable:
    def state(p):
        (found,) = [opt.state[p] for _, opt in optimizers if p in opt.state]
        return found
    return state


@pytest.mark.parametrize("build", [pytest.param(cw.muon_adamw, marks=pytest.mark.slow), cw.sparseadam_adamw])
def test_twenty_steps_equal_the_optimizers_stepped_by_hand(build):
    sparse = build is cw.sparseadam_adamw
    net, ref = cw.model(sparse), cw.model(sparse)
    opt = CompositeOptimizer(build(net))
    hand = build(ref)
    cw.train(net, [opt], 0, 20)
    cw.train(ref, [o for _, o in hand], 0, 20)
    assert_same(net, opt.state.__getitem__, ref, by_hand(hand))
    if sparse:
        assert net.embed.weight.grad.is_sparse


def test_param_groups_are_the_inner_groups_in_order_and_name_their_optimizer():
    net = cw.model()
    opt = cw.composite(net)
    muon, adamw = opt.optimizers["muon"], opt.optimizers["adamw"]
    assert [g["optimizer"] for g in opt.param_groups] == ["adamw", "muon", "adamw"]
    assert opt.param_groups[0] is adamw.param_groups[0] and opt.param_groups[1] is muon.param_groups[0]
    assert opt.param_groups[2] is adamw.param_groups[1]
    opt.param_groups[1]["lr"] = 0.5
    assert muon.param_groups[0]["lr"] == 0.5
    assert isinstance(opt, torch.optim.Optimizer)
    # only what both share, with one value: Muon's lr (0.02) and eps (1e-7) differ from AdamW's
    assert opt.defaults == {"weight_decay": 0.1}


def test_state_is_a_view_keyed_by_parameter():
    net = cw.model()
    opt = cw.composite(net)
    assert len(opt.state) == 0 and not opt.state and net.head.weight not in opt.state
    cw.train(net, [opt], 0, 1)
    matrix = net.blocks[0][0].weight
    assert set(opt.state[matrix]) == {"momentum_buffer"}
    assert set(opt.state[net.head.weight]) == {"step", "exp_avg", "exp_avg_sq"}
    assert len(opt.state) == len(list(net.parameters())) and set(opt.state) == set(net.parameters())
    assert opt.state.get(torch.zeros(1)) is None
    with pytest.raises(KeyError):
        opt.state[torch.zeros(1)]


def test_closure_runs_once_and_its_loss_is_returned():
    net = cw.model()
    opt = cw.composite(net)
    calls = []
    ids, targets = cw.batch(0)

    def closure():
        calls.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(ids).flatten(0, 1), targets.flatten())
        loss.backward()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert calls == [True] and loss.ndim == 0
    assert all(p in opt.state for p in net.parameters())


def test_zero_grad_covers_every_optimizer():
    net = cw.model()
    opt = cw.composite(net)
    cw.train(net, [opt], 0, 1)
    assert all(p.grad is not None for p in net.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_step_hooks_on_the_composite_run_once_around_the_inner_steps():
    net = cw.model()
    opt = cw.composite(net)
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append(("pre", o is opt)))
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append(("post", o is opt)))
    opt.optimizers["muon"].register_step_post_hook(lambda o, a, k: seen.append(("muon", True)))
    cw.train(net, [opt], 0, 2)
    assert seen == [("pre", True), ("muon", True), ("post", True)] * 2


def test_the_profiler_records_the_composite_step_and_the_inner_ones():
    net = cw.model()
    opt = cw.composite(net)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        cw.train(net, [opt], 0, 1)
    names = {e.name for e in prof.events()}
    assert {"Optimizer.step#CompositeOptimizer.step", "Optimizer.step#Muon.step",
            "Optimizer.step#AdamW.step"} <= names


def test_state_dict_hooks_on_the_composite_run():
    net = cw.model()
    opt = cw.composite(net)
    seen = []
    opt.register_state_dict_pre_hook(lambda o: seen.append("pre"))
    opt.register_state_dict_post_hook(lambda o, sd: seen.append(len(sd["param_groups"])))
    opt.register_load_state_dict_pre_hook(lambda o, sd: seen.append("load pre"))
    opt.register_load_state_dict_post_hook(lambda o: seen.append("load post"))
    opt.load_state_dict(opt.state_dict())
    assert seen == ["pre", 3, "load pre", "load post"]


def test_add_param_group_routes_by_its_optimizer_key():
    net = cw.model()
    matrices, weights, rest = cw.split(net)
    opt = CompositeOptimizer([("muon", torch.optim.Muon(matrices[:2], lr=0.02)),
                              ("adamw", torch.optim.AdamW(weights + rest, lr=3e-4))])
    opt.add_param_group({"params": matrices[2:], "optimizer": "muon", "lr": 0.01})
    assert [g["optimizer"] for g in opt.param_groups] == ["muon", "adamw", "muon"]
    assert opt.param_groups[2] is opt.optimizers["muon"].param_groups[1]
    assert opt.param_groups[2]["momentum"] == 0.95  # the inner optimizer's defaults fill it in
    with pytest.raises(OptimizerError, match=r"add_param_group got a group without an \"optimizer\" "
                                             r"key; the optimizers are muon, adamw"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2, 2))]})
    with pytest.raises(OptimizerError, match=r"a group for unknown optimizer 'mun'; did you mean 'muon'\?"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2, 2))], "optimizer": "mun"})
    with pytest.raises(OptimizerError, match="a parameter of the group for 'muon' is already stepped by 'adamw'"):
        opt.add_param_group({"params": [net.head.weight], "optimizer": "muon"})


def test_construction_errors():
    net = cw.model()
    matrices, weights, rest = cw.split(net)
    muon = torch.optim.Muon(matrices, lr=0.02)
    with pytest.raises(OptimizerError, match=r"a parameter of shape \[32, 16\] is in both 'muon' and 'adamw'"):
        CompositeOptimizer({"muon": muon, "adamw": torch.optim.AdamW([matrices[0]])})
    with pytest.raises(OptimizerError, match=r"order must list every \(optimizer name, group index\) "
                                             r"once; missing \[\('adamw', 0\)\]; unknown \[\('adamw', 1\)\]"):
        CompositeOptimizer({"muon": muon, "adamw": torch.optim.AdamW(weights)}, [("muon", 0), ("adamw", 1)])
    with pytest.raises(OptimizerError, match="LBFGS re-evaluates the closure"):
        CompositeOptimizer({"muon": muon, "lbfgs": torch.optim.LBFGS(weights)})
    with pytest.raises(OptimizerError, match="'inner' must be a torch.optim.Optimizer"):
        CompositeOptimizer({"inner": CompositeOptimizer({"muon": muon})})


def test_build_makes_the_inner_optimizers_from_ordered_groups():
    net = cw.model()
    matrices, weights, rest = cw.split(net)
    opt = CompositeOptimizer.build(
        [{"params": weights, "optimizer": "adamw"}, {"params": matrices, "optimizer": "muon"},
         {"params": rest, "optimizer": "adamw", "weight_decay": 0.0}],
        {"muon": (torch.optim.Muon, {"lr": 0.02, "momentum": 0.95, "weight_decay": 0.1}),
         "adamw": (torch.optim.AdamW, {"lr": 3e-4, "betas": (0.9, 0.95), "weight_decay": 0.1})})
    assert list(opt.optimizers) == ["muon", "adamw"]
    assert [(g["optimizer"], g["lr"]) for g in opt.param_groups] == [("adamw", 3e-4), ("muon", 0.02), ("adamw", 3e-4)]
    ref = cw.model()
    hand = cw.muon_adamw(ref)
    cw.train(net, [opt], 0, 5)
    cw.train(ref, [o for _, o in hand], 0, 5)
    assert_same(net, opt.state.__getitem__, ref, by_hand(hand))
    with pytest.raises(OptimizerError, match=r"'muon' \(Muon\) rejected its settings: Muon only supports 2D"):
        CompositeOptimizer.build([{"params": rest, "optimizer": "muon"}], {"muon": (torch.optim.Muon, {})})
    with pytest.raises(OptimizerError, match=r"optimizer 'sgd' \(SGD\) has no parameter group"):
        CompositeOptimizer.build([{"params": matrices, "optimizer": "muon"}],
                                 {"muon": (torch.optim.Muon, {}), "sgd": (torch.optim.SGD, {})})
    with pytest.raises(OptimizerError, match=r"group 0 names optimizer 'adam'; did you mean 'adamw'\?"):
        CompositeOptimizer.build([{"params": rest, "optimizer": "adam"}], {"adamw": (torch.optim.AdamW, {})})


def test_repr_lists_the_inner_optimizers():
    text = repr(cw.composite(cw.model()))
    assert text.startswith("CompositeOptimizer (\n  muon: Muon (\n  Parameter Group 0\n")
    assert "\n  adamw: AdamW (\n  Parameter Group 0\n" in text and text.endswith("\n  )\n)")


# -- state dicts -------------------------------------------------------------------------------


def test_state_dict_is_torchs_layout_numbered_in_group_order():
    net = cw.model()
    opt = cw.composite(net)
    cw.train(net, [opt], 0, 1)
    sd = opt.state_dict()
    matrices, weights, rest = cw.split(net)
    sizes = [len(weights), len(matrices), len(rest)]
    assert [g["params"] for g in sd["param_groups"]] == [
        list(range(0, sizes[0])), list(range(sizes[0], sizes[0] + sizes[1])),
        list(range(sizes[0] + sizes[1], sum(sizes)))]
    assert [g["optimizer"] for g in sd["param_groups"]] == ["adamw", "muon", "adamw"]
    assert sorted(sd["state"]) == list(range(sum(sizes)))
    assert set(sd["state"][sizes[0]]) == {"momentum_buffer"}  # the first Muon matrix
    assert torch.equal(sd["state"][sizes[0]]["momentum_buffer"], opt.state[matrices[0]]["momentum_buffer"])
    assert torch.equal(sd["state"][1]["exp_avg"], opt.state[net.head.weight]["exp_avg"])


@pytest.mark.slow
def test_resume_from_a_file_is_bitwise_in_this_process_and_another(tmp_path):
    full = cw.model()
    full_opt = cw.composite(full)
    cw.train(full, [full_opt], 0, 30)

    net = cw.model()
    opt = cw.composite(net)
    cw.train(net, [opt], 0, 20)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict()}, ckpt)
    saved = torch.load(ckpt, weights_only=True)
    resumed = cw.model()
    resumed.load_state_dict(saved["model"])
    ropt = cw.composite(resumed)
    ropt.load_state_dict(saved["optimizer"])
    assert [g["lr"] for g in ropt.param_groups] == [3e-4, 0.02, 3e-4]
    cw.train(resumed, [ropt], 20, 30)
    assert_same(full, full_opt.state.__getitem__, resumed, ropt.state.__getitem__)

    out = tmp_path / "out.pt"
    subprocess.run([sys.executable, str(Path(cw.__file__)), str(ckpt), "20", "30", str(out)], check=True)
    other = cw.model()
    other.load_state_dict(torch.load(out, weights_only=True)["model"])
    oopt = cw.composite(other)
    oopt.load_state_dict(torch.load(out, weights_only=True)["optimizer"])
    assert_same(full, full_opt.state.__getitem__, other, oopt.state.__getitem__)


def test_loading_group_settings_restores_them_in_the_inner_optimizers():
    net = cw.model()
    opt = cw.composite(net)
    sd = opt.state_dict()
    sd["param_groups"][1]["lr"] = 0.5
    opt.load_state_dict(sd)
    assert opt.optimizers["muon"].param_groups[0]["lr"] == 0.5
    assert opt.param_groups[1] is opt.optimizers["muon"].param_groups[0]


def test_a_state_dict_of_another_layout_is_refused_saying_what_differs():
    net = cw.model()
    opt = cw.composite(net)
    other_order = CompositeOptimizer(cw.muon_adamw(net)).state_dict()  # muon first
    with pytest.raises(OptimizerError, match="group 0 is stepped by 'muon' in the state dict but by 'adamw' here"):
        opt.load_state_dict(other_order)
    plain = torch.optim.AdamW(net.parameters()).state_dict()
    with pytest.raises(OptimizerError, match=r"the state dict has 1 param groups, this optimizer \(muon, adamw\) has 3"):
        opt.load_state_dict(plain)
    three = torch.optim.AdamW([{"params": [p]} for p in list(net.parameters())[:3]]).state_dict()
    with pytest.raises(OptimizerError, match="group 0 of the state dict names no optimizer: it was saved from "
                                             "a single optimizer, not from one over muon, adamw"):
        opt.load_state_dict(three)
    sd = opt.state_dict()
    sd["param_groups"][2]["params"] = sd["param_groups"][2]["params"][:-1]
    with pytest.raises(OptimizerError, match="group 2 has 6 parameters in the state dict but 7 here"):
        opt.load_state_dict(sd)
    with pytest.raises(OptimizerError, match="not an optimizer state dict"):
        opt.load_state_dict({"model": {}})


def test_deepcopy_copies_the_inner_optimizers():
    import copy

    net = cw.model()
    opt = cw.composite(net)
    cw.train(net, [opt], 0, 1)
    twin = copy.deepcopy(opt)
    assert list(twin.optimizers) == ["muon", "adamw"] and twin.param_groups[1] is twin.optimizers["muon"].param_groups[0]
    assert twin.param_groups[1]["params"][0] is not opt.param_groups[1]["params"][0]
    assert len(twin.state) == len(opt.state)


@pytest.mark.slow
def test_dcp_get_and_set_optimizer_state_dict():
    import copy

    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    net = cw.model()
    opt = cw.composite(net)
    cw.train(net, [opt], 0, 3)
    osd = get_optimizer_state_dict(net, opt)
    assert osd["param_groups"][1]["params"] == [n for n, p in net.named_parameters()
                                                if n.startswith("blocks") and p.ndim == 2]
    assert set(osd["state"]["blocks.0.0.weight"]) == {"momentum_buffer"}

    fresh = cw.model()
    fresh.load_state_dict(net.state_dict())
    fopt = cw.composite(fresh)
    set_optimizer_state_dict(fresh, fopt, copy.deepcopy(osd))  # (it holds opt's own tensors)
    cw.train(net, [opt], 3, 6)
    cw.train(fresh, [fopt], 3, 6)
    assert_same(net, opt.state.__getitem__, fresh, fopt.state.__getitem__)


# -- torch LR schedulers -----------------------------------------------------------------------


def test_torch_lr_schedulers_change_every_inner_optimizer():
    net = cw.model()
    opt = cw.composite(net)
    muon, adamw = opt.optimizers["muon"], opt.optimizers["adamw"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** step)
    cw.train(net, [opt], 0, 1)
    sched.step()
    assert muon.param_groups[0]["lr"] == 0.01 and [g["lr"] for g in adamw.param_groups] == [1.5e-4, 1.5e-4]

    net = cw.model()
    opt = cw.composite(net)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    for _ in range(2):
        cw.train(net, [opt], 0, 1)
        sched.step()
    assert opt.optimizers["muon"].param_groups[0]["lr"] == pytest.approx(0.002, rel=1e-12)
    assert opt.optimizers["adamw"].param_groups[1]["lr"] == pytest.approx(3e-5, rel=1e-12)
    assert sched.get_last_lr() == [g["lr"] for g in opt.param_groups]


def test_onecycle_with_muon_and_adamw():
    """torch's OneCycleLR cycles ``momentum`` or ``betas[0]`` for all groups, chosen by what
    ``optimizer.defaults`` has; a Muon + AdamW composite shares neither, so cycle_momentum=True
    is refused by torch (rather than writing betas into Muon's groups, which Muon ignores), and
    cycle_momentum=False schedules each group's LR exactly as OneCycleLR on each optimizer."""
    net = cw.model()
    opt = cw.composite(net)
    with pytest.raises(ValueError, match="optimizer must support momentum or beta1"):
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[1e-3, 0.02, 1e-3], total_steps=10)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[1e-3, 0.02, 1e-3], total_steps=10,
                                                cycle_momentum=False)
    ref = cw.model()
    (_, muon), (_, adamw) = cw.muon_adamw(ref)
    refs = [torch.optim.lr_scheduler.OneCycleLR(muon, max_lr=0.02, total_steps=10, cycle_momentum=False),
            torch.optim.lr_scheduler.OneCycleLR(adamw, max_lr=1e-3, total_steps=10, cycle_momentum=False)]
    for step in range(6):
        cw.train(net, [opt], step, step + 1)
        cw.train(ref, [muon, adamw], step, step + 1)
        sched.step()
        for r in refs:
            r.step()
        assert [g["lr"] for g in opt.param_groups] == [adamw.param_groups[0]["lr"], muon.param_groups[0]["lr"],
                                                       adamw.param_groups[1]["lr"]]
    assert_same(net, opt.state.__getitem__, ref, by_hand([("muon", muon), ("adamw", adamw)]))


def test_onecycle_cycles_momentum_when_every_optimizer_has_it():
    net = cw.model()
    matrices, weights, rest = cw.split(net)
    opt = CompositeOptimizer({"muon": torch.optim.Muon(matrices, momentum=0.95),
                              "sgd": torch.optim.SGD(weights + rest, lr=0.1, momentum=0.95)})
    assert opt.defaults["momentum"] == 0.95
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10, base_momentum=0.8, max_momentum=0.9)
    assert [g["momentum"] for g in opt.param_groups] == [0.9, 0.9]
    assert opt.optimizers["muon"].param_groups[0]["momentum"] == 0.9
    cw.train(net, [opt], 0, 1)  # SGD, like Muon and AdamW, ignores the "optimizer" group key
    assert set(opt.state[net.head.weight]) == {"momentum_buffer"}


# -- trainers ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_lightning_steps_a_composite(tmp_path):
    pytest.importorskip("lightning", reason="Lightning is an optional extra")
    net = cw.model()
    trainer = cw.lightning_fit(net, cw.composite, tmp_path)
    opt = trainer.optimizers[0]
    assert isinstance(opt, CompositeOptimizer) and trainer.global_step == 3
    muon, adamw = opt.optimizers["muon"], opt.optimizers["adamw"]
    assert set(muon.state[net.blocks[0][0].weight]) == {"momentum_buffer"}
    assert adamw.state[net.head.weight]["step"].item() == 3


@pytest.mark.slow
def test_huggingface_trainer_steps_a_composite(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is an optional extra")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    model = transformers.LlamaForCausalLM(config)
    matrices = [p for n, p in model.named_parameters() if n.startswith("model.layers") and p.ndim == 2]
    others = [p for p in model.parameters() if all(p is not m for m in matrices)]
    opt = CompositeOptimizer({"muon": torch.optim.Muon(matrices, lr=0.02),
                              "adamw": torch.optim.AdamW(others, lr=3e-4)})
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (6, 8), generator=g)]
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2,
                                          report_to=[], save_strategy="no", logging_strategy="no",
                                          use_cpu=True, disable_tqdm=True)
    before = [m.detach().clone() for m in matrices]
    transformers.Trainer(model=model, args=args, train_dataset=data, optimizers=(opt, sched)).train()
    assert set(opt.optimizers["muon"].state[matrices[0]]) == {"momentum_buffer"}
    assert opt.optimizers["adamw"].state[model.lm_head.weight]["step"].item() == 3
    assert not any(torch.equal(a, m) for a, m in zip(before, matrices))


@pytest.mark.slow
def test_accelerate_prepares_and_steps_a_composite():
    accelerate = pytest.importorskip("accelerate", reason="accelerate is an optional extra")
    net = cw.model()
    opt = cw.composite(net)
    accelerator = accelerate.Accelerator(cpu=True)
    net, prepared = accelerator.prepare(net, opt)
    assert prepared.optimizer is opt and prepared.param_groups is opt.param_groups
    ids, targets = cw.batch(0)
    prepared.zero_grad()
    accelerator.backward(nn.functional.cross_entropy(net(ids).flatten(0, 1), targets.flatten()))
    prepared.step()
    inner = opt.optimizers
    assert set(inner["muon"].state[cw.split(net)[0][0]]) == {"momentum_buffer"}
    assert inner["adamw"].state[net.head.weight]["step"].item() == 1


# -- DDP and FSDP2 (two gloo processes on the CPU) ---------------------------------------------


def run_two(scenario: str, tmp_path: Path) -> list[str]:
    import socket

    import torch.multiprocessing as mp

    import composite_dist_worker

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(composite_dist_worker.run, args=(2, port, scenario, str(tmp_path)), nprocs=2, join=True)
    return [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]


needs_gloo = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this torch build has no gloo backend for torch.distributed")


@pytest.mark.slow
@needs_gloo
def test_ddp_ranks_step_the_composite_identically(tmp_path):
    """DDP all-reduces gradients; every rank holds whole matrices, so Muon runs as in one
    process: bitwise, since (g0 + g1) / 2 is 0.5 * g0 + 0.5 * g1 exactly (halving is exact)."""
    results = run_two("ddp", tmp_path)
    assert results[0] == results[1], results
    assert results[0].startswith("diff=0.0e+00 ") and results[0].endswith("state=Tensor")


@pytest.mark.slow
@needs_gloo
def test_fsdp2_shards_reach_muon_as_dtensors(tmp_path):
    """Under FSDP2 torch's Muon gets row-sharded DTensors: DTensor runs Newton-Schulz on the
    global matrix by communicating inside every matmul, with bf16 partial sums, so the update is
    the same algorithm but not the same bits as on a whole matrix (here within 1e-2 after 3 steps
    at lr 0.02), and costs collectives per iteration."""
    results = run_two("fsdp2", tmp_path)
    assert results[0] == results[1], results
    diff = float(results[0].split()[0].removeprefix("diff="))
    assert 0 < diff < 1e-2 and results[0].endswith("state=DTensor")
