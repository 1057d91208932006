"""The transfer-learning benchmark (benchmarks/transfer_digits.py): a tiny smoke run of every
variant, its plan files, its data split, and what each plan does to the pre-trained backbone."""

from __future__ import annotations

import sys

import pytest
import torch

from conftest import load_benchmark

pytest.importorskip("sklearn")

td = load_benchmark("transfer_digits")
BACKBONE = ("block1", "block2", "block3")


pytestmark = pytest.mark.usefixtures("no_network")  # conftest: any connection fails the test


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    data = td.load_data()
    backbone, _ = td.pretrain(data, epochs=1)
    return data, backbone


def test_every_plan_file_is_a_variant_and_loads():
    files = sorted(p.name for p in td.PLANS.glob("*.yaml"))
    assert files == sorted(v.file for v in td.VARIANTS)
    assert [v.name for v in td.VARIANTS] == [
        "scratch", "head only", "full fine-tune", "discriminative LRs", "layer-wise decay",
        "progressive unfreeze", "lr=0 pseudo-freeze"]
    for v in td.VARIANTS:
        td.Plan.load(td.PLANS / v.file).optimizer(td.DigitsCNN())


def _lrs(variant_file: str, overrides=None) -> dict[str, tuple[float, bool]]:
    """(LR, trainable) per parameter after ``plan.optimizer``, for the variant's plan."""
    variant = next(v for v in td.VARIANTS if v.file == variant_file)
    model = td.DigitsCNN()
    opt = variant.plan(overrides).optimizer(model)
    ids = {id(p): n for n, p in model.named_parameters()}
    return {ids[id(p)]: (g["lr"], p.requires_grad) for g in opt.param_groups for p in g["params"]}


def test_plans_set_the_lrs_and_frozen_sets_they_describe():
    point = {"lr": 0.01}
    head_only = _lrs("head_only.yaml", point)
    assert {n for n, (_, t) in head_only.items() if t} == {"head.weight", "head.bias"}
    progressive = _lrs("progressive.yaml", point)
    assert {n for n, (_, t) in progressive.items() if t} == {"head.weight", "head.bias"}
    for f in ("scratch.yaml", "full_finetune.yaml"):
        assert set(_lrs(f, point).values()) == {(0.01, True)}
    disc = _lrs("discriminative.yaml", {"lr": 0.01, "lr_mult": 0.3})
    assert disc["head.weight"] == (0.01, True)
    assert disc["block2.0.weight"] == (pytest.approx(0.003), True)
    decay = _lrs("layer_decay.yaml", {"lr": 0.01, "layer_decay": 0.5})
    assert [decay[f"{b}.0.weight"][0] for b in BACKBONE] == [0.01 * 0.125, 0.01 * 0.25, 0.01 * 0.5]
    assert decay["head.bias"] == (0.01, True)
    lr0 = _lrs("lr0_pseudo_freeze.yaml", point)
    assert lr0["block1.1.weight"] == (0.0, True) and lr0["head.weight"] == (0.01, True)


def test_split_is_fixed_disjoint_and_balanced(setup):
    data, _ = setup
    assert len(data.source_x) + len(data.target_x) == 1797
    assert set(data.source_y.tolist()) == set(range(5)) and set(data.target_y.tolist()) == set(range(5))
    test, pool = set(data.test.tolist()), set(data.pool.tolist())
    assert not test & pool and test | pool == set(range(len(data.target_x)))
    train, val = td.draw(data, 1000, 4)
    again, _ = td.draw(data, 1000, 4)
    assert torch.equal(train, again)
    assert torch.bincount(data.target_y[train]).tolist() == [4] * 5
    assert not set(train.tolist()) & set(val.tolist()) and set(train.tolist()) | set(val.tolist()) == pool
    assert not set(val.tolist()) & test


def test_head_only_leaves_the_backbone_bitwise_unchanged_and_lr0_does_not(setup):
    data, backbone = setup
    train, _ = td.draw(data, 0, 3)
    states = {}
    for v in td.VARIANTS[1:3] + td.VARIANTS[-1:]:  # head only, full fine-tune, lr=0
        model, _, _ = td.finetune(v.plan(), backbone, data, train, seed=0, epochs=2)
        states[v.name] = model.state_dict()
    before = {k: v for k, v in backbone.items() if k.startswith(BACKBONE)}
    head = states["head only"]
    assert all(torch.equal(head[k], v) for k, v in before.items())  # weights and BN statistics
    lr0 = states["lr=0 pseudo-freeze"]
    assert all(torch.equal(lr0[k], v) for k, v in before.items() if k.endswith(("weight", "bias")))
    assert not torch.equal(lr0["block1.1.running_mean"], before["block1.1.running_mean"])
    full = states["full fine-tune"]
    assert not torch.equal(full["block1.0.weight"], before["block1.0.weight"])


@pytest.mark.slow
def test_smoke_run_prints_every_variant_and_writes_the_plot(setup, tmp_path, capsys, monkeypatch):
    data, backbone = setup
    monkeypatch.setattr(td, "pretrain", lambda data, epochs: (backbone, 1.0))
    png = tmp_path / "plot.png"
    assert td.main(["--seeds", "1", "--epochs", "1", "--shots", "2", "--plot", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("variant"))
    assert lines[header].split() == "variant plan hyperparameters acc mean acc sd acc min acc max wall s mean wall s sd cpu s mean x cpu".split()
    body = lines[header + 2:header + 2 + len(td.VARIANTS)]
    assert [line.split()[0] for line in body] == ["scratch", "head", "full", "discriminative", "layer-wise",
                                                  "progressive", "lr=0"]
    assert "head only             head_only.yaml" in body[1]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert lines[-1] == f"# plot: {png}"


def test_without_matplotlib_it_prints_the_table_and_says_no_plot(setup, tmp_path, capsys, monkeypatch):
    data, backbone = setup
    monkeypatch.setattr(td, "pretrain", lambda data, epochs: (backbone, 1.0))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    png = tmp_path / "plot.png"
    assert td.main(["--seeds", "1", "--epochs", "1", "--shots", "1", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "# no plot: matplotlib is not installed (pip install 'paramgroups[plot]')"
    assert "lr=0 pseudo-freeze" in out and not png.exists()


@pytest.mark.slow
def test_select_scores_every_grid_point_on_validation_images(setup):
    data, backbone = setup
    variant = td.VARIANTS[3]  # discriminative LRs: lr x lr_mult
    scores = td.select(variant, data, backbone, shots=2, epochs=1, seeds=(1000,))
    assert len(scores) == len(td.LR_GRID) * 2
    assert [tuple(p.items()) for p, _ in scores] == [(("lr", lr), ("lr_mult", m))
                                                     for lr in td.LR_GRID for m in (0.1, 0.3)]
    assert all(0 <= s <= 1 for _, s in scores)


def test_bad_arguments_exit_2(capsys):
    assert td.main(["--seeds", "0"]) == 2
    assert capsys.readouterr().err == "transfer_digits: --seeds, --shots, --epochs and --pretrain-epochs must be >= 1\n"
