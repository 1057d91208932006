"""Benchmark 4: `paramgroups inspect` wall time and peak memory, as ratios to building the model.

Each command runs in a fresh process; the baseline is
`import torch, torchvision; torchvision.models.resnet18()`.

    python benchmarks/cli.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics

from _util import child, header, table


def build_resnet18() -> None:
    import torch  # noqa: F401 - the import is part of what is measured
    import torchvision

    torchvision.models.resnet18()


def run_cli(*argv: str) -> None:
    """``paramgroups ARGV...`` in-process, its output discarded."""
    import contextlib
    import io

    from paramgroups.cli.main import main

    with contextlib.redirect_stdout(io.StringIO()):
        main(list(argv))


CASES = {  # label: (function, arguments), each run in a fresh process
    "baseline: import torch, torchvision; resnet18()": (build_resnet18, ()),
    "paramgroups inspect resnet18": (run_cli, ("inspect", "resnet18")),
    "paramgroups inspect resnet18 --format json": (run_cli, ("inspect", "resnet18", "--format", "json")),
    "paramgroups --help": (run_cli, ("--help",)),
    "paramgroups inspect timm:vit_giant_patch14_224 (1.01B params, meta)":
        (run_cli, ("inspect", "timm:vit_giant_patch14_224")),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    header("CLI: wall time and peak RSS per command, fresh process each (median of runs)")
    results = {}
    for label, (fn, fn_args) in CASES.items():
        runs = [child(fn, *fn_args) for _ in range(args.repeat)]
        results[label] = (statistics.median(r["wall_s"] for r in runs),
                          statistics.median(r["peak_rss_mb"] for r in runs))
    base_t, base_m = next(iter(results.values()))
    table([[label, t, m, t / base_t, m / base_m] for label, (t, m) in results.items()],
          ["command", "wall s", "peak RSS MiB", "x time", "x memory"])


if __name__ == "__main__":
    main()
