"""The ``paramgroups`` command: a thin face over the library.

Bad input ends in one line on stderr and exit code 2 (``--debug`` shows the traceback); a
``check`` that finds violations exits 1. Only click is imported at start-up, so ``--help``
costs no torch import; each command imports the library when it runs.
"""

from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import click

EXIT_OK, EXIT_VIOLATION, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
FORMATS = ("table", "json", "csv", "markdown")


class Violations(Exception):
    """Raised by ``check`` to exit 1 after printing its report."""


def _plan(rules: str | None, overrides: dict[str, Any]):
    """The plan from ``--rules`` (or an empty one) with command-line overrides applied."""
    from paramgroups.config import Locations, read_plan_file
    from paramgroups.plan import Plan

    data, loc = read_plan_file(rules) if rules else ({}, Locations(None))
    if data is None:
        data = {}
    given = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(data, dict):
        data = {**data, **given}
        loc.overrides = {k: "--" + k.replace("_", "-") for k in given}  # errors name the option
    return Plan.from_dict(data, locations=loc)


def _model(spec: str, num_classes: int | None, device: str, config: Sequence[str] = ()):
    from paramgroups.hf_models import parse_config_overrides
    from paramgroups.models import build_model

    return build_model(spec, num_classes=num_classes, device=device,
                       config=parse_config_overrides(config))


def _decidable(plan, built, fix: str, freezing_only: bool = False) -> None:
    """Refuse a plan that selects by what a checkpoint cannot tell (module classes, some kinds):
    resolved on the checkpoint it would quietly assign other values than on the model."""
    from paramgroups.errors import ModelError
    from paramgroups.models import checkpoint_blind_spots

    blind = checkpoint_blind_spots(plan, built, freezing_only=freezing_only)
    if blind:
        more = f" (and {len(blind) - 1} more)" if len(blind) > 1 else ""
        raise ModelError(f"{blind[0]}{more}: {fix}")


_AUDIT_THE_MODEL = "audit the model itself instead (its name, or a package.module:factory)"


def _plan_options(f):
    f = click.option("--rules", "rules", type=click.Path(dir_okay=True), default=None,
                     help="Plan file (YAML, TOML or JSON).")(f)
    f = click.option("--lr", type=float, default=None, help="Base learning rate (overrides the plan).")(f)
    f = click.option("--weight-decay", type=float, default=None,
                     help="Default weight decay (overrides the plan).")(f)
    f = click.option("--optimizer", default=None, help="Optimizer: sgd, adamw, timm:lamb, pkg.mod:Class.")(f)
    f = click.option("--num-classes", type=click.IntRange(min=1), default=None,
                     help="Build the model with this many classes.")(f)
    f = click.option("--device", default="meta", show_default=True,
                     help="Device to build the model on (meta allocates nothing).")(f)
    f = click.option("--config", "config", multiple=True, metavar="KEY=VALUE",
                     help="Override a Hugging Face model's config value, read as JSON "
                     "(num_hidden_layers=2; repeatable).")(f)
    return f


def _image_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--plot names an image format matplotlib writes (checked before any work is done)."""
    if value is not None:
        from paramgroups.plotting import check_image_path

        check_image_path(value)
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="paramgroups", prog_name="paramgroups")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def cli(debug: bool) -> None:
    """Declarative optimizer param groups, freezing and audits for PyTorch models."""


@cli.command()
@click.argument("model")
@_plan_options
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--tablefmt", default="simple", show_default=True, help="Any tabulate table format.")
@click.option("--only", type=click.Choice(("trainable", "frozen")), default=None,
              help="Show only trainable or only frozen parameters.")
@click.option("--match", "match", default=None, help="Show only parameters a pattern selects.")
@click.option("--depth", type=click.IntRange(min=1), default=None,
              help="Collapse rows to modules N segments deep.")
@click.option("--at", "at", type=click.FloatRange(min=0), default=None, metavar="EPOCH",
              help="Show the learning rates at this epoch of the plan's schedule.")
@click.option("--steps-per-epoch", type=click.IntRange(min=1), default=None,
              help="Iterations per epoch, for schedules stepped every iteration.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, metavar="FILE.png",
              callback=_image_path, help="Also draw the plan: LR per parameter (or module at "
              "--depth) by group, frozen ones hatched; with stages, their timeline (needs matplotlib).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Epochs the --plot timeline shows [default: the schedule's total, or a little "
              "past the last stage].")
def inspect(model: str, rules: str | None, lr: float | None, weight_decay: float | None,
            optimizer: str | None, num_classes: int | None, device: str, config: Sequence[str],
            fmt: str, tablefmt: str, only: str | None, match: str | None, depth: int | None,
            at: float | None, steps_per_epoch: int | None, plot: str | None,
            epochs: int | None) -> None:
    """Audit MODEL: every parameter with its group, lr, weight decay and trainable flag.

    MODEL is a torchvision or timm name (resnet18, timm:vit_base_patch16_224,
    torchvision:resnet50), a factory package.module:function (found in the working folder
    too), a checkpoint file (.pt, .pth, .safetensors), or a Hugging Face model: hf:TYPE
    (hf:llama), a save_pretrained folder, its config.json, or a sharded *.index.json.
    A model name wins over a file or folder of the same name; write ./NAME for the path.
    """
    from paramgroups.report import audit

    _check_tablefmt(tablefmt)
    plan = _plan(rules, {"lr": lr, "weight_decay": weight_decay, "optimizer": optimizer})
    built = _model(model, num_classes, device, config)
    _decidable(plan, built, _AUDIT_THE_MODEL)
    _warn(plan, steps_per_epoch)
    report = audit(built, plan, name=model, strict=True, at=at, steps_per_epoch=steps_per_epoch)
    report = report.select(only=only, match=match)
    if plot:
        from paramgroups.plotting import plot_plan, save_figure

        save_figure(plot_plan(report, plan, built, depth=depth, epochs=epochs,
                              steps_per_epoch=steps_per_epoch), plot)
    if depth is not None:
        report = report.collapse(depth)
    out = {"table": lambda: report.to_table(tablefmt), "json": report.to_json,
           "csv": report.to_csv, "markdown": report.to_markdown}[fmt]()
    click.echo(out.rstrip("\n"))


@cli.command()
@click.argument("model")
@_plan_options
@click.option("--expect-frozen", multiple=True, metavar="PATTERN",
              help="Every parameter the pattern selects must be frozen (repeatable).")
@click.option("--expect-trainable", multiple=True, metavar="PATTERN",
              help="Every parameter the pattern selects must be trainable (repeatable).")
@click.option("--at", "at", type=click.FloatRange(min=0), default=None, metavar="EPOCH",
              help="Check the expectations at this epoch of the plan's stages (default: the start).")
@click.option("--steps-per-epoch", type=click.IntRange(min=1), default=None,
              help="Iterations per epoch, for schedules stepped every iteration.")
def check(model: str, rules: str | None, lr: float | None, weight_decay: float | None,
          optimizer: str | None, num_classes: int | None, device: str, config: Sequence[str],
          expect_frozen: Sequence[str], expect_trainable: Sequence[str], at: float | None,
          steps_per_epoch: int | None) -> None:
    """Exit 0 if the plan is clean and every expectation holds, else 1 with one line per
    problem and per module that breaks an expectation."""
    from paramgroups.expectations import expectation_violations
    from paramgroups.report import audit

    plan = _plan(rules, {"lr": lr, "weight_decay": weight_decay, "optimizer": optimizer})
    expectations = [(p, False) for p in expect_frozen] + [(p, True) for p in expect_trainable]
    built = _model(model, num_classes, device, config)
    _decidable(plan, built, _AUDIT_THE_MODEL)
    report = audit(built, plan, name=model, at=at,
                   steps_per_epoch=steps_per_epoch)
    violations = list(report.problems)
    for text, want in expectations:
        violations += expectation_violations(report, text, want)
    for line in violations:
        click.echo(f"violation: {line}")
    if violations:
        raise Violations()
    t = report.totals
    click.echo(f"ok: {t['params']} parameters in {len(report.groups)} groups, "
               f"{t['frozen']:,} of {t['numel']:,} elements frozen, "
               f"{len(expectations)} expectation(s) hold")


@cli.command()
@click.argument("model", required=False)
@click.option("--rules", "rules", type=click.Path(dir_okay=True), default=None,
              help="Plan file (YAML, TOML or JSON) with a schedule section.")
@click.option("--epochs", type=click.IntRange(min=1), required=True, help="Epochs to show.")
@click.option("--steps-per-epoch", type=click.IntRange(min=1), default=None,
              help="Iterations per epoch, for schedules stepped every iteration.")
@click.option("--num-classes", type=click.IntRange(min=1), default=None)
@click.option("--format", "fmt", type=click.Choice(("table", "csv", "json")), default="table",
              show_default=True)
@click.option("--tablefmt", default="simple", show_default=True, help="Any tabulate table format.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, metavar="FILE.png",
              callback=_image_path,
              help="Also draw the curves, one per group, stages and warmups marked (needs matplotlib).")
@click.option("--log-lr/--linear-lr", "log_lr", default=None,
              help="LR axis of --plot [default: log when the LRs span more than a decade].")
def schedule(model: str | None, rules: str | None, epochs: int, steps_per_epoch: int | None,
             num_classes: int | None, fmt: str, tablefmt: str, plot: str | None,
             log_lr: bool | None) -> None:
    """The learning rate of every group at every epoch of the plan's schedule."""
    import json

    from tabulate import tabulate

    from paramgroups.lr_table import schedule_table

    _check_tablefmt(tablefmt)
    plan = _plan(rules, {})
    _warn(plan, steps_per_epoch)
    built = _model(model, num_classes, "meta") if model else None
    headers, rows = schedule_table(plan, built, epochs, steps_per_epoch)
    if plot:
        from paramgroups.plotting import plot_schedule, save_figure

        save_figure(plot_schedule(plan, built, epochs, steps_per_epoch, log=log_lr), plot)
    if fmt == "json":
        click.echo(json.dumps({"columns": headers, "rows": rows}, indent=2))
    elif fmt == "csv":  # frozen cells stay empty; group names may hold commas
        import csv
        import io

        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([headers, *rows])
        click.echo(buf.getvalue().rstrip("\n"))
    else:
        click.echo(tabulate(rows, headers=headers, tablefmt=tablefmt, floatfmt=".6g",
                            missingval="frozen"))


def _warn(plan: Any, steps_per_epoch: int | None) -> None:
    """The plan's warnings, one line each on stderr (the output stays clean for pipes)."""
    for message in plan.warnings(steps_per_epoch):
        click.echo(f"paramgroups: warning: {message}", err=True)


def _check_tablefmt(tablefmt: str) -> None:
    from tabulate import tabulate_formats

    from paramgroups.values import hint

    if tablefmt not in tabulate_formats:
        raise click.BadParameter(f"unknown table format {tablefmt!r} ({hint(tablefmt, tabulate_formats, what='one of:')})",
                                 param_hint="'--tablefmt'")


@cli.command()
@click.argument("before")
@click.argument("after")
@click.option("--rules", "rules", type=click.Path(dir_okay=True), default=None,
              help="Plan file: flag tensors it says are frozen.")
@click.option("--at", "at", type=click.FloatRange(min=0), default=None, metavar="EPOCH",
              help="Judge frozen tensors at this epoch (default: frozen for the whole run).")
@click.option("--steps-per-epoch", type=click.IntRange(min=1), default=None)
@click.option("--model", "model", default=None, metavar="MODEL",
              help="Resolve the plan against this model (default: the checkpoint's own tensors).")
@click.option("--tablefmt", default="simple", show_default=True, help="Any tabulate table format.")
def diff(before: str, after: str, rules: str | None, at: float | None,
         steps_per_epoch: int | None, model: str | None, tablefmt: str) -> None:
    """Compare two checkpoints: every tensor that changed, with its max abs difference.

    With a plan, tensors it says were frozen are flagged, and any that moved make the
    command exit 1.
    """
    from tabulate import tabulate

    from paramgroups.models import module_from_shapes, open_checkpoint, read_checkpoint_shapes
    from paramgroups.snapshots import diff_states, frozen_names

    _check_tablefmt(tablefmt)
    if rules:  # before the comparison, which can take minutes: a bad plan fails at once
        plan = _plan(rules, {})
        built = (_model(model, None, "meta") if model
                 else module_from_shapes(read_checkpoint_shapes(before), before))
        _decidable(plan, built, "pass --model NAME, the model the checkpoints were saved from",
                   freezing_only=True)
    a, b = open_checkpoint(before), open_checkpoint(after)
    with click.progressbar(length=len(set(a) | set(b)), label="comparing", file=sys.stderr,
                           show_pos=True) if sys.stderr.isatty() else _NoBar() as bar:
        def progress(names):
            for name in names:
                yield name
                bar.update(1)

        changes, compared = diff_states(a, b, progress)
    frozen: set[str] = set()
    if rules:
        frozen = frozen_names(plan, built, changes, at, steps_per_epoch)
    rows = [[name, f"{d:.3g}", "FROZEN" if name in frozen else ""] for name, d in changes.items()]
    if rows:
        click.echo(tabulate(rows, headers=["tensor", "max abs diff", "plan"], tablefmt=tablefmt,
                            disable_numparse=True))
    moved = [name for name in changes if name in frozen]
    click.echo(f"{len(changes)} of {compared} tensors changed"
               + (f"; {len(moved)} frozen tensor(s) moved" if rules else ""))
    if moved:
        raise Violations()


class _NoBar:
    """Stands in for a progress bar when stderr is not a terminal."""

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


@cli.command()
@click.argument("text", required=False)
def models(text: str | None) -> None:
    """List the model names `inspect` can build, filtered by TEXT."""
    from paramgroups.models import list_models

    for name in list_models(text):
        click.echo(name)


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code instead of raising ``SystemExit``."""
    with _working_folder_importable():
        return _main(argv)


@contextmanager
def _working_folder_importable() -> Iterator[None]:
    """Factories import from the working folder (``mymodels:build`` finds ``./mymodels.py``)
    as under ``python -m``, which the console script's ``sys.path`` lacks. The folder goes
    last, so a stray ``yaml.py`` there cannot shadow an installed package."""
    try:
        cwd = os.getcwd()
    except OSError:  # the working folder was deleted
        cwd = None
    added = cwd is not None and cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _main(argv: Sequence[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:  # accepted anywhere on the line, not only before the command
        args = ["--debug", *[a for a in args if a != "--debug"]]
    try:
        cli.main(args=args, prog_name="paramgroups", standalone_mode=False)
    except Violations:
        return EXIT_VIOLATION
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("paramgroups: aborted", err=True)
        return EXIT_USAGE
    except click.ClickException as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"paramgroups: error: {_one_line(exc.format_message())}", err=True)
        return EXIT_USAGE
    except Exception as exc:
        from paramgroups.errors import ParamgroupsError

        if debug:
            traceback.print_exc()
        if isinstance(exc, ParamgroupsError):
            click.echo(f"paramgroups: error: {_one_line(str(exc))}", err=True)
            return EXIT_USAGE
        click.echo(f"paramgroups: internal error: {type(exc).__name__}: {_one_line(str(exc))} "
                   f"(this is a bug; --debug shows the traceback)", err=True)
        return EXIT_INTERNAL
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
