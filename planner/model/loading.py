"""Load a model from whatever the user has, as one :class:`LoadedModel`.

:func:`load_model` accepts

1. an ``nn.Module`` object (a ``torch.jit.ScriptModule`` object is converted as in 3.);
2. an ``ExportedProgram`` object, or a ``.pt2`` file written by ``torch.export.save``;
3. a TorchScript archive written by ``torch.jit.save``, converted to an ``ExportedProgram`` with
   ``torch._export.converter.TS2EPConverter`` (the converter PyTorch itself points to);
4. a pickled module written by ``torch.save(model)`` -- only with ``trust_pickle=True``, because
   unpickling runs code named by the file;
5. an import path ``package.module:factory`` (a function or class called with no arguments), with an
   optional ``weights`` state_dict loaded with ``torch.load(..., weights_only=True)``;
6. a built-in model name from :mod:`budgetplan.model.zoo`.

Files are recognised by their content, never by their extension: zip archives by their member names,
legacy (non-zip) ``torch.save`` files by their magic number. Detection never runs code from the file:
``torch.save`` files are first opened with ``torch.load(weights_only=True)``, and the pickles inside
``.pt2`` archives are checked the same way before ``torch.export.load`` (which falls back to full
unpickling) is allowed to see them.

Every failure caused by the input is a one-line :class:`~budgetplan.errors.InputError` (a
:class:`~budgetplan.errors.ModelLoadError` when the model itself cannot be loaded).
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import difflib
import importlib
import io
import json
import logging
import math
import os
import pickle
import pickletools
import re
import sys
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import torch
from torch import nn
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, TensorArgument
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from budgetplan.model.compute import planning_compute
from budgetplan.errors import BudgetplanError, InputError, ModelLoadError, first_line

__all__ = ["ACCEPTED_FORMATS", "LoadedModel", "checking_module", "load_model", "max_run_bytes"]

ACCEPTED_FORMATS = (
    "accepted: an ExportedProgram .pt2 (torch.export.save), a TorchScript archive (torch.jit.save), "
    "a pickled module (torch.save(model), needs --trust-pickle), an import path package.module:factory "
    "(optionally with --weights state_dict.pt) or a built-in model name"
)
"""The one-line list of accepted sources, used in error messages."""

EXPORT_HINT = "re-export the model with torch.export.save(torch.export.export(model, (x,)), 'model.pt2')"
"""How to turn any model the user can run into the preferred format."""

EXAMPLE_SEED = 0
"""Seed of the example input (drawn from a private generator; the global RNG is left alone)."""

# A path ending in one of these is a file name even without a '/', so a missing one reads "file not found".
_MODEL_EXTENSIONS = frozenset(
    {".pt", ".pt2", ".pth", ".pkl", ".pickle", ".ts", ".jit", ".ptl", ".zip", ".bin", ".ckpt", ".tar",
     ".onnx", ".pte", ".safetensors"}
)
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
# The first pickle of a legacy (non-zip) torch.save file is this number (torch/serialization.py).
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# Globals a pickled tensor or state_dict refers to; anything else in a torch.save pickle is user code.
_TENSOR_GLOBAL_PREFIXES = ("torch._utils.", "torch._tensor.", "collections.", "copyreg.", "builtins.",
                           "torch.nn.parameter.", "_codecs.")
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
_FIRST_KEYS = 3
# Loggers that print conversion/deserialisation chatter we turn into our own one-line errors.
_NOISY_LOGGERS = ("torch._export", "torch.export", "torch._export.non_strict_utils",
                  "torch.fx.experimental.symbolic_shapes", "torch._export.serde.serialize",
                  "torch.export.pt2_archive._package")


@dataclass
class LoadedModel:
    """A model ready to trace: the module, an example input and where it came from."""

    module: torch.nn.Module
    """The model to trace/train (for an ExportedProgram: ``ep.module()``)."""
    example_inputs: tuple[torch.Tensor, ...]
    """One seeded ``randn`` float32 tensor of :attr:`input_shape`, in a tuple."""
    input_shape: tuple[int, ...]
    """The input shape, batch included."""
    kind: str
    """``"module"``, ``"zoo"``, ``"exported"``, ``"torchscript"``, ``"pickle"`` or ``"factory"``."""
    source: str
    """Human description: ``zoo:resnet18``, ``/path/model.pt2``, ``pkg.mod:make``..."""
    exported: ExportedProgram | None = None
    """The ExportedProgram when the source already is one (object or ``.pt2`` file), else None."""


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def load_model(
    source: str | os.PathLike | nn.Module | ExportedProgram,
    *,
    input_shape: tuple[int, ...] | None = None,
    weights: str | os.PathLike | None = None,
    trust_pickle: bool = False,
) -> LoadedModel:
    """Load ``source`` (see the module docstring for the accepted kinds) and check its input shape.

    A string is resolved in this order: an existing path (recognised by content) → an import path
    ``package.module:factory`` → a built-in zoo name → a one-line error. ``input_shape`` overrides the
    shape recorded in the source (``.pt2`` example inputs, traced TorchScript inputs, zoo entry or a
    module's ``input_shape`` attribute); a shape is required when the source records none. The model
    runs one forward pass on the example input, in eval mode under ``torch.no_grad()``; its train/eval
    flags and buffers are restored afterwards.

    ``weights`` applies to import paths only. ``trust_pickle`` allows unpickling a ``torch.save(model)``
    file (or a ``.pt2`` archive holding pickled objects), which runs code named by the file.

    Raises:
        InputError: a bad shape, a shape the model rejects, ``weights`` with a non-factory source.
        ModelLoadError: a source that cannot be found, recognised or loaded.
    """
    shape_arg = _shape_argument(input_shape)
    if isinstance(source, ExportedProgram):
        _reject_weights(weights, "an ExportedProgram")
        return _from_exported(source, "ExportedProgram object", shape_arg)
    if isinstance(source, torch.jit.ScriptModule):
        _reject_weights(weights, "a ScriptModule")
        return _from_torchscript(source, "ScriptModule object", shape_arg, traced_shapes=None)
    if isinstance(source, nn.Module):
        _reject_weights(weights, "an nn.Module object")
        name = f"{type(source).__module__}.{type(source).__qualname__}"
        return _finish(source, kind="module", source=f"object:{name}",
                       shape=_pick_shape(shape_arg, _shape_attribute(source, name), name))
    if isinstance(source, (str, os.PathLike)):
        return _from_string(source, shape_arg, weights, trust_pickle)
    raise InputError(f"cannot load a model from a {type(source).__name__}; {ACCEPTED_FORMATS}")


def _from_string(
    source: str | os.PathLike,
    shape: tuple[int, ...] | None,
    weights: str | os.PathLike | None,
    trust_pickle: bool,
) -> LoadedModel:
    """Resolve a string or path: existing file → import path → zoo name → error."""
    text = os.fspath(source)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text.strip():
        raise InputError(f"empty model source; {ACCEPTED_FORMATS}")
    if os.path.exists(text):
        _reject_weights(weights, f"the file {text}")
        return _from_file(text, shape, trust_pickle)
    if isinstance(source, str) and _IMPORT_PATH.match(text):
        return _from_factory(text, shape, weights)
    if isinstance(source, str) and not _looks_like_path(text):
        from budgetplan.model import zoo

        try:
            zoo.lookup(text)
        except ModelLoadError as exc:
            if not str(exc).startswith("unknown model"):  # e.g. a bad width in mobilenetv2-w<width>
                raise
            raise ModelLoadError(_unknown_name_message(text, [e.name for e in zoo.list_models()])) from None
        _reject_weights(weights, f"the built-in model {text!r}")
        module, entry = zoo.build(text)
        return _finish(module, kind="zoo", source=f"zoo:{entry.name}", shape=shape or entry.input_shape)
    hint = " (an import path is written package.module:factory, with dots)" if ":" in text else ""
    raise ModelLoadError(f"file not found: {text}{hint}")


def _looks_like_path(text: str) -> bool:
    """True for strings that can only mean a file: a directory separator or a model file extension."""
    if "/" in text or os.sep in text:
        return True
    return os.path.splitext(text)[1].lower() in _MODEL_EXTENSIONS


def _unknown_name_message(name: str, known: Sequence[str]) -> str:
    """'no such file or built-in model 'foo'; did you mean ...? ...' in one line."""
    close = difflib.get_close_matches(name.strip().lower(), known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ";"
    return (f"no such file or built-in model {name!r}{hint} built-in models: {', '.join(known)} "
            "(budgetplan.model.zoo.list_models()); other sources: a model file or package.module:factory")


def _reject_weights(weights: str | os.PathLike | None, what: str) -> None:
    """``--weights`` only makes sense for an import path: every other source carries its own weights."""
    if weights is not None:
        raise InputError(
            f"--weights applies only to an import path package.module:factory; {what} already holds its "
            f"weights (got --weights {os.fspath(weights)})"
        )


# --------------------------------------------------------------------------------------------------
# Shapes, example inputs and the forward check
# --------------------------------------------------------------------------------------------------


def _fmt(shape: Sequence[int]) -> str:
    """``1x3x32x32``."""
    return "x".join(str(d) for d in shape)


def _as_shape(value: object) -> tuple[int, ...] | None:
    """``value`` as a tuple of positive ints, or None when it is not one."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, torch.Size)):
        return None
    dims = tuple(value)
    if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in dims):
        return None
    return dims


def _shape_argument(input_shape: object) -> tuple[int, ...] | None:
    """Validate the ``input_shape`` argument (a tuple of positive ints, or a string like ``1x3x32x32``)."""
    if input_shape is None:
        return None
    if isinstance(input_shape, str):
        from budgetplan.units import parse_shape

        return parse_shape(input_shape)
    shape = _as_shape(input_shape)
    if shape is None:
        raise InputError(
            f"invalid input shape {input_shape!r}: expected positive integers such as (1, 3, 128, 128)"
        )
    return shape


def _shape_attribute(module: object, what: str) -> tuple[int, ...] | None:
    """The model's own ``input_shape`` attribute, validated, or None when it has none."""
    value = getattr(module, "input_shape", None)
    if value is None:
        return None
    shape = _as_shape(value)
    if shape is None:
        raise InputError(
            f"{what}.input_shape is {value!r}, not a shape; pass --input-shape (input_shape= in Python)"
        )
    return shape


def _pick_shape(
    given: tuple[int, ...] | None, recorded: tuple[int, ...] | None, what: str
) -> tuple[int, ...]:
    """The shape given by the user, else the one recorded in the source, else a one-line error."""
    shape = given or recorded
    if shape is None:
        raise InputError(
            f"{what}: cannot tell the model's input shape; pass --input-shape (input_shape= in Python), "
            "e.g. --input-shape 1x3x224x224"
        )
    return shape


# ----- what running the model once may cost: checked before anything is allocated --------------------

INT64_MAX = 2**63 - 1
META_PASS_ABOVE = 1024 * 1024
"""Input bytes above which the forward pass is first run on meta tensors to add up what it allocates
(below, even a model that expands its input a thousandfold stays under a GiB)."""
_RUN_BYTES_VARIABLE = "BUDGETPLAN_MAX_RUN_BYTES"


def max_run_bytes() -> int:
    """Most bytes loading may spend on running the model once: ``$BUDGETPLAN_MAX_RUN_BYTES`` (a size
    such as ``64G``), else half of this machine's RAM (at least 1 GiB)."""
    text = os.environ.get(_RUN_BYTES_VARIABLE)
    if text:
        from budgetplan.units import parse_bytes

        try:
            return parse_bytes(text)
        except InputError as exc:
            raise InputError(f"{_RUN_BYTES_VARIABLE}: {exc}") from None
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 16 * 1024**3
    return max(ram // 2, 1024**3)


def _limit_note(limit: int) -> str:
    return (f"more than the {limit:,} bytes budgetplan lets one forward pass take here ({_RUN_BYTES_VARIABLE}, "
            "default half the RAM); use a smaller --input-shape (memory scales with it)")


def _check_input_size(shape: tuple[int, ...]) -> None:
    """Refuse an input whose float32 example would overflow 64 bits or not fit the run limit."""
    numel = math.prod(shape)
    if numel * 4 > INT64_MAX:
        raise InputError(f"input shape {_fmt(shape)} has {numel:.3g} elements; its float32 example would need "
                         f"{numel * 4:.3g} bytes, beyond a 64-bit size")
    limit = max_run_bytes()
    if numel * 4 > limit:
        raise InputError(f"input shape {_fmt(shape)} needs {numel * 4:,} bytes for its float32 example input, "
                         f"{_limit_note(limit)}")


class _OutputBytes(TorchDispatchMode):
    """Adds up the bytes of every tensor an op returns (on meta tensors: nothing is allocated)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.total += t.numel() * t.element_size()
        return out


def _forward_bytes_on_meta(module: nn.Module, shape: tuple[int, ...]) -> int | None:
    """The bytes of every op output of one forward pass, summed (an upper bound of what running it needs),
    from a pass on meta tensors; None when the model does not run on meta tensors (data-dependent code,
    tensors created on the CPU inside ``forward``)."""
    if isinstance(module, torch.jit.ScriptModule):
        return None
    from torch.func import functional_call

    tensors = {**dict(module.named_parameters(remove_duplicate=False)),
               **dict(module.named_buffers(remove_duplicate=False))}
    meta = {name: t.detach().to("meta") for name, t in tensors.items()}
    counter = _OutputBytes()
    try:
        with torch.no_grad(), _quiet(), counter:
            functional_call(module, meta, (torch.empty(shape, device="meta"),), strict=False)
    except Exception:
        return None
    return counter.total


def _check_run_size(module: nn.Module, shape: tuple[int, ...]) -> None:
    """Refuse, before anything is allocated, a shape whose forward pass would not fit the run limit."""
    _check_input_size(shape)
    if math.prod(shape) * 4 <= META_PASS_ABOVE:
        return
    need = _forward_bytes_on_meta(module, shape)
    limit = max_run_bytes()
    if need is not None and need > limit:
        raise InputError(f"input shape {_fmt(shape)}: one forward pass creates {need:,} bytes of tensors, "
                         f"{_limit_note(limit)}")


def _check_parameter_sizes(module: nn.Module, what: str) -> None:
    """Refuse a model with a zero-size parameter (``nn.Linear(16, 0)``): a layer without channels has
    nothing to train and nothing to price."""
    for name, p in module.named_parameters():
        if p.numel() == 0:
            raise InputError(f"{what}: parameter {name!r} has shape {list(p.shape)}, no elements (a zero-width "
                             "layer); remove the layer or give it at least one channel")


def _example_input(shape: tuple[int, ...]) -> torch.Tensor:
    """A seeded float32 ``randn`` tensor; the global RNG is not touched."""
    _check_input_size(shape)
    generator = torch.Generator().manual_seed(EXAMPLE_SEED)
    return torch.randn(shape, generator=generator, dtype=torch.float32)


# ----- checks of the caller's, on the built model before it runs -------------------------------------

_MODULE_CHECKS: contextvars.ContextVar[tuple[Callable[[nn.Module], None], ...]] = contextvars.ContextVar(
    "budgetplan_module_checks", default=())


@contextlib.contextmanager
def checking_module(check: Callable[[nn.Module], None]) -> Iterator[None]:
    """Inside the block, :func:`load_model` calls ``check(module)`` on the model it built, before the model
    runs (a plan reader refuses a plan made for another model before that model's forward can fail on an
    input it was not made for)."""
    token = _MODULE_CHECKS.set(_MODULE_CHECKS.get() + (check,))
    try:
        yield
    finally:
        _MODULE_CHECKS.reset(token)


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost ``__cause__`` of a chain of re-raised exceptions."""
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return exc


def _check_forward(module: nn.Module, example: torch.Tensor, what: str) -> None:
    """Run one eval-mode forward under ``no_grad``; a failure becomes "input shape ... does not fit".

    Train/eval flags of every submodule and the values of every buffer are restored afterwards (the
    module of an ExportedProgram refuses ``eval()``, and its batch norms would update running stats).
    """
    flags = [(m, m.training) for m in module.modules()]
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        with contextlib.suppress(Exception):  # ep.module() raises NotImplementedError on eval()
            module.eval()
        with torch.no_grad(), _quiet(), planning_compute():
            module(example)
    except BudgetplanError:
        raise
    except (RuntimeError, ValueError, AssertionError, IndexError, TypeError) as exc:
        shape = _fmt(example.shape)
        raise InputError(f"input shape {shape} does not fit the model: {first_line(exc)}") from exc
    except (Exception, SystemExit) as exc:  # the model's own code failed for another reason
        raise ModelLoadError(
            f"the model {what} failed on a {_fmt(example.shape)} input: "
            f"{type(exc).__name__}: {first_line(exc)}"
        ) from exc
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
        for sub, training in flags:
            sub.training = training


def _finish(
    module: nn.Module,
    *,
    kind: str,
    source: str,
    shape: tuple[int, ...],
    exported: ExportedProgram | None = None,
) -> LoadedModel:
    """Run the caller's checks (:func:`checking_module`), check ``shape`` against ``module`` (its size
    first, then one forward pass) and package the result."""
    for check in _MODULE_CHECKS.get():
        check(module)
    _check_parameter_sizes(module, source)
    _check_run_size(module, shape)
    example = _example_input(shape)
    _check_forward(module, example, source)
    return LoadedModel(module, (example,), shape, kind, source, exported)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence torch's warnings and export/serde logging (failures become our own one-line errors)."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# --------------------------------------------------------------------------------------------------
# ExportedProgram
# --------------------------------------------------------------------------------------------------


def _from_exported(ep: ExportedProgram, source: str, given: tuple[int, ...] | None) -> LoadedModel:
    """An ExportedProgram: check its one tensor input against ``given`` and run ``ep.module()``."""
    user_inputs = [s for s in ep.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    if len(user_inputs) != 1 or not isinstance(user_inputs[0].arg, TensorArgument):
        raise ModelLoadError(
            f"{source}: the exported program takes {len(user_inputs)} inputs; budgetplan plans models with "
            "exactly one tensor input"
        )
    name = user_inputs[0].arg.name
    node = next((n for n in ep.graph.nodes if n.op == "placeholder" and n.name == name), None)
    value = node.meta.get("val") if node is not None else None
    dims: tuple[int | None, ...] | None = None
    if isinstance(value, torch.Tensor):
        dims = tuple(d if isinstance(d, int) else None for d in value.shape)
    recorded = _exported_example_shape(ep)
    if recorded is None and dims is not None and None not in dims:
        recorded = tuple(int(d) for d in dims if d is not None)
    if given is not None and dims is not None:
        fixed = [i for i, d in enumerate(dims) if d is not None and (i >= len(given) or given[i] != d)]
        if len(given) != len(dims) or fixed:
            static = _fmt([d if d is not None else "?" for d in dims])  # type: ignore[misc]
            why = f"it takes {len(dims)}-d inputs" if len(given) != len(dims) else f"dim {fixed[0]} is static"
            raise InputError(
                f"input shape {_fmt(given)} does not match the exported program {source}, whose input "
                f"shape is {static} ({why}); re-export with the shape you want, or with dynamic_shapes "
                "for that dim"
            )
    shape = _pick_shape(given, recorded, source)
    return _finish(ep.module(), kind="exported", source=source, shape=shape, exported=ep)


def _exported_example_shape(ep: ExportedProgram) -> tuple[int, ...] | None:
    """Shape of the single tensor in ``ep.example_inputs``, when there is exactly one."""
    example = getattr(ep, "example_inputs", None)
    if not example:
        return None
    args, kwargs = example
    tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
    return _as_shape(tuple(tensors[0].shape)) if len(tensors) == 1 else None


def _load_pt2(path: str, archive: _Archive, given: tuple[int, ...] | None, trust_pickle: bool) -> LoadedModel:
    """A ``torch.export.save`` archive; refuse it when loading would unpickle arbitrary objects."""
    pickled = _pt2_unsafe_members(archive)
    if pickled and not trust_pickle:
        raise ModelLoadError(
            f"{path} is an exported program that holds pickled Python objects ({_some(pickled)}); "
            "loading it would execute code from the file; pass --trust-pickle if you trust the file"
        )
    try:
        with _quiet():
            ep = torch.export.load(path)
    except Exception as exc:
        raise ModelLoadError(
            f"{path}: could not load the exported program ({first_line(_root_cause(exc))}); it may come "
            f"from another PyTorch version (this is torch {torch.__version__}); {EXPORT_HINT}"
        ) from exc
    return _from_exported(ep, path, given)


def _pt2_unsafe_members(archive: _Archive) -> list[str]:
    """Members of a ``.pt2`` archive that ``torch.export.load`` would unpickle without ``weights_only``.

    ``torch.export.load`` reads weights and constants flagged ``use_pickle``, custom/opaque objects with
    pickle, and sample inputs with ``torch.load`` falling back to ``weights_only=False``. The members
    that a ``weights_only`` load accepts are safe; everything else is reported.
    """
    # imported here: the package pulls in torch._dynamo (~2-3 s), which only .pt2 files need
    from torch.export.pt2_archive import constants as pt2

    unsafe: list[str] = []
    for member in archive.names:
        prefix, suffix = pt2.MODELS_FILENAME_FORMAT.split("{}")
        if not (member.startswith(prefix) and member.endswith(suffix)):
            continue
        model = member[len(prefix):-len(suffix)]
        blobs = [pt2.SAMPLE_INPUTS_FILENAME_FORMAT.format(model), f"{pt2.WEIGHTS_DIR}{model}.pt",
                 f"{pt2.CONSTANTS_DIR}{model}.pt"]  # the last two: the legacy weight/constant files
        unsafe += [b for b in blobs if b in archive.names and not _weights_only_loadable(archive.read(b))]
        configs = ((pt2.WEIGHTS_CONFIG_FILENAME_FORMAT.format(model), pt2.WEIGHTS_DIR),
                   (pt2.CONSTANTS_CONFIG_FILENAME_FORMAT.format(model), pt2.CONSTANTS_DIR))
        plain = (pt2.WEIGHT_FILENAME_PREFIX, pt2.TENSOR_CONSTANT_FILENAME_PREFIX)
        for config_name, folder in configs:
            if config_name not in archive.names:
                continue
            try:
                config = json.loads(archive.read(config_name) or b"{}").get("config", {})
                entries = [(str(m.get("path_name", "")), bool(m.get("use_pickle"))) for m in config.values()]
            except (ValueError, AttributeError):
                unsafe.append(config_name)
                continue
            for path_name, use_pickle in entries:
                if (use_pickle or not path_name.startswith(plain)) and not _weights_only_loadable(
                    archive.read(folder + path_name)
                ):
                    unsafe.append(folder + path_name)
    legacy = [f"serialized_{part}.{ext}" for part in ("state_dict", "constants", "example_inputs")
              for ext in ("pt", "json")]
    for member in legacy:  # the older layout: torch.save blobs at the archive root
        blob = archive.read(member)
        if blob and not _weights_only_loadable(blob):
            unsafe.append(member)
    return unsafe


def _weights_only_loadable(blob: bytes | None) -> bool:
    """True when ``torch.load(weights_only=True)`` accepts ``blob`` (it never runs code from it)."""
    if blob is None:
        return False
    try:
        with _quiet():
            torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# TorchScript
# --------------------------------------------------------------------------------------------------


def _from_torchscript(
    script: torch.jit.ScriptModule, source: str, given: tuple[int, ...] | None,
    traced_shapes: list[tuple[int, ...]] | None,
) -> LoadedModel:
    """Convert a ScriptModule to an ExportedProgram (see :func:`_convert_script`) and return its module.

    ``exported`` stays None, as for every source that was not an ExportedProgram to begin with.
    """
    if traced_shapes is None:
        traced_shapes = _script_traced_shapes(script)
    if traced_shapes is not None and len(traced_shapes) > 1:
        raise ModelLoadError(f"{source}: the TorchScript model was traced with {len(traced_shapes)} inputs; "
                             "budgetplan plans models with exactly one tensor input")
    recorded = traced_shapes[0] if traced_shapes and len(traced_shapes) == 1 else None
    shape = _pick_shape(given, recorded or _shape_attribute(script, source), source)
    example = _example_input(shape)
    _check_forward(script, example, source)
    try:
        with _quiet():
            ep = _convert_script(script, example)
    except Exception as exc:
        reason = first_line(_root_cause(exc))
        raise ModelLoadError(
            f"{source}: TorchScript archive could not be converted ({reason}); {EXPORT_HINT}"
        ) from exc
    module = ep.module()
    _restore_parameters(module, script)  # a no-op unless the converter's retrace hook was not used
    return _finish(module, kind="torchscript", source=source, shape=shape)


def _convert_script(script: torch.jit.ScriptModule, example: torch.Tensor) -> ExportedProgram:
    """``TS2EPConverter(script, (example,)).convert()``, retraced with static shapes and real parameters.

    Upstream, the converter (1) registers every TorchScript parameter as a *buffer* of its fx graph, so
    nothing would look trainable, and (2) retraces that graph with ``Dim.AUTO`` on every input dim,
    which takes ~10 s for a ResNet-18. Its retrace step is replaced here: parameters are restored
    first, then the graph is exported at the example's static shape (~1 s).
    """
    from torch._export.converter import TS2EPConverter

    class _StaticConverter(TS2EPConverter):
        def retrace_as_exported_program(
            self, gm: torch.fx.GraphModule, name_to_constant: dict[str, Any]
        ) -> ExportedProgram:
            _restore_parameters(gm, script)
            ep = torch.export.export(gm, (example,), strict=False)
            # As upstream: tensor constants of the TorchScript graph were attributes of ``gm``, so the
            # retrace took them for buffers; mark them as the constants they are.
            constant_types = (torch.Tensor, torch.ScriptObject)
            ep.constants.update({k: v for k, v in name_to_constant.items() if isinstance(v, constant_types)})
            for spec in ep.graph_signature.input_specs:
                if spec.kind == InputKind.BUFFER and spec.target in name_to_constant:
                    ep.state_dict.pop(spec.target, None)
                    spec.kind = InputKind.CONSTANT_TENSOR
                    spec.persistent = None
            ep.verifier().check(ep)
            return ep

    return _StaticConverter(script, (example,)).convert()


def _script_traced_shapes(script: torch.jit.ScriptModule) -> list[tuple[int, ...]] | None:
    """Input shapes an in-memory traced ScriptModule remembers, or None (scripted, or nothing stored)."""
    try:
        inputs = dict(script._c._retrieve_traced_inputs()).get("forward")
    except Exception:  # a private API: absent in some versions
        return None
    if not inputs:
        return None
    shapes = [_as_shape(tuple(t.shape)) if isinstance(t, torch.Tensor) else None for t in inputs]
    return None if None in shapes else shapes  # type: ignore[return-value]


def _restore_parameters(module: nn.Module, reference: nn.Module) -> None:
    """Re-register as ``nn.Parameter`` the buffers of ``module`` that are parameters in ``reference``."""
    for name, param in reference.named_parameters():
        owner_name, _, attr = name.rpartition(".")
        try:
            owner = module.get_submodule(owner_name)
        except AttributeError:
            continue
        tensor = owner._buffers.get(attr)
        if tensor is None:
            continue
        del owner._buffers[attr]
        owner._non_persistent_buffers_set.discard(attr)
        owner.register_parameter(attr, nn.Parameter(tensor.detach(), requires_grad=param.requires_grad))


class _ShapeOnly:
    """What :class:`_ShapeUnpickler` makes of a pickled tensor: its size, nothing else."""

    def __init__(self, size: Sequence[int]) -> None:
        self.size = tuple(int(d) for d in size)


class _ShapeUnpickler(pickle.Unpickler):
    """Reads tensor sizes from a TorchScript ``traced_inputs.pkl`` and refuses every other global.

    Only the four names a pickled list of tensors refers to are resolved, to harmless stand-ins, so no
    code from the file can run.
    """

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - pickle hook
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda _storage, _offset, size, *_rest: _ShapeOnly(size)
        if (module, name) == ("torch.jit._pickle", "restore_type_tag"):
            return lambda value, _type: value
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name.endswith("Storage"):
            return _ShapeOnly
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed")

    def persistent_load(self, pid: Any) -> None:  # noqa: D102 - pickle hook
        return None


def _traced_input_shapes(archive: _Archive) -> list[tuple[int, ...]] | None:
    """Input shapes ``torch.jit.trace`` stored in the archive (``traced_inputs.pkl``), or None."""
    blob = archive.read("traced_inputs.pkl")
    if blob is None:
        return None
    try:
        stored = _ShapeUnpickler(io.BytesIO(blob)).load()
    except Exception:
        return None
    inputs = stored.get("forward") if isinstance(stored, Mapping) else None
    if not isinstance(inputs, (list, tuple)) or not inputs:
        return None
    shapes = [_as_shape(i.size) if isinstance(i, _ShapeOnly) else None for i in inputs]
    return None if None in shapes else shapes  # type: ignore[return-value]


def _load_torchscript(path: str, archive: _Archive, given: tuple[int, ...] | None) -> LoadedModel:
    """A ``torch.jit.save`` archive (loading TorchScript does not unpickle Python classes)."""
    try:
        with _quiet():
            script = torch.jit.load(path, map_location="cpu")
    except Exception as exc:
        raise ModelLoadError(f"{path} looks like a TorchScript archive but torch.jit.load failed: "
                             f"{first_line(exc)}; {EXPORT_HINT}") from exc
    return _from_torchscript(script, path, given, _traced_input_shapes(archive))


# --------------------------------------------------------------------------------------------------
# Files: recognising the format, torch.save pickles
# --------------------------------------------------------------------------------------------------


class _Archive:
    """Member names of a zip file, with PyTorch's single top-level folder (``<name>/``) stripped."""

    def __init__(self, zf: zipfile.ZipFile) -> None:
        self._zf = zf
        full = [n for n in zf.namelist() if not n.endswith("/")]
        roots = {n.split("/", 1)[0] for n in full}
        self.prefix = f"{roots.pop()}/" if len(roots) == 1 and all("/" in n for n in full) else ""
        self.names = frozenset(n[len(self.prefix):] for n in full)

    def read(self, name: str) -> bytes | None:
        """The bytes of member ``name`` (relative to the prefix), or None when absent."""
        if name not in self.names:
            return None
        return self._zf.read(self.prefix + name)

    def kind(self) -> str:
        """``exported``, ``aoti``, ``torchscript``, ``torch_save`` or ``unknown``."""
        names = self.names
        if "archive_format" in names or "serialized_exported_program.json" in names or any(
            n.startswith("models/") and n.endswith(".json") for n in names
        ):
            return "exported"
        if any(n.startswith("data/aotinductor/") for n in names):
            return "aoti"
        if "constants.pkl" in names or any(n.startswith("code/") for n in names):
            return "torchscript"
        if "data.pkl" in names:
            return "torch_save"
        return "unknown"


def _from_file(path: str, given: tuple[int, ...] | None, trust_pickle: bool) -> LoadedModel:
    """Recognise an existing file by content and load it."""
    if os.path.isdir(path):
        raise ModelLoadError(f"{path} is a directory, not a model file; {ACCEPTED_FORMATS}")
    if not os.path.isfile(path):  # reading /dev/zero never ends, a named pipe waits for a writer
        raise ModelLoadError(f"{path} is not a regular file (a device, pipe or socket), not a model file; "
                             f"{ACCEPTED_FORMATS}")
    try:
        is_zip = zipfile.is_zipfile(path)
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if is_zip:
        try:
            with zipfile.ZipFile(path) as zf:
                archive = _Archive(zf)
                kind = archive.kind()
                if kind == "exported":
                    return _load_pt2(path, archive, given, trust_pickle)
                if kind == "torchscript":
                    return _load_torchscript(path, archive, given)
                pickle_globals = _pickle_globals(io.BytesIO(archive.read("data.pkl") or b""))
        except (zipfile.BadZipFile, NotImplementedError, EOFError, zlib.error) as exc:
            # what zipfile raises on a damaged archive: a bad header or CRC, an unknown zip version or
            # compression method in a flipped byte, a cut-off or corrupt deflate stream
            raise ModelLoadError(f"{path} is a damaged zip archive ({first_line(exc, with_type=True)}); "
                                 f"{ACCEPTED_FORMATS}") from exc
        if kind == "aoti":
            raise ModelLoadError(f"{path} is an AOTInductor package (compiled code, no graph to plan); "
                                 "pass the .pt2 written by torch.export.save instead")
        if kind == "unknown":
            raise ModelLoadError(f"{path} is a zip archive but not a PyTorch model; {ACCEPTED_FORMATS}")
        return _load_torch_save(path, given, trust_pickle, pickle_globals)
    if _is_legacy_torch_save(head):
        return _load_torch_save(path, given, trust_pickle, _legacy_pickle_globals(path))
    if not head:
        raise ModelLoadError(f"{path} is empty; {ACCEPTED_FORMATS}")
    if head.startswith(b"\x80"):
        raise ModelLoadError(f"{path} is a plain Python pickle, not a PyTorch file; {EXPORT_HINT} "
                             "(or save it with torch.save(model))")
    raise ModelLoadError(f"{path} is not a model file PyTorch can read; {ACCEPTED_FORMATS}")


def _is_legacy_torch_save(head: bytes) -> bool:
    """True when ``head`` starts with the pickled magic number of a legacy (non-zip) ``torch.save`` file."""
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(head)):
            if opcode.name == "PROTO":
                continue
            return isinstance(arg, int) and arg == _LEGACY_MAGIC
    except Exception:
        return False
    return False


def _pickle_globals(stream: IO[bytes]) -> list[str]:
    """``module.name`` of the globals one pickle refers to, read with pickletools (nothing is executed)."""
    found: list[str] = []
    strings: list[str] = []
    with contextlib.suppress(Exception):
        for opcode, arg, _ in pickletools.genops(stream):
            if opcode.name in ("GLOBAL", "INST") and isinstance(arg, str):
                found.append(arg.replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    return found


def _legacy_pickle_globals(path: str) -> list[str]:
    """Globals of the main object of a legacy ``torch.save`` file (after magic, version and sys-info)."""
    with contextlib.suppress(Exception), open(path, "rb") as fh:
        for _ in range(3):
            for _op in pickletools.genops(fh):
                pass
        return _pickle_globals(fh)
    return []


def _code_global(names: Sequence[str]) -> str | None:
    """The first global of a pickle that is code rather than tensor plumbing (usually the model class)."""
    for name in names:
        if name.startswith(_TENSOR_GLOBAL_PREFIXES) or re.fullmatch(r"torch\.\w*Storage", name):
            continue
        return name
    return None


def _load_torch_save(
    path: str, given: tuple[int, ...] | None, trust_pickle: bool, globals_: list[str]
) -> LoadedModel:
    """A ``torch.save`` file: ``weights_only`` first; a full unpickle only with ``trust_pickle``."""
    from budgetplan.model import tiny_training

    if tiny_training.is_tiny_training_pickle(globals_):  # numpy arrays only: tiny-training's MCU models
        module, recorded = tiny_training.load_module(path)  # weights_only=True + a numpy-only allowlist
        return _finish(module, kind="tiny-training", source=path, shape=given or recorded)
    try:
        with _quiet():
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        safe_error: Exception | None = exc
    else:
        safe_error = None
    if safe_error is None:
        if isinstance(obj, nn.Module):  # only possible with classes the user allow-listed (add_safe_globals)
            return _pickled_module(obj, path, given)
        raise ModelLoadError(_not_a_model_message(path, obj))
    cls = _code_global(globals_)
    if not trust_pickle:
        what = f" (class {cls})" if cls else ""
        raise ModelLoadError(
            f"{path} is a pickled module{what} saved with torch.save(model); loading it would execute code "
            f"from the file; pass --trust-pickle if you trust the file, or {EXPORT_HINT}"
        )
    try:
        with _quiet():
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(
            f"{path}: cannot unpickle the model ({first_line(exc)}); the code that defines "
            f"{cls or 'its classes'} must be importable (run from that project, or set PYTHONPATH), "
            f"or {EXPORT_HINT}"
        ) from exc
    except Exception as exc:
        raise ModelLoadError(f"{path}: loading the pickled model failed: {type(exc).__name__}: "
                             f"{first_line(exc)}") from exc
    if isinstance(obj, torch.jit.ScriptModule):
        return _from_torchscript(obj, path, given, traced_shapes=None)
    if not isinstance(obj, nn.Module):
        raise ModelLoadError(_not_a_model_message(path, obj))
    return _pickled_module(obj, path, given)


def _pickled_module(module: nn.Module, path: str, given: tuple[int, ...] | None) -> LoadedModel:
    """Finish a module unpickled from ``path``."""
    shape = _pick_shape(given, _shape_attribute(module, path), path)
    return _finish(module, kind="pickle", source=path, shape=shape)


def _is_state_dict(obj: object) -> bool:
    """True for a non-empty mapping of string keys to tensors."""
    return (isinstance(obj, Mapping) and bool(obj)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _not_a_model_message(path: str, obj: object) -> str:
    """Why a ``torch.save`` file that holds no module cannot be planned, and what to pass instead."""
    factory_hint = (
        "pass an import path that builds the model, with these weights: "
        f"package.module:factory --weights {path}"
    )
    if isinstance(obj, Mapping) and _is_state_dict(obj):
        return (f"{path} is a state_dict ({len(obj)} tensors: {_some(list(obj))}), weights without the "
                f"architecture; {factory_hint}")
    if isinstance(obj, Mapping):
        return (f"{path} is a checkpoint dict (keys {_some([str(k) for k in obj])}), not a model; save the "
                f"model itself (torch.export.save), or its state_dict alone and {factory_hint}")
    what = "a single tensor" if isinstance(obj, torch.Tensor) else f"a {type(obj).__name__}"
    return f"{path} holds {what}, not a model; {ACCEPTED_FORMATS}"


# --------------------------------------------------------------------------------------------------
# Import path package.module:factory
# --------------------------------------------------------------------------------------------------


def _from_factory(spec: str, given: tuple[int, ...] | None, weights: str | os.PathLike | None) -> LoadedModel:
    """Import ``package.module:factory``, call it, optionally load a ``weights_only`` state_dict."""
    module_name, _, attr_path = spec.partition(":")
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:  # as `python -m` would
        sys.path.insert(0, cwd)
    try:
        pymod = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name) and module_name[len(exc.name):][:1] in ("", "."):
            raise ModelLoadError(
                f"cannot import {module_name!r} for {spec} (no module named {exc.name!r}); run from the "
                "directory that contains it or add it to PYTHONPATH"
            ) from exc
        raise ModelLoadError(
            f"importing {module_name!r} for {spec} failed: ModuleNotFoundError: {first_line(exc)}"
        ) from exc
    except (Exception, SystemExit) as exc:  # a module that calls sys.exit() on import, too
        raise ModelLoadError(
            f"importing {module_name!r} for {spec} failed: {type(exc).__name__}: {first_line(exc)}"
        ) from exc
    target: Any = pymod
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise ModelLoadError(f"{module_name!r} has no attribute {attr_path!r} (from {spec})")
        target = getattr(target, part)
    if isinstance(target, nn.Module):
        model = target
    elif callable(target):
        try:
            model = target()
        except (Exception, SystemExit) as exc:  # sys:exit is callable too
            raise ModelLoadError(f"{spec}() raised {type(exc).__name__}: {first_line(exc)}") from exc
    else:
        raise ModelLoadError(f"{spec} is a {type(target).__name__}, not a factory function or model class")
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{spec}() returned a {type(model).__name__}, not a torch.nn.Module")
    source = spec
    if weights is not None:
        _load_weights(model, weights, spec)
        source = f"{spec} (weights {os.fspath(weights)})"
    shape = _pick_shape(given, _shape_attribute(model, spec), spec)
    return _finish(model, kind="factory", source=source, shape=shape)


def _load_weights(model: nn.Module, weights: str | os.PathLike, spec: str) -> None:
    """``model.load_state_dict(torch.load(weights, weights_only=True), strict=True)`` with one-line errors."""
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise ModelLoadError(f"weights file not found: {path}")
    try:
        with _quiet():
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"weights {path} cannot be loaded with weights_only=True (it holds more than tensors, e.g. a "
            "pickled model, or is not a torch.save file); save torch.save(model.state_dict(), path) instead"
        ) from exc
    if not (isinstance(state, Mapping) and _is_state_dict(state)):
        if isinstance(state, Mapping):
            nested = [k for k in _STATE_DICT_KEYS if _is_state_dict(state.get(k))]
            hint = f"; the state_dict seems to be under {nested[0]!r}: save that alone" if nested else ""
            raise ModelLoadError(
                f"weights {path} is a dict with keys {_some([str(k) for k in state])}, not a state_dict "
                f"of tensors{hint}"
            )
        raise ModelLoadError(f"weights {path} holds a {type(state).__name__}, not a state_dict")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys {_some(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_some(unexpected)}")
        if mismatched:
            k = mismatched[0]
            more = f" (+{len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
            parts.append(
                f"shape mismatch {k!r}: file {_fmt(state[k].shape)}, model {_fmt(expected[k].shape)}{more}"
            )
        prefix = ""
        if unexpected and all(k.startswith("module.") for k in state):
            prefix = " (keys start with 'module.': saved from DataParallel? strip that prefix)"
        raise ModelLoadError(f"weights {path} do not match {spec}: {'; '.join(parts)}{prefix}")
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ModelLoadError(f"weights {path} do not match {spec}: {first_line(exc)}") from exc


def _some(keys: Sequence[str]) -> str:
    """The first few keys, quoted, with a count of the rest."""
    shown = ", ".join(repr(k) for k in keys[:_FIRST_KEYS])
    return shown + (f" (+{len(keys) - _FIRST_KEYS} more)" if len(keys) > _FIRST_KEYS else "")
