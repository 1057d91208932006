"""The audit of an optimizer the user built by hand (not from a plan)."""

from __future__ import annotations

import torch

from paramgroups import audit


def test_hand_built_optimizer_implementation_follows_torchs_default(toy):
    opt = torch.optim.AdamW(toy.parameters(), lr=0.1)  # foreach=None: torch decides by device
    assert audit(toy, optimizer=opt).implementation == "for-loop"  # CPU parameters
