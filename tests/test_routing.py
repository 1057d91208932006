"""Routing parameters to several optimizers in one plan: a rule's ``optimizer``, the plan's
``optimizers`` defaults, the checks at resolve time, and the one optimizer a plan emits (a
CompositeOptimizer over torch's own Muon, SparseAdam and AdamW), bitwise equal to the same
optimizers built and stepped by hand, scheduled, staged and resumed across processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import routing_worker as rw
from paramgroups import Plan, Rule
from paramgroups.composite import CompositeOptimizer
from paramgroups.timeline import Timeline
from paramgroups.errors import OptimizerError, PlanError, RuleError


def assert_same(net_a: nn.Module, opt_a, net_b: nn.Module, opt_b) -> None:
    """Every parameter and every optimizer state tensor bitwise equal."""
    states_b = [o.state for o in opt_b]
    for (name, a), b in zip(net_a.named_parameters(), net_b.parameters()):
        assert torch.equal(a, b), name
        sa = opt_a.state[a]
        (sb,) = [s[b] for s in states_b if b in s]
        assert sa.keys() == sb.keys() and sa, name
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), (name, key)


def split(net: rw.TinyTransformer) -> tuple[list, list, list]:
    """By hand: the blocks' Linear weights (Muon), the weights AdamW decays (head), the rest
    (embedding, norms, biases: no_decay)."""
    matrices = [m.weight for b in net.blocks for m in (b.up, b.down)]
    decayed = [net.head.weight]
    rest = [p for p in net.parameters() if all(p is not q for q in matrices + decayed)]
    return matrices, decayed, rest


# -- the update ------------------------------------------------------------------------------


@pytest.mark.slow  # over 2 s on a loaded 2-core machine (torch's Muon step on the CPU)
def test_muon_and_adamw_twenty_steps_equal_the_optimizers_built_by_hand():
    net, ref = rw.model(), rw.model()
    opt = Plan.from_dict(rw.HYBRID).optimizer(net)
    matrices, decayed, rest = split(ref)
    hand = [torch.optim.AdamW([{"params": rest, "weight_decay": 0.0}, {"params": decayed}], lr=3e-4,
                              betas=(0.9, 0.95), weight_decay=0.1, fused=True),
            torch.optim.Muon(matrices, lr=0.02, momentum=0.95, weight_decay=0.1)]
    assert isinstance(opt, CompositeOptimizer) and list(opt.optimizers) == ["adamw", "muon"]
    assert [(g["name"], g["optimizer"], len(g["params"])) for g in opt.param_groups] == [
        ("no_decay", "adamw", 12), ("blocks.**.weight", "muon", 4), ("default", "adamw", 1)]
    mine = {n: p for n, p in net.named_parameters()}
    assert [p for g in opt.param_groups for p in g["params"]] == [
        mine[n] for n, _ in ref.named_parameters() if n in
        {n for n, p in ref.named_parameters() if any(p is q for q in rest)}] + [
        mine[f"blocks.{i}.{m}.weight"] for i in range(2) for m in ("up", "down")] + [net.head.weight]
    inner = opt.optimizers
    assert {k: inner["muon"].defaults[k] for k in ("lr", "momentum", "weight_decay")} == {
        "lr": 0.02, "momentum": 0.95, "weight_decay": 0.1}
    assert {k: inner["adamw"].defaults[k] for k in ("lr", "betas", "weight_decay", "fused")} == {
        "lr": 3e-4, "betas": (0.9, 0.95), "weight_decay": 0.1, "fused": True}
    rw.train(net, [opt], 0, 20)
    rw.train(ref, hand, 0, 20)
    assert_same(net, opt, ref, hand)


@pytest.mark.slow  # over 2 s on a loaded 2-core machine (torch's Muon step on the CPU)
def test_sparseadam_and_adamw_twenty_steps_equal_the_optimizers_built_by_hand():
    net, ref = rw.model(sparse=True), rw.model(sparse=True)
    opt = Plan.from_dict(rw.SPARSE).optimizer(net)
    others = [p for p in ref.parameters() if p is not ref.embed.weight]
    hand = [torch.optim.SparseAdam([ref.embed.weight], lr=1e-2),
            torch.optim.AdamW(others, lr=3e-4, weight_decay=0.1, fused=True)]
    assert [(g["name"], g["optimizer"]) for g in opt.param_groups] == [("embed", "sparseadam"),
                                                                       ("default", "adamw")]
    assert "weight_decay" not in opt.param_groups[0]  # SparseAdam takes none: the plan's is not given
    rw.train(net, [opt], 0, 20)
    rw.train(ref, hand, 0, 20)
    assert_same(net, opt, ref, hand)
    assert net.embed.weight.grad.is_sparse


def test_one_optimizer_stays_the_plain_torch_optimizer_with_plain_groups():
    net = rw.model()
    opt = Plan(optimizer="adamw", lr=1e-3, no_decay=True).optimizer(net)
    assert type(opt) is torch.optim.AdamW and all("optimizer" not in g for g in opt.param_groups)
    # everything routed to one other optimizer: that one, plain
    plan = Plan(optimizer="sgd", lr=0.1, momentum=0.9, rules=[Rule(optimizer="adamw")])
    opt = plan.optimizer(net)
    assert type(opt) is torch.optim.AdamW and "momentum" not in opt.defaults
    assert plan.resolve(net).optimizers == ("adamw",)


# -- the plan: names, defaults, round trip ------------------------------------------------------


def test_resolution_and_groups_name_their_optimizer():
    net = rw.model()
    plan = Plan.from_dict(rw.HYBRID)
    res = plan.resolve(net)
    assert res.optimizers == ("adamw", "muon")
    assert [g.optimizer for g in res.groups] == ["adamw", "muon", "adamw"]
    by_name = {a.record.name: a for a in res.assignments}
    assert by_name["blocks.0.up.weight"].optimizer == "muon" and by_name["blocks.0.up.weight"].lr == 0.02
    assert by_name["head.weight"].optimizer == "adamw" and by_name["head.weight"].lr == 3e-4
    assert plan.optimizer_class_of("muon") is torch.optim.Muon
    assert plan.optimizer_classes == {"adamw": torch.optim.AdamW, "muon": torch.optim.Muon}
    assert plan.optimizer_defaults("muon") == {"lr": 0.02, "momentum": 0.95, "weight_decay": 0.1}
    assert plan.optimizer_defaults("adamw") == {"betas": (0.9, 0.95), "lr": 3e-4, "weight_decay": 0.1}
    with pytest.raises(OptimizerError, match="the plan has no optimizer 'mun'; did you mean 'muon'"):
        plan.optimizer_class_of("mun")


def test_names_of_one_class_are_one_optimizer():
    plan = Plan(optimizer=torch.optim.AdamW, optimizers={"AdamW": {"eps": 1e-6}, "torch.optim:Muon": {}},
                rules=[Rule("blocks.**.weight", modules="Linear", optimizer=torch.optim.Muon),
                       Rule("head", optimizer="ADAMW")])
    assert list(plan.optimizer_classes) == ["adamw", "muon"]
    assert [r.optimizer for r in plan.rules] == ["muon", "adamw"]
    assert plan.resolve(rw.model()).optimizers == ("adamw", "muon")
    with pytest.raises(PlanError, match="optimizers: 'Muon' names optimizer 'muon' a second time"):
        Plan(optimizers={"muon": {}, "Muon": {}})


def test_lr_and_options_cascade_rule_then_optimizers_then_plan():
    plan = Plan(optimizer="sgd", lr=0.1, weight_decay=0.01, momentum=0.9,
                optimizers={"muon": {"weight_decay": 0.2}, "adamw": {"lr": 1e-3}},
                rules=[Rule("blocks.0", modules="Linear", kinds="weight", optimizer="muon"),
                       Rule("blocks.1", modules="Linear", kinds="weight", optimizer="muon", lr=0.05),
                       Rule("head", optimizer="adamw"),
                       Rule("norm", optimizer="adamw", weight_decay=0.0, amsgrad=True)])
    res = plan.resolve(rw.model())
    got = {(g.optimizer, g.lr, g.weight_decay, tuple(sorted(g.options))) for g in res.groups}
    assert got == {("sgd", 0.1, 0.01, ()), ("muon", 0.1, 0.2, ()), ("muon", 0.05, 0.2, ()),
                   ("adamw", 1e-3, 0.01, ()), ("adamw", 1e-3, 0.0, ("amsgrad",))}
    opt = plan.optimizer(rw.model())
    # top-level momentum: the plan's optimizer's, and Muon's (it takes momentum); AdamW takes none
    assert opt.optimizers["sgd"].defaults["momentum"] == 0.9
    assert opt.optimizers["muon"].defaults["momentum"] == 0.9
    assert "momentum" not in opt.optimizers["adamw"].defaults


def test_groups_of_different_optimizers_that_would_share_a_name_say_which():
    plan = Plan(optimizer="adamw", rules=[Rule("blocks.**", modules="Linear", kinds="weight", optimizer="muon"),
                                          Rule("blocks.**", lr_mult=0.5)])
    names = [(g.name, g.optimizer) for g in plan.resolve(rw.model()).groups]
    assert names == [("default", "adamw"), ("blocks.** (adamw)", "adamw"), ("blocks.** (muon)", "muon")]


def test_plan_round_trips_with_optimizers_and_rule_optimizer(tmp_path):
    plan = Plan.from_dict(rw.HYBRID)
    assert plan.to_dict() == {
        "optimizer": "adamw", "optimizers": {"muon": {"lr": 0.02, "momentum": 0.95},
                                             "adamw": {"betas": (0.9, 0.95)}},
        "lr": 3e-4, "weight_decay": 0.1, "no_decay": True,
        "rules": [{"match": "blocks.**.weight", "modules": "Linear", "optimizer": "muon"}]}
    assert Plan.from_dict(plan.to_dict()) == plan
    import yaml
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(rw.HYBRID, sort_keys=False))
    assert Plan.load(path) == plan
    assert "optimizers" not in Plan(optimizer="adamw").to_dict()


# -- errors ---------------------------------------------------------------------------------------


def test_muon_on_a_resnet_is_a_plan_error_naming_the_convolution(resnet18_meta, tmp_path):
    message = ("conv1.weight (shape [64, 3, 7, 7]) cannot go to Muon: Muon takes only 2-D parameters; "
               "send it to another optimizer (e.g. adamw), or route only matrices to Muon (kinds: "
               "matrix) (the plan's optimizer 'muon' steps every parameter no rule routes elsewhere)")
    with pytest.raises(PlanError) as info:
        Plan(optimizer="muon").resolve(resnet18_meta)
    assert str(info.value) == message and info.value.where.field == "optimizer"
    path = tmp_path / "muon.yaml"
    path.write_text("lr: 0.02\noptimizer: muon\n")
    with pytest.raises(PlanError) as info:
        Plan.load(path).optimizer(resnet18_meta)
    assert str(info.value) == f"{path}:2: {message}"


ROUTE_BIAS = """\
optimizer: adamw
rules:
  - match: blocks.**
    modules: Linear
    optimizer: muon
"""


def test_a_bias_routed_to_muon_is_an_error_at_the_rule(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(ROUTE_BIAS)
    with pytest.raises(RuleError) as info:
        Plan.load(path).resolve(rw.model())
    assert str(info.value) == (
        f"{path}:5: rule 0: blocks.0.up.bias (shape [32]) cannot go to Muon: Muon takes only 2-D "
        f"parameters; send it to another optimizer (e.g. adamw), or route only matrices to Muon "
        f"(kinds: matrix) (this rule routes it to 'muon')")


def test_dense_parameters_to_sparseadam_and_sparse_ones_to_adamw_are_errors():
    with pytest.raises(RuleError, match=r"^rule 0: head.weight \(shape \[32, 16\]\) cannot go to SparseAdam: "
                                        r"SparseAdam takes only parameters with sparse gradients"):
        Plan(optimizer="adamw", rules=[Rule("head", optimizer="sparseadam")]).resolve(rw.model())
    with pytest.raises(PlanError, match=r"^embed.weight \(shape \[32, 16\]\) has sparse gradients \(Embedding "
                                        r"with sparse=True\) and AdamW does not take them; send it to "
                                        r"sparseadam, sgd or adagrad"):
        Plan(optimizer="adamw").resolve(rw.model(sparse=True))


BETAS_ON_MUON = """\
optimizer: adamw
rules:
  - match: blocks.**.weight
    modules: Linear
    optimizer: muon
    betas: [0.9, 0.99]
"""

BETAS_REACHING_MUON = """\
optimizer: adamw
rules:
  - match: blocks.**.weight
    modules: Linear
    optimizer: muon
  - match: blocks.0
    betas: [0.9, 0.99]
"""


def test_an_option_the_routed_optimizer_does_not_take_is_located(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(BETAS_ON_MUON)
    with pytest.raises(RuleError) as info:  # the rule routes and sets betas: at load
        Plan.load(path)
    assert str(info.value).startswith(f"{path}:6: rule 0: unknown field 'betas' (not a plan field nor "
                                      f"an option of Muon; ")
    path.write_text(BETAS_REACHING_MUON)
    plan = Plan.load(path)  # AdamW takes betas: fine at load, not for Muon's parameters
    with pytest.raises(RuleError) as info:
        plan.resolve(rw.model())
    assert str(info.value) == (
        f"{path}:7: rule 1: blocks.0.up.weight goes to Muon ('muon'), which does not take 'betas', "
        f"set by this rule: narrow the rule to parameters of optimizers that take it, or give it "
        f"under optimizers: in the entry of the optimizer it is for")


OPTIMIZERS_TYPO = """\
optimizer: adamw
optimizers:
  muon:
    lr: 0.02
    betas: [0.9, 0.95]
"""


def test_optimizers_entries_are_checked_against_their_own_optimizer(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(OPTIMIZERS_TYPO)
    with pytest.raises(OptimizerError) as info:
        Plan.load(path)
    assert str(info.value).startswith(f"{path}:5: optimizers: muon: 'betas' is not an option of Muon (")
    with pytest.raises(OptimizerError, match="unknown optimizer 'mun'; did you mean muon"):
        Plan(optimizers={"mun": {}})
    with pytest.raises(OptimizerError, match="option 'momentum' of Muon must be a finite number >= 0"):
        Plan(optimizers={"muon": {"momentum": -1}})
    with pytest.raises(PlanError, match="optimizers must be a mapping of optimizer names"):
        Plan(optimizers=["muon"])
    path.write_text("optimizer: adamw\nrules:\n  - match: head\n    optimizer: adamx\n")
    with pytest.raises(OptimizerError, match=rf"^{path}:4: rule 0: unknown optimizer 'adamx'"):
        Plan.load(path)


def test_weight_decay_and_one_group_limits_are_per_optimizer():
    # Rprop takes no weight_decay: the plan's is not given to it, a rule's is an error
    plan = Plan(optimizer="adamw", weight_decay=0.1, rules=[Rule("head", optimizer="rprop")])
    assert plan.optimizer(rw.model()).optimizers["rprop"].param_groups[0].get("weight_decay") is None
    with pytest.raises(OptimizerError, match="optimizer Rprop does not take weight_decay, but the plan gives 0.1"):
        Plan(optimizer="adamw", rules=[Rule("head", optimizer="rprop", weight_decay=0.1)]).resolve(rw.model())
    with pytest.raises(OptimizerError, match="optimizer LBFGS takes one param group, but this plan makes 2"):
        Plan(optimizer="lbfgs", lr=1, rules=[Rule("head", lr=0.5)]).optimizer(rw.model())


# -- schedules, stages, resume ------------------------------------------------------------------


@pytest.mark.slow  # over 2 s on a loaded 2-core machine (torch's Muon step on the CPU)
def test_hybrid_lrs_follow_the_timeline_with_stages_warmup_cosine_lr_mult_and_layer_decay():
    net = rw.model()
    plan = Plan.from_dict(rw.STAGED)
    opt, sched = rw.staged(net)
    own = sched.timeline  # the scheduler's own, from the composite's groups
    timeline = Timeline.of(plan, plan.resolve(rw.model()), rw.STEPS_PER_EPOCH)
    groups = plan.resolve(rw.model()).groups
    assert [g["optimizer"] for g in opt.param_groups] == ["adamw", "adamw", "muon", "adamw", "muon",
                                                        "adamw", "adamw", "adamw"]
    # layer decay 0.5 over layers 0..3, lr_mult 3 on the head, Muon's own LR for its matrices
    assert [g.lr for g in groups] == pytest.approx([3e-4 / 8, 3e-4 / 4, 0.02 / 4, 3e-4 / 2, 0.02 / 2,
                                                    3e-4, 9e-4, 9e-4], rel=1e-15)
    thawed = [g for g in groups if g.events]
    assert [(g.optimizer, g.frozen) for g in thawed] == [("adamw", True), ("muon", True)]
    blocks1 = [p for n, p in net.named_parameters() if n.startswith("blocks.1.")]
    for k in range(20):
        states = timeline.state(k)
        expected = [g.lr * timeline.factor(k) * s.stage_factor for g, s in zip(groups, states)]
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(expected, rel=1e-13, abs=0)
        assert [s.lr for s in states] == pytest.approx(expected, rel=1e-13, abs=0)
        assert own.state(k) == states
        assert all(p.requires_grad == (k >= rw.STEPS_PER_EPOCH) for p in blocks1), k
        if k == rw.STEPS_PER_EPOCH + 2:  # inside the stage's warmup: 0.5 x 2/5 of the ramp
            assert states[4].stage_factor == pytest.approx(0.5 * 2 / 5) and not states[4].frozen
        rw.train(net, [opt], k, k + 1, [sched])
    assert set(opt.state[net.blocks[1].up.weight]) == {"momentum_buffer"}


def test_onecycle_cycles_muon_momentum_and_adamw_beta1_per_group():
    net = rw.model()
    plan = Plan.from_dict({**rw.HYBRID, "schedule": {"main": "onecycle", "total": 10}})
    opt = plan.optimizer(net)
    sched = plan.scheduler(opt)
    assert sched.momentum_keys == ["betas", "momentum", "betas"]
    for k in range(10):
        m = plan.schedule.momentum(k)
        assert opt.param_groups[1]["momentum"] == m and opt.optimizers["muon"].param_groups[0]["momentum"] == m
        assert [g["betas"] for g in opt.param_groups if "betas" in g] == [(m, 0.95), (m, 0.95)]
        rw.train(net, [opt], k, k + 1, [sched])


@pytest.mark.slow
def test_resume_in_another_process_is_bitwise(tmp_path):
    full = rw.model()
    full_opt, full_sched = rw.staged(full)
    rw.train(full, [full_opt], 0, 12, [full_sched])

    net = rw.model()
    opt, sched = rw.staged(net)
    rw.train(net, [opt], 0, 7, [sched])  # inside the stage's warmup
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict()}, ckpt)
    out = tmp_path / "out.pt"
    subprocess.run([sys.executable, str(Path(rw.__file__)), str(ckpt), "7", "12", str(out)], check=True)
    saved = torch.load(out, weights_only=True)
    other = rw.model()
    other.load_state_dict(saved["model"])
    other_opt, other_sched = rw.staged(other)
    other_opt.load_state_dict(saved["optimizer"])
    other_sched.load_state_dict(saved["scheduler"])
    assert_same(full, full_opt, other, list(other_opt.optimizers.values()))
    assert [g["lr"] for g in other_opt.param_groups] == [g["lr"] for g in full_opt.param_groups]
    assert other_sched.last_epoch == full_sched.last_epoch == 12
    assert all(p.requires_grad for p in other.parameters())


# -- trainers -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_lightning_runs_a_hybrid_plan(tmp_path):
    pytest.importorskip("lightning", reason="Lightning is an optional extra")
    plan = Plan.from_dict({**rw.HYBRID, "schedule": {"main": "cosine", "total": 3, "unit": "step"}})

    def configure(net):
        opt = plan.optimizer(net)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": plan.scheduler(opt), "interval": "step"}}

    net = rw.model()
    trainer = rw.lightning_fit(net, configure, tmp_path)
    opt = trainer.optimizers[0]
    assert isinstance(opt, CompositeOptimizer) and trainer.global_step == 3
    assert set(opt.optimizers["muon"].state[net.blocks[0].up.weight]) == {"momentum_buffer"}
    assert opt.optimizers["adamw"].state[net.head.weight]["step"].item() == 3
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 3
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.0, 0.0, 0.0], abs=1e-20)  # cosine's end


@pytest.mark.slow
def test_huggingface_trainer_runs_a_hybrid_plan(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is an optional extra")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    model = transformers.LlamaForCausalLM(config)
    plan = Plan(optimizer="adamw", lr=3e-4, optimizers={"muon": {"lr": 0.02}},
                schedule={"main": "linear", "total": 3, "unit": "step", "min_factor": 0.5},
                rules=[Rule("model.layers", modules="Linear", optimizer="muon")])
    opt = plan.optimizer(model)
    sched = plan.scheduler(opt)
    matrices = [p for g in opt.param_groups if g["optimizer"] == "muon" for p in g["params"]]
    assert len(matrices) == 2 * 7 and all(p.ndim == 2 for p in matrices)
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
    assert sched.last_epoch == 3
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx([1.5e-4, 0.01])


def test_kinds_matrix_routes_the_hidden_matrices_to_muon():
    plan = Plan.from_dict({**rw.HYBRID, "rules": [{"kinds": "matrix", "optimizer": "muon"}]})
    net = rw.model()
    res = plan.resolve(net)
    (muon,) = [g for g in res.groups if g.optimizer == "muon"]
    assert [res.records[i].name for i in muon.indices] == [
        f"blocks.{i}.{m}.weight" for i in range(2) for m in ("up", "down")]
    ref = rw.model()
    opt = Plan.from_dict(rw.HYBRID).optimizer(ref)
    mine = plan.optimizer(net)
    assert [len(g["params"]) for g in mine.param_groups] == [len(g["params"]) for g in opt.param_groups]
    rw.train(net, [mine], 0, 3)
    rw.train(ref, [opt], 0, 3)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), ref.parameters()))
