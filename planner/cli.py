"""The ``budgetplan`` command line: thin typer commands that parse, call the library, and print.

Errors in the user's input surface as one line on stderr and exit code 2 (see
:mod:`budgetplan.errors`), and so do usage errors (a missing argument, an unknown option, a bad option
value); an unexpected failure prints one line too (set ``BUDGETPLAN_DEBUG=1`` for the traceback) and
exits 3. Output printed or logged by PyTorch during a library call is discarded (see
:func:`_quiet_torch`; ``BUDGETPLAN_DEBUG=1`` lets it through), so stdout and stderr carry only
budgetplan's own output. See docs/cli.md.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

import budgetplan
from budgetplan.errors import BudgetplanError, InputError, first_line
from budgetplan.units import format_bytes, parse_shape

# click's UsageError (typer ships its own copy of click in recent versions; this finds it either way).
_UsageError: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")

console = Console(highlight=False, emoji=False)
err_console = Console(stderr=True, highlight=False, emoji=False)

F = TypeVar("F", bound=Callable[..., Any])


def _debug() -> bool:
    return bool(os.environ.get("BUDGETPLAN_DEBUG"))


def _error_line(message: str) -> None:
    """Print ``error: message`` as exactly one line on stderr."""
    err_console.print(f"error: {' '.join(str(message).split())}", markup=False, soft_wrap=True)


@contextlib.contextmanager
def _compact_usage_errors() -> Iterator[None]:
    """click's usage errors (missing argument, unknown option or command, bad value) as one line, exit 2.

    click would print a usage block and a boxed message; budgetplan keeps every input error to one line.
    The "no arguments: show help" case is left to click.
    """
    try:
        yield
    except _UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            raise
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None and ctx.command_path else ""
        _error_line(f"{exc.format_message()}{hint}")  # type: ignore[attr-defined]
        raise typer.Exit(getattr(exc, "exit_code", 2)) from None


class _Group(TyperGroup):
    """The root command: turns click's usage errors into one line (see :func:`_compact_usage_errors`)."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        with _compact_usage_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        with _compact_usage_errors():
            return super().invoke(ctx)


app = typer.Typer(
    name="budgetplan",
    cls=_Group,
    help="Memory-budget planner for on-device training of PyTorch models.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """Keep PyTorch's chatter out of the terminal around a library call.

    On failure torch.export prints the partial graph to ``sys.stderr`` and logs WARNING/ERROR records
    (with their own handlers) before it raises; all of that would surround our one-line error, and
    anything printed to stdout would corrupt ``--json -``. So, while the call runs: ``sys.stdout`` and
    ``sys.stderr`` go to a discarded buffer, the ``torch`` loggers drop records below CRITICAL and Python
    warnings are ignored. Enter this *after* torch is imported (``import torch`` resets its logger's
    level). ``BUDGETPLAN_DEBUG=1`` lets everything through.
    """
    if _debug():
        yield
        return
    torch_logger = logging.getLogger("torch")
    level = torch_logger.level
    torch_logger.setLevel(logging.CRITICAL)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_logger.setLevel(level)


def _one_line_errors(fn: F) -> F:
    """Turn BudgetplanError into one line on stderr and its exit code; anything else into exit 3."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit, _UsageError, BrokenPipeError):
            raise  # typer/click handle these (usage errors: see _Group; a closed pipe: exit 1)
        except BudgetplanError as exc:
            _error_line(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted", markup=False)
            raise typer.Exit(130) from None
        except Exception as exc:
            if _debug():
                raise
            err_console.print(
                f"internal error: {first_line(exc, with_type=True)} (set BUDGETPLAN_DEBUG=1 for the traceback)",
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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Errors only on stderr: no progress "
                                        "spinners, no log lines.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="The library's debug log lines on "
                                          "stderr.")] = False,
) -> None:
    """Memory-budget planner for on-device training of PyTorch models."""
    if quiet and verbose:
        _error_line("--quiet and --verbose contradict each other; give one")
        raise typer.Exit(2)
    from budgetplan.integrations.progress import configure_logging  # logging + rich progress (issue 13)

    configure_logging("quiet" if quiet else "verbose" if verbose else "normal")


# Options shared by the commands that read a model.
ModelArg = Annotated[str, typer.Argument(
    metavar="MODEL",
    help="A built-in model (resnet18, mobilenetv2-w0.35, ...), a .pt2 ExportedProgram, a TorchScript "
         "archive, a pickled module (with --trust-pickle) or an import path package.module:factory.")]
TargetOpt = Annotated[str, typer.Option("--target", "-t", metavar="NAME|FILE",
                                        help="Target name, alias or path to a .toml file.")]
ShapeOpt = Annotated[str | None, typer.Option("--input-shape", metavar="SHAPE",
                                              help="Input shape, e.g. 1x3x128x128.")]
WeightsOpt = Annotated[Path | None, typer.Option("--weights", metavar="FILE",
                                                 help="state_dict for an import-path model "
                                                      "(loaded with weights_only=True).")]
TrustOpt = Annotated[bool, typer.Option("--trust-pickle", help="Allow loading a pickled module; this runs "
                                        "code from the file.")]
TraceOpt = Annotated[str, typer.Option("--trace", metavar="auto|fx|export",
                                       help="auto (fx, falling back to torch.export), fx or export.")]
GroupOpt = Annotated[int, typer.Option("--group-size", min=1, metavar="N",
                                       help="Output channels per neuron group.")]
RamOpt = Annotated[str | None, typer.Option("--ram", metavar="SIZE",
                                            help="RAM budget, e.g. 256k, 0.5M, 262144 (k = 1024). "
                                                 "Default: the target's usable RAM.")]
JsonOpt = Annotated[str | None, typer.Option("--json", metavar="PATH",
                                             help="Write JSON to PATH, or '-' for stdout.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite output files that exist.")]


def _check_trace_and_optimizer(trace: str, optimizer: str) -> None:
    """Reject a bad --trace or --optimizer before the (slow) model loading."""
    from budgetplan.pricing.host.exact import OPTIMIZERS

    if trace not in ("auto", "fx", "export"):
        raise InputError(f"unknown --trace '{trace}'; use auto, fx or export")
    if optimizer not in OPTIMIZERS:
        raise InputError(f"unknown optimizer '{optimizer}'; use one of: {', '.join(OPTIMIZERS)}")


def _shape(text: str | None) -> tuple[int, ...] | None:
    return parse_shape(text) if text is not None else None


def _check_output_path(path: str | None, force: bool, option: str = "--json") -> None:
    """Refuse to overwrite a file unless asked, before any work is done. Only ``--json`` takes '-'."""
    if path is None or (path == "-" and option == "--json"):
        return
    p = Path(path)
    stdout_hint = ", or '-' for stdout" if option == "--json" else ""
    if not path.strip() or path == "-":
        raise InputError(f"{option} needs a file path{stdout_hint}")
    if p.is_dir():
        raise InputError(f"{option} {path} is a directory; give a file path{stdout_hint}")
    if p.exists() and not force:
        raise InputError(f"{path} exists; pass --force to overwrite it")
    if not p.parent.is_dir():
        why = "is not a directory" if p.parent.exists() else "does not exist"
        raise InputError(f"cannot write {path}: {p.parent} {why}")


def _write_json(data: dict[str, Any], path: str) -> None:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    err_console.print(f"wrote {path}", markup=False, soft_wrap=True)


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
    all_ops: Annotated[bool, typer.Option("--all", help="Also list ops that cost nothing "
                                                           "(views, in-place ops).")] = False,
    json_out: JsonOpt = None,
    force: ForceOpt = False,
) -> None:
    """Per-layer table of a model: parameters, MACs, output bytes and neuron groups on a target."""
    from budgetplan.pipeline import inspect_model  # imports torch (slow): only for commands that need it

    _check_output_path(json_out, force)
    if trace not in ("auto", "fx", "export"):
        raise InputError(f"unknown --trace '{trace}'; use auto, fx or export")
    with _quiet_torch():
        report = inspect_model(model, target=target, ram=ram, input_shape=_shape(input_shape),
                               weights=weights, trust_pickle=trust_pickle,
                               trace=trace, group_size=group_size)  # type: ignore[arg-type]
    if json_out is not None:
        _write_json(report.to_dict(), json_out)
        if json_out == "-":
            return

    table = Table(title=Text(f"{report.model} on {report.target}"), show_lines=False)
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
        table.add_row(str(i), Text(layer.name), Text(layer.op), shape,
                      f"{layer.params:,}" if layer.params else "", _si(layer.macs) if layer.macs else "",
                      format_bytes(layer.output_bytes) if layer.output_bytes else "",
                      str(layer.neuron_groups) if layer.neuron_groups else "")
    console.print(table)
    t = report.totals
    hidden = len(report.layers) - shown
    shown_note = "all shown" if all_ops else f"{hidden} views/no-cost ops hidden; --all shows them"
    console.print(
        f"[bold]{t.layers}[/] ops ({shown_note}) · traced with {escape(report.trace_method)} · input "
        f"{', '.join('×'.join(map(str, s)) for s in report.input_shapes.values())}"
    )
    console.print(f"parameters {t.params:,} ({format_bytes(t.param_bytes)} on {escape(report.target)}) · "
                  f"{_si(t.macs)} MACs · {_si(t.flops)} FLOPs per forward pass · "
                  f"{t.neuron_groups:,} neuron groups (group size {report.group_size})")
    if report.budget_bytes is not None:
        fits = t.inference_peak_bytes <= report.budget_bytes
        verdict = "[green]fits[/]" if fits else "[red]does not fit[/]"
        console.print(f"inference activation peak {format_bytes(t.inference_peak_bytes)} vs budget "
                      f"{format_bytes(report.budget_bytes)}: {verdict} "
                      "(training memory: budgetplan estimate)")
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
                      format_bytes(d.flash_bytes) if d.flash_bytes else "-", d.family,
                      f"{d.macs_per_cycle:g}")
    console.print(table)


UpdateOpt = Annotated[str | None, typer.Option(
    "--update", "-u", metavar="SPEC",
    help="What to train: patterns like 'layer4.*,*.bias,fc.weight[0:8]', 'all', a plan JSON or a "
         "tiny-training sparse-update config (JSON). Default: all.")]
OptimizerOpt = Annotated[str, typer.Option("--optimizer", metavar="sgd|sgd-momentum|adam",
                                           help="Optimizer whose state is priced.")]


def _pct(pred: float, meas: float) -> str:
    return "n/a" if meas == 0 else f"{100 * (pred - meas) / meas:+.2f} %"


@app.command()
@_one_line_errors
def estimate(
    model: ModelArg,
    target: TargetOpt = "host",
    update: UpdateOpt = None,
    optimizer: OptimizerOpt = "sgd",
    ram: RamOpt = None,
    no_reorder: Annotated[bool, typer.Option("--no-reorder", help="mcu targets: keep every weight gradient "
                                             "until the optimizer step (no operator reordering).")] = False,
    input_shape: ShapeOpt = None,
    weights: WeightsOpt = None,
    trust_pickle: TrustOpt = False,
    trace: TraceOpt = "auto",
    json_out: JsonOpt = None,
    force: ForceOpt = False,
) -> None:
    """Memory, FLOPs and latency of one training step of an update set on a target."""
    from budgetplan.pipeline import estimate_training

    _check_output_path(json_out, force)
    _check_trace_and_optimizer(trace, optimizer)
    with _quiet_torch():
        est = estimate_training(model, target=target, update=update, optimizer=optimizer, ram=ram,
                                input_shape=_shape(input_shape), weights=weights, trust_pickle=trust_pickle,
                                trace=trace, reorder=not no_reorder)  # type: ignore[arg-type]
    if json_out is not None:
        _write_json(est.to_dict(), json_out)
        if json_out == "-":
            return
    table = Table(title=Text(f"one training step of {est.model} on {est.target} ({est.optimizer})"))
    for col in ("", "total", "at peak"):
        table.add_column(col, justify="right" if col else "left")
    for kind in ("activations", "weights", "gradients", "optimizer", "other"):
        table.add_row(kind, format_bytes(getattr(est.memory, kind)), format_bytes(getattr(est.memory_at_peak, kind)))
    console.print(table)
    trained = sum(est.trained_parameters.values())
    console.print(f"peak {format_bytes(est.peak_bytes)} at {escape(est.peak_at)} · "
                  f"{trained:,} parameters trained in {len(est.trained_parameters)} tensors · "
                  f"backward through {len(est.backward_layers)} layers", soft_wrap=True)
    console.print(f"FLOPs: forward {_si(est.flops['forward'])}, backward {_si(est.flops['backward'])} "
                  f"(to activations {_si(est.flops['backward_to_activations'])}, to parameters "
                  f"{_si(est.flops['backward_to_parameters'])}) · latency ≈ {est.latency_s:.3g} s", soft_wrap=True)
    forward = [p.live_bytes for p in est.timeline if p.phase == "forward"]
    backward = [p.live_bytes for p in est.timeline if p.phase == "backward"]
    console.print(f"timeline: {len(est.timeline)} steps; forward max {format_bytes(max(forward, default=0))}, "
                  f"backward max {format_bytes(max(backward, default=0))} (--json for every step)", soft_wrap=True)
    if est.budget_bytes is not None:
        verdict = "[green]fits[/]" if est.fits else "[red]does not fit[/]"
        console.print(f"budget {format_bytes(est.budget_bytes)}: {verdict}")
    for note in est.notes:
        console.print(f"note: {note}", markup=False, soft_wrap=True)


@app.command()
@_one_line_errors
def measure(
    model: ModelArg,
    update: UpdateOpt = None,
    optimizer: OptimizerOpt = "sgd",
    input_shape: ShapeOpt = None,
    weights: WeightsOpt = None,
    trust_pickle: TrustOpt = False,
    trace: TraceOpt = "auto",
    json_out: JsonOpt = None,
    force: ForceOpt = False,
) -> None:
    """Run one real training step on this computer and compare it with the host prediction."""
    from budgetplan.pipeline import measure_training

    _check_output_path(json_out, force)
    _check_trace_and_optimizer(trace, optimizer)
    with _quiet_torch():
        result = measure_training(model, update=update, optimizer=optimizer, input_shape=_shape(input_shape),
                                  weights=weights, trust_pickle=trust_pickle, trace=trace)  # type: ignore[arg-type]
    if json_out is not None:
        _write_json(result.to_dict(), json_out)
        if json_out == "-":
            return
    table = Table(title=Text(f"one training step of {result.model} on this computer ({result.optimizer})"))
    for col in ("", "predicted", "measured (traced)", "error", "measured (eager)", "error "):
        table.add_column(col, justify="right" if col else "left")
    for quantity, pred, traced, eager in result.rows():
        table.add_row(quantity, f"{pred:,}", f"{traced:,}", _pct(pred, traced), f"{eager:,}", _pct(pred, eager))
    console.print(table)
    console.print("traced: the traced program (frees values after their last use, like budgetplan's schedule); "
                  "eager: your forward() (Python locals may live longer). FLOPs measured with FlopCounterMode, "
                  "which over-counts grouped-conv backward and does not count CPU attention.", soft_wrap=True)
    if result.eager.channel_subsets_measured_as_full:
        console.print("note: PyTorch eager computes whole gradients; channel subsets were measured as whole "
                      "tensors (budgetplan.compile makes subsets real)", soft_wrap=True)


def _scores_arg(text: str) -> Any:
    """``params``/``uniform``, or a scores file (JSON or a tensor file; :func:`budgetplan.selection.scores.load_scores`)."""
    if text in ("params", "uniform"):
        return text
    if not Path(text).is_file():
        raise InputError(f"unknown --objective '{text}'; use params, uniform or a scores file (.json, .pt)")
    from budgetplan.selection.scores import load_scores

    return load_scores(text)


@app.command()
@_one_line_errors
def analyze(
    model: ModelArg,
    target: TargetOpt = "cortex-m7",
    ram: RamOpt = None,
    objective: Annotated[str, typer.Option("--objective", metavar="params|uniform|FILE",
                                           help="Group scores to maximise: params (parameters trained), "
                                                "uniform, or a scores file parameter -> scores (.json, or .pt "
                                                "read with weights_only).")] = "params",
    strategy: Annotated[str, typer.Option("--strategy", metavar="STRATEGY",
                                          help="ilp, greedy, random, bias-only, last-k, full or "
                                               "config:PATH (tiny-training sparse-update config).")] = "ilp",
    solver: Annotated[str, typer.Option("--solver", metavar="auto|cbc|highs")] = "auto",
    time_limit: Annotated[float, typer.Option("--time-limit", metavar="SECONDS", min=0.01,
                                              help="Stop the solver after this long; the status then says "
                                                   "whether the plan is proven optimal.")] = 60.0,
    gap: Annotated[float | None, typer.Option("--gap", metavar="FRACTION", min=0.0,
                                              help="Relative MIP gap to stop at (default: prove optimality).")]
    = None,
    max_flops: Annotated[float | None, typer.Option("--max-flops", metavar="FLOPS", min=0,
                                                    help="Bound on forward+backward FLOPs per step.")] = None,
    max_latency: Annotated[float | None, typer.Option("--max-latency", metavar="SECONDS", min=0,
                                                      help="Bound on the target's latency estimate.")] = None,
    last_k: Annotated[int | None, typer.Option("--last-k", metavar="K", min=1,
                                               help="Layers for --strategy last-k (default: all).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of --strategy random.")] = 0,
    optimizer: OptimizerOpt = "sgd",
    no_reorder: Annotated[bool, typer.Option("--no-reorder", help="mcu targets: no operator reordering.")] = False,
    group_size: GroupOpt = 1,
    input_shape: ShapeOpt = None,
    weights: WeightsOpt = None,
    trust_pickle: TrustOpt = False,
    trace: TraceOpt = "auto",
    out: Annotated[str | None, typer.Option("--out", metavar="PATH", help="Write the plan file.")] = None,
    html: Annotated[str | None, typer.Option("--html", metavar="PATH", help="Write an HTML report.")] = None,
    all_layers: Annotated[bool, typer.Option("--all", help="List every weight layer, not only trained ones.")]
    = False,
    json_out: JsonOpt = None,
    force: ForceOpt = False,
) -> None:
    """Choose the neurons to train under a RAM budget; exit 1 when nothing fits."""
    from budgetplan.pipeline import analyze_model
    from budgetplan.emit.plan_file import dumps_plan

    for path, option in ((json_out, "--json"), (out, "--out"), (html, "--html")):
        _check_output_path(path, force, option)
    _check_trace_and_optimizer(trace, optimizer)
    scores = _scores_arg(objective)
    with console.status("tracing, pricing and solving…", spinner="dots"), _quiet_torch():
        analysis = analyze_model(model, target=target, ram=ram, strategy=strategy, scores=scores,
                                 optimizer=optimizer, reorder=not no_reorder, solver=solver, time_limit=time_limit,
                                 gap=gap, max_flops=max_flops, max_latency_s=max_latency, last_k=last_k, seed=seed,
                                 input_shape=_shape(input_shape), weights=weights, trust_pickle=trust_pickle,
                                 trace=trace, group_size=group_size)  # type: ignore[arg-type]
    plan, doc = analysis.plan, analysis.document
    if out is not None:
        _write_text(dumps_plan(doc), out)
    if html is not None:
        from budgetplan.emit.report_html import render_html

        _write_text(render_html(doc), html)
    if json_out is not None:
        data = dict(doc)
        data.pop("timeline", None)
        data["timeline"] = doc["timeline"]
        data["solver"] = plan.solver  # with wall time (not in the plan file, which must be reproducible)
        _write_json(data, json_out)
        if json_out == "-":
            raise typer.Exit(0 if plan.fits and not plan.update.is_empty else 1)

    table = Table(title=Text(f"{doc['model']['source']} on {analysis.target.name}: {plan.strategy} plan"))
    for col, justify in (("layer", "left"), ("op", "left"), ("groups", "right"), ("trained params", "right"),
                         ("fwd MACs", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in doc["layers"]:
        if not all_layers and not (row["groups_selected"] or row["trained_elements"]):
            continue
        table.add_row(Text(row["layer"]), row["op"], f"{row['groups_selected']}/{row['groups_total']}",
                      f"{row['trained_elements']:,}", _si(row["flops"] / 2))
    console.print(table)
    trained = sum(plan.estimate.trained_parameters.values())
    total = sum(m.numel for m in analysis.model_graph.graph.parameters.values())
    verdict = "[green]fits[/]" if plan.fits else "[red]does not fit[/]"
    console.print(f"peak {format_bytes(plan.estimate.peak_bytes)} vs budget {format_bytes(plan.budget_bytes)}: "
                  f"{verdict} (at {escape(plan.estimate.peak_at)}) · trained {trained:,} of {total:,} parameters "
                  f"({100 * trained / max(total, 1):.2f} %) in {len(plan.update)} tensors", soft_wrap=True)
    if plan.solver:
        s = plan.solver
        gap_text = "n/a" if s["gap"] is None else f"{100 * s['gap']:.3g} %"
        console.print(f"solver {s['name']}: {s['status']} · objective {s['objective']} · gap {gap_text} · "
                      f"{s['seconds']:.2f} s · {s['variables']} variables ({s['group_variables']} groups), "
                      f"{s['constraints']} constraints", soft_wrap=True)
    for note in doc["notes"]:
        console.print(f"note: {note}", markup=False, soft_wrap=True)
    if not plan.fits or plan.update.is_empty:
        raise typer.Exit(1)


def _write_text(text: str, path: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    err_console.print(f"wrote {path}", markup=False, soft_wrap=True)


def _junit(items: list[Any], model: str) -> str:
    from xml.sax.saxutils import escape as xml_escape, quoteattr

    failures = sum(1 for i in items if not i.passed)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<testsuite name="budgetplan check" tests="{len(items)}" failures="{failures}">']
    for item in items:
        lines.append(f'  <testcase classname={quoteattr("budgetplan." + model)} name={quoteattr(item.name)}>')
        if not item.passed:
            lines.append(f'    <failure message={quoteattr(item.message)}>{xml_escape(item.message)}</failure>')
        lines.append("  </testcase>")
    lines.append("</testsuite>")
    return "\n".join(lines) + "\n"


@app.command()
@_one_line_errors
def check(
    model: ModelArg,
    target: TargetOpt = "cortex-m7",
    ram: RamOpt = None,
    plan: Annotated[str | None, typer.Option("--plan", metavar="PATH", help="A plan file that must still fit.")]
    = None,
    min_update: Annotated[float | None, typer.Option("--min-update", metavar="PCT",
                                                     help="Require at least PCT % of parameters trainable.")]
    = None,
    optimizer: OptimizerOpt = "sgd",
    input_shape: ShapeOpt = None,
    weights: WeightsOpt = None,
    trust_pickle: TrustOpt = False,
    trace: TraceOpt = "auto",
    junit: Annotated[str | None, typer.Option("--junit", metavar="PATH", help="Write a JUnit XML report.")]
    = None,
    json_out: JsonOpt = None,
    force: ForceOpt = False,
) -> None:
    """CI gate: exit 0 when the model fits the device, 1 when it does not, 2 on input errors."""
    from budgetplan.pipeline import check_model

    for path, option in ((json_out, "--json"), (junit, "--junit")):
        _check_output_path(path, force, option)
    with _quiet_torch():
        items = check_model(model, target=target, ram=ram, plan=plan, min_update_pct=min_update,
                            optimizer=optimizer, input_shape=_shape(input_shape), weights=weights,
                            trust_pickle=trust_pickle, trace=trace)  # type: ignore[arg-type]
    passed = all(i.passed for i in items)
    if junit is not None:
        _write_text(_junit(items, model), junit)
    if json_out is not None:
        _write_json({"passed": passed, "checks": [{"name": i.name, "passed": i.passed, "message": i.message}
                                                  for i in items]}, json_out)
    if json_out != "-":
        for item in items:
            mark = "[green]PASS[/]" if item.passed else "[red]FAIL[/]"
            console.print(f"{mark} {item.name}: {escape(item.message)}", soft_wrap=True)
    raise typer.Exit(0 if passed else 1)


#: The files ``budgetplan compile`` writes into its output directory.
COMPILE_FILES = ("step.py", "schedule.json", "arena.json", "budgetplan_plan.h", "sparse_update_config.json")


def _check_output_dir(out: str, force: bool) -> Path:
    """Refuse an output directory that is a file, whose parent is missing, or that holds files compile
    would overwrite (unless ``--force``), before any work is done."""
    d = Path(out)
    if not out.strip() or out == "-":
        raise InputError("--out needs a directory path")
    if d.exists() and not d.is_dir():
        raise InputError(f"--out {out} is a file; give a directory")
    if not d.exists() and not d.parent.is_dir():
        raise InputError(f"cannot create {out}: {d.parent} does not exist")
    if not force:
        for name in COMPILE_FILES:
            if (d / name).exists():
                raise InputError(f"{d / name} exists; pass --force to overwrite it")
    return d


@app.command("export")
@_one_line_errors
def export_command(
    model: ModelArg,
    plan: Annotated[str, typer.Option("--plan", metavar="PATH", help="The plan file to compile "
                                      "(written by analyze --out).")],
    out: Annotated[str, typer.Option("--out", metavar="DIR", help="Directory for step.py, schedule.json, "
                                     "arena.json, budgetplan_plan.h, sparse_update_config.json.")],
    loss: Annotated[str, typer.Option("--loss", metavar="sum|cross-entropy",
                                      help="Loss of the step: sum of the outputs, or cross-entropy on "
                                           "(N, C) logits with the target as a graph input.")] = "sum",
    lr: Annotated[float, typer.Option("--lr", metavar="RATE",
                                      help="SGD learning rate baked into the step.")] = 0.01,
    batchnorm: Annotated[str, typer.Option("--batchnorm", metavar="frozen|train",
                                           help="BatchNorm while training: frozen (eval mode) or train.")]
    = "frozen",
    input_shape: ShapeOpt = None,
    weights: WeightsOpt = None,
    trust_pickle: TrustOpt = False,
    trace: TraceOpt = "auto",
    json_out: JsonOpt = None,
    force: ForceOpt = False,
) -> None:
    """Export a plan for a device runtime: the scheduled training-step graph, its static memory arena,
    a C header and tiny-training's sparse-update config."""
    from budgetplan.runtime.training_step import LOSSES

    _check_output_path(json_out, force)
    directory = _check_output_dir(out, force)
    if not Path(plan).is_file():
        raise InputError(f"plan file not found: {plan}")
    if not lr > 0:
        raise InputError(f"--lr must be a positive learning rate, got {lr:g}")
    if loss not in LOSSES:
        raise InputError(f"unknown --loss '{loss}'; use one of: {', '.join(LOSSES)}")
    if batchnorm not in ("frozen", "train"):
        raise InputError(f"unknown --batchnorm '{batchnorm}'; use frozen or train")
    if trace not in ("auto", "fx", "export"):
        raise InputError(f"unknown --trace '{trace}'; use auto, fx or export")
    from budgetplan.runtime.device_step import build_device_step

    with console.status("tracing, building the step and checking…", spinner="dots"), _quiet_torch():
        build = build_device_step(model, plan, input_shape=_shape(input_shape), weights=weights,
                                   trust_pickle=trust_pickle, trace=trace, loss=loss, lr=lr, batchnorm=batchnorm)
    try:
        directory.mkdir(exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {out}: {exc.strerror or exc}") from None
    files = {"step.py": build.step.python_source(),
             "schedule.json": json.dumps(build.step.to_schedule_dict(), indent=1) + "\n",
             "arena.json": json.dumps(build.arena.to_dict(), indent=1) + "\n",
             "budgetplan_plan.h": build.header}
    if build.sparse_config is not None:
        files["sparse_update_config.json"] = json.dumps(build.sparse_config, indent=2) + "\n"
    elif (directory / "sparse_update_config.json").exists():
        (directory / "sparse_update_config.json").unlink()  # stale: would not match this plan (--force)
    for name, text in files.items():
        try:
            (directory / name).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot write {directory / name}: {exc.strerror or exc}") from None
    summary = build.summary()
    summary["files"] = [str(directory / name) for name in files]
    if json_out is not None:
        _write_json(summary, json_out)
        if json_out == "-":
            return
    a, st = build.arena, build.step
    target = summary["target"] or "?"
    console.print(f"exported {escape(build.model)} with {escape(build.plan_path)} (plan for {escape(target)}): "
                  f"{len(st.nodes)} ops, {len(st.updates)} parameter updates, each right after its gradient "
                  f"({st.build_seconds:.1f} s)", soft_wrap=True)
    console.print(f"arena {a.arena_bytes:,} bytes ({format_bytes(a.arena_bytes)}, {len(a.placements)} buffers, "
                  f"{a.alignment}-byte aligned) · peak live {a.peak_live_bytes:,} bytes · fragmentation "
                  f"{100 * a.fragmentation:.2f} % · without reordering {st.unscheduled_peak_bytes:,} bytes · "
                  f"plan's predicted peak {build.plan_peak_bytes:,} bytes on {escape(target)}", soft_wrap=True)
    outside = ", ".join(f"{k} {v:,}" for k, v in st.outside_bytes().items())
    console.print(f"outside the arena (bytes): {outside or 'nothing'}", soft_wrap=True)
    if build.matches_eager is not None:
        verdict = "[green]matches[/]" if build.matches_eager else "[red]does not match[/]"
        console.print(f"the emitted step {verdict} an eager PyTorch step (max |Δ| {build.max_abs_diff:.3g})")
    for note in build.notes:
        console.print(f"note: {note}", markup=False, soft_wrap=True)
    for name in files:
        err_console.print(f"wrote {directory / name}", markup=False, soft_wrap=True)


# ``compile`` was this command's name in 0.1; "compile" now means budgetplan.compile (the trainable
# module) only. The old name keeps working for one release, hidden, with click's deprecation notice.
app.command("compile", hidden=True, deprecated=True,
            help="Deprecated name of `budgetplan export` (removed in the next release).")(export_command)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
