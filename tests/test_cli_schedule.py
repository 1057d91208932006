"""`paramgroups schedule` and `inspect --at`: LR tables, plots and their errors."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import run_cli as run

PLAN = """\
lr: 0.04
optimizer: sgd
momentum: 0.9
schedule:
  main: multistep
  milestones: [10, 15]
  warmup: 5
  warmup_lr: 0.001
rules:
  - match: fc
    lr_mult: 10
"""


def expected_base(epoch: int) -> float:
    if epoch < 5:
        return 0.001 + (0.04 - 0.001) * epoch / 5
    return 0.04 * 0.1 ** sum(1 for m in (10, 15) if m <= epoch)


@pytest.fixture
def plan_file(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(PLAN)
    return path


def test_schedule_json_has_every_group_at_every_epoch(capsys, plan_file):
    code, out, err = run(capsys, "schedule", "resnet18", "--rules", plan_file, "--epochs", 18, "--format", "json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["columns"] == ["epoch", "default", "fc"]  # groups named by what selects them
    for epoch, low, high in data["rows"]:
        assert low == pytest.approx(expected_base(epoch), rel=1e-12)
        assert high == pytest.approx(10 * expected_base(epoch), rel=1e-12)


def test_schedule_without_model_shows_the_base_lr(capsys, plan_file):
    code, out, _ = run(capsys, "schedule", "--rules", plan_file, "--epochs", 3, "--format", "csv")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "epoch,base lr"
    assert [float(x.split(",")[1]) for x in lines[1:]] == pytest.approx([expected_base(e) for e in range(3)])


def test_schedule_csv_leaves_frozen_cells_empty_and_quotes_names(capsys, tmp_path):
    (tmp_path / "p.yaml").write_text("lr: 0.1\nrules:\n  - match: [layer4, fc]\n    freeze: true\n"
                                     "stages:\n  - epoch: 2\n    unfreeze: [layer4, fc]\n")
    code, out, _ = run(capsys, "schedule", "resnet18", "--rules", tmp_path / "p.yaml", "--epochs", 3,
                       "--format", "csv")
    assert code == 0
    assert out.splitlines() == ['epoch,default,"layer4,fc, thaws at epoch 2"',
                                "0,0.1,", "1,0.1,", "2,0.1,0.1"]
    code, out, _ = run(capsys, "schedule", "resnet18", "--rules", tmp_path / "p.yaml", "--epochs", 3)
    assert out.splitlines()[2].split() == ["0", "0.1", "frozen"]


def test_schedule_table_and_steps_per_epoch(capsys, tmp_path):
    (tmp_path / "p.yaml").write_text("lr: 1.0\nschedule:\n  main: cosine\n  total: 4\n")
    code, out, _ = run(capsys, "schedule", "--rules", tmp_path / "p.yaml", "--epochs", 5,
                       "--steps-per-epoch", 10)
    assert code == 0
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [r[0] for r in rows] == ["0", "1", "2", "3", "4"]
    assert [float(r[1]) for r in rows] == pytest.approx([1.0, 0.853553, 0.5, 0.146447, 0.0], abs=1e-6)


def test_schedule_plot_writes_a_png(capsys, plan_file, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is in the test extra; plotting is optional")
    png = tmp_path / "lr.png"
    code, _, err = run(capsys, "schedule", "resnet18", "--rules", plan_file, "--epochs", 6, "--plot", png)
    assert (code, err) == (0, "")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_schedule_plot_without_matplotlib_is_a_clear_error(capsys, plan_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    code, out, err = run(capsys, "schedule", "--rules", plan_file, "--epochs", 2, "--plot", tmp_path / "x.png")
    assert code == 2 and out == ""
    assert err == ("paramgroups: error: plots need matplotlib, which is not installed: "
                   "pip install 'paramgroups[plot]'\n")


@pytest.mark.parametrize("args,needle", [
    (["schedule", "--epochs", "0"], "--epochs"),
    (["schedule"], "Missing option '--epochs'"),
    (["schedule", "--epochs", "2", "--steps-per-epoch", "0"], "--steps-per-epoch"),
    (["schedule", "--epochs", "2", "--format", "xml"], "--format"),
    (["inspect", "resnet18", "--at", "-1"], "--at"),
    (["schedule", "--epochs", "2", "--tablefmt", "grd"], "unknown table format 'grd' (did you mean 'grid'?)"),
    (["schedule", "--epochs", "2", "--tablefmt", "zzz"], "unknown table format 'zzz' (one of: asciidoc, colon_grid,"),
])
def test_schedule_bad_options(capsys, args, needle):
    code, out, err = run(capsys, *args)
    assert code == 2 and out == "" and err.count("\n") == 1 and needle in err


def test_bad_schedule_in_file_is_located(capsys, tmp_path):
    (tmp_path / "p.yaml").write_text("lr: 0.1\nschedule:\n  main: cosine\n")
    code, _, err = run(capsys, "schedule", "--rules", tmp_path / "p.yaml", "--epochs", 2)
    assert code == 2 and "p.yaml:2: schedule: main cosine needs total" in err


def test_inspect_at_shows_the_scheduled_lrs(capsys, plan_file):
    code, out, _ = run(capsys, "inspect", "resnet18", "--rules", plan_file, "--at", 12, "--format", "json")
    assert code == 0
    data = json.loads(out)
    rows = {r["name"]: r for r in data["parameters"]}
    assert rows["conv1.weight"]["lr"] == pytest.approx(0.004, rel=1e-12)
    assert rows["fc.weight"]["lr"] == pytest.approx(0.04, rel=1e-12)
    assert [g["lr"] for g in data["groups"]] == pytest.approx([0.004, 0.04], rel=1e-12)
