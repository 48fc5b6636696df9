"""Update sets: which parameters, and which slices of them along dim 0, get trained.

An :class:`UpdateSet` maps a parameter's qualified name (as in ``model.named_parameters()``) to either
``None`` (the whole tensor is trained) or a sorted tuple of indices along dim 0 (for a conv/linear weight
or bias: output channels; for a depthwise conv dim 0 is also the input channel). Parameters that are not
in the mapping are frozen.

Three ways to write one (see ``docs/update-sets.md``):

* :func:`from_patterns` - fnmatch-style patterns over parameter and module names, with an optional
  channel selector ``name[0:8]`` / ``name[0,2,5]``; special words ``all``/``full`` and ``none``.
* :func:`from_plan_json` - the ``update`` list of a budgetplan plan file.
* :func:`from_sparse_update_config` / :func:`to_sparse_update_config` - tiny-training's sparse-update
  backward config (``n_bias_update``, ``manual_weight_idx``, ``weight_update_ratio``, ...).

Every parser validates against the model (names, dim-0 sizes) and raises a one-line
:class:`~budgetplan.errors.InputError` on bad input. Parsed sets are canonical: indices sorted and unique,
and a channel selection covering all of dim 0 is stored as ``None``.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Union

from torch import nn

from budgetplan.errors import InputError
from budgetplan.schemas import read_document, validate, validate_plan

__all__ = [
    "ModelOrShapes",
    "UpdateSet",
    "conv_layers",
    "from_patterns",
    "from_plan_json",
    "from_sparse_update_config",
    "looks_like_file",
    "named_shapes",
    "resolve_update_spec",
    "split_patterns",
    "to_sparse_update_config",
]

#: A model, or its parameters' shapes: ``{name: shape}`` or an iterable of ``(name, shape)`` pairs.
ModelOrShapes = Union[nn.Module, Mapping[str, Sequence[int]], Iterable[tuple[str, Sequence[int]]]]

Channels = Union[tuple[int, ...], None]

_ALL_WORDS = frozenset({"all", "full"})
_NONE_WORDS = frozenset({"none"})


def named_shapes(model_or_shapes: ModelOrShapes) -> dict[str, tuple[int, ...]]:
    """Return ``{parameter name: shape}`` in definition order for a model or a name->shape mapping."""
    if isinstance(model_or_shapes, nn.Module):
        return {name: tuple(p.shape) for name, p in model_or_shapes.named_parameters()}
    items = model_or_shapes.items() if isinstance(model_or_shapes, Mapping) else model_or_shapes
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        for name, shape in items:
            if not isinstance(name, str):
                raise InputError(f"parameter names must be strings, got {name!r}")
            shapes[name] = tuple(int(d) for d in shape)
    except (TypeError, ValueError) as exc:
        raise InputError(f"expected a model or a mapping of parameter name to shape ({exc})") from None
    return shapes


def _module_names(param_names: Iterable[str]) -> list[str]:
    """Module paths that own parameters: every proper dotted prefix of a parameter name, in order."""
    seen: dict[str, None] = {}
    for name in param_names:
        parts = name.split(".")
        for i in range(1, len(parts)):
            seen.setdefault(".".join(parts[:i]), None)
    return list(seen)


def _check_indices(where: str, values: Any) -> tuple[int, ...]:
    """Validate a list of channel indices (ints, non-negative, no duplicates); return them sorted."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise InputError(f"{where}: channels must be null or a list of integers, got {values!r}")
    out: list[int] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise InputError(f"{where}: channel indices must be integers, got {v!r}")
        if v < 0:
            raise InputError(f"{where}: negative channel index {v}")
        out.append(v)
    if not out:
        raise InputError(f"{where}: empty channel list (leave the parameter out to freeze it)")
    _refuse_duplicates(out, f"{where}: duplicate channel indices")
    return tuple(sorted(out))


def _refuse_duplicates(values: Sequence[int], prefix: str) -> None:
    """One-line error naming the first few repeated values (linear time)."""
    if len(set(values)) != len(values):
        dups = sorted(v for v, n in Counter(values).items() if n > 1)
        shown = ", ".join(map(str, dups[:8])) + (f", ... ({len(dups)} in all)" if len(dups) > 8 else "")
        raise InputError(f"{prefix} [{shown}]")


@dataclass(frozen=True)
class UpdateSet:
    """Per parameter (qualified name from ``model.named_parameters()``): which slices along dim 0 are trained.

    ``entries``: name -> ``None`` (the whole tensor) or a sorted tuple of indices along dim 0 (output
    channels of a conv/linear weight or bias; for a depthwise conv dim 0 is also the input channel).
    Parameters not in ``entries`` are frozen. The constructor checks types (one-line ``InputError``),
    sorts indices and stores a read-only mapping; it cannot check names or ranges without the model -
    use :meth:`validated` for that (the parsers in this module always do).
    """

    entries: Mapping[str, Channels]

    def __post_init__(self) -> None:
        if not isinstance(self.entries, Mapping):
            raise InputError(f"update set entries must be a mapping, got {type(self.entries).__name__}")
        clean: dict[str, Channels] = {}
        for name, chans in self.entries.items():
            if not isinstance(name, str) or not name:
                raise InputError(f"update set parameter names must be non-empty strings, got {name!r}")
            clean[name] = None if chans is None else _check_indices(f"parameter {name!r}", chans)
        object.__setattr__(self, "entries", MappingProxyType(clean))

    def __hash__(self) -> int:
        return hash(frozenset(self.entries.items()))

    # -- constructors ---------------------------------------------------------------------------------
    @classmethod
    def none(cls) -> UpdateSet:
        """The empty update set: everything frozen."""
        return cls({})

    @classmethod
    def full(cls, model_or_shapes: ModelOrShapes) -> UpdateSet:
        """Every parameter trained in full."""
        return cls({name: None for name in named_shapes(model_or_shapes)})

    # -- queries --------------------------------------------------------------------------------------
    def is_updated(self, name: str) -> bool:
        """True when (some of) parameter ``name`` is trained."""
        return name in self.entries

    def channels(self, name: str) -> Channels:
        """Trained indices along dim 0 of ``name``: ``None`` = the whole tensor, ``()`` = frozen."""
        if name not in self.entries:
            return ()
        return self.entries[name]

    def parameter_names(self) -> tuple[str, ...]:
        """Names of the trained parameters, in the order they were given (parsers: model order)."""
        return tuple(self.entries)

    @property
    def is_empty(self) -> bool:
        """True when nothing is trained."""
        return not self.entries

    def has_channel_subsets(self) -> bool:
        """True when some parameter is trained only on a subset of dim 0."""
        return any(c is not None for c in self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)

    def validated(self, model_or_shapes: ModelOrShapes) -> UpdateSet:
        """Check names and index ranges against a model; return the canonical set in model order.

        Canonical: entries follow ``named_parameters()`` order, and a channel tuple covering all of dim 0
        becomes ``None``. Raises ``InputError`` for an unknown name, a 0-d parameter with channels, or an
        index outside dim 0.
        """
        shapes = named_shapes(model_or_shapes)
        unknown = [n for n in self.entries if n not in shapes]
        if unknown:
            raise InputError(_unknown_name_message(unknown[0], shapes))
        out: dict[str, Channels] = {}
        for name, shape in shapes.items():
            if name not in self.entries:
                continue
            out[name] = _canonical_channels(name, shape, self.entries[name])
        return UpdateSet(out)

    def num_trained_elements(self, model_or_shapes: ModelOrShapes) -> int:
        """Number of trained parameter elements (not bytes): whole tensors plus selected dim-0 slices."""
        shapes = named_shapes(model_or_shapes)
        total = 0
        for name, chans in self.validated(shapes).entries.items():
            shape = shapes[name]
            per_slice = math.prod(shape[1:]) if shape else 1
            total += math.prod(shape) if chans is None else len(chans) * per_slice
        return total

    # -- JSON -----------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """``{"update": [{"parameter": name, "channels": null | [i, ...]}, ...]}`` (the plan format)."""
        return {
            "update": [
                {"parameter": name, "channels": None if chans is None else list(chans)}
                for name, chans in self.entries.items()
            ]
        }

    @classmethod
    def from_json(cls, obj: Any) -> UpdateSet:
        """Inverse of :meth:`to_json`; also accepts the bare ``update`` list. Checks types, not names."""
        if isinstance(obj, Mapping):
            if "update" not in obj:
                raise InputError('update set JSON: expected an object with an "update" list')
            obj = obj["update"]
        if isinstance(obj, (str, bytes)) or not isinstance(obj, Sequence):
            raise InputError(f'update set JSON: "update" must be a list, got {type(obj).__name__}')
        entries: dict[str, Channels] = {}
        for i, item in enumerate(obj):
            where = f"update[{i}]"
            if not isinstance(item, Mapping):
                raise InputError(f"{where}: expected an object, got {type(item).__name__}")
            name = item.get("parameter")
            if not isinstance(name, str) or not name:
                raise InputError(f'{where}: "parameter" must be a non-empty string, got {name!r}')
            if name in entries:
                raise InputError(f"{where}: parameter {name!r} is listed twice")
            chans = item.get("channels")
            entries[name] = None if chans is None else _check_indices(f"{where} ({name})", chans)
        return cls(entries)


def _unknown_name_message(name: str, shapes: Mapping[str, tuple[int, ...]]) -> str:
    candidates = list(shapes) + _module_names(shapes)
    near = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    hint = f"; nearest: {', '.join(near)}" if near else _top_level_hint(shapes)
    return f"unknown parameter {name!r}{hint}"


def _top_level_hint(names: Iterable[str]) -> str:
    tops = list(dict.fromkeys(n.split(".")[0] for n in names))
    if not tops:
        return "; the model has no parameters"
    more = ", ..." if len(tops) > 8 else ""
    return f"; top-level names: {', '.join(tops[:8])}{more}"


def _canonical_channels(name: str, shape: tuple[int, ...], chans: Channels) -> Channels:
    if chans is None:
        return None
    if not shape:
        raise InputError(f"parameter {name!r} is a scalar (0-d); it has no channels to select")
    size = shape[0]
    bad = [c for c in chans if c >= size]
    if bad:
        raise InputError(
            f"channel index {bad[0]} is out of range for parameter {name!r} (dim 0 has size {size})"
        )
    return None if len(chans) == size else tuple(chans)


# ---------------------------------------------------------------------------------------------------
# Patterns
# ---------------------------------------------------------------------------------------------------

# A trailing [...] whose content is only digits, ':', ',', '-' and spaces is a channel selector; any
# other bracket group is an fnmatch character class ("layer[34].*").
_SELECTOR_RE = re.compile(r"^(?P<pattern>.*)\[(?P<selector>[\d:,\s-]*)\]$")


def split_patterns(text: str) -> list[str]:
    """Split ``"layer4.*, fc.weight[0,2]"`` on commas outside brackets (for command-line flags)."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def _parse_selector(raw: str, selector: str, name: str, size: int) -> tuple[int, ...]:
    """Indices selected by ``selector`` (e.g. ``"0:8"``, ``"0,2,5"``, ``"4:"``) on a dim 0 of ``size``."""
    items = [s.strip() for s in selector.split(",")]
    if not selector.strip() or any(not s for s in items):
        raise InputError(f"update pattern {raw!r}: empty channel selector item")
    out: list[int] = []
    for item in items:
        if ":" in item:
            fields = [f.strip() for f in item.split(":")]
            if len(fields) > 3:
                raise InputError(f"update pattern {raw!r}: bad channel slice {item!r}")
            nums: list[int | None] = []
            for f in fields:
                if f == "":
                    nums.append(None)
                elif re.fullmatch(r"\d+", f):
                    nums.append(int(f))
                elif re.fullmatch(r"-\d+", f):
                    raise InputError(f"update pattern {raw!r}: negative channel index {f}")
                else:
                    raise InputError(f"update pattern {raw!r}: bad channel slice {item!r}")
            start = nums[0] if nums[0] is not None else 0
            stop = nums[1] if nums[1] is not None else size
            step = nums[2] if len(nums) > 2 and nums[2] is not None else 1
            if step == 0:
                raise InputError(f"update pattern {raw!r}: channel slice step must be positive")
            if stop > size:
                raise InputError(
                    f"channel index {stop - 1} is out of range for parameter {name!r} "
                    f"(dim 0 has size {size}; pattern {raw!r})"
                )
            if start >= stop:
                raise InputError(f"update pattern {raw!r}: channel slice {item!r} selects no channels")
            out.extend(range(start, stop, step))
        else:
            if re.fullmatch(r"-\d+", item):
                raise InputError(f"update pattern {raw!r}: negative channel index {item}")
            if not re.fullmatch(r"\d+", item):
                raise InputError(f"update pattern {raw!r}: bad channel index {item!r}")
            idx = int(item)
            if idx >= size:
                raise InputError(
                    f"channel index {idx} is out of range for parameter {name!r} "
                    f"(dim 0 has size {size}; pattern {raw!r})"
                )
            out.append(idx)
    _refuse_duplicates(out, f"update pattern {raw!r}: duplicate channel indices")
    return tuple(sorted(out))


def _match_params(pattern: str, names: Sequence[str], modules: Sequence[str]) -> list[str]:
    """Parameters whose own name, or the name of a module that owns them, matches ``pattern``."""
    hit_modules = [m for m in modules if fnmatch.fnmatchcase(m, pattern)]
    prefixes = tuple(m + "." for m in hit_modules)
    return [n for n in names if fnmatch.fnmatchcase(n, pattern) or (prefixes and n.startswith(prefixes))]


def _no_match_message(raw: str, pattern: str, names: Sequence[str], modules: Sequence[str]) -> str:
    probe = pattern.replace("*", "").replace("?", "") or pattern
    near = difflib.get_close_matches(probe, list(names) + list(modules), n=4, cutoff=0.4)
    hint = f"; nearest: {', '.join(near)}" if near else _top_level_hint(names)
    return f"update pattern {raw!r} matches no parameter or module{hint}"


def from_patterns(model_or_named_shapes: ModelOrShapes, patterns: Sequence[str] | str) -> UpdateSet:
    """Build an update set from fnmatch-style patterns (union of all patterns).

    Each pattern is matched (case-sensitively, ``*`` crosses dots) against parameter names and against
    module names; a module match selects all parameters under that module. Examples: ``"layer4.*"``,
    ``"*.bias"``, ``"classifier"``, ``"fc.weight"``. Special words: ``"all"``/``"full"`` (everything) and
    ``"none"`` (contributes nothing). A trailing channel selector restricts dim 0 of every matched
    parameter: ``"features.3.conv.0.weight[0:8]"``, ``"fc.weight[0,2,5]"``, ``"fc.weight[4:]"``
    (half-open slices, optional step, no negative indices). Whole-tensor matches win over selections;
    selections of the same parameter from different patterns are united.

    Raises:
        InputError: a pattern that matches nothing (lists the nearest names), an out-of-range, negative
            or duplicate channel index, a selector on a 0-d parameter, an empty pattern.
    """
    shapes = named_shapes(model_or_named_shapes)
    if isinstance(patterns, str):
        patterns = [patterns]
    names = list(shapes)
    modules = _module_names(names)
    whole: set[str] = set()
    partial: dict[str, set[int]] = {}
    for raw in patterns:
        if not isinstance(raw, str):
            raise InputError(f"update patterns must be strings, got {raw!r}")
        text = raw.strip()
        if not text:
            raise InputError("empty update pattern")
        word = text.lower()
        if word in _ALL_WORDS:
            whole.update(names)
            continue
        if word in _NONE_WORDS:
            continue
        m = _SELECTOR_RE.match(text)
        pattern, selector = (m.group("pattern"), m.group("selector")) if m else (text, None)
        if not pattern:
            raise InputError(f"update pattern {raw!r} has a channel selector but no name")
        matched = _match_params(pattern, names, modules)
        if not matched:
            raise InputError(_no_match_message(raw, pattern, names, modules))
        if selector is None:
            whole.update(matched)
            continue
        for name in matched:
            shape = shapes[name]
            if not shape:
                raise InputError(f"parameter {name!r} is a scalar (0-d); it has no channels to select")
            partial.setdefault(name, set()).update(_parse_selector(raw, selector, name, shape[0]))
    entries: dict[str, Channels] = {}
    for name in names:
        if name in whole:
            entries[name] = None
        elif name in partial:
            entries[name] = tuple(sorted(partial[name]))
    return UpdateSet(entries).validated(shapes)


# ---------------------------------------------------------------------------------------------------
# Plan JSON
# ---------------------------------------------------------------------------------------------------


def _load_json(obj_or_path: Any, what: str) -> Any:
    """A document from a path (read and parsed by :func:`budgetplan.schemas.read_document`: size, encoding,
    depth; ``.yaml``/``.yml`` as YAML), or a Python object as plain JSON data (tuples become lists)."""
    if isinstance(obj_or_path, (str, os.PathLike)):
        return read_document(obj_or_path, what, yaml_suffixes=True)
    try:
        return json.loads(json.dumps(obj_or_path, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what}: not plain JSON data ({exc})") from None
    except RecursionError:
        raise InputError(f"{what}: nested too deeply") from None


def from_plan_json(obj_or_path: Any, model: ModelOrShapes) -> UpdateSet:
    """Read a plan's ``update`` list: ``[{"parameter": name, "channels": null | [i, ...]}, ...]``.

    ``obj_or_path`` is a path to a JSON file, the whole plan object (with an ``"update"`` key) or the bare
    list. A whole plan (``"format": "budgetplan-plan"``) is validated against the plan schema, anything
    else against the update-set schema (``budgetplan schema update``). Extra keys in an entry are ignored
    (plans may annotate entries). Validated against ``model``.
    """
    where = os.fspath(obj_or_path) if isinstance(obj_or_path, (str, os.PathLike)) else "update set"
    return _from_plan_data(_load_json(obj_or_path, "plan file"), model, where)


# ---------------------------------------------------------------------------------------------------
# A spec from the command line: patterns, files, or several of them
# ---------------------------------------------------------------------------------------------------

#: Suffixes that make an ``--update`` value a file name even when no such file exists.
UPDATE_FILE_SUFFIXES = (".json", ".yaml", ".yml")


def looks_like_file(text: str) -> bool:
    """True when an ``--update`` value names a file: it has a path separator or a document suffix
    (``.json``, ``.yaml``, ``.yml``), or a file of that name exists. Anything else is patterns, and is
    never handed to the file system (a long comma-separated list is not a file name)."""
    if "/" in text or os.sep in text or (os.altsep and os.altsep in text):
        return True
    if os.path.splitext(text)[1].lower() in UPDATE_FILE_SUFFIXES:
        return True
    if any(ch in text for ch in ",*?[") or len(text) > 255:
        return False
    try:
        return os.path.isfile(text)
    except (OSError, ValueError):
        return False


def read_update_file(path: str | os.PathLike, model: nn.Module) -> UpdateSet:
    """An update-set file: a plan or ``{"update": [...]}`` (an object with an ``update`` key), else a
    tiny-training sparse-update config. Each is validated by its schema."""
    data = _load_json(path, "update file")
    if isinstance(data, dict) and ("update" in data or "format" in data):
        return _from_plan_data(data, model, os.fspath(path))
    return from_sparse_update_config(data, model, where=os.fspath(path))


def _from_plan_data(data: Any, model: ModelOrShapes, where: str) -> UpdateSet:
    """A whole plan (validated by the plan schema) or an update list (the update-set schema)."""
    if isinstance(data, list):
        data = {"update": data}
    if isinstance(data, dict) and "format" in data:
        validate_plan(data, where)
    else:
        validate(data, "update", where)
    return UpdateSet.from_json(data).validated(model)


def union(sets: Iterable[UpdateSet]) -> UpdateSet:
    """Every parameter any set trains; a whole tensor wins over channel subsets, subsets are united.
    The result is unvalidated (call :meth:`UpdateSet.validated`)."""
    whole: set[str] = set()
    partial: dict[str, set[int]] = {}
    order: dict[str, None] = {}
    for us in sets:
        for name, chans in us.entries.items():
            order.setdefault(name, None)
            if chans is None:
                whole.add(name)
            else:
                partial.setdefault(name, set()).update(chans)
    return UpdateSet({name: None if name in whole else tuple(sorted(partial[name])) for name in order})


def _config_part(text: str) -> str | None:
    """The tiny-training config a ``tt:<model>/<label>`` or ``config:<scheme or path>`` spec names
    (the scheme or the path), or None for any other spec."""
    text = text.strip()
    if text.lower().startswith("config:"):
        return text[len("config:"):]
    return text if text.lower().startswith("tt:") else None


def update_spec_file(spec: str) -> str | None:
    """The file an update spec string reads (a config file, or a plan/update file when
    :func:`looks_like_file`), or None: patterns or a shipped ``tt:`` scheme read no file of the user's."""
    config = _config_part(spec)
    if config is not None:
        return None if config.strip().lower().startswith("tt:") else config
    return spec if looks_like_file(spec) else None


def resolve_update_spec(model: nn.Module, spec: Any) -> UpdateSet:
    """An update set from what ``--update`` (given once or several times) or ``update=`` says.

    ``spec`` is an :class:`UpdateSet`; None (everything trained); a path; a string — a shipped
    tiny-training scheme ``tt:<model>/<label>``, a file when :func:`looks_like_file`, else comma-separated
    patterns (``"layer4.*,*.bias"``, ``"all"``, ``"fc.weight[0:8]"``); or a list of these, which trains
    their union. See docs/update-sets.md.
    """
    if isinstance(spec, UpdateSet):
        return spec.validated(model)
    if spec is None:
        return UpdateSet.full(model)
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not specs:
        raise InputError("empty update spec; give patterns such as 'layer4.*,*.bias', 'all', or a JSON file")
    sets: list[UpdateSet] = []
    for item in specs:
        if isinstance(item, UpdateSet):
            sets.append(item)
        elif isinstance(item, str) and _config_part(item) is not None:
            sets.append(from_sparse_update_config(_config_part(item), model))
        elif isinstance(item, os.PathLike) or (isinstance(item, str) and looks_like_file(item)):
            sets.append(read_update_file(item, model))
        elif isinstance(item, str):
            patterns = split_patterns(item)
            if not patterns:
                raise InputError("empty update spec; give patterns such as 'layer4.*,*.bias', 'all', or a "
                                 "JSON file")
            sets.append(from_patterns(model, patterns))
        else:
            raise InputError(f"an update spec must be patterns, a file or an UpdateSet, got {type(item).__name__}")
    return sets[0] if len(sets) == 1 else union(sets).validated(model)


# ---------------------------------------------------------------------------------------------------
# tiny-training sparse-update config
# ---------------------------------------------------------------------------------------------------

_STANDARD_RATIOS = (0.125, 0.25, 0.5)


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """The model's ``nn.Conv2d`` modules in definition order (``named_modules()``).

    This is tiny-training's conv list: ``manual_weight_idx`` indexes it and ``n_bias_update`` counts
    from its end.
    """
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _is_pw1(conv: nn.Conv2d) -> bool:
    return conv.out_channels > conv.in_channels and tuple(conv.kernel_size) == (1, 1)


def _bias_targets(model: nn.Module) -> list[str | None]:
    """Per conv (definition order): the parameter a tiny-training "bias update" trains, or None.

    The conv's own bias if it has one; otherwise, when the module defined right after the conv is an
    affine BatchNorm over the conv's output channels, that BatchNorm's ``bias`` (beta). After folding BN
    into the conv (as tiny-training does), the folded bias is ``beta - gamma*mean/std``, so training it is
    training beta; gamma would scale the weight and is not part of a bias update.
    """
    modules = list(model.named_modules())
    index = {id(m): i for i, (_, m) in enumerate(modules)}
    targets: list[str | None] = []
    for name, conv in conv_layers(model):
        if conv.bias is not None:
            targets.append(f"{name}.bias" if name else "bias")
            continue
        i = index[id(conv)]
        nxt = modules[i + 1] if i + 1 < len(modules) else None
        if (
            nxt is not None
            and isinstance(nxt[1], nn.modules.batchnorm._BatchNorm)
            and nxt[1].num_features == conv.out_channels
            and nxt[1].bias is not None
        ):
            targets.append(f"{nxt[0]}.bias")
        else:
            targets.append(None)
    return targets


def _classifier(model: nn.Module) -> tuple[str, nn.Linear] | None:
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _param_names_of(prefix: str, module: nn.Module) -> list[str]:
    return [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)]


# The helpers below read a config the schema has accepted (budgetplan schema config): they convert, and
# check only what depends on the model or on several keys at once.


def _flag(cfg: Mapping[str, Any], key: str) -> bool:
    return bool(cfg.get(key) or 0)


def _index_list(value: int | str | list[int]) -> list[int]:
    """``[2, 3]``, ``"2-3"`` or ``3`` as a list of conv indices."""
    if isinstance(value, str):
        return [int(p) for p in value.split("-")]
    return [value] if isinstance(value, int) else list(value)


def _ratio_list(value: float | str | list[float] | None, n: int) -> list[float]:
    if value is None:
        return [1.0] * n
    if isinstance(value, str):
        ratios = [float(p) for p in value.split("-")]
    elif isinstance(value, list):
        ratios = [float(r) for r in value]
    else:
        ratios = [float(value)] * n
    if len(ratios) != n:
        raise InputError(
            f"sparse-update config: weight_update_ratio has {len(ratios)} values for {n} weight layers"
        )
    for r in ratios:
        if r > 1 and r != int(r):
            raise InputError(
                "sparse-update config: weight_update_ratio values must be in [0, 1] "
                f"(or a whole channel count > 1), got {r!r}"
            )
    return ratios


def _n_channels(ratio: float, size: int, conv_name: str) -> int:
    """Channels a ratio selects: 0 for 0, ceil(ratio*size) for (0, 1], the count itself above 1."""
    if ratio == 0:
        return 0
    if ratio <= 1:
        return max(1, math.ceil(ratio * size - 1e-9))
    count = int(ratio)
    if count > size:
        raise InputError(
            f"sparse-update config: weight_update_ratio {count} exceeds the {size} output channels of "
            f"conv {conv_name!r}"
        )
    return count


def from_sparse_update_config(obj_or_path: Any, model: nn.Module, *, where: str | None = None) -> UpdateSet:
    """Import tiny-training's sparse-update ("backward") config. Semantics (docs/update-sets.md):

    * conv layers = the model's ``nn.Conv2d`` modules in definition order, indexed from 0;
    * ``n_bias_update`` (int or ``"all"``): the biases of the last n convs are trained; a conv without a
      bias trains the ``bias`` (beta) of the BatchNorm defined right after it, if any, else nothing;
    * ``manual_weight_idx`` (list, ``"12-15-17"`` string or int): convs whose weights are trained; must be
      ascending and among the last ``n_bias_update`` convs. Without it, ``n_weight_update`` (int or
      ``"all"`` = ``n_bias_update``) selects the last n convs;
    * ``weight_update_ratio`` (None = 1, one number for all, or one per weight layer, list or
      ``"1-0.5"`` string): 0 = weight not trained, r in (0, 1] = the first ``ceil(r*C_out)`` output
      channels (dim 0, also for depthwise convs; r = 1 is the whole weight), an integer > 1 = that
      many first channels;
    * ``pw1_weight_only``: keep only pointwise-expansion convs (1x1, C_out > C_in) in the weight list;
    * the last ``nn.Linear`` (the classifier) is trained in full unless ``freeze_fc`` is 1;
    * ``weight_select_criteria`` and ``quantize_gradient`` are accepted and ignored; ``train_scale`` and
      ``enable_backward_config`` must not be set to 1 / 0 respectively.

    ``obj_or_path`` is a dict (optionally ``{"backward_config": {...}}``), a path to a JSON (or, with
    PyYAML installed, YAML) file, or a shipped tiny-training scheme ``tt:<model>/<label>`` such as
    ``tt:mbv2-w0.35/49kb`` (:func:`budgetplan.model.tiny_training.list_schemes`).
    """
    if isinstance(obj_or_path, str) and obj_or_path.strip().lower().startswith("tt:"):
        from budgetplan.model.tiny_training import scheme_path  # a shipped tiny-training scheme

        obj_or_path = scheme_path(obj_or_path)
    if where is None:
        path = isinstance(obj_or_path, (str, os.PathLike))
        where = f"sparse-update config {os.fspath(obj_or_path)}" if path else "sparse-update config"
    cfg = _load_json(obj_or_path, "sparse-update config")
    validate(cfg, "config", where)  # types and keys: budgetplan schema config
    if "backward_config" in cfg:
        cfg = cfg["backward_config"]
    if "enable_backward_config" in cfg and not _flag(cfg, "enable_backward_config"):
        raise InputError(
            "sparse-update config: enable_backward_config is 0, which means full fine-tuning in "
            "tiny-training; use the update pattern 'all' instead"
        )
    if _flag(cfg, "train_scale"):
        raise InputError(
            "sparse-update config: train_scale=1 (training quantization scales) is not supported"
        )

    convs = conv_layers(model)
    n_conv = len(convs)
    nb_raw = cfg["n_bias_update"]
    n_bias = n_conv if nb_raw == "all" else nb_raw
    if not 0 <= n_bias <= n_conv:
        raise InputError(
            f"sparse-update config: n_bias_update={n_bias} but the model has {n_conv} Conv2d layers"
        )
    first_bias = n_conv - n_bias

    if cfg.get("manual_weight_idx") is not None:
        weight_idx = _index_list(cfg["manual_weight_idx"])
    elif cfg.get("n_weight_update") is not None:
        nw_raw = cfg["n_weight_update"]
        n_weight = n_bias if nw_raw == "all" else nw_raw
        if not 0 <= n_weight <= n_conv:
            raise InputError(
                f"sparse-update config: n_weight_update={n_weight} but the model has {n_conv} Conv2d layers"
            )
        weight_idx = list(range(n_conv - n_weight, n_conv))
    else:
        weight_idx = []
    for idx in weight_idx:
        if not 0 <= idx < n_conv:
            raise InputError(
                f"sparse-update config: conv index {idx} is out of range (the model has {n_conv} Conv2d "
                f"layers, indices 0..{n_conv - 1})"
            )
    if len(set(weight_idx)) != len(weight_idx):
        raise InputError(f"sparse-update config: manual_weight_idx has duplicates: {weight_idx}")
    if weight_idx != sorted(weight_idx):
        raise InputError(f"sparse-update config: manual_weight_idx must be ascending, got {weight_idx}")
    if _flag(cfg, "pw1_weight_only"):
        weight_idx = [i for i in weight_idx if _is_pw1(convs[i][1])]
    for idx in weight_idx:
        if idx < first_bias:
            raise InputError(
                f"sparse-update config: weight layer {idx} ({convs[idx][0]}) is not among the last "
                f"n_bias_update={n_bias} convs (indices {first_bias}..{n_conv - 1}); tiny-training "
                "updates the bias of every layer whose weight it updates"
            )
    ratios = _ratio_list(cfg.get("weight_update_ratio"), len(weight_idx))

    selected: dict[str, Channels] = {}
    bias_targets = _bias_targets(model)
    for i in range(first_bias, n_conv):
        if bias_targets[i] is not None:
            selected[bias_targets[i]] = None  # type: ignore[index]
    for idx, ratio in zip(weight_idx, ratios):
        name, conv = convs[idx]
        count = _n_channels(ratio, conv.out_channels, name)
        if count == 0:
            continue
        wname = f"{name}.weight" if name else "weight"
        selected[wname] = None if count == conv.out_channels else tuple(range(count))
    head = _classifier(model)
    if head is not None and not _flag(cfg, "freeze_fc"):
        for pname in _param_names_of(*head):
            selected[pname] = None
    return UpdateSet(selected).validated(model)


def to_sparse_update_config(update_set: UpdateSet, model: nn.Module) -> dict[str, Any]:
    """Export an update set as a tiny-training sparse-update config (inverse of the importer).

    Expressible: whole biases (own or BN beta, per :func:`from_sparse_update_config`) of a suffix of the
    conv list, conv weights trained in full or on a prefix of dim 0 whose length is ``ceil(r*C_out)`` for
    r in {1/8, 1/4, 1/2} or any count > 1, and the last ``nn.Linear`` trained entirely or not at all.
    Anything else raises a one-line ``InputError`` naming the offending parameter.
    """
    us = update_set.validated(model)
    convs = conv_layers(model)
    n_conv = len(convs)
    bias_targets = _bias_targets(model)
    bias_owner = {b: i for i, b in enumerate(bias_targets) if b is not None}
    weight_owner = {(f"{n}.weight" if n else "weight"): i for i, (n, _) in enumerate(convs)}
    head = _classifier(model)
    head_params = _param_names_of(*head) if head is not None else []

    bias_convs: set[int] = set()
    weights: dict[int, Channels] = {}
    for name, chans in us.entries.items():
        if name in bias_owner:
            if chans is not None:
                raise InputError(
                    f"not expressible as a sparse-update config: bias {name!r} is trained on a channel "
                    "subset (tiny-training trains whole biases)"
                )
            bias_convs.add(bias_owner[name])
        elif name in weight_owner:
            weights[weight_owner[name]] = chans
        elif name in head_params:
            if chans is not None:
                raise InputError(
                    f"not expressible as a sparse-update config: classifier parameter {name!r} is trained "
                    "on a channel subset"
                )
        else:
            raise InputError(
                f"not expressible as a sparse-update config: {name!r} is neither a conv weight, a conv "
                "bias (or the BatchNorm beta standing in for it) nor the last Linear layer"
            )
    head_trained = [p for p in head_params if us.is_updated(p)]
    if head_trained and len(head_trained) != len(head_params):
        frozen = [p for p in head_params if not us.is_updated(p)]
        raise InputError(
            f"not expressible as a sparse-update config: the classifier is trained only partly "
            f"({frozen[0]!r} is frozen)"
        )

    layers = bias_convs | set(weights)
    first = min(layers) if layers else n_conv
    for i in range(first, n_conv):
        if bias_targets[i] is not None and i not in bias_convs:
            raise InputError(
                "not expressible as a sparse-update config: biases must be those of the last n convs, but "
                f"{bias_targets[i]!r} (conv {i}) is frozen while conv {first} ({convs[first][0]}) is trained"
            )
    ratios: list[float | int] = []
    for idx in sorted(weights):
        name, conv = convs[idx]
        chans = weights[idx]
        size = conv.out_channels
        if chans is None:
            ratios.append(1)
            continue
        if chans != tuple(range(len(chans))):
            raise InputError(
                f"not expressible as a sparse-update config: {name}.weight trains channels {list(chans)[:6]}"
                f"{'...' if len(chans) > 6 else ''}, not a prefix of dim 0"
            )
        k = len(chans)
        fit = [r for r in _STANDARD_RATIOS if _n_channels(r, size, name) == k]
        if fit:
            ratios.append(fit[0])
        elif k > 1:
            ratios.append(k)
        else:
            raise InputError(
                f"not expressible as a sparse-update config: {name}.weight trains 1 of {size} channels, "
                "which no ratio in {1/8, 1/4, 1/2, 1} gives"
            )
    return {
        "enable_backward_config": 1,
        "n_bias_update": n_conv - first,
        "manual_weight_idx": sorted(weights),
        "weight_update_ratio": ratios,
        "pw1_weight_only": 0,
        "freeze_fc": 0 if (head_trained or head is None) else 1,
    }
