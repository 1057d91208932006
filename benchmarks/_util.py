"""Shared helpers for the benchmark scripts: timing, peak memory of a child process, tables."""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable

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


def child(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object. Adds wall time and peak RSS."""
    wrapper = (
        "import json, resource, time, sys\n"
        "_t = time.perf_counter()\n"
        f"{code}\n"
        "_out = globals().get('result', {})\n"
        "_out['wall_s'] = time.perf_counter() - _t\n"
        "_out['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(json.dumps(_out))\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


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
