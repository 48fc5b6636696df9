"""The ``budgetplan`` command line: thin typer commands that parse, call the library, and print.

Errors in the user's input surface as one line on stderr and exit code 2 (see
:mod:`budgetplan.errors`); an unexpected failure prints one line too (set ``BUDGETPLAN_DEBUG=1`` for the
traceback) and exits 3.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

import budgetplan
from budgetplan.errors import BudgetplanError, InputError
from budgetplan.units import format_bytes, parse_shape

app = typer.Typer(
    name="budgetplan",
    help="Memory-budget planner for on-device training of PyTorch models.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])


def _one_line_errors(fn: F) -> F:
    """Turn BudgetplanError into one line on stderr and its exit code; anything else into exit 3."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except BudgetplanError as exc:
            err_console.print(f"error: {exc}", markup=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted", markup=False)
            raise typer.Exit(130) from None
        except Exception as exc:
            if os.environ.get("BUDGETPLAN_DEBUG"):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            err_console.print(
                f"internal error: {type(exc).__name__}: {first} (set BUDGETPLAN_DEBUG=1 for the traceback)",
                markup=False, soft_wrap=True,
            )
            raise typer.Exit(3) from None

    return wrapper  # type: ignore[return-value]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"budgetplan {budgetplan.__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Memory-budget planner for on-device training of PyTorch models."""


# Options shared by the commands that read a model.
ModelArg = Annotated[str, typer.Argument(
    help="A built-in model (resnet18, mobilenetv2-w0.35, ...), a .pt2 ExportedProgram, a TorchScript "
         "archive, a pickled module (with --trust-pickle) or an import path package.module:factory.")]
TargetOpt = Annotated[str, typer.Option("--target", "-t", help="Target name, alias or path to a .toml file.")]
ShapeOpt = Annotated[str | None, typer.Option("--input-shape", help="Input shape, e.g. 1x3x128x128.")]
WeightsOpt = Annotated[Path | None, typer.Option("--weights", help="state_dict for an import-path model "
                                                  "(loaded with weights_only=True).")]
TrustOpt = Annotated[bool, typer.Option("--trust-pickle", help="Allow loading a pickled module; this runs "
                                        "code from the file.")]
TraceOpt = Annotated[str, typer.Option("--trace", help="auto (fx, falling back to torch.export), fx or export.")]
GroupOpt = Annotated[int, typer.Option("--group-size", min=1, help="Output channels per neuron group.")]
RamOpt = Annotated[str | None, typer.Option("--ram", help="RAM budget, e.g. 256k, 0.5M, 262144 "
                                            "(k = 1024). Default: the target's usable RAM.")]
JsonOpt = Annotated[str | None, typer.Option("--json", help="Write JSON to PATH, or '-' for stdout.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite output files that exist.")]


def _shape(text: str | None) -> tuple[int, ...] | None:
    return parse_shape(text) if text is not None else None


def _check_output_path(path: str | None, force: bool) -> None:
    """Refuse to overwrite a file unless asked, before any work is done."""
    if path is None or path == "-":
        return
    p = Path(path)
    if p.is_dir():
        raise InputError(f"output path is a directory: {path}")
    if p.exists() and not force:
        raise InputError(f"{path} exists; pass --force to overwrite it")
    if not p.parent.exists():
        raise InputError(f"directory does not exist: {p.parent}")


def _write_json(data: dict[str, Any], path: str) -> None:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    if path == "-":
        sys.stdout.write(text)
    else:
        Path(path).write_text(text)
        err_console.print(f"wrote {path}", markup=False)


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:g}"


@app.command()
@_one_line_errors
def inspect(
    model: ModelArg,
    target: TargetOpt = "host",
    input_shape: ShapeOpt = None,
    ram: RamOpt = None,
    weights: WeightsOpt = None,
    trust_pickle: TrustOpt = False,
    trace: TraceOpt = "auto",
    group_size: GroupOpt = 1,
    all_ops: Annotated[bool, typer.Option("--all", help="Also list ops that cost nothing (views).")] = False,
    json_out: JsonOpt = None,
    force: ForceOpt = False,
) -> None:
    """Per-layer table of a model: parameters, MACs, output bytes and neuron groups on a target."""
    from budgetplan.pipeline import inspect_model

    _check_output_path(json_out, force)
    if trace not in ("auto", "fx", "export"):
        raise InputError(f"unknown --trace '{trace}'; use auto, fx or export")
    report = inspect_model(model, target=target, ram=ram, input_shape=_shape(input_shape), weights=weights,
                           trust_pickle=trust_pickle, trace=trace, group_size=group_size)  # type: ignore[arg-type]
    if json_out is not None:
        _write_json(report.to_dict(), json_out)
        if json_out == "-":
            return

    table = Table(title=f"{report.model} on {report.target}", show_lines=False)
    for col, justify in (("#", "right"), ("layer", "left"), ("op", "left"), ("output", "left"),
                         ("params", "right"), ("MACs", "right"), ("out bytes", "right"),
                         ("groups", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    shown = 0
    for i, layer in enumerate(report.layers):
        if not all_ops and not (layer.params or layer.flops or layer.output_bytes or layer.neuron_groups):
            continue
        shown += 1
        shape = "×".join(str(d) for d in layer.output_shape) if layer.output_shape else "-"
        table.add_row(str(i), layer.name, layer.op, shape, f"{layer.params:,}" if layer.params else "",
                      _si(layer.macs) if layer.macs else "", format_bytes(layer.output_bytes) if
                      layer.output_bytes else "", str(layer.neuron_groups) if layer.neuron_groups else "")
    console.print(table)
    t = report.totals
    hidden = len(report.layers) - shown
    console.print(
        f"[bold]{t.layers}[/] ops ({hidden} views/no-cost ops hidden; --all shows them) · traced with "
        f"{report.trace_method} · input {', '.join('×'.join(map(str, s)) for s in report.input_shapes.values())}"
    )
    console.print(f"parameters {t.params:,} ({format_bytes(t.param_bytes)} on {report.target}) · "
                  f"{_si(t.macs)} MACs · {_si(t.flops)} FLOPs per forward pass · "
                  f"{t.neuron_groups:,} neuron groups (group size {report.group_size})")
    if report.budget_bytes is not None:
        fits = t.inference_peak_bytes <= report.budget_bytes
        verdict = "[green]fits[/]" if fits else "[red]does not fit[/]"
        console.print(f"inference activation peak {format_bytes(t.inference_peak_bytes)} vs budget "
                      f"{format_bytes(report.budget_bytes)}: {verdict} (training memory: budgetplan estimate)")
    for note in report.notes:
        console.print(f"note: {note}", markup=False)


@app.command()
@_one_line_errors
def targets(json_out: JsonOpt = None, force: ForceOpt = False) -> None:
    """List the built-in targets."""
    from budgetplan.targets import list_targets

    _check_output_path(json_out, force)
    devices = list_targets()
    if json_out is not None:
        _write_json({"targets": [d.to_dict() for d in devices]}, json_out)
        if json_out == "-":
            return
    table = Table(title="built-in targets")
    for col in ("name", "aliases", "core", "clock", "SRAM", "usable", "flash", "family", "MAC/cycle"):
        table.add_column(col)
    for d in devices:
        table.add_row(d.name, ", ".join(d.aliases), d.core, f"{d.clock_hz / 1e6:g} MHz",
                      format_bytes(d.sram_bytes), format_bytes(d.usable_bytes),
                      format_bytes(d.flash_bytes) if d.flash_bytes else "-", d.family, f"{d.macs_per_cycle:g}")
    console.print(table)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
