"""paramgroups: declarative optimizer param groups, freezing and audits for PyTorch models.

Public names are imported lazily so that ``paramgroups --help`` (and importing the package)
costs no ``import torch``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Rule": "rules",
    "Plan": "plan",
    "Schedule": "schedules",
    "Stage": "stages",
    "snapshot": "snapshots",
    "changed": "snapshots",
    "resync_ddp": "distributed",
    "Audit": "report",
    "audit": "report",
    "freeze": "stages",
    "unfreeze": "stages",
    "inventory": "inventory",
    "build_model": "models",
}

__all__ = [*_EXPORTS, "errors", "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        if name == "errors":
            return import_module(".errors", __name__)
        raise AttributeError(f"module 'paramgroups' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
