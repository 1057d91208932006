"""Pictures of a plan: the LR of every parameter, the stage timeline and the schedule's curves.

matplotlib is an optional extra (``pip install 'paramgroups[plot]'``) imported only when a
picture is drawn. Figures use the Agg canvas directly, not pyplot, so drawing never switches
a notebook's backend or leaves figures open. Colours follow the group index on one sequential
colormap, so a group has the same colour in every panel; past ``MAX_LEGEND`` groups a
colourbar replaces the legend.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from torch import nn

from .errors import PlotError
from .lr_table import schedule_table
from .plan import Plan
from .report import Audit
from .timeline import Timeline

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MAX_LEGEND = 12  # more groups than this get a colourbar
MAX_SAMPLES = 2000  # scheduler steps drawn per curve; past that every k-th step
MAX_HEIGHT = 13.0  # inches; past it, tick labels thin out instead of the figure growing
ROW_INCH = 0.16  # height one labelled row needs at the tick font size
CURVES_HEIGHT = 4.5  # inches for the LR curves under the stage timeline
FROZEN = {"facecolor": "0.93", "edgecolor": "0.75", "hatch": "///", "linewidth": 0}
NEEDS = "plots need matplotlib, which is not installed: pip install 'paramgroups[plot]'"

Curves = tuple[list[str], list[float], list[list[Any]]]  # group names, times, LR per group (None: frozen)


def check_image_path(path: str | Path) -> str:
    """The image format ``path`` names by its extension; a PlotError when matplotlib is missing
    or cannot write that format (checked before any work, so a typo costs nothing)."""
    _matplotlib()
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in formats:
        raise PlotError(f"cannot tell the image format of {str(path)!r}: end the file name in one of "
                        f"{', '.join('.' + f for f in sorted(formats))}")
    return ext


def save_figure(fig: "Figure", path: str | Path) -> None:
    """Write ``fig`` to ``path`` in the format its extension names."""
    fmt = check_image_path(path)
    try:
        fig.savefig(path, format=fmt, dpi=100, bbox_inches="tight")
    except OSError as exc:
        raise PlotError(f"cannot write {path}: {exc.strerror or exc}") from None


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PlotError(NEEDS) from None
    return matplotlib


def _figure(width: float, height: float) -> "Figure":
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


# -- data ------------------------------------------------------------------------------------

def _x(value: float, in_steps: bool, steps_per_epoch: int | None) -> float:
    """A time in the plot's unit: epochs, or steps for a step schedule without steps_per_epoch."""
    return value / steps_per_epoch if in_steps and steps_per_epoch else value


def x_unit(plan: Plan, steps_per_epoch: int | None) -> str:
    """What the time axis counts: a step schedule without ``steps_per_epoch`` reads epochs as steps."""
    return "step" if plan.schedule and plan.schedule.unit == "step" and not steps_per_epoch else "epoch"


def default_epochs(plan: Plan, steps_per_epoch: int | None = None) -> int:
    """How long a timeline to draw: the schedule's total, and at least a little past the last
    stage (and its warmup)."""
    sch = plan.schedule
    total = _x(sch.total, sch.unit == "step", steps_per_epoch) if sch and sch.total else 0
    ends = [_x(st.when + st.warmup, st.step is not None, steps_per_epoch) for st in plan.stages]
    last = max(ends, default=0)
    after = math.ceil(last * 1.2) + 1 if ends else 1
    return max(1, math.ceil(total) if total >= last + 1 else after)


def schedule_curves(plan: Plan, model: nn.Module | None, epochs: int,
                    steps_per_epoch: int | None = None) -> Curves:
    """Each group's LR over ``epochs``: the rows of :func:`schedule_table` (every epoch and
    stage boundary), with ``steps_per_epoch`` also every scheduler step (every k-th past
    ``MAX_SAMPLES``), and a last point at ``epochs`` so the final value has a width."""
    headers, rows = schedule_table(plan, model, epochs, steps_per_epoch)
    table = {r[0]: r[1:] for r in rows}
    if steps_per_epoch:
        timeline = Timeline.of(plan, plan.resolve(model) if model is not None else None, steps_per_epoch)
        total = epochs * steps_per_epoch
        for k in range(0, total, max(1, math.ceil(total / MAX_SAMPLES))):
            t = k / steps_per_epoch
            if t not in table:
                table[t] = timeline.lrs(timeline.step_of(t))
    times = sorted(table)
    series = [[table[t][i] for t in times] + [table[times[-1]][i]] for i in range(len(headers) - 1)]
    return headers[1:], [*times, float(epochs)], series


def _default_log(series: Sequence[Sequence[Any]]) -> bool:
    """Log scale when the positive LRs span more than a decade."""
    values = [v for s in series for v in s if v is not None and v > 0]
    return bool(values) and max(values) > 10 * min(values)


def _plan_rows(report: Audit, depth: int | None) -> list[tuple[str, list[dict[str, Any]]]]:
    """(label, parameter rows) in model order: one per parameter, or per module at ``depth``."""
    rows = [r for r in report.parameters if r["group"] is not None and r["lr"] is not None]
    if depth is None:
        return [(r["name"], [r]) for r in rows]
    members: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        members.setdefault(".".join(r["name"].split(".")[:depth]), []).append(r)
    return [(m["name"], members[m["name"]]) for m in report.collapse(depth).parameters
            if m["name"] in members]


def _ticks(names: Sequence[str], capacity: int) -> list[tuple[int, str]]:
    """(row, label) pairs that fit ``capacity`` labels: every row, else the first row of each
    module at the deepest depth whose labels mostly fit, else every k-th row."""
    if len(names) <= capacity:
        return list(enumerate(names))
    for depth in range(max(n.count(".") for n in names), 0, -1):
        runs, last = [], None
        for i, name in enumerate(names):
            key = ".".join(name.split(".")[:depth])
            if key != last:
                runs.append((i, key))
                last = key
        kept = _spaced(runs, len(names) / capacity)
        if len(runs) <= capacity and len(kept) >= 0.75 * len(runs):  # a depth whose labels mostly fit
            return kept
    step = math.ceil(len(names) / capacity)
    return [(i, names[i]) for i in range(0, len(names), step)]


def _spaced(ticks: list[tuple[int, str]], gap: float) -> list[tuple[int, str]]:
    """Ticks at least ``gap`` rows apart (labels of short runs would overlap their neighbours)."""
    kept = [ticks[0]]
    for row, label in ticks[1:]:
        if row - kept[-1][0] >= gap:
            kept.append((row, label))
    return kept


def _short(text: str, width: int = 44) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _colors(n: int) -> list[Any]:
    """One colour per group index along viridis (its pale yellow end left out)."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.9 * i / max(n - 1, 1)) for i in range(n)]


# -- drawing ---------------------------------------------------------------------------------

def _draw_curves(ax: "Axes", curves: Curves, colors: Sequence[Any], log: bool) -> None:
    names, times, series = curves
    for i, ys in enumerate(series):
        if any(y is not None for y in ys):
            ax.plot(times, [math.nan if y is None else y for y in ys], drawstyle="steps-post",
                    color=colors[i], lw=1.4, label=names[i])
    if log:
        ax.set_yscale("log", nonpositive="mask")
        peaks = [max(v for v in ys if v is not None) for ys in series if any(v for v in ys)]
        if peaks:  # two decades under the lowest group's peak: a decay towards 0 cannot squash the rest
            ax.set_ylim(bottom=max(ax.get_ylim()[0], min(peaks) / 100))
    ax.set_xlim(times[0], times[-1])
    ax.set_ylabel("learning rate")
    ax.grid(True, alpha=0.3)


def _mark_times(ax: "Axes", plan: Plan, steps_per_epoch: int | None, end: float,
                spans: bool = True, labels: bool = True) -> None:
    """Each stage as a dashed line (with ``labels``, named); with ``spans``, the schedule's
    warmup (grey) and each stage's own warmup (orange) shaded."""
    sch = plan.schedule
    if spans and sch is not None and sch.warmup:
        width = _x(sch.warmup, sch.unit == "step", steps_per_epoch)
        ax.axvspan(0, min(width, end), color="0.5", alpha=0.15, lw=0, gid="warmup")
        ax.text(min(width, end) / 2, 0.02, "warmup", transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=7, color="0.3")
    for i, st in enumerate(plan.stages):
        in_steps = st.step is not None
        x = _x(st.when, in_steps, steps_per_epoch)
        if x > end:
            continue
        ax.axvline(x, color="0.25", ls="--", lw=0.9, gid="stage")
        if spans and st.warmup:
            ax.axvspan(x, min(end, x + _x(st.warmup, in_steps, steps_per_epoch)),
                       color="tab:orange", alpha=0.15, lw=0, gid="stage warmup")
        if labels:
            what = [f"{verb} {p if isinstance(p, str) else ','.join(p)}"
                    for verb, p in (("thaw", st.unfreeze), ("freeze", st.freeze)) if p is not None]
            ax.text(x, 0.98, _short(f" stage {i}: {'; '.join(what)}", 36),
                    transform=ax.get_xaxis_transform(), rotation=90, ha="right", va="top",
                    fontsize=7, color="0.2", bbox={"facecolor": "white", "alpha": 0.8, "lw": 0, "pad": 1})


def _group_key(fig: "Figure", axes: list["Axes"], names: Sequence[str], colors: Sequence[Any],
               shown: Sequence[int], extra: Sequence[Any] = ()) -> None:
    """A legend of the groups when at most MAX_LEGEND, else a colourbar by group index."""
    from matplotlib.lines import Line2D

    if len(shown) <= MAX_LEGEND:
        handles = [Line2D([], [], color=colors[i], lw=2, label=_short(f"{i}: {names[i]}")) for i in shown]
        fig.legend(handles=[*handles, *extra], loc="outside right upper", fontsize="small",
                   title="groups", title_fontsize="small")
        return
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm, ListedColormap

    norm = BoundaryNorm([i - 0.5 for i in range(len(names) + 1)], len(names))
    bar = fig.colorbar(ScalarMappable(norm, ListedColormap(colors)), ax=axes, aspect=40, pad=0.01)
    bar.set_label(f"group index (0-{len(names) - 1})")
    bar.ax.yaxis.set_major_locator(_integer_locator())
    if extra:
        fig.legend(handles=list(extra), loc="outside lower center", fontsize="small", ncols=len(extra))


def _integer_locator() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(nbins=12, integer=True)


def _frozen_note(ax: "Axes", names: Sequence[str], series: Sequence[Sequence[Any]]) -> None:
    """Groups frozen for the whole span are listed under the axes: they have no line."""
    frozen = [f"{i}: {names[i]}" for i, s in enumerate(series) if all(v is None for v in s)]
    if frozen:
        text = textwrap.fill("frozen throughout (no line): " + "; ".join(frozen), 120)
        ax.annotate(text, xy=(0, 0), xycoords=("axes fraction", ax.xaxis.label), xytext=(0, -6),
                    textcoords="offset points", va="top", ha="left", fontsize="small", color="0.3",
                    gid="frozen note")


def plot_schedule(plan: Plan, model: nn.Module | None, epochs: int,
                  steps_per_epoch: int | None = None, *, log: bool | None = None) -> "Figure":
    """The LR of every group over ``epochs`` as step curves, with the warmup shaded and the
    stages marked; ``log=None`` picks a log axis when the LRs span more than a decade."""
    curves = schedule_curves(plan, model, epochs, steps_per_epoch)
    names, times, series = curves
    colors = _colors(len(names))
    fig = _figure(10, 5)
    ax = fig.add_subplot()
    _draw_curves(ax, curves, colors, _default_log(series) if log is None else log)
    _mark_times(ax, plan, steps_per_epoch, times[-1])
    ax.set_xlabel(x_unit(plan, steps_per_epoch))
    ax.set_title("learning rate per group")
    _group_key(fig, [ax], names, colors, [i for i, s in enumerate(series) if any(v is not None for v in s)])
    _frozen_note(ax, names, series)
    return fig


def plot_plan(report: Audit, plan: Plan, model: nn.Module | None = None, *,
              depth: int | None = None, epochs: int | None = None,
              steps_per_epoch: int | None = None) -> "Figure":
    """One picture of a plan: every parameter (or module at ``depth``) in model order with its
    LR on a log axis, coloured by group, frozen ones hollow on a hatched band; with stages,
    beside it the groups' frozen/trainable timeline over ``epochs`` and their LR curves."""
    rows = _plan_rows(report, depth)
    if not rows:
        raise PlotError("nothing to draw: no parameter in the selection is in an optimizer group")
    names = [g["name"] for g in report.groups]
    colors = _colors(len(names))
    height = min(MAX_HEIGHT, max(4.0, 1.4 + ROW_INCH * len(rows)))
    curves = None
    if plan.stages:
        if model is None:
            raise PlotError("drawing the stages of a plan needs the model")
        curves = schedule_curves(plan, model, epochs or default_epochs(plan, steps_per_epoch),
                                 steps_per_epoch)
        gantt = 1.0 + ROW_INCH * len(names)
        height = max(height, min(MAX_HEIGHT, gantt + CURVES_HEIGHT))
    fig = _figure(15 if curves else 9, height)
    if curves is None:
        axes = [fig.add_subplot()]
    else:
        grid = fig.add_gridspec(2, 2, width_ratios=[1, 1.4], height_ratios=[gantt, CURVES_HEIGHT])
        axes = [fig.add_subplot(grid[:, 0]), fig.add_subplot(grid[0, 1])]
        axes.append(fig.add_subplot(grid[1, 1], sharex=axes[1]))
    _draw_rows(axes[0], rows, colors, height)
    title = f"{report.model}: base LR per {'parameter' if depth is None else f'module at depth {depth}'}"
    layer_decay = getattr(plan, "layer_decay", None)
    axes[0].set_title(title + (f" (layer decay {layer_decay:g})" if layer_decay else ""), fontsize="medium")
    if curves is not None:
        _draw_timeline(axes[1], curves, colors, height * gantt / (gantt + CURVES_HEIGHT))
        _mark_times(axes[1], plan, steps_per_epoch, curves[1][-1], spans=False)
        _draw_curves(axes[2], curves, colors, _default_log(curves[2]))
        _mark_times(axes[2], plan, steps_per_epoch, curves[1][-1], labels=False)
        axes[2].set_xlabel(x_unit(plan, steps_per_epoch))
        axes[2].set_title("learning rate per group (schedule and stages)", fontsize="medium")
    _group_key(fig, axes, names, colors, range(len(names)), _style_handles())
    return fig


def _style_handles() -> list[Any]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    return [Line2D([], [], ls="none", marker="o", color="0.3", label="trainable at step 0"),
            Line2D([], [], ls="none", marker="o", mfc="none", color="0.3", label="frozen at step 0"),
            Patch(**FROZEN, label="frozen")]


def _draw_rows(ax: "Axes", rows: list[tuple[str, list[dict[str, Any]]]], colors: Sequence[Any],
               height: float) -> None:
    """Markers per row at each member's base LR; a grey staircase through the rows' highest
    LR shows layer-decay steps; hatched bands mark rows frozen at step 0."""
    n = len(rows)
    size = max(9.0, min(36.0, 2400.0 / n))
    lr = [max(_base_lr(r) for r in members) for _, members in rows]
    xs = [v for v in lr for _ in (0, 1)]
    ys = [y for i in range(n) for y in (i - 0.5, i + 0.5)]
    ax.plot(xs, ys, color="0.6", lw=0.8, zorder=1, gid="staircase")
    start = None
    for i, (_, members) in enumerate([*rows, ("", [{"trainable": True}])]):
        frozen = all(not r["trainable"] for r in members)
        if frozen and start is None:
            start = i
        elif not frozen and start is not None:
            ax.axhspan(start - 0.5, i - 0.5, zorder=0, gid="frozen band", **FROZEN)
            start = None
    points: dict[tuple[int, bool], set[tuple[int, float]]] = {}
    for i, (_, members) in enumerate(rows):
        for r in members:
            points.setdefault((r["group"], r["trainable"]), set()).add((i, _base_lr(r)))
    for (group, trainable), pts in sorted(points.items()):
        y, x = zip(*sorted(pts))
        ax.scatter(x, y, s=size, zorder=3, color=colors[group] if trainable else "none",
                   edgecolors=colors[group], linewidths=1.0, gid="trainable" if trainable else "frozen")
    ax.set_xscale("log", nonpositive="mask")
    positive = [v for v in lr if v > 0] or [1.0]
    ax.set_xlim(min(positive) / 2, max(positive) * 2)  # markers off the frame
    ax.set_ylim(n - 0.5, -0.5)
    ticks = _ticks([name for name, _ in rows], max(4, int((height - 1.4) / ROW_INCH)))
    ax.set_yticks([i for i, _ in ticks], [_short(t, 40) for _, t in ticks], fontsize=7)
    ax.grid(True, axis="x", which="major", alpha=0.3)
    ax.grid(True, axis="y", alpha=0.15)
    ax.set_xlabel("base learning rate (rules and layer decay, before schedule and stages)")


def _base_lr(row: dict[str, Any]) -> float:
    return row.get("base_lr", row["lr"])


def _draw_timeline(ax: "Axes", curves: Curves, colors: Sequence[Any], height: float) -> None:
    """A Gantt chart: one bar per group, hatched grey while frozen, its colour while trainable."""
    names, times, series = curves
    for g, ys in enumerate(series):
        start = 0
        for k in range(1, len(times)):
            if k == len(times) - 1 or (ys[k] is None) != (ys[start] is None):
                style = FROZEN if ys[start] is None else {"facecolor": colors[g]}
                ax.broken_barh([(times[start], times[k] - times[start])], (g - 0.4, 0.8),
                               gid="frozen span" if ys[start] is None else "trainable span", **style)
                start = k
    ax.set_ylim(len(names) - 0.5, -0.5)
    step = math.ceil(len(names) / max(3, int((height - 1.2) / ROW_INCH)))
    rows = range(0, len(names), step)
    ax.set_yticks(list(rows), [_short(f"{i}: {names[i]}", 40) for i in rows], fontsize=7)
    ax.tick_params(axis="x", labelbottom=False)
    ax.set_title("frozen (hatched) and trainable epochs per group", fontsize="medium")
