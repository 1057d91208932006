"""Pictures of a plan: `inspect --plot`, `schedule --plot` and the figures behind them."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("matplotlib", reason="matplotlib is in the test extra; plotting is optional")

from matplotlib.image import imread  # noqa: E402

from conftest import run_cli as run  # noqa: E402
from paramgroups.models import build_model  # noqa: E402
from paramgroups.plan import Plan  # noqa: E402
from paramgroups.plotting import MAX_LEGEND, default_epochs, plot_plan, plot_schedule  # noqa: E402
from paramgroups.report import audit  # noqa: E402

STAGED = {"lr": 0.01, "optimizer": "sgd", "momentum": 0.9,
          "schedule": {"main": "cosine", "total": 10, "warmup": 2},
          "rules": [{"match": "**", "freeze": True}, {"match": "fc", "freeze": False, "lr_mult": 10}],
          "stages": [{"epoch": 3, "unfreeze": "layer4"}, {"epoch": 5, "unfreeze": "layer3", "lr_mult": 0.1},
                     {"epoch": 50, "unfreeze": "layer2"}]}
# one layer id per block and a no-decay split: 2 x 10 groups, more than a legend holds
LAYERED = {"lr": 0.1, "optimizer": "sgd", "weight_decay": 1e-4, "layer_decay": 0.5, "no_decay": True,
           "layers": ["{conv1,bn1}", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0",
                      "layer3.1", "layer4.0", "layer4.1", "fc"],
           "rules": [{"match": "bn1", "freeze": True}]}


def write(tmp_path, data, name="plan.json"):
    import json

    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def gids(ax, kind: str) -> list:
    return [a for a in [*ax.lines, *ax.patches, *ax.collections, *ax.texts] if a.get_gid() == kind]


def png(path) -> tuple[int, int]:
    """(height, width) in pixels of a PNG that exists, is a PNG and is not trivially small."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    return imread(path).shape[:2]


def tiny_llama():
    """A 32-layer Llama of width 16, from a config (nothing downloads); a `module:function` spec."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=32, num_attention_heads=2,
                                        num_key_value_heads=2))


# -- schedule --plot ---------------------------------------------------------------------------

def test_schedule_figure_marks_stages_warmup_and_draws_steps(resnet18_meta):
    plan = Plan.from_dict(STAGED)
    fig = plot_schedule(plan, resnet18_meta, 8)
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"  # 0.1 (fc) down to 0.001 (layer3 x 0.1): more than a decade
    assert ax.get_xlim() == (0.0, 8.0)
    stage_lines = gids(ax, "stage")
    assert [line.get_xdata()[0] for line in stage_lines] == [3, 5]  # stage 2 (epoch 50) is past the end
    assert [t.get_text() for t in ax.texts if "stage" in t.get_text()] == [
        " stage 0: thaw layer4", " stage 1: thaw layer3"]
    (warmup,) = gids(ax, "warmup")
    assert warmup.get_x() == 0 and warmup.get_width() == 2
    curves = [line for line in ax.lines if line.get_gid() != "stage"]
    assert {line.get_drawstyle() for line in curves} == {"steps-post"}
    assert len(curves) == 3  # fc, layer4, layer3; the never-thawed rest is in the note
    (legend,) = fig.legends
    assert len(legend.get_texts()) == 3 <= MAX_LEGEND
    (note,) = gids(ax, "frozen note")
    assert note.get_text().startswith("frozen throughout (no line): 0: ")


def test_schedule_figure_samples_every_step_with_steps_per_epoch(tmp_path):
    plan = Plan.from_dict({"lr": 1.0, "schedule": {"main": "cosine", "total": 3}})
    fig = plot_schedule(plan, None, 3, steps_per_epoch=4, log=False)
    (line,) = fig.axes[0].lines
    assert list(line.get_xdata()) == [k / 4 for k in range(12)] + [3.0]
    assert line.get_ydata()[4] == pytest.approx(0.75)  # (1 + cos(pi / 3)) / 2 at epoch 1
    assert fig.axes[0].get_yscale() == "linear"


def test_thirty_groups_get_a_colourbar_and_sequential_colours(resnet18_meta):
    plan = Plan.from_dict(LAYERED)
    fig = plot_schedule(plan, resnet18_meta, 4)
    ax, bar = fig.axes
    assert bar.get_ylabel() == "group index (0-19)"
    assert fig.legends == []
    curves = ax.lines
    assert len(curves) == 19  # 20 groups, one always frozen (bn1)
    colours = [line.get_color() for line in curves]
    assert len(set(colours)) == 19  # no repeats (the old palette cycled every 10)
    assert ax.get_yscale() == "log"  # 0.5 ** 9: the LRs span three decades


@pytest.mark.slow
def test_schedule_plot_cli_axis_options_and_png(capsys, tmp_path):
    plan = write(tmp_path, LAYERED)
    log, linear = tmp_path / "log.png", tmp_path / "linear.png"
    assert run(capsys, "schedule", "resnet18", "--rules", plan, "--epochs", 4, "--plot", log)[0] == 0
    code, out, err = run(capsys, "schedule", "resnet18", "--rules", plan, "--epochs", 4,
                         "--linear-lr", "--plot", linear, "--format", "csv")
    assert (code, err) == (0, "") and out.startswith("epoch,")
    height, width = png(linear)
    assert 450 <= height <= 700 and 1000 <= width <= 1300  # 10 x 5 inches at 100 dpi, plus the key
    assert log.read_bytes() != linear.read_bytes()


@pytest.mark.parametrize("name", ["lr.txt", "lr"])
def test_plot_with_an_unknown_extension_is_bad_input(capsys, tmp_path, name):
    for command in (["schedule", "--epochs", 2], ["inspect", "resnet18"]):
        code, out, err = run(capsys, *command, "--plot", tmp_path / name)
        assert (code, out) == (2, "") and err.count("\n") == 1
        assert err.startswith(f"paramgroups: error: cannot tell the image format of '{tmp_path / name}': "
                              "end the file name in one of ")
        assert ".png" in err and ".svg" in err
    assert list(tmp_path.iterdir()) == []


def test_plot_into_a_missing_folder_is_bad_input(capsys, tmp_path):
    code, out, err = run(capsys, "inspect", "resnet18", "--plot", tmp_path / "no" / "plan.png")
    assert (code, out) == (2, "")
    assert err.startswith(f"paramgroups: error: cannot write {tmp_path / 'no' / 'plan.png'}: ")


def test_inspect_plot_without_matplotlib_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    code, out, err = run(capsys, "inspect", "resnet18", "--plot", tmp_path / "x.png")
    assert (code, out) == (2, "")
    assert err == ("paramgroups: error: plots need matplotlib, which is not installed: "
                   "pip install 'paramgroups[plot]'\n")


# -- inspect --plot ------------------------------------------------------------------------------

def test_plan_figure_with_stages_has_rows_timeline_and_curves(resnet18_meta):
    plan = Plan.from_dict(STAGED)
    fig = plot_plan(audit(resnet18_meta, plan), plan, resnet18_meta, epochs=8)
    rows, timeline, lrs = fig.axes
    assert rows.get_xscale() == "log" and lrs.get_yscale() == "log"
    labels = [t.get_text() for t in rows.get_yticklabels()]
    assert labels[0] == "conv1.weight" and labels[-1] == "fc.bias" and len(labels) == 62
    assert len(gids(rows, "frozen")) == 4 and len(gids(rows, "trainable")) == 1  # by group
    (band,) = gids(rows, "frozen band")  # everything but fc, one contiguous band
    assert band.get_y() == pytest.approx(-0.5) and band.get_height() == pytest.approx(60)
    # groups: frozen throughout, layer2 (epoch 50, past the end), layer3 (epoch 5), layer4 (epoch 3), fc
    assert len(timeline.collections) == 1 + 1 + 2 + 2 + 1
    frozen = [c for c in timeline.collections if c.get_gid() == "frozen span"]
    thawed = [c for c in timeline.collections if c.get_gid() == "trainable span"]
    assert [(c.get_paths()[0].vertices[:, 0].min(), c.get_paths()[0].vertices[:, 0].max()) for c in frozen] == [
        (0, 8), (0, 8), (0, 5), (0, 3)]
    assert [(c.get_paths()[0].vertices[:, 0].min(), c.get_paths()[0].vertices[:, 0].max()) for c in thawed] == [
        (5, 8), (3, 8), (0, 8)]
    assert len(gids(timeline, "stage")) == 2 and len(gids(lrs, "stage")) == 2
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "0: default, frozen", "1: layer2, thaws at epoch 50", "2: layer3, thaws at epoch 5",
        "3: layer4, thaws at epoch 3", "4: fc", "trainable at step 0", "frozen at step 0", "frozen"]


def test_plan_figure_without_stages_is_one_panel_and_collapses_to_depth(resnet18_meta):
    plan = Plan.from_dict({"lr": 0.1, "rules": [{"match": "layer{1,2}", "lr_mult": 0.1}]})
    fig = plot_plan(audit(resnet18_meta, plan), plan, resnet18_meta, depth=1)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
    (staircase,) = gids(ax, "staircase")
    assert list(staircase.get_xdata()) == pytest.approx([0.1] * 4 + [0.01] * 4 + [0.1] * 6)


def test_default_timeline_length():
    assert default_epochs(Plan.from_dict(STAGED)) == 61  # the last stage (50) is past total 10
    staged = {**STAGED, "stages": STAGED["stages"][:2]}
    assert default_epochs(Plan.from_dict(staged)) == 10  # the schedule's total
    no_schedule = {k: v for k, v in staged.items() if k != "schedule"}
    assert default_epochs(Plan.from_dict(no_schedule)) == 7  # 5 x 1.2 + 1


@pytest.mark.slow
def test_inspect_plot_cli_png_grows_with_rows_and_stages(capsys, tmp_path):
    plain, staged, short = tmp_path / "plain.png", tmp_path / "staged.png", tmp_path / "short.png"
    code, out, err = run(capsys, "inspect", "resnet18", "--plot", plain, "--format", "csv")
    assert (code, err) == (0, "") and out.startswith("name,")
    assert run(capsys, "inspect", "resnet18", "--depth", 1, "--plot", short, "--format", "csv")[0] == 0
    assert run(capsys, "inspect", "resnet18", "--rules", write(tmp_path, STAGED), "--epochs", 8,
               "--plot", staged, "--format", "csv")[0] == 0
    (h_plain, w_plain), (h_short, _), (_, w_staged) = png(plain), png(short), png(staged)
    assert h_plain > 2 * h_short  # 62 rows against 7
    assert w_staged > 1.5 * w_plain  # a second column: the timeline and LR curves


@pytest.mark.slow
def test_vit_layer_decay_schedule_is_readable(capsys, tmp_path):
    plan = write(tmp_path, {"lr": 1e-3, "optimizer": "adamw", "weight_decay": 0.05, "layer_decay": 0.65,
                            "no_decay": True, "schedule": {"main": "cosine", "total": 30, "warmup": 5},
                            "rules": [{"match": "pos_embed", "freeze": True}]})
    out = tmp_path / "vit.png"
    code, _, err = run(capsys, "schedule", "timm:vit_base_patch16_224", "--rules", plan, "--epochs", 30,
                       "--plot", out, "--format", "csv")
    assert (code, err) == (0, "")
    height, width = png(out)
    assert height < 700 and width < 1300  # the key does not run off or blow up the figure
    fig = plot_schedule(Plan.load(plan), build_model("timm:vit_base_patch16_224"), 30)
    ax, _colourbar = fig.axes
    assert len(ax.lines) == 28 and ax.get_yscale() == "log" and fig.legends == []
    assert "pos_embed" in gids(ax, "frozen note")[0].get_text()


@pytest.mark.slow
def test_32_layer_language_model_at_depth_3(capsys, tmp_path):
    plan = write(tmp_path, {"lr": 3e-4, "optimizer": "adamw", "layer_decay": 0.9, "layers": "model.layers.{i}",
                            "rules": [{"match": "**", "freeze": True}, {"match": "lm_head", "freeze": False}],
                            "stages": [{"epoch": 2, "unfreeze": "model.layers.{16..31}"},
                                       {"epoch": 4, "unfreeze": "model.layers.{0..15}"}]})
    out = tmp_path / "lm.png"
    code, _, err = run(capsys, "inspect", "test_plotting:tiny_llama", "--rules", plan, "--depth", 3,
                       "--plot", out, "--format", "csv")
    assert (code, err) == (0, "")
    assert png(out)[0] > 1000  # 35 labelled rows
    model = tiny_llama().to("meta")
    p = Plan.load(plan)
    fig = plot_plan(audit(model, p), p, model, depth=3)
    rows = fig.axes[0]
    assert [t.get_text() for t in rows.get_yticklabels()] == [
        "model.embed_tokens.weight", *[f"model.layers.{i}" for i in range(32)], "model.norm.weight",
        "lm_head.weight"]
    xs = gids(rows, "staircase")[0].get_xdata()[::2]
    assert xs[1:33] == pytest.approx([3e-4 * 0.9 ** (32 - i) for i in range(32)])  # ids 1..32 of 33
