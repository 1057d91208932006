"""Benchmark 6: transfer learning on scikit-learn's digits, one plan file per fine-tuning recipe.

Data: ``sklearn.datasets.load_digits``, 1,797 real 8x8 handwritten digits that scikit-learn
ships (nothing downloads). A small CNN (block1..block3, head) is pre-trained once on digits 0-4.
Digits 5-9 are split once into a fixed test set (40% per class) and a fine-tuning pool; each
seed draws ``--shots`` labelled examples per class from the pool, a fresh head and a batch
order. Every variant (a plan in ``benchmarks/plans/``) sees the same draw for the same seed,
trains ``--epochs`` epochs with Adam (batch 10, one thread) and is scored on the test set.

Hyperparameters (the LR, plus the backbone multiplier or layer decay where a variant has one)
were chosen with ``--select``: a small grid per variant, scored on validation seeds (1000-1002)
whose validation images are the pool images not drawn for training, never the test set. The
chosen values are written in the plan files.

    python benchmarks/transfer_digits.py [--seeds 10] [--shots 10] [--epochs 40] [--plot PNG]
    python benchmarks/transfer_digits.py --select
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from _util import header, table
from paramgroups import Plan

ROOT = Path(__file__).resolve().parents[1]
PLANS = Path(__file__).resolve().parent / "plans"
SOURCE_CLASSES, TARGET_CLASSES = range(0, 5), range(5, 10)
BATCH = 10
VALIDATION_SEEDS = (1000, 1001, 1002)
LR_GRID = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
COLUMNS = ["variant", "plan", "hyperparameters", "acc mean", "acc sd", "acc min", "acc max",
           "wall s mean", "wall s sd", "cpu s mean", "x cpu"]


@dataclass(frozen=True)
class Variant:
    """A fine-tuning recipe: its plan file, whether it starts from the pre-trained weights,
    and the grid ``--select`` searches (plan-file key -> values; ``lr_mult`` means the
    rules that set one)."""

    name: str
    file: str
    pretrained: bool = True
    grid: dict[str, tuple[float, ...]] = field(default_factory=lambda: {"lr": LR_GRID})

    def plan(self, overrides: dict[str, float] | None = None) -> Plan:
        """The plan file, with ``overrides`` (a grid point) applied."""
        plan = Plan.load(PLANS / self.file)
        if not overrides:
            return plan
        data = plan.to_dict()
        for key, value in overrides.items():
            if key == "lr_mult":
                for rule in data["rules"]:
                    if "lr_mult" in rule:
                        rule["lr_mult"] = value
            else:
                data[key] = value
        return Plan.from_dict(data)

    def settings(self) -> str:
        """The grid's keys as the plan file sets them, e.g. ``lr=0.003 lr_mult=0.1``."""
        data = self.plan().to_dict()
        values = {k: data.get(k) for k in self.grid if k != "lr_mult"}
        if "lr_mult" in self.grid:
            values["lr_mult"] = next(r["lr_mult"] for r in data["rules"] if "lr_mult" in r)
        return " ".join(f"{k}={v:g}" for k, v in values.items())


VARIANTS = (
    Variant("scratch", "scratch.yaml", pretrained=False),
    Variant("head only", "head_only.yaml"),
    Variant("full fine-tune", "full_finetune.yaml"),
    Variant("discriminative LRs", "discriminative.yaml", grid={"lr": LR_GRID, "lr_mult": (0.1, 0.3)}),
    Variant("layer-wise decay", "layer_decay.yaml", grid={"lr": LR_GRID, "layer_decay": (0.5, 0.75)}),
    Variant("progressive unfreeze", "progressive.yaml"),
    Variant("lr=0 pseudo-freeze", "lr0_pseudo_freeze.yaml"),
)


class DigitsCNN(nn.Module):
    """Three conv blocks (8x8 -> 8x8 -> 4x4 -> 4x4, 16/32/64 channels) and a linear head."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.block1 = _block(1, 16)
        self.block2 = _block(16, 32)
        self.block3 = _block(32, 64)
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(self.block2(self.block1(x)), 2)
        return self.head(self.block3(x).mean((2, 3)))


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


@dataclass
class Data:
    """Source (digits 0-4) and target (digits 5-9, labels 0-4) images, 1x8x8 in [0, 1];
    the target's fixed test set and fine-tuning pool are index tensors into it."""

    source_x: torch.Tensor
    source_y: torch.Tensor
    target_x: torch.Tensor
    target_y: torch.Tensor
    test: torch.Tensor
    pool: torch.Tensor


def load_data(test_fraction: float = 0.4) -> Data:
    """The digits, split by class; the target's test set is drawn once (generator seed 0)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    src, tgt = y < len(SOURCE_CLASSES), y >= TARGET_CLASSES.start
    target_y = y[tgt] - TARGET_CLASSES.start
    gen = torch.Generator().manual_seed(0)
    test, pool = [], []
    for c in range(len(TARGET_CLASSES)):
        idx = torch.nonzero(target_y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        cut = round(len(idx) * test_fraction)
        test.append(idx[:cut])
        pool.append(idx[cut:])
    return Data(x[src], y[src], x[tgt], target_y, torch.cat(test).sort().values, torch.cat(pool).sort().values)


def draw(data: Data, seed: int, shots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``shots`` pool images per class for training, and the pool's other images (validation)."""
    gen = torch.Generator().manual_seed(seed)
    pool_y = data.target_y[data.pool]
    train = []
    for c in range(len(TARGET_CLASSES)):
        idx = data.pool[pool_y == c]
        train.append(idx[torch.randperm(len(idx), generator=gen)[:shots]])
    train_idx = torch.cat(train)
    rest = data.pool[~torch.isin(data.pool, train_idx)]
    return train_idx, rest


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, x: torch.Tensor,
        y: torch.Tensor, epochs: int, seed: int, batch: int = BATCH) -> None:
    """Minibatch training; the batch order depends on ``seed`` only. The scheduler steps every
    iteration (it was built with ``steps_per_epoch``), so stage warmups ramp per iteration."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


def pretrain(data: Data, epochs: int = 30, seed: int = 0) -> tuple[dict[str, torch.Tensor], float]:
    """Train on digits 0-4 (80%, fixed); return the state dict and the held-out 20%'s accuracy."""
    torch.manual_seed(seed)
    model = DigitsCNN(len(SOURCE_CLASSES))
    perm = torch.randperm(len(data.source_x), generator=torch.Generator().manual_seed(seed))
    cut = round(0.8 * len(perm))
    tr, ho = perm[:cut], perm[cut:]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    fit(model, opt, None, data.source_x[tr], data.source_y[tr], epochs, seed, batch=32)
    return copy.deepcopy(model.state_dict()), accuracy(model, data.source_x[ho], data.source_y[ho])


def finetune(plan: Plan, backbone: dict[str, torch.Tensor] | None, data: Data, train: torch.Tensor,
             seed: int, epochs: int) -> tuple[DigitsCNN, float, float]:
    """Fine-tune a model (pre-trained backbone or from scratch, head seeded by ``seed``) with
    ``plan`` on the target images ``train``; return it, and the wall and CPU time of training
    (plan to optimizer, scheduler, epochs). CPU time is the steadier one on a shared machine."""
    torch.manual_seed(seed)
    model = DigitsCNN(len(TARGET_CLASSES))
    if backbone is not None:
        model.load_state_dict({k: v for k, v in backbone.items() if not k.startswith("head.")}, strict=False)
    start, cpu = time.perf_counter(), time.thread_time()
    optimizer = plan.optimizer(model)
    scheduler = plan.scheduler(optimizer, steps_per_epoch=math.ceil(len(train) / BATCH))
    fit(model, optimizer, scheduler, data.target_x[train], data.target_y[train], epochs, seed)
    return model, time.perf_counter() - start, time.thread_time() - cpu


@dataclass
class Result:
    variant: Variant
    acc: list[float]
    seconds: list[float]
    cpu: list[float]


def run(variants: Sequence[Variant], data: Data, backbone: dict[str, torch.Tensor], seeds: Sequence[int],
        shots: int, epochs: int) -> list[Result]:
    """Every variant on every seed, scored on the fixed test set. Each plan first builds an
    optimizer once, untimed, so first-use costs (imports, caches) land in no variant's time."""
    results = [Result(v, [], [], []) for v in variants]
    test_x, test_y = data.target_x[data.test], data.target_y[data.test]
    for v in variants:
        plan = v.plan()
        plan.scheduler(plan.optimizer(DigitsCNN(len(TARGET_CLASSES))), steps_per_epoch=1)
    for seed in seeds:
        train, _ = draw(data, seed, shots)
        for res in results:
            model, secs, cpu = finetune(res.variant.plan(), backbone if res.variant.pretrained else None,
                                        data, train, seed, epochs)
            res.acc.append(accuracy(model, test_x, test_y))
            res.seconds.append(secs)
            res.cpu.append(cpu)
    return results


def select(variant: Variant, data: Data, backbone: dict[str, torch.Tensor], shots: int, epochs: int,
           seeds: Sequence[int] = VALIDATION_SEEDS) -> list[tuple[dict[str, float], float]]:
    """Mean validation accuracy of every grid point, in grid order (``itertools.product``)."""
    keys = list(variant.grid)
    scores = []
    for values in itertools.product(*(variant.grid[k] for k in keys)):
        point = dict(zip(keys, values))
        plan = variant.plan(point)
        accs = []
        for seed in seeds:
            train, val = draw(data, seed, shots)
            model, _, _ = finetune(plan, backbone if variant.pretrained else None, data, train, seed, epochs)
            accs.append(accuracy(model, data.target_x[val], data.target_y[val]))
        scores.append((point, statistics.mean(accs)))
    return scores


def rows(results: Sequence[Result]) -> list[list[Any]]:
    """The table's rows (``COLUMNS``); ``x cpu`` is CPU time relative to full fine-tuning."""
    ref = next((r for r in results if r.variant.name == "full fine-tune"), results[0])
    ref_cpu = statistics.mean(ref.cpu)
    out = []
    for r in results:
        sd = statistics.stdev if len(r.acc) > 1 else (lambda _: 0.0)
        out.append([r.variant.name, r.variant.file, r.variant.settings(), statistics.mean(r.acc), sd(r.acc),
                    min(r.acc), max(r.acc), statistics.mean(r.seconds), sd(r.seconds),
                    statistics.mean(r.cpu), statistics.mean(r.cpu) / ref_cpu])
    return out


def plot(results: Sequence[Result], path: Path, title: str) -> bool:
    """Test accuracy per seed (dots), mean and sd (bar) per variant, and CPU time; False
    when matplotlib is missing (an optional extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = [r.variant.name for r in results][::-1]
    res = list(results)[::-1]
    fig, (ax, axt) = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True, width_ratios=[3, 1])
    for i, r in enumerate(res):
        jitter = torch.linspace(-0.18, 0.18, len(r.acc)).tolist() if len(r.acc) > 1 else [0.0]
        ax.scatter([100 * a for a in r.acc], [i + j for j in jitter], s=14, color="tab:blue", alpha=0.55,
                   zorder=2, label="one seed" if i == 0 else None)
        mean = 100 * statistics.mean(r.acc)
        sd = 100 * statistics.stdev(r.acc) if len(r.acc) > 1 else 0.0
        ax.errorbar(mean, i, xerr=sd, fmt="D", color="black", markersize=6, capsize=4, zorder=3,
                    label="mean ± sd" if i == 0 else None)
        ax.annotate(f"{mean:.1f}", (mean, i + 0.28), ha="center", fontsize=8)
        axt.barh(i, statistics.mean(r.cpu), color="tab:gray",
                 xerr=statistics.stdev(r.cpu) if len(r.cpu) > 1 else 0)
        axt.annotate(f"{statistics.mean(r.cpu):.2f}", (0, i), xytext=(3, 0), textcoords="offset points",
                     va="center", color="white", fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("test accuracy on digits 5-9 (%)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    axt.set_xlabel("train CPU time per run (s)")
    axt.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10, help="test seeds 0..N-1")
    ap.add_argument("--shots", type=int, default=10, help="labelled examples per target class")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--pretrain-epochs", type=int, default=30)
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "transfer_digits.png")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--select", action="store_true", help="run the validation grid instead")
    args = ap.parse_args(argv)
    if min(args.seeds, args.shots, args.epochs, args.pretrain_epochs) < 1:
        print("transfer_digits: --seeds, --shots, --epochs and --pretrain-epochs must be >= 1", file=sys.stderr)
        return 2
    try:
        data = load_data()
    except ImportError:
        print("transfer_digits: needs scikit-learn for its digits data (pip install scikit-learn)",
              file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    backbone, source_acc = pretrain(data, args.pretrain_epochs)
    header(f"transfer: digits 0-4 -> 5-9, {args.shots} shots/class, {args.epochs} epochs, "
           f"{'validation grid' if args.select else f'{args.seeds} seeds'}, 1 thread")
    print(f"# data: sklearn load_digits; pre-train {len(data.source_x)} images of digits 0-4 "
          f"(held-out accuracy {source_acc:.3f}); fine-tune pool {len(data.pool)}, test {len(data.test)}")
    if args.select:
        print(f"# validation seeds {', '.join(map(str, VALIDATION_SEEDS))}; validation = pool images "
              "not drawn for training; the test set is not used")
        out = []
        for v in VARIANTS:
            print(f"# grid of {v.name}: " + ", ".join(f"{k} {' '.join(f'{x:g}' for x in xs)}"
                                                      for k, xs in v.grid.items()))
            scores = select(v, data, backbone, args.shots, args.epochs)
            best, acc = max(scores, key=lambda s: s[1])  # the first of equals, in grid order
            out.append([v.name, " ".join(f"{k}={x:g}" for k, x in best.items()), acc,
                        " ".join(f"{x:.3f}" for _, x in scores), v.settings()])
        table(out, ["variant", "chosen", "val acc", "val acc per grid point (grid order)", "plan file has"])
        return 0
    print("# hyperparameters: from the plan files, chosen on validation seeds with --select; "
          "wall times on a shared, busy machine")
    results = run(VARIANTS, data, backbone, range(args.seeds), args.shots, args.epochs)
    table(rows(results), COLUMNS)
    if not args.no_plot:
        title = (f"digits 0-4 -> 5-9, {args.shots} labelled images per class, {args.seeds} seeds")
        if plot(results, args.plot, title):
            print(f"# plot: {args.plot}")
        else:
            print("# no plot: matplotlib is not installed (pip install 'paramgroups[plot]')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
