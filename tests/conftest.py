"""Shared fixtures: small models with known names, built on the CPU in microseconds."""

from __future__ import annotations

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
