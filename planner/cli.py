"""The ``budgetplan`` command line: thin typer commands that parse, call the library, and print.

Errors in the user's input surface as one line on stderr and exit code 2 (see
:mod:`budgetplan.errors`), and so do usage errors (a missing argument, an unknown option, a bad option
value); an unexpected failure prints one line too (set ``BUDGETPLAN_DEBUG=1`` for the traceback) and
exits 3. Output printed or logged by PyTorch during a library call is discarded (see
:func:`_quiet_torch`; ``BUDGETPLAN_DEBUG=1`` lets it through), so stdout and stderr carry only
budgetplan's own output. See docs/cli.md.

Every command is a :class:`_Command`: an option that takes one value given twice is refused (``--update``
is the one that accumulates), and so is a number that is not finite (``--gap nan``). The files a command
writes go through :class:`_Outputs`: checked before any work, never two options on one file or an output
on one of the command's inputs, and written at the end through temporary files renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

import budgetplan
from budgetplan.errors import BudgetplanError, InputError, first_line, one_line
from budgetplan.units import format_bytes, parse_shape

# click's UsageError (typer ships its own copy of click in recent versions; this finds it either way).
_UsageError: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")

console = Console(highlight=False, emoji=False)
err_console = Console(stderr=True, highlight=False, emoji=False)

F = TypeVar("F", bound=Callable[..., Any])


def _debug() -> bool:
    return bool(os.environ.get("BUDGETPLAN_DEBUG"))


def _error_line(message: str) -> None:
    """Print ``error: message`` as exactly one line on stderr (no terminal escapes, no control characters)."""
    err_console.print(f"error: {one_line(message)}", markup=False, soft_wrap=True)


def _note_line(message: str) -> None:
    """A message line on stderr (``wrote PATH``), printable characters only."""
    err_console.print(one_line(message, limit=10_000), markup=False, soft_wrap=True)


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


def _option_name(param: Any) -> str:
    return "/".join(param.opts + getattr(param, "secondary_opts", []))


class _Command(TyperCommand):
    """A command that refuses an option given twice (click would keep the last value silently) unless the
    option accumulates (``multiple``), and a float option whose value is not finite (``nan``, ``inf``)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not ctx.resilient_parsing:
            _, _, order = self.make_parser(ctx).parse_args(args=list(args))  # a dry run: the order of options
            seen: dict[str, int] = {}
            for param in order:
                if getattr(param, "multiple", True) or getattr(param, "count", False) or param.is_eager:
                    continue
                seen[param.name] = seen.get(param.name, 0) + 1
                if seen[param.name] == 2:
                    raise _UsageError(f"{_option_name(param)} is given more than once; give it once", ctx=ctx)
        rest = super().parse_args(ctx, args)
        for param in self.get_params(ctx):
            value = ctx.params.get(param.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise _UsageError(f"Invalid value for '{_option_name(param)}': {value} is not a finite number",
                                  ctx=ctx)
        return rest


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
        except MemoryError:
            _error_line("out of memory: the model or an input is too large for this computer (try a smaller "
                        "--input-shape)")
            raise typer.Exit(2) from None
        except RecursionError:
            _error_line("the model or an input is nested too deeply to process (Python's recursion limit)")
            raise typer.Exit(2) from None
        except OSError as exc:
            if _debug():
                raise
            if exc.errno not in _PATH_ERRNOS:
                raise _internal(exc) from None
            where = f"{exc.filename}: " if exc.filename is not None else ""
            _error_line(f"{where}{exc.strerror or exc}")
            raise typer.Exit(2) from None
        except Exception as exc:
            if _debug():
                raise
            raise _internal(exc) from None

    return wrapper  # type: ignore[return-value]


#: OSErrors about a path the user gave (a name too long, a missing or unreadable file): input errors
_PATH_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP,
                          errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EEXIST})


def _internal(exc: BaseException) -> typer.Exit:
    """Print the one line of an unexpected failure (a bug in budgetplan); the exit to raise (code 3)."""
    err_console.print(f"internal error: {first_line(exc, with_type=True)} (set BUDGETPLAN_DEBUG=1 for the "
                      "traceback)", markup=False, soft_wrap=True)
    return typer.Exit(3)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"budgetplan {budgetplan.__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress spinners and no log lines "
                                        "on stderr (errors and 'wrote PATH' remain).")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="The library's debug log lines on "
                                          "stderr.")] = False,
) -> None:
    """Memory-budget planner for on-device training of PyTorch models."""
    if quiet and verbose:
        _error_line("--quiet and --verbose contradict each other; give one")
        raise typer.Exit(2)
    from budgetplan.integrations.progress import configure_logging  # logging + rich progress (issue 13)

    configure_logging("quiet" if quiet else "verbose" if verbose else "normal")
    _verbosity["quiet"] = quiet


_verbosity = {"quiet": False}


def _working(message: str) -> contextlib.AbstractContextManager[Any]:
    """A transient spinner on stderr while a command works (drawn only on a terminal), none with
    ``--quiet``."""
    if _verbosity["quiet"]:
        return contextlib.nullcontext()
    return err_console.status(message, spinner="dots")


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
GroupOpt = Annotated[int, typer.Option("--group-size", min=1, max=2**31 - 1, metavar="N",
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


def _stat(path: str, option: str) -> os.stat_result | None:
    """``os.stat(path)``, None when nothing is there; a path the system refuses is an input error."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise InputError(f"{option} {path}: {exc.strerror or exc}") from None
    except ValueError:  # an embedded NUL byte
        raise InputError(f"{option}: {path!r} is not a usable path") from None


def _identity(path: str, option: str) -> tuple[Any, ...]:
    """What two spellings of one file share: (device, inode) when it exists, else its resolved path."""
    info = _stat(path, option)
    if info is not None:
        return ("file", info.st_dev, info.st_ino)
    try:
        return ("path", os.path.normcase(os.path.realpath(path)))
    except (OSError, ValueError):
        return ("path", os.path.abspath(path))


class _Outputs:
    """The files one command writes, and the files it reads that they must not replace.

    Every output is checked before any work: an existing file needs ``--force``, its folder must exist,
    no two options may name the same file (after resolving ``..`` and symbolic links, or as the same
    inode), and no output may be one of the command's input files. Texts are staged and written by
    :meth:`commit` at the end, each to a temporary file in the same folder renamed into place, with
    Ctrl-C held back during the renames: an error or an interrupt leaves every file as it was. A
    directory output (``export --out``) is filled the same way, from a temporary directory.
    """

    def __init__(self, force: bool) -> None:
        self.force = force
        self._claimed: dict[tuple[Any, ...], str] = {}
        self._inputs: dict[tuple[Any, ...], str] = {}
        self._files: list[tuple[str, str]] = []
        self._dirs: list[tuple[Path, dict[str, str], list[str]]] = []
        self.wrote: list[str] = []

    # -- checks, before any work ----------------------------------------------------------------------
    def input(self, option: str, value: str | os.PathLike[str] | None) -> None:
        """Register an input file (ignored when ``value`` names no existing file)."""
        if value is None:
            return
        path = os.fspath(value)
        if not path or len(path) > 4096:
            return
        try:
            if not os.path.isfile(path):
                return
        except (OSError, ValueError):
            return
        key = _identity(path, option)
        self._inputs.setdefault(key, option)
        if key in self._claimed:
            raise InputError(f"{self._claimed[key]} is also the {option} input; write the output elsewhere")

    def _claim(self, label: str, path: str) -> None:
        """Claim ``path`` for the output described by ``label`` (``--json out.json``)."""
        key = _identity(path, label)
        if key in self._claimed:
            raise InputError(f"{label} and {self._claimed[key]} name the same file; give each output "
                             "its own path")
        if key in self._inputs:
            raise InputError(f"{label} is also the {self._inputs[key]} input; write the output elsewhere")
        self._claimed[key] = label

    def file(self, option: str, path: str | None, *, stdout: bool = False) -> None:
        """Check an output file option (``-`` means stdout where ``stdout``)."""
        if path is None or (stdout and path == "-"):
            return
        hint = ", or '-' for stdout" if stdout else ""
        if not path.strip() or path == "-":
            raise InputError(f"{option} needs a file path{hint}")
        self._claim(f"{option} {path}", path)
        info = _stat(path, option)
        if info is not None and os.path.isdir(path):
            raise InputError(f"{option} {path} is a directory; give a file path{hint}")
        if info is not None and not self.force:
            raise InputError(f"{path} exists; pass --force to overwrite it")
        parent = os.path.dirname(path) or "."
        parent_info = _stat(parent, option)
        if parent_info is None or not os.path.isdir(parent):
            why = "is not a directory" if parent_info is not None else "does not exist"
            raise InputError(f"cannot write {path}: {parent} {why}")

    def directory(self, option: str, path: str, names: tuple[str, ...]) -> Path:
        """Check an output directory option whose files will be ``names``."""
        if not path.strip() or path == "-":
            raise InputError(f"{option} needs a directory path")
        directory = Path(path)
        info = _stat(path, option)
        if info is not None and not os.path.isdir(path):
            raise InputError(f"{option} {path} is a file; give a directory")
        if info is None:
            parent = os.path.dirname(os.path.normpath(path)) or "."
            if _stat(parent, option) is None or not os.path.isdir(parent):
                raise InputError(f"cannot create {path}: {parent} does not exist")
        for name in names:
            file = str(directory / name)
            if _stat(file, option) is not None and not self.force:
                raise InputError(f"{file} exists; pass --force to overwrite it")
            self._claim(f"{option} {path} (its {name})", file)
        return directory

    # -- writing, at the end --------------------------------------------------------------------------
    def write(self, path: str, text: str) -> None:
        """Stage ``text`` for ``path`` (``-``: stdout, now)."""
        if path == "-":
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        self._files.append((path, text))

    def fill(self, directory: Path, files: dict[str, str], remove: list[str] | tuple[str, ...] = ()) -> None:
        """Stage ``files`` (name -> text) for ``directory``, and the removal of ``remove`` from it."""
        self._dirs.append((directory, dict(files), list(remove)))

    def commit(self, *, announce: bool = True) -> None:
        """Write everything staged; print ``wrote PATH`` for each file (now, or at :meth:`announce`)."""
        temps: list[str] = []
        try:
            moves: list[tuple[str, str]] = []
            for path, text in self._files:
                if os.path.exists(path) and not os.path.isfile(path):  # /dev/null, a pipe: write in place
                    moves.append(("", path))
                    continue
                temp = _temp_file(os.path.dirname(path) or ".", os.path.basename(path), text)
                temps.append(temp)
                moves.append((temp, path))
            staged_dirs = []
            for directory, files, remove in self._dirs:
                fresh = not directory.exists()
                holder = _temp_dir(directory.parent if fresh else directory, directory.name)
                temps.append(holder)
                for name, text in files.items():
                    _write_all(os.path.join(holder, name), text)
                staged_dirs.append((directory, holder, files, remove, fresh))
            with _signals_held():
                for temp, path in moves:
                    if temp:
                        os.replace(temp, path)
                    else:
                        _write_all(path, dict(self._files)[path])
                    self.wrote.append(path)
                for directory, holder, files, remove, fresh in staged_dirs:
                    if fresh:
                        os.rename(holder, directory)
                    else:
                        for name in files:
                            os.replace(os.path.join(holder, name), directory / name)
                        os.rmdir(holder)
                        for name in remove:
                            with contextlib.suppress(FileNotFoundError):
                                (directory / name).unlink()
                    self.wrote += [str(directory / name) for name in files]
        except OSError as exc:
            raise InputError(f"cannot write {exc.filename or ''}: {exc.strerror or exc}") from None
        finally:
            for temp in temps:
                if os.path.isdir(temp):
                    shutil.rmtree(temp, ignore_errors=True)
                elif os.path.exists(temp):
                    with contextlib.suppress(OSError):
                        os.unlink(temp)
        if announce:
            self.announce()

    def announce(self) -> None:
        """Print ``wrote PATH`` for every file written."""
        for path in self.wrote:
            _note_line(f"wrote {path}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_all(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def _temp_file(folder: str, name: str, text: str) -> str:
    """A new file ``folder/.name.XXXX.tmp`` holding ``text``, with the permissions a new file gets."""
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{name[:100]}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return temp


def _temp_dir(folder: Path, name: str) -> str:
    """A new directory ``folder/.name.XXXX.tmp`` with the permissions a new directory gets."""
    temp = tempfile.mkdtemp(dir=folder, prefix=f".{name[:100]}.", suffix=".tmp")
    os.chmod(temp, 0o777 & ~_umask())
    return temp


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back (delivered on exit) while files are renamed into place."""
    held = {signal.SIGINT, signal.SIGTERM}
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (AttributeError, ValueError, OSError):  # no POSIX signal masks here
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _model_outputs(force: bool, model: str, target: str | None = None,
                   weights: str | os.PathLike[str] | None = None) -> _Outputs:
    """An :class:`_Outputs` that knows the model, target and weights files a command reads."""
    outputs = _Outputs(force)
    outputs.input("MODEL", model)
    if target is not None and (target.endswith(".toml") or "/" in target or os.sep in target):
        outputs.input("--target", target)
    outputs.input("--weights", weights)
    return outputs


def _json_text(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:g}"


@app.command(cls=_Command)
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

    outputs = _model_outputs(force, model, target, weights)
    outputs.file("--json", json_out, stdout=True)
    if trace not in ("auto", "fx", "export"):
        raise InputError(f"unknown --trace '{trace}'; use auto, fx or export")
    with _quiet_torch():
        report = inspect_model(model, target=target, ram=ram, input_shape=_shape(input_shape),
                               weights=weights, trust_pickle=trust_pickle,
                               trace=trace, group_size=group_size)  # type: ignore[arg-type]
    if json_out is not None:
        outputs.write(json_out, _json_text(report.to_dict()))
        outputs.commit()
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


@app.command(cls=_Command)
@_one_line_errors
def targets(json_out: JsonOpt = None, force: ForceOpt = False) -> None:
    """List the built-in targets."""
    from budgetplan.targets import list_targets

    outputs = _Outputs(force)
    outputs.file("--json", json_out, stdout=True)
    devices = list_targets()
    if json_out is not None:
        outputs.write(json_out, _json_text({"targets": [d.to_dict() for d in devices]}))
        outputs.commit()
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


@app.command("schema", cls=_Command)
@_one_line_errors
def schema_command(
    name: Annotated[str, typer.Argument(metavar="NAME", help="plan, update, config or scores.")],
) -> None:
    """Print the JSON Schema of a document budgetplan reads: plan (analyze --out), update (--update FILE),
    config (a tiny-training sparse-update config) or scores (--objective FILE)."""
    from budgetplan.schemas import schema_text

    sys.stdout.write(schema_text(name))


UpdateOpt = Annotated[list[str] | None, typer.Option(
    "--update", "-u", metavar="SPEC",
    help="What to train: patterns like 'layer4.*,*.bias,fc.weight[0:8]', 'all', a plan JSON or a "
         "tiny-training sparse-update config (JSON). Repeatable: trains the union. Default: all.")]


def _update_arg(update: list[str] | None, outputs: _Outputs) -> list[str] | None:
    """The ``--update`` values (each patterns or a file; several: their union); files are inputs."""
    if not update:
        return None
    from budgetplan.model.update_set import update_spec_file

    for value in update:
        path = update_spec_file(value)  # a plan, update or tiny-training config file, if any
        if path is not None:
            outputs.input("--update", path)
    return update
OptimizerOpt = Annotated[str, typer.Option("--optimizer", metavar="sgd|sgd-momentum|adam",
                                           help="Optimizer whose state is priced.")]


NoInplaceOpt = Annotated[bool, typer.Option("--no-inplace", help="mcu targets: no in-place depthwise convs "
                                           "(forward, and stride-1 backward).")]
NoFuseOpt = Annotated[bool, typer.Option("--no-fuse-update", help="mcu targets: a weight gradient is a buffer "
                                         "before its update (no fused update).")]


def _pct(pred: float, meas: float) -> str:
    return "n/a" if meas == 0 else f"{100 * (pred - meas) / meas:+.2f} %"


@app.command(cls=_Command)
@_one_line_errors
def estimate(
    model: ModelArg,
    target: TargetOpt = "host",
    update: UpdateOpt = None,
    optimizer: OptimizerOpt = "sgd",
    ram: RamOpt = None,
    no_reorder: Annotated[bool, typer.Option("--no-reorder", help="mcu targets: keep every weight gradient "
                                             "until the optimizer step (no operator reordering).")] = False,
    no_inplace: NoInplaceOpt = False,
    no_fuse_update: NoFuseOpt = False,
    input_shape: ShapeOpt = None,
    weights: WeightsOpt = None,
    trust_pickle: TrustOpt = False,
    trace: TraceOpt = "auto",
    json_out: JsonOpt = None,
    force: ForceOpt = False,
) -> None:
    """Memory, FLOPs and latency of one training step of an update set on a target."""
    from budgetplan.pipeline import estimate_training

    outputs = _model_outputs(force, model, target, weights)
    updates = _update_arg(update, outputs)
    outputs.file("--json", json_out, stdout=True)
    _check_trace_and_optimizer(trace, optimizer)
    with _quiet_torch():
        est = estimate_training(model, target=target, update=updates, optimizer=optimizer, ram=ram,
                                input_shape=_shape(input_shape), weights=weights, trust_pickle=trust_pickle,
                                trace=trace, reorder=not no_reorder, inplace=not no_inplace,
                                fuse_update=not no_fuse_update)  # type: ignore[arg-type]
    if json_out is not None:
        outputs.write(json_out, _json_text(est.to_dict()))
        outputs.commit()
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
    rules = getattr(est, "rules", None)
    if rules:  # mcu: the TinyEngine rules that priced the step (docs/cost-model.md)
        off = [r["name"] for r in rules if not r["enabled"]]
        console.print(f"rules: {', '.join(r['name'] for r in rules if r['enabled'])}"
                      + (f" (off: {', '.join(off)})" if off else ""), markup=False, soft_wrap=True)
    if est.budget_bytes is not None:
        verdict = "[green]fits[/]" if est.fits else "[red]does not fit[/]"
        console.print(f"budget {format_bytes(est.budget_bytes)}: {verdict}")
    for note in est.notes:
        console.print(f"note: {note}", markup=False, soft_wrap=True)


@app.command(cls=_Command)
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

    outputs = _model_outputs(force, model, None, weights)
    updates = _update_arg(update, outputs)
    outputs.file("--json", json_out, stdout=True)
    _check_trace_and_optimizer(trace, optimizer)
    with _working("one training step, eager and traced, measured…"), _quiet_torch():
        result = measure_training(model, update=updates, optimizer=optimizer, input_shape=_shape(input_shape),
                                  weights=weights, trust_pickle=trust_pickle, trace=trace)  # type: ignore[arg-type]
    if json_out is not None:
        outputs.write(json_out, _json_text(result.to_dict()))
        outputs.commit()
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


def _is_file(text: str) -> bool:
    try:
        return os.path.isfile(text)
    except (OSError, ValueError):
        return False


def _scores_arg(text: str, outputs: _Outputs) -> Any:
    """``params``/``uniform``, or a scores file (JSON or a tensor file; :func:`budgetplan.selection.scores.load_scores`):
    a value with a path separator or a ``.json``/``.pt``/``.pth`` suffix, or an existing file."""
    if text in ("params", "uniform"):
        return text
    from budgetplan.selection.scores import TENSOR_SUFFIXES, load_scores

    suffix = os.path.splitext(text)[1].lower()
    if not ("/" in text or os.sep in text or suffix in (".json", *TENSOR_SUFFIXES) or _is_file(text)):
        raise InputError(f"unknown --objective '{text}'; use params, uniform or a scores file (.json, .pt)")
    outputs.input("--objective", text)
    return load_scores(text)


@app.command(cls=_Command)
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
    no_inplace: NoInplaceOpt = False,
    no_fuse_update: NoFuseOpt = False,
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

    outputs = _model_outputs(force, model, target, weights)
    if strategy.startswith("config:"):
        outputs.input("--strategy config:", strategy[len("config:"):])
    for path, option in ((json_out, "--json"), (out, "--out"), (html, "--html")):
        outputs.file(option, path, stdout=option == "--json")
    _check_trace_and_optimizer(trace, optimizer)
    scores = _scores_arg(objective, outputs)
    with _working("tracing, pricing and solving…"), _quiet_torch():
        analysis = analyze_model(model, target=target, ram=ram, strategy=strategy, scores=scores,
                                 optimizer=optimizer, reorder=not no_reorder, solver=solver, time_limit=time_limit,
                                 gap=gap, max_flops=max_flops, max_latency_s=max_latency, last_k=last_k, seed=seed,
                                 input_shape=_shape(input_shape), weights=weights, trust_pickle=trust_pickle,
                                 trace=trace, group_size=group_size, inplace=not no_inplace,
                                 fuse_update=not no_fuse_update)  # type: ignore[arg-type]
    plan, doc = analysis.plan, analysis.document
    if out is not None:
        from budgetplan.schemas import validate_plan

        validate_plan(doc, out)  # a plan file budgetplan could not read back is never written
        outputs.write(out, dumps_plan(doc))
    if html is not None:
        from budgetplan.emit.report_html import render_html

        outputs.write(html, render_html(doc))
    if json_out is not None:
        data = dict(doc)
        data.pop("timeline", None)
        data["timeline"] = doc["timeline"]
        data["solver"] = plan.solver  # with wall time (not in the plan file, which must be reproducible)
        outputs.write(json_out, _json_text(data))
    outputs.commit()
    if json_out is not None:
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


@app.command(cls=_Command)
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

    outputs = _model_outputs(force, model, target, weights)
    outputs.input("--plan", plan)
    for path, option in ((json_out, "--json"), (junit, "--junit")):
        outputs.file(option, path, stdout=option == "--json")
    with _quiet_torch():
        items = check_model(model, target=target, ram=ram, plan=plan, min_update_pct=min_update,
                            optimizer=optimizer, input_shape=_shape(input_shape), weights=weights,
                            trust_pickle=trust_pickle, trace=trace)  # type: ignore[arg-type]
    passed = all(i.passed for i in items)
    if junit is not None:
        outputs.write(junit, _junit(items, model))
    if json_out is not None:
        outputs.write(json_out, _json_text({"passed": passed, "checks": [
            {"name": i.name, "passed": i.passed, "message": i.message} for i in items]}))
    outputs.commit()
    if json_out != "-":
        for item in items:
            mark = "[green]PASS[/]" if item.passed else "[red]FAIL[/]"
            console.print(f"{mark} {item.name}: {escape(item.message)}", soft_wrap=True)
    raise typer.Exit(0 if passed else 1)


#: The files ``budgetplan export`` writes into its output directory.
EXPORT_FILES = COMPILE_FILES = ("step.py", "schedule.json", "arena.json", "budgetplan_plan.h", "sparse_update_config.json")


@app.command("export", cls=_Command)
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
    from budgetplan.emit.plan_file import read_plan
    from budgetplan.runtime.training_step import LOSSES

    outputs = _model_outputs(force, model, None, weights)
    outputs.input("--plan", plan)
    directory = outputs.directory("--out", out, EXPORT_FILES)
    outputs.file("--json", json_out, stdout=True)
    read_plan(plan)  # a bad plan file stops the command before the model is loaded
    if not lr > 0:
        raise InputError(f"--lr must be a positive learning rate, got {lr:g}")
    if loss not in LOSSES:
        raise InputError(f"unknown --loss '{loss}'; use one of: {', '.join(LOSSES)}")
    if batchnorm not in ("frozen", "train"):
        raise InputError(f"unknown --batchnorm '{batchnorm}'; use frozen or train")
    if trace not in ("auto", "fx", "export"):
        raise InputError(f"unknown --trace '{trace}'; use auto, fx or export")
    from budgetplan.runtime.device_step import build_device_step

    with _working("tracing, building the step and checking…"), _quiet_torch():
        build = build_device_step(model, plan, input_shape=_shape(input_shape), weights=weights,
                                   trust_pickle=trust_pickle, trace=trace, loss=loss, lr=lr, batchnorm=batchnorm)
    files = {"step.py": build.step.python_source(),
             "schedule.json": json.dumps(build.step.to_schedule_dict(), indent=1) + "\n",
             "arena.json": json.dumps(build.arena_document(), indent=1) + "\n",
             "budgetplan_plan.h": build.header}
    if build.sparse_config is not None:
        files["sparse_update_config.json"] = json.dumps(build.sparse_config, indent=2) + "\n"
    # a sparse config left from an earlier export (--force) would not match this plan: removed
    outputs.fill(directory, files, remove=[n for n in ("sparse_update_config.json",) if n not in files])
    summary = build.summary()
    summary["files"] = [str(directory / name) for name in files]
    if json_out is not None:
        outputs.write(json_out, _json_text(summary))
    outputs.commit(announce=False)
    if json_out == "-":
        return
    a, st = build.arena, build.step
    target = summary["target"] or "?"
    console.print(f"exported {escape(build.model)} with {escape(build.plan_path)} (plan for {escape(target)}): "
                  f"{len(st.nodes)} ops, {len(st.updates)} parameter updates, each right after its gradient "
                  f"({st.build_seconds:.1f} s)", soft_wrap=True)
    device = build.device_arena
    if device is not None:  # an mcu plan: the device's tensors (docs/export.md)
        console.print(f"device arena {a.arena_bytes:,} bytes ({format_bytes(a.arena_bytes)}, {len(a.placements)} "
                      f"buffers, {a.alignment}-byte aligned, {escape(a.algorithm)}) · plan's predicted peak "
                      f"{build.plan_peak_bytes:,} bytes on {escape(target)} · fragmentation "
                      f"{100 * device.agreement:.2f} % · TinyEngine's first fit {device.first_fit.arena_bytes:,} "
                      f"bytes, best fit {device.best_fit.arena_bytes:,} bytes", soft_wrap=True)
    else:
        console.print(f"arena {a.arena_bytes:,} bytes ({format_bytes(a.arena_bytes)}, {len(a.placements)} buffers, "
                      f"{a.alignment}-byte aligned) · peak live {a.peak_live_bytes:,} bytes · fragmentation "
                      f"{100 * a.fragmentation:.2f} % · without reordering {st.unscheduled_peak_bytes:,} bytes · "
                      f"plan's predicted peak {build.plan_peak_bytes:,} bytes on {escape(target)}", soft_wrap=True)
    outside = ", ".join(f"{k} {v:,}" for k, v in st.outside_bytes().items())
    if device is not None:
        console.print(f"float32 PyTorch step (step.py): peak live {st.peak_bytes:,} bytes; outside its arena "
                      f"(bytes): {outside or 'nothing'}", soft_wrap=True)
    else:
        console.print(f"outside the arena (bytes): {outside or 'nothing'}", soft_wrap=True)
    if build.matches_eager is not None:
        verdict = "[green]matches[/]" if build.matches_eager else "[red]does not match[/]"
        console.print(f"the emitted step {verdict} an eager PyTorch step (max |Δ| {build.max_abs_diff:.3g})")
    for note in build.notes:
        console.print(f"note: {note}", markup=False, soft_wrap=True)
    outputs.announce()


# ``compile`` was this command's name in 0.1; "compile" now means budgetplan.compile (the trainable
# module) only. The old name keeps working for one release, hidden, with click's deprecation notice.
app.command("compile", hidden=True, deprecated=True, cls=_Command,
            help="Deprecated name of `budgetplan export` (removed in the next release).")(export_command)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
