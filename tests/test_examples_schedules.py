"""The schedule examples run end to end and print, and build, exactly the LRs they claim."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch
from torch import nn

from paramgroups.report import COLUMNS, LAYER_COLUMNS, schedule_table
from paramgroups.timeline import Timeline

from conftest import run_example

ROOT = Path(__file__).resolve().parents[1]
STEP_DECAY = ROOT / "examples" / "step_decay_two_layers.py"
CIFAR = ROOT / "examples" / "cifar_vgg_warmup.py"
VIT = ROOT / "examples" / "vit_layer_decay.py"


def _load(script: Path) -> dict:
    return runpy.run_path(str(script), run_name=script.stem)


# -- step decay, two layers ------------------------------------------------------------------

def _step_decay(epoch: int) -> tuple[float, float]:
    """The hand-written formula: lr = base * 0.1 ** (epoch // 2), bases 10 and 5."""
    return 10 * 0.1 ** (epoch // 2), 5 * 0.1 ** (epoch // 2)


@pytest.mark.slow  # runs the example script in a subprocess
def test_step_decay_tables_identical():
    proc = run_example(STEP_DECAY, "--epochs", "6")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    want = [(e, *_step_decay(e)) for e in range(6)]
    tables = []
    for title in ("hand-written adjust_learning_rate:",
                  "paramgroups plan (Schedule('step', step_size=2, gamma=0.1)):"):
        start = lines.index(title)
        assert lines[start + 1].split() == ["epoch", "layer1", "lr", "layer2", "lr"]
        rows = [line.split() for line in lines[start + 2:start + 8]]
        tables.append([(int(e), float(a), float(b)) for e, a, b in rows])  # repr: exact floats
    assert tables[0] == tables[1] == want
    assert want[4] == (4, 0.10000000000000002, 0.05000000000000001)  # printed exactly, rounding and all
    assert lines[-2:] == ["trained weights equal: yes", "identical: yes"]


def test_step_decay_plan_groups_and_schedule():
    ns = _load(STEP_DECAY)
    model = ns["TwoLayers"]()
    plan = ns["make_plan"]()
    optimizer = plan.optimizer(model)
    got = [(g["lr"], [id(p) for p in g["params"]]) for g in optimizer.param_groups]
    assert got == [(10.0, [id(model.layer1.weight), id(model.layer1.bias)]),
                   (5.0, [id(model.layer2.weight), id(model.layer2.bias)])]
    scheduler = plan.scheduler(optimizer)
    hand = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": 10.0},
                            {"params": [nn.Parameter(torch.zeros(1))], "lr": 5.0}], lr=10.0)
    for epoch in range(9):
        ns["adjust_learning_rate"](hand, epoch)
        lrs = tuple(g["lr"] for g in optimizer.param_groups)
        assert lrs == tuple(g["lr"] for g in hand.param_groups) == _step_decay(epoch)
        assert Timeline.of(plan).factor(Timeline.of(plan).step_of(epoch)) == 0.1 ** (epoch // 2)
        optimizer.step()  # no gradients: changes nothing, keeps torch's step-order check quiet
        scheduler.step()
    headers, rows = schedule_table(plan, model, 6)
    assert len(headers) == 3 and headers[0] == "epoch"
    assert rows == [[e, *_step_decay(e)] for e in range(6)]


# -- CIFAR VGG, warmup then multistep ----------------------------------------------------------

def _cifar_lr(epoch: int) -> float:
    """0.001 -> 0.04 linearly over 5 epochs, then /10 at epochs 10 and 15."""
    if epoch < 5:
        return 0.001 + (0.04 - 0.001) * epoch / 5
    return 0.04 * 0.1 ** sum(epoch >= m for m in (10, 15))


@pytest.mark.slow  # runs the example script in a subprocess
def test_cifar_warmup_runs():
    proc = run_example(CIFAR, "--epochs", "16", "--batches-per-epoch", "1", "--batch-size", "2",
                "--fake-size", "4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "FakeData: 4 images, 1 batches of 2 per epoch"
    epochs = [line.split() for line in lines[1:]]  # epoch E  lr LR  loss L
    assert [e[:5] for e in epochs] == [["epoch", str(i), "lr", f"{_cifar_lr(i):.6g}", "loss"]
                                       for i in range(16)]
    lrs = [e[3] for e in epochs]
    assert lrs[0] == "0.001" and lrs[5] == "0.04" and lrs[10] == "0.004" and lrs[15] == "0.0004"
    assert lrs[:6] == ["0.001", "0.0088", "0.0166", "0.0244", "0.0322", "0.04"]
    assert all(float(e[5]) > 0 for e in epochs)


def test_cifar_plan_groups_and_schedule():
    ns = _load(CIFAR)
    model = ns["SmallVGG"]()
    plan = ns["make_plan"]()
    t = Timeline.of(plan)
    for epoch in range(21):
        assert t.factor(t.step_of(epoch)) * 0.04 == pytest.approx(_cifar_lr(epoch), rel=1e-12, abs=0)
    optimizer = plan.optimizer(model)
    assert isinstance(optimizer, torch.optim.SGD)
    where = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert len(where) == len(list(model.parameters()))
    for name, param in model.named_parameters():
        group = where[id(param)]
        module = model.get_submodule(name.rpartition(".")[0])
        no_decay = name.endswith(".bias") or isinstance(module, nn.BatchNorm2d)
        assert (group["lr"], group["weight_decay"], group["momentum"]) == (
            0.04, 0.0 if no_decay else 5e-4, 0.9), name
    # stepped per iteration, the warmup rises inside an epoch; decays land on an epoch's first step
    scheduler = plan.scheduler(optimizer, steps_per_epoch=4)
    for k in range(4 * 16 + 1):
        want = (0.001 / 0.04 + (1 - 0.001 / 0.04) * (k / 4) / 5) * 0.04 if k < 20 else _cifar_lr(k // 4)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12, abs=0), k
        optimizer.step()  # no gradients: changes nothing
        scheduler.step()


@pytest.mark.slow  # runs the example script in a subprocess
def test_cifar_data_dir_without_cifar(tmp_path):
    proc = run_example(CIFAR, "--data", str(tmp_path), "--epochs", "1")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    err = proc.stderr.splitlines()
    assert len(err) == 1, proc.stderr
    assert err[0].startswith(f"error: {tmp_path} does not hold CIFAR-10")
    assert "cifar-10-batches-py" in err[0] and "Traceback" not in proc.stderr


# -- ViT, layer-wise LR decay ------------------------------------------------------------------

def _vit_layers(model: nn.Module) -> dict[str, int]:
    """timm's own layer ids (what its param_groups_layer_decay uses): 0 for the embeddings,
    i + 1 for blocks.i, the final norm with the last block (12), the head alone on top (13)."""
    from timm.models import group_parameters

    return group_parameters(model, model.group_matcher(coarse=False), reverse=True)


def _audit_rows(lines: list[str], title: list[str], header: list[str]) -> dict[str, dict[str, str]]:
    """The audit's parameter table (tabulate "simple") as {name: {column: cell}}; columns are
    cut at the dashes under the header, so empty cells (a weight no rule touched) stay empty."""
    top = next(i for i, line in enumerate(lines) if line.split() == title)
    dashes = lines[top + 1]
    spans, start = [], 0
    for part in dashes.split("  "):
        if part:
            begin = dashes.index(part, start)
            spans.append((begin, begin + len(part)))
            start = begin + len(part)
    assert len(spans) == len(header)
    rows = {}
    for line in lines[top + 2:]:
        if not line.strip():
            break
        cells = [line[a:b].strip() for a, b in spans]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


@pytest.mark.slow  # runs the example script in a subprocess
def test_vit_layer_decay_runs():
    proc = run_example(VIT, "--steps", "2", "--warmup", "1", "--batch-size", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    rows = [line.split() for line in lines]
    title = ["name", "shape", "numel", "module", "group", "base", "lr", "lr@step0", "wd", "trainable",
             "rules", "layer", "lr_scale"]
    assert title in rows  # the audit's header row, with the layer columns
    cells = _audit_rows(lines, title, list(COLUMNS + LAYER_COLUMNS))
    assert len(cells) == 152
    blocks11 = [n for n in cells if n.startswith("blocks.11.")]
    assert len(blocks11) == 12
    for name in blocks11:
        assert (cells[name]["layer"], cells[name]["lr_scale"], cells[name]["base_lr"]) == ("12", "0.75", "0.00075")
        assert cells[name]["lr"] == "7.5e-07"  # at step 0 the warmup starts at 1/1000 of the LR
    assert cells["blocks.11.attn.qkv.weight"]["weight_decay"] == "0.05"
    assert cells["blocks.11.attn.qkv.bias"]["weight_decay"] == "0"
    assert (cells["norm.weight"]["layer"], cells["norm.weight"]["lr_scale"]) == ("12", "0.75")  # as timm
    assert (cells["head.weight"]["layer"], cells["head.weight"]["lr_scale"], cells["head.weight"]["base_lr"]) == (
        "13", "1", "0.001")
    assert (cells["blocks.0.mlp.fc1.weight"]["layer"], cells["blocks.0.mlp.fc1.weight"]["lr_scale"]) == (
        "1", f"{0.75 ** 12:g}")
    assert (cells["pos_embed"]["layer"], cells["pos_embed"]["weight_decay"]) == ("0", "0")
    steps = [line for line in lines if line.startswith("step ")]
    assert [s.split("  loss ")[0] for s in steps] == [
        "step 0  lr head 1e-06  lr blocks.0 3.168e-08  ratio 0.031676",
        "step 1  lr head 0.001  lr blocks.0 3.168e-05  ratio 0.031676"]
    assert lines[-1] == "blocks.0 / head = 0.75**12 = 0.031676"


def test_vit_plan_layer_decay_and_no_decay():
    ns = _load(VIT)
    model = ns["make_model"]()
    plan = ns["make_plan"]()
    optimizer = plan.optimizer(model)
    assert isinstance(optimizer, torch.optim.AdamW)
    where = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    lr_of = {name: where[id(p)]["lr"] for name, p in model.named_parameters()}
    wd_of = {name: where[id(p)]["weight_decay"] for name, p in model.named_parameters()}
    assert len(lr_of) == 152 and len(model.blocks) == 12
    layers = _vit_layers(model)
    assert (layers["cls_token"], layers["blocks.0.attn.qkv.weight"], layers["blocks.11.mlp.fc2.bias"],
            layers["norm.weight"], layers["head.weight"]) == (0, 1, 12, 12, 13)
    head = lr_of["head.weight"]
    assert head == lr_of["head.bias"] == 1e-3
    for name, lr in lr_of.items():
        assert lr == 1e-3 * 0.75 ** (13 - layers[name]), name
    assert lr_of["norm.weight"] == lr_of["blocks.11.attn.qkv.weight"] == head * 0.75
    for name in (n for n in lr_of if n.startswith("blocks.0.")):
        assert lr_of[name] == head * 0.75 ** 12, name
    assert lr_of["cls_token"] == lr_of["pos_embed"] == lr_of["patch_embed.proj.weight"] == head * 0.75 ** 13
    for name, param in model.named_parameters():
        module = model.get_submodule(name.rpartition(".")[0])
        no_decay = (name.endswith(".bias") or isinstance(module, nn.LayerNorm)
                    or name in ("pos_embed", "cls_token"))
        assert wd_of[name] == (0.0 if no_decay else 0.05), name
    assert wd_of["pos_embed"] == wd_of["cls_token"] == wd_of["norm.weight"] == 0
    assert wd_of["blocks.3.attn.qkv.bias"] == wd_of["blocks.3.norm1.weight"] == 0
    assert wd_of["blocks.3.attn.qkv.weight"] == wd_of["head.weight"] == 0.05
