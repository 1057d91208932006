"""Shared helpers for the benchmark scripts: timing, peak memory of a child process, tables."""

from __future__ import annotations

import multiprocessing
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable

from tabulate import tabulate


def median_time(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def child(fn: Callable[..., dict | None], *args: Any) -> dict:
    """``fn(*args)`` in a fresh interpreter (spawned, so nothing is inherited; ``fn`` must be a
    module-level function, which the child imports by name): the dict it returns, plus the
    call's wall time ``wall_s`` and the child's peak RSS ``peak_rss_mb``."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_measured, fn, *args).result()


def _measured(fn: Callable[..., dict | None], *args: Any) -> dict:
    import resource

    start = time.perf_counter()
    out = dict(fn(*args) or {})
    out["wall_s"] = time.perf_counter() - start
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def header(title: str) -> None:
    """Title, date, machine and command. Imports no torch: children's peak RSS would inherit it."""
    import os
    from importlib.metadata import version

    print(f"# {title}")
    print(f"# {time.strftime('%Y-%m-%d')}  {platform.machine()}  {os.cpu_count()} cores  "
          f"torch {version('torch')}  python {platform.python_version()}")
    print(f"# command: {' '.join(['python', *sys.argv])}")


def table(rows: list[list], headers: list[str]) -> None:
    print(tabulate(rows, headers=headers, floatfmt=".3g", disable_numparse=False))
