"""Shared fixtures and helpers: small models with known names, the in-process CLI runner, and
global torch flags restored after every test.

``tests/`` is on ``sys.path`` (``pythonpath`` in pyproject.toml), so test files import
``stagenet`` and ``run_cli`` (``from conftest import run_cli``) without path hacks.
"""

from __future__ import annotations

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


@pytest.fixture(autouse=True)
def _restore_torch_globals() -> Iterator[None]:
    """Undo what a test sets process-wide, so no test depends on which tests ran before it."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    dtype, threads, grad = torch.get_default_dtype(), torch.get_num_threads(), torch.is_grad_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.set_default_dtype(dtype)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    torch.set_grad_enabled(grad)


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
