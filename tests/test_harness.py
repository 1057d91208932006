"""The test harness itself: global torch flags one test sets do not leak into the next, and
the shared helpers import without path hacks.

The two ``test_flags_*`` tests run in file order: the first changes every flag the conftest
fixture restores, the second sees the defaults again.
"""

from __future__ import annotations

import pytest
import torch

import stagenet
from conftest import audit_json, one_line_error, run_cli

DEFAULTS = {"deterministic": False, "warn_only": False, "dtype": torch.float32, "grad": True}
THREADS = torch.get_num_threads()  # at import, before any test ran


def flags() -> dict:
    return {"deterministic": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "dtype": torch.get_default_dtype(), "grad": torch.is_grad_enabled()}


def test_flags_set_by_one_test():
    assert flags() == DEFAULTS
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_default_dtype(torch.float64)
    torch.set_grad_enabled(False)
    torch.set_num_threads(THREADS + 1)
    assert flags() == {"deterministic": True, "warn_only": True, "dtype": torch.float64, "grad": False}


def test_flags_are_restored_for_the_next_test():
    assert flags() == DEFAULTS
    assert torch.get_num_threads() == THREADS


def test_stagenet_imports_from_the_tests_folder():
    assert stagenet.Net().fc.out_features == 3


def test_run_cli_returns_code_stdout_and_stderr(capsys):
    assert run_cli(capsys, "--version") == (0, "paramgroups, version 0.1.0\n", "")
    code, out, err = run_cli(capsys, "inspect", "no_such_model_xyz")
    assert (code, out) == (2, "") and err.startswith("paramgroups: error:") and err.count("\n") == 1
    assert one_line_error(code, out, err) == err
    with pytest.raises(AssertionError):
        one_line_error(0, "", "")
    assert audit_json(capsys, "resnet18")["totals"]["numel"] == 11_689_512

