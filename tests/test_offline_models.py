"""Every torchvision model builds offline: no socket is opened, nothing lands in the hub cache.

Detection and segmentation builders download an ImageNet backbone unless told
``weights_backbone=None``; RegNet computes its widths with tensors, which cannot run with
every tensor on meta. Sockets are blocked and TORCH_HOME points at an empty folder, so a
download attempt fails the test even where a cached copy exists.
"""

from __future__ import annotations


import pytest
import torch
import torchvision

from paramgroups.models import build_model

from conftest import run_cli as run

ALL = torchvision.models.list_models()
# One of each family that once needed more than weights=None: detection, segmentation,
# keypoints (backbone download), RegNet (tensor maths in the constructor), quantized, video,
# optical flow; and a plain classifier.
FAST = ["ssdlite320_mobilenet_v3_large", "lraspp_mobilenet_v3_large", "keypointrcnn_resnet50_fpn",
        "regnet_x_400mf", "quantized_mobilenet_v3_large", "r3d_18", "raft_small", "resnet18"]


@pytest.fixture
def offline(network_attempts, monkeypatch, tmp_path):
    """The network blocked (conftest); return the list of attempts and the hub folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return network_attempts, tmp_path / "torch_home"


def _builds_offline(name: str, offline) -> None:
    attempts, home = offline
    model = build_model(name)
    assert attempts == []
    assert not home.exists()  # nothing was downloaded into the hub cache either
    params = list(model.parameters())
    assert params and {p.device.type for p in params} == {"meta"}


def test_fast_subset_is_in_torchvision():
    assert set(FAST) <= set(ALL)


@pytest.mark.parametrize("name", FAST)
def test_model_builds_without_network(name, offline):
    _builds_offline(name, offline)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(ALL) - set(FAST)))
def test_every_torchvision_model_builds_without_network(name, offline):
    _builds_offline(name, offline)


def test_cli_inspects_a_detection_model_offline(capsys, offline):
    code, out, err = run(capsys, "inspect", "ssdlite320_mobilenet_v3_large", "--format", "json")
    assert (code, err) == (0, "")
    assert offline[0] == []
    assert '"backbone.features.0.0.0.weight"' in out


def test_detection_model_equals_torchvision_built_without_backbone_weights(offline):
    with torch.device("meta"):
        ref = torchvision.models.get_model("fasterrcnn_mobilenet_v3_large_320_fpn", weights=None,
                                           weights_backbone=None)
    ours = build_model("fasterrcnn_mobilenet_v3_large_320_fpn")
    assert [(n, p.shape, p.requires_grad) for n, p in ours.named_parameters()] == \
        [(n, p.shape, p.requires_grad) for n, p in ref.named_parameters()]
    # weights_backbone=None builds torchvision's from-scratch variant: BatchNorm2d, all trainable
    assert type(ours.backbone.body["0"][1]).__name__ == "BatchNorm2d"


def test_regnet_on_meta_has_the_cpu_models_names_and_shapes(offline):
    ref = torchvision.models.regnet_x_400mf(weights=None)  # 5.5M parameters, on the CPU
    ours = build_model("regnet_x_400mf")
    assert {p.device.type for p in ours.parameters()} | {b.device.type for b in ours.buffers()} == {"meta"}
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    assert [(n, b.shape) for n, b in ours.named_buffers()] == [(n, b.shape) for n, b in ref.named_buffers()]
    # the fallback leaves torch as it found it: a later module registers on the CPU again
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"
