"""paramgroups: declarative optimizer param groups, freezing and audits for PyTorch models.

Public names are imported lazily so that ``paramgroups --help`` (and importing the package)
costs no ``import torch``.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module
from importlib.util import module_from_spec, spec_from_file_location
from typing import Any

__version__ = "0.1.0"


def _cli_from_source_checkout() -> None:
    """Register the repository's top-level ``cli/`` folder as ``paramgroups.cli``.

    An install puts ``cli/`` at ``paramgroups/cli`` (the package-dir mapping in pyproject.toml);
    run from a source checkout with no install (``PYTHONPATH=. python -m paramgroups``), the
    folder sits beside this package instead. Costs two ``stat`` calls and imports no torch.
    """
    package = os.path.dirname(__file__)
    folder = os.path.join(os.path.dirname(package), "cli")
    init = os.path.join(folder, "__init__.py")
    if f"{__name__}.cli" in sys.modules or os.path.isdir(os.path.join(package, "cli")) \
            or not os.path.isfile(init):
        return
    spec = spec_from_file_location(f"{__name__}.cli", init, submodule_search_locations=[folder])
    module = module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    globals()["cli"] = module  # what the import system sets on a parent for its submodule


_cli_from_source_checkout()

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
    "CompositeOptimizer": "composite",
    "Timeline": "timeline",
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
