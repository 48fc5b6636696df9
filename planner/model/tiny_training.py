"""tiny-training's own artefacts as inputs: its MCU model files (``.pkl``) and its published schemes.

**Model files.** mit-han-lab/tiny-training ships its three MCU networks (``mbv2-w0.35.pkl``,
``mcunet-5fps.pkl``, ``proxyless-w0.3.pkl``, MIT licence) as ``torch.save``d dicts of numpy arrays:
``first_conv``, ``blocks`` (each ``pointwise1``/``depthwise``/``pointwise2`` conv dicts, ``residual``,
``se``), ``feature_mix`` and ``classifier``. A conv dict holds ``in_channel``, ``out_channel``,
``kernel_size``, ``stride``, ``groups``, the spatial ``in_shape``/``out_shape`` at the model's input
resolution, and ``params``: int8 ``weight`` (O, I/groups, k, k), int32 ``bias`` (quantised as
``b / (w_scale·x_scale)``), float32 per-output-channel ``w_scales`` and the activations' ``x_scale``,
``x_zero``, ``y_scale``, ``y_zero``.

:func:`read_config` opens such a file with ``torch.load(weights_only=True)`` inside
``torch.serialization.safe_globals`` listing only what numpy arrays need (:func:`numpy_allowlist`):
no code from the file runs, and a pickle that names anything else is refused. :func:`check_config`
validates the structure (one-line :class:`~budgetplan.errors.ModelLoadError`), and :func:`build_module`
turns it into a :class:`~budgetplan.model.zoo.TinyTrainingNet` -- the class of the zoo's ``*-tt``
built-ins, so parameter names and conv indices agree -- with float weights:

* weights dequantised per output channel (``w · w_scale``), biases ``b · w_scale · x_scale``
  (BatchNorm is already folded into them);
* an activation where the int8 output clamps at real zero (``y_zero == -128``): a ReLU clipped at the
  top of the int8 range, ``255 · y_scale`` (ReLU6 where that is 6); other convs are linear (their
  int8 saturation is not modelled);
* an identity skip where the block has a ``residual`` entry; the classifier (a 1×1 conv in the file)
  becomes an ``nn.Linear`` after global average pooling.

**Schemes.** tiny-training's 15 sparse-update schemes (``compilation/mcu_ir_gen.py``: five per model,
named by their analytic memory, e.g. ``49kb``) ship as sparse-update configs in ``tt-schemes/`` of
this package. :func:`scheme_path` resolves ``tt:<model>/<label>`` (e.g. ``tt:mbv2-w0.35/49kb``);
:func:`list_schemes` lists them.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from budgetplan.errors import InputError, ModelLoadError
from budgetplan.model.zoo import TinyTrainingNet, TTBlockSpec, TTConv

__all__ = [
    "SCHEME_DIR",
    "build_module",
    "check_config",
    "is_tiny_training_pickle",
    "list_schemes",
    "load_module",
    "numpy_allowlist",
    "read_config",
    "scheme_path",
]

#: Globals a tiny-training ``.pkl`` names (read with pickletools): numpy arrays and dtypes, bytes.
_FILE_GLOBALS = frozenset({
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray",
    "numpy.dtype", "_codecs.encode",
})
_CONV_KEYS = ("in_channel", "out_channel", "kernel_size", "stride", "groups", "params")
_PARAM_KEYS = ("weight", "bias", "w_scales", "x_scale", "x_zero", "y_scale", "y_zero")
_BLOCK_CONVS = ("pointwise1", "depthwise", "pointwise2")
RELU6_TOLERANCE = 1e-6
"""A clipped ReLU whose top is within this of 6.0 is built as ``nn.ReLU6``."""
DEFAULT_RESOLUTION = 128
"""Input side when the file records none (tiny-training's MCU resolution)."""


# --------------------------------------------------------------------------------------------------
# Reading the file safely
# --------------------------------------------------------------------------------------------------


def numpy_allowlist() -> list[Any]:
    """The globals ``torch.load(weights_only=True)`` may build for numpy arrays, and nothing else.

    The files were pickled under numpy 1.x, whose ``numpy.core.multiarray._reconstruct`` is
    ``numpy._core.multiarray._reconstruct`` in numpy 2: the pair maps the old name to the function.
    """
    import numpy
    import numpy.dtypes

    reconstruct = numpy._core.multiarray._reconstruct if hasattr(numpy, "_core") else \
        numpy.core.multiarray._reconstruct  # numpy < 2
    allow: list[Any] = [
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        reconstruct,  # the same function under its own name (files written with numpy 2)
        numpy.ndarray,
        (numpy.dtype, "numpy.dtype"),
    ]
    allow += [getattr(numpy.dtypes, name) for name in
              ("Int8DType", "Int16DType", "Int32DType", "Int64DType", "UInt8DType", "Float32DType",
               "Float64DType") if hasattr(numpy.dtypes, name)]
    return allow


def is_tiny_training_pickle(pickle_globals: Sequence[str]) -> bool:
    """True when a ``torch.save`` pickle names numpy's array globals and nothing else (read with
    pickletools by the loader, nothing executed): the shape of a tiny-training model file."""
    names = set(pickle_globals)
    return bool(names) and names <= _FILE_GLOBALS and any(n.startswith("numpy") for n in names)


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The dict stored in a tiny-training ``.pkl``, loaded with ``weights_only=True`` and
    :func:`numpy_allowlist`; any other global (code) is refused with a one-line :class:`ModelLoadError`.
    The structure is not checked here (:func:`check_config`)."""
    text = os.fspath(path)
    try:
        with torch.serialization.safe_globals(numpy_allowlist()):
            obj = torch.load(text, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelLoadError(f"file not found: {text}") from None
    except Exception as exc:
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        reason = (f"it names {refused.group(1)}, which is not a numpy array global" if refused
                  else f"not a torch.save file of numpy arrays ({type(exc).__name__})")
        raise ModelLoadError(
            f"{text} cannot be read as a tiny-training model file with weights_only=True and a numpy-only "
            f"allowlist (nothing from the file was executed): {reason}"
        ) from None
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{text}: not a tiny-training model file: it holds a {type(obj).__name__}, "
                             "not a dict with first_conv, blocks and classifier")
    return obj


# --------------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------------


def _fail(path: str, where: str, what: str) -> ModelLoadError:
    return ModelLoadError(f"{path}: not a tiny-training model file: {where} {what}")


def _int(value: Any) -> int | None:
    """``value`` as a Python int if it is an integer (Python or numpy), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if hasattr(value, "dtype") and getattr(value, "shape", None) == () and value.dtype.kind in "iu":
        return int(value)
    return None


def _real(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if hasattr(value, "dtype") and getattr(value, "shape", None) == () and value.dtype.kind in "iuf":
        return float(value)
    return None


def _kernel(value: Any) -> int | None:
    """A square kernel size given as an int or an (h, w) pair."""
    if isinstance(value, (tuple, list)):
        sizes = [_int(v) for v in value]
        if len(sizes) == 2 and sizes[0] is not None and sizes[0] == sizes[1]:
            return sizes[0]
        return None
    return _int(value)


def _check_conv(path: str, where: str, conv: Any, in_channels: int | None, linear: bool = False) -> None:
    """One conv dict: keys, positive sizes, groups, parameter arrays of the right dtype and shape."""
    import numpy

    if not isinstance(conv, Mapping):
        raise _fail(path, where, f"is a {type(conv).__name__}, expected a conv dict")
    missing = [k for k in _CONV_KEYS if k not in conv]
    if missing:
        raise _fail(path, where, f"lacks {', '.join(missing)}")
    cin, cout, stride, groups = (_int(conv[k]) for k in ("in_channel", "out_channel", "stride", "groups"))
    kernel = _kernel(conv["kernel_size"])
    for name, value in (("in_channel", cin), ("out_channel", cout), ("stride", stride), ("groups", groups),
                        ("kernel_size", kernel)):
        if value is None or value < 1:
            raise _fail(path, where, f"has {name} {conv[name]!r}, expected a positive integer"
                        + (" (square kernels only)" if name == "kernel_size" else ""))
    assert cin is not None and cout is not None and groups is not None and kernel is not None
    if cin % groups or cout % groups:
        raise _fail(path, where, f"has groups {groups}, which divides neither in_channel {cin} nor "
                    f"out_channel {cout}")
    if linear and (kernel != 1 or groups != 1):
        raise _fail(path, where, f"is a {kernel}x{kernel} conv with groups {groups}; the classifier must be 1x1")
    if in_channels is not None and cin != in_channels:
        raise _fail(path, where, f"takes {cin} input channels but the layer before gives {in_channels}")
    params = conv["params"]
    if not isinstance(params, Mapping):
        raise _fail(path, f"{where}.params", f"is a {type(params).__name__}, expected a dict")
    missing = [k for k in _PARAM_KEYS if k not in params]
    if missing:
        raise _fail(path, f"{where}.params", f"lacks {', '.join(missing)}")
    expected = {"weight": ((cout, cin // groups, kernel, kernel), "i"), "bias": ((cout,), "i"),
                "w_scales": ((cout,), "f")}
    for name, (shape, kind) in expected.items():
        array = params[name]
        if not isinstance(array, numpy.ndarray) or array.dtype.kind not in ("iu" if kind == "i" else "f"):
            raise _fail(path, f"{where}.params.{name}", "must be a numpy array of "
                        + ("integers" if kind == "i" else "floats"))
        if tuple(array.shape) != shape:
            raise _fail(path, f"{where}.params.{name}", f"has shape {tuple(array.shape)}, expected {shape}")
        if not numpy.isfinite(array.astype(numpy.float64)).all():
            raise _fail(path, f"{where}.params.{name}", "holds non-finite values")
    for name in ("x_scale", "y_scale"):
        value = _real(params[name])
        if value is None or not math.isfinite(value) or value <= 0:
            raise _fail(path, f"{where}.params.{name}", f"is {params[name]!r}, expected a positive number")
    for name in ("x_zero", "y_zero"):
        value = _int(params[name])
        if value is None or not -128 <= value <= 127:
            raise _fail(path, f"{where}.params.{name}", f"is {params[name]!r}, expected an int8 zero point")


def check_config(config: Any, path: str | os.PathLike = "<config>") -> None:
    """Validate a tiny-training model dict; raise a one-line :class:`ModelLoadError` naming the first
    problem (a missing key, a wrong shape or dtype, channels that do not chain, an unsupported part)."""
    where_file = os.fspath(path)
    if not isinstance(config, Mapping):
        raise _fail(where_file, "the file", f"holds a {type(config).__name__}, expected a dict")
    missing = [k for k in ("first_conv", "blocks", "classifier") if k not in config]
    if missing:
        raise _fail(where_file, "the dict", f"lacks {', '.join(missing)} (keys: {', '.join(map(str, config))})")
    _check_conv(where_file, "first_conv", config["first_conv"], None)
    channels = _int(config["first_conv"]["out_channel"])
    blocks = config["blocks"]
    if not isinstance(blocks, (list, tuple)) or not blocks:
        raise _fail(where_file, "blocks", "must be a non-empty list of block dicts")
    for i, block in enumerate(blocks):
        where = f"blocks[{i}]"
        if not isinstance(block, Mapping):
            raise _fail(where_file, where, f"is a {type(block).__name__}, expected a block dict")
        if block.get("se") is not None:
            raise _fail(where_file, f"{where}.se", "is set: squeeze-and-excitation blocks are not supported")
        for name in ("depthwise", "pointwise2"):
            if block.get(name) is None:
                raise _fail(where_file, f"{where}.{name}", "is missing")
        block_in = channels
        for name in _BLOCK_CONVS:
            if block.get(name) is not None:
                _check_conv(where_file, f"{where}.{name}", block[name], channels)
                channels = _int(block[name]["out_channel"])
        residual = block.get("residual")
        if residual is not None:
            if not isinstance(residual, Mapping):
                raise _fail(where_file, f"{where}.residual", f"is a {type(residual).__name__}, expected None or a dict")
            if "kernel_size" in residual:
                raise _fail(where_file, f"{where}.residual", "is a conv shortcut; only identity skips are supported")
            stride = _int(block["depthwise"]["stride"])
            if channels != block_in or stride != 1:
                raise _fail(where_file, f"{where}.residual", f"adds the block input ({block_in} channels) to an "
                            f"output of {channels} channels at stride {stride}")
    if config.get("feature_mix") is not None:
        _check_conv(where_file, "feature_mix", config["feature_mix"], channels)
        channels = _int(config["feature_mix"]["out_channel"])
    _check_conv(where_file, "classifier", config["classifier"], channels, linear=True)
    side = config["first_conv"].get("in_shape")
    if side is not None and (_int(side) is None or _int(side) < 1):  # type: ignore[operator]
        raise _fail(where_file, "first_conv.in_shape", f"is {side!r}, expected a positive integer")


# --------------------------------------------------------------------------------------------------
# Building the module
# --------------------------------------------------------------------------------------------------


def _clip(params: Mapping[str, Any]) -> float | None:
    """The activation implied by the int8 output range: a ReLU clipped at ``255·y_scale`` when the
    output clamps at real zero (``y_zero == -128``), else None (linear)."""
    if _int(params["y_zero"]) != -128:
        return None
    top = 255.0 * float(params["y_scale"])
    return 6.0 if abs(top - 6.0) < RELU6_TOLERANCE else top


def _spec(conv: Mapping[str, Any]) -> TTConv:
    return TTConv(int(conv["in_channel"]), int(conv["out_channel"]), int(_kernel(conv["kernel_size"]) or 1),
                  int(conv["stride"]), int(conv["groups"]), _clip(conv["params"]))


def network_specs(config: Mapping[str, Any]) -> tuple[TTConv, list[TTBlockSpec], TTConv | None]:
    """The first conv, block and feature-mix specs of a (checked) tiny-training model dict."""
    blocks = [
        TTBlockSpec(
            pointwise1=_spec(b["pointwise1"]) if b.get("pointwise1") is not None else None,
            depthwise=_spec(b["depthwise"]),
            pointwise2=_spec(b["pointwise2"]),
            residual=b.get("residual") is not None,
        )
        for b in config["blocks"]
    ]
    mix = config.get("feature_mix")
    return _spec(config["first_conv"]), blocks, _spec(mix) if mix is not None else None


def _dequantized(conv: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Float weight ``w · w_scale`` (per output channel) and bias ``b · w_scale · x_scale``."""
    params = conv["params"]
    scales = torch.as_tensor(params["w_scales"].astype("float64"))
    weight = torch.as_tensor(params["weight"].astype("float64")) * scales.view(-1, 1, 1, 1)
    bias = torch.as_tensor(params["bias"].astype("float64")) * scales * float(params["x_scale"])
    return weight.float(), bias.float()


def build_module(config: Mapping[str, Any], path: str | os.PathLike = "<config>") -> TinyTrainingNet:
    """The float :class:`TinyTrainingNet` of a tiny-training model dict (checked first), with its
    dequantised weights, in train mode."""
    check_config(config, path)
    first, blocks, mix = network_specs(config)
    classifier = config["classifier"]
    model = TinyTrainingNet(first, blocks, int(classifier["out_channel"]), feature_mix=mix)
    convs: list[tuple[nn.Conv2d, Mapping[str, Any]]] = [(model.first_conv.conv, config["first_conv"])]
    for module, block in zip(model.blocks, config["blocks"], strict=True):
        for name in _BLOCK_CONVS:
            if block.get(name) is not None:
                convs.append((getattr(module, name).conv, block[name]))
    if mix is not None and model.feature_mix is not None:
        convs.append((model.feature_mix.conv, config["feature_mix"]))
    with torch.no_grad():
        for conv, entry in convs:
            weight, bias = _dequantized(entry)
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)  # type: ignore[union-attr]
        weight, bias = _dequantized(classifier)
        model.classifier.weight.copy_(weight.flatten(1))
        model.classifier.bias.copy_(bias)
    return model.train()


def input_shape(config: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """``(1, C, H, H)``: the first conv's input channels at the resolution the file records (its
    ``in_shape``), else :data:`DEFAULT_RESOLUTION`."""
    side = _int(config["first_conv"].get("in_shape")) or DEFAULT_RESOLUTION
    return (1, int(config["first_conv"]["in_channel"]), side, side)


def load_module(path: str | os.PathLike) -> tuple[TinyTrainingNet, tuple[int, int, int, int]]:
    """Read, check and build a tiny-training ``.pkl``: the module and its recorded input shape."""
    config = read_config(path)
    return build_module(config, path), input_shape(config)


# --------------------------------------------------------------------------------------------------
# The published schemes
# --------------------------------------------------------------------------------------------------

SCHEME_DIR = Path(__file__).with_name("tt-schemes")
"""Package data: ``<model>/<label>.json``, one sparse-update config per published scheme."""
SCHEME_PREFIX = "tt:"
# other spellings of a model: the keys of mcu_ir_gen.py and the zoo's built-in names
_MODEL_ALIASES = {"mbv2": "mbv2-w0.35", "mcunet": "mcunet-5fps", "proxyless": "proxyless-w0.3",
                  "mbv2-w0.35-tt": "mbv2-w0.35", "mcunet-5fps-tt": "mcunet-5fps",
                  "proxyless-w0.3-tt": "proxyless-w0.3"}


def list_schemes() -> list[str]:
    """Every shipped scheme as ``tt:<model>/<label>``, by model and then by label size."""
    def size(path: Path) -> int:
        digits = re.match(r"\d+", path.stem)
        return int(digits.group()) if digits else 0

    return [f"{SCHEME_PREFIX}{folder.name}/{file.stem}"
            for folder in sorted(p for p in SCHEME_DIR.iterdir() if p.is_dir())
            for file in sorted(folder.glob("*.json"), key=size)]


def scheme_path(name: str) -> Path:
    """The config file of a shipped scheme ``tt:<model>/<label>`` (model: ``mbv2-w0.35``,
    ``mcunet-5fps``, ``proxyless-w0.3``, their zoo names ``*-tt`` or mcu_ir_gen's ``mbv2``/``mcunet``/
    ``proxyless``; label as published, e.g. ``49kb``, case-insensitive, ``kb`` optional)."""
    known = list_schemes()
    text = name.strip()
    body = text[len(SCHEME_PREFIX):] if text.lower().startswith(SCHEME_PREFIX) else text
    model, _, label = body.strip().lower().partition("/")
    model = _MODEL_ALIASES.get(model, model)
    label = label.strip()
    if label and not label.endswith("kb"):
        label += "kb"
    path = SCHEME_DIR / model / f"{label}.json"
    if f"{SCHEME_PREFIX}{model}/{label}" not in known:
        raise InputError(f"unknown tiny-training scheme {name!r}; shipped schemes: {', '.join(known)}")
    return path
