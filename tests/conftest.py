"""Shared fixtures and helpers: small models with known names, the in-process CLI runner and
its checks (``run_cli``, ``audit_json``, ``one_line_error``), examples run as scripts
(``run_example``), the network blocked, benchmark scripts loaded as modules, and global torch
flags restored after every test.

``tests/`` is on ``sys.path`` (``pythonpath`` in pyproject.toml), so test files import
``stagenet`` and ``run_cli`` (``from conftest import run_cli``) without path hacks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, dim: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm = nn.BatchNorm2d(dim)


class Toy(nn.Module):
    """stem.{conv,norm}, layers.{0..2}.{conv,norm}, emb, head (tied to emb when asked)."""

    def __init__(self, tied: bool = False):
        super().__init__()
        self.stem = Block()
        self.layers = nn.ModuleList(Block() for _ in range(3))
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10)
        if tied:
            self.head.weight = self.emb.weight


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """Run ``paramgroups ARGS...`` in-process (each arg through ``str``): exit code, stdout, stderr."""
    from paramgroups.cli.main import main  # here, so a broken CLI fails only the CLI tests

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def audit_json(capsys: pytest.CaptureFixture[str], *args: object) -> dict:
    """``paramgroups inspect ARGS... --format json`` in-process, parsed; fails unless it exited 0
    with nothing on stderr."""
    import json

    code, out, err = run_cli(capsys, "inspect", *args, "--format", "json")
    assert (code, err) == (0, ""), err
    return json.loads(out)


def one_line_error(code: int, out: str, err: str) -> str:
    """The stderr of a bad-input exit (what :func:`run_cli` returned); fails unless it was
    exactly that: exit 2, nothing on stdout, one ``paramgroups: error:`` line, no traceback."""
    assert (code, out) == (2, ""), (code, out, err)
    assert err.startswith("paramgroups: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err, err
    return err


def _torch_globals() -> Iterator[None]:
    """Record the process-wide torch flags a test may set; put them back on resumption."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    dtype, threads, grad = torch.get_default_dtype(), torch.get_num_threads(), torch.is_grad_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.set_default_dtype(dtype)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    torch.set_grad_enabled(grad)


@pytest.fixture(autouse=True)
def _restore_torch_globals() -> Iterator[None]:
    """Undo what a test sets process-wide, so no test depends on which tests ran before it."""
    yield from _torch_globals()


@pytest.fixture(autouse=True, scope="module")
def _restore_torch_globals_per_module() -> Iterator[None]:
    """The same around each test file, for what a module-scoped fixture sets (it runs before
    the per-test record, e.g. ``torch.set_num_threads(1)`` in test_transfer_digits)."""
    yield from _torch_globals()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; run `pytest -m cuda` on a GPU machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def toy() -> Toy:
    torch.manual_seed(0)
    return Toy()


@pytest.fixture
def tied() -> Toy:
    torch.manual_seed(0)
    return Toy(tied=True)


@pytest.fixture(scope="session")
def resnet18_meta() -> nn.Module:
    import torchvision

    with torch.device("meta"):
        return torchvision.models.resnet18(weights=None)


@pytest.fixture
def network_attempts(monkeypatch) -> list[tuple]:
    """Block every way to the network for one test; return the list of attempts."""
    import socket

    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network blocked by test")

    for owner, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"),
                        (socket, "create_connection"), (socket, "getaddrinfo")):
        monkeypatch.setattr(owner, name, refuse)
    return attempts


@pytest.fixture
def no_network(network_attempts):
    """The network is blocked, and the test fails on any attempt, even one the code caught."""
    yield
    assert network_attempts == [], f"network access attempted: {network_attempts[:3]}"


def run_example(script: object, *args: object, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python SCRIPT ARGS...`` (an example) in a fresh interpreter from the repository root,
    with this checkout's paramgroups first on its path; output captured as text."""
    root = Path(__file__).resolve().parents[1]
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=root, env={**os.environ, "PYTHONPATH": path})


def load_benchmark(name: str):
    """A script of ``benchmarks/`` as a module (tests reuse its checks); the folder is on
    sys.path only while the script loads (its own helpers, ``_util``, import from there)."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses in the script look their module up
    sys.path.insert(0, str(folder))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module
