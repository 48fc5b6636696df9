"""Property-based fuzzing of model sources: generated ``package.module:factory`` models (odd widths, zero-width
layers, mismatched shapes, huge or malformed ``input_shape`` attributes, shared and unused layers) and
model files (random bytes, damaged zip archives, truncated real ``.pt2`` and ``torch.save`` files).
Every case must keep the invariants of :mod:`fuzz_support`.
"""

from __future__ import annotations

import functools
import io
import itertools
import zipfile
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fuzz_support import examples, run_case, workdir

_COUNTER = itertools.count()

# --------------------------------------------------------------------------------------------------
# generated model code
# --------------------------------------------------------------------------------------------------


@st.composite
def conv_net(draw: st.DrawFn) -> tuple[str, str]:
    """(the layers of an nn.Sequential, the input_shape attribute) for a small, mostly consistent conv net."""
    channels = draw(st.integers(1, 4))
    side = draw(st.sampled_from([1, 2, 5, 8, 12]))
    layers: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["conv", "conv", "bn", "relu", "pool", "dwconv", "identity", "dropout"]))
        if kind == "conv":
            out = draw(st.sampled_from([0, 1, 2, 3, 8]) if draw(st.integers(0, 7)) == 0 else st.integers(1, 8))
            k, stride, pad = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(0, 1))
            cin = channels if draw(st.integers(0, 9)) else draw(st.integers(1, 6))  # now and then a mismatch
            bias = draw(st.booleans())
            layers.append(f"nn.Conv2d({cin}, {out}, {k}, stride={stride}, padding={pad}, bias={bias})")
            channels = out
        elif kind == "dwconv":
            layers.append(f"nn.Conv2d({channels}, {channels}, 3, padding=1, groups={channels})")
        elif kind == "bn":
            layers.append(f"nn.BatchNorm2d({channels})")
        elif kind == "relu":
            layers.append(draw(st.sampled_from(["nn.ReLU()", "nn.ReLU(inplace=True)", "nn.ReLU6()", "nn.Hardswish()"])))
        elif kind == "pool":
            layers.append(draw(st.sampled_from(["nn.MaxPool2d(2)", "nn.AvgPool2d(2)", "nn.AdaptiveAvgPool2d(1)"])))
        elif kind == "identity":
            layers.append("nn.Identity()")
        else:
            layers.append("nn.Dropout(0.1)")
    if draw(st.booleans()):
        layers += ["nn.AdaptiveAvgPool2d(1)", "nn.Flatten()",
                   f"nn.Linear({channels if draw(st.integers(0, 9)) else 7}, {draw(st.integers(0, 5))})"]
    batch = draw(st.sampled_from([1, 1, 2, 0]))
    shape = draw(st.sampled_from([f"({batch}, 3, {side}, {side})"] * 6 + [
        "(1, 3, 100000, 100000)", "(1, 3, 99999999999999999999, 1)", "'1x3x8x8'", "None", "(1, 3, -8, 8)",
        "(1.5, 3, 8, 8)", "(True, 3, 8, 8)", "()", "[1, 3, 8, 8]", "(1,) * 40", "torch.Size([1, 3, 8, 8])"]))
    return ", ".join(layers) or "nn.Identity()", shape


@st.composite
def mlp(draw: st.DrawFn) -> tuple[str, str]:
    width = first = draw(st.integers(1, 6))
    layers = []
    for _ in range(draw(st.integers(1, 3))):
        out = draw(st.integers(0, 6)) if draw(st.integers(0, 5)) == 0 else draw(st.integers(1, 6))
        layers.append(f"nn.Linear({width}, {out}, bias={draw(st.booleans())})")
        layers.append(draw(st.sampled_from(["nn.ReLU()", "nn.GELU()", "nn.LayerNorm(%d)" % max(out, 1), "nn.Identity()"])))
        width = out
    features = first if draw(st.integers(0, 5)) else draw(st.integers(1, 6))  # now and then a mismatch
    return ", ".join(layers), f"({draw(st.sampled_from([1, 2, 3]))}, {features})"


EXTRAS = {
    "plain": "        return self.body(x)",
    "shared": "        y = self.body(x)\n        return y + self.body(x)",
    "unused": "        return self.body(x)",  # with an unused layer below
    "value-branch": "        y = self.body(x)\n        return y if float(y.float().sum()) > 0 else -y",
    "raises": "        raise RuntimeError('\\x1b[31mboom\\x1b[0m\\nsecond line')",
    "exits": "        import sys\n        sys.exit(3)",
    "tuple": "        y = self.body(x)\n        return y, y.detach()",
    "item": "        y = self.body(x)\n        return y * int(y.numel() > 0)",
}


def _module_source(layers: str, shape: str, forward: str) -> str:
    unused = "        self.spare = nn.Linear(3, 2)\n" if forward == "unused" else ""
    return (
        "import torch\nfrom torch import nn\n\n\n"
        "class Net(nn.Module):\n"
        f"    input_shape = {shape}\n\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        f"        self.body = nn.Sequential({layers})\n"
        f"{unused}\n"
        "    def forward(self, x):\n"
        f"{EXTRAS[forward]}\n\n\n"
        "def make():\n"
        "    return Net()\n"
    )


@settings(max_examples=examples(50))
@given(net=conv_net() | mlp(), forward=st.sampled_from(list(EXTRAS)), data=st.data())
def test_fuzz_generated_models(net: tuple[str, str], forward: str, data: st.DataObject) -> None:
    layers, shape = net
    module = f"fuzz_net_{next(_COUNTER)}"
    command = data.draw(st.sampled_from([
        ["inspect"], ["inspect", "--target", "cortex-m7"], ["estimate"], ["estimate", "--target", "cortex-m7"],
        ["analyze", "--target", "cortex-m7", "--ram", "64k"], ["analyze", "--target", "host", "--ram", "1M"],
        ["analyze", "--target", "cortex-m7", "--ram", "64k", "--strategy", "greedy", "--group-size", "2"],
        ["measure"], ["estimate", "--update", "body.0"], ["inspect", "--trace", "export"],
    ]))
    extra = data.draw(st.sampled_from([[], [], [], ["--input-shape", "1x3x8x8"], ["--input-shape", "2x4"]]))
    with workdir() as root:
        (root / f"{module}.py").write_text(_module_source(layers, shape, forward), encoding="utf-8")
        run_case("generated models", [command[0], f"{module}:make", *command[1:], *extra], root)


# --------------------------------------------------------------------------------------------------
# model files
# --------------------------------------------------------------------------------------------------


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)))


@functools.cache
def real_files() -> dict[str, bytes]:
    """A real ``.pt2``, TorchScript archive and state_dict of a tiny model, as bytes."""
    model, x = _Tiny().eval(), torch.randn(1, 3, 8, 8)
    out: dict[str, bytes] = {}
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(model, (x,)), buffer)
    out["pt2"] = buffer.getvalue()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.trace(model, x), buffer)
    out["ts"] = buffer.getvalue()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    out["state"] = buffer.getvalue()
    return out


MEMBERS = ["archive_format", "serialized_exported_program.json", "models/model.json", "data.pkl", "constants.pkl",
           "code/x.py", "data/aotinductor/x.so", "traced_inputs.pkl", "version", "byteorder", "data/0"]


@st.composite
def model_file(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "zip", "truncated", "flipped"]))
    if kind == "random":
        return draw(st.binary(max_size=300) | st.sampled_from([b"\x80\x04K\x01.", b"PK\x05\x06" + b"\0" * 18]))
    if kind == "zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            prefix = draw(st.sampled_from(["", "archive/", "m/"]))
            for member in draw(st.lists(st.sampled_from(MEMBERS), max_size=4, unique=True)):
                zf.writestr(prefix + member, draw(st.binary(max_size=60) | st.sampled_from([b"{}", b"[]",
                                                                                            b'{"config": 1}'])))
        return buffer.getvalue()
    blob = real_files()[draw(st.sampled_from(["pt2", "ts", "state"]))]
    if kind == "truncated":
        return blob[: draw(st.integers(0, len(blob) - 1))]
    position = draw(st.integers(0, len(blob) - 1))
    return blob[:position] + bytes([blob[position] ^ draw(st.integers(1, 255))]) + blob[position + 1:]


@settings(max_examples=examples(40))
@given(blob=model_file(), suffix=st.sampled_from([".pt2", ".pt", ".pth", ".ts", ".zip", ".bin", ""]),
       data=st.data())
def test_fuzz_model_files(blob: bytes, suffix: str, data: st.DataObject) -> None:
    name = f"model{suffix}"
    extra = data.draw(st.sampled_from([[], [], ["--input-shape", "1x3x8x8"], ["--input-shape", "1x3x99999x99999"]]))
    command = data.draw(st.sampled_from([["inspect"], ["estimate", "--target", "cortex-m7"]]))
    with workdir() as root:
        Path(root / name).write_bytes(blob)
        run_case("model files", [command[0], name, *command[1:], *extra], root)
