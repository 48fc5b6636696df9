"""Backward-FLOP formulas against torch.utils.flop_counter.FlopCounterMode.

The oracle runs forward + backward under ``FlopCounterMode`` and subtracts the forward count. The
prediction records every ATen op of the forward (with which inputs require grad, as the planner does)
and sums :func:`backward_flops` over them. Every requires-grad pattern of the floating inputs is tried.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count

from budgetplan.cost_models import backward_flops as B
from budgetplan.cost_models.meta import TensorMeta, to_meta
from op_support import Metas, R

aten = torch.ops.aten


class _Recorder(TorchDispatchMode):
    """Per dispatched op: the planner's view of the call plus which flat inputs require grad."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, Any, Metas, Metas, tuple[bool, ...]]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        flat_in = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        needs = tuple(t.requires_grad for t in flat_in)
        out = func(*args, **kwargs)
        flat_out = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        self.calls.append((func, to_meta(args), tuple(TensorMeta.of(t) for t in flat_in),
                           tuple(TensorMeta.of(t) for t in flat_out), needs))
        return out


def _first_output(out: Any) -> torch.Tensor:
    return next(t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.is_floating_point())


def fcm_backward(fn: Callable[[], Any]) -> tuple[int, int]:
    """(forward FLOPs, backward FLOPs) as FlopCounterMode counts them."""
    with FlopCounterMode(display=False) as counter:
        out = _first_output(fn())
        forward = counter.get_total_flops()
        if out.requires_grad:
            out.sum().backward()
    return forward, counter.get_total_flops() - forward


def predicted(fn: Callable[[], Any]) -> list[tuple[Any, tuple[int, ...]]]:
    """Per recorded forward op: (op, backward FLOPs per flat input)."""
    recorder = _Recorder()
    with recorder:
        fn()
    return [(op, B.backward_flops(op, args, ins, outs, needs))
            for op, args, ins, outs, needs in recorder.calls]


def predicted_total(fn: Callable[[], Any]) -> int:
    return sum(sum(per_input) for _, per_input in predicted(fn))


def grad_patterns(n: int) -> list[tuple[bool, ...]]:
    return list(itertools.product([False, True], repeat=n))


def leaves(tensors: Sequence[torch.Tensor | None], pattern: Sequence[bool]) -> list[torch.Tensor | None]:
    """Fresh leaf copies with requires_grad per pattern (None stays None)."""
    out: list[torch.Tensor | None] = []
    it = iter(pattern)
    for t in tensors:
        out.append(None if t is None else t.detach().clone().requires_grad_(next(it)))
    return out


# --------------------------------------------------------------------------------------------------
# Matmul family, called directly
# --------------------------------------------------------------------------------------------------

MATMUL_CASES = [
    (aten.mm.default, (R(3, 4), R(4, 5))),
    (aten.mm.default, (R(1, 16), R(16, 7))),
    (aten.bmm.default, (R(2, 3, 4), R(2, 4, 5))),
    (aten.addmm.default, (R(5), R(3, 4), R(4, 5))),
    (aten.addmm.default, (R(3, 5), R(3, 4), R(4, 5))),
    (aten.baddbmm.default, (R(2, 3, 5), R(2, 3, 4), R(2, 4, 5))),
]
MATMUL_IDS = [f"{op}-{i}" for i, (op, _) in enumerate(MATMUL_CASES)]


@pytest.mark.parametrize("op,tensors", MATMUL_CASES, ids=MATMUL_IDS)
def test_matmul_ops_every_pattern(op: Any, tensors: tuple[torch.Tensor, ...]) -> None:
    for pattern in grad_patterns(len(tensors)):
        ts = leaves(tensors, pattern)
        _, expected = fcm_backward(lambda: op(*ts))
        got = predicted(lambda: op(*ts))
        assert len(got) == 1
        per_input = got[0][1]
        assert all(f == 0 for f, need in zip(per_input, pattern, strict=True) if not need)
        assert sum(per_input) == expected, (op, pattern, per_input, expected)


# --------------------------------------------------------------------------------------------------
# Convolution
# --------------------------------------------------------------------------------------------------

CONV_CASES: dict[str, dict[str, Any]] = {
    "plain": dict(x=(2, 4, 8, 8), w=(6, 4, 3, 3), bias=True),
    "stride2-pad1": dict(x=(2, 4, 9, 9), w=(6, 4, 3, 3), bias=True, stride=2, padding=1),
    "dilation2": dict(x=(1, 3, 11, 11), w=(5, 3, 3, 3), bias=False, dilation=2, padding=2),
    "1x1": dict(x=(2, 8, 5, 5), w=(16, 8, 1, 1), bias=False),
    "rect-kernel": dict(x=(1, 3, 7, 9), w=(4, 3, 1, 5), bias=True, padding=(0, 2)),
    "first-layer-rgb": dict(x=(1, 3, 16, 16), w=(8, 3, 3, 3), bias=False, stride=2, padding=1),
    "grouped": dict(x=(2, 8, 6, 6), w=(12, 2, 3, 3), bias=True, groups=4, padding=1),
    "depthwise": dict(x=(2, 8, 7, 7), w=(8, 1, 3, 3), bias=False, groups=8, stride=2, padding=1),
    "depthwise-mult2": dict(x=(1, 4, 6, 6), w=(8, 1, 5, 5), bias=True, groups=4, padding=2),
    "conv1d": dict(x=(2, 3, 12), w=(5, 3, 3), bias=True, stride=2),
    "conv3d": dict(x=(1, 2, 4, 5, 5), w=(3, 2, 2, 3, 3), bias=False),
    "transposed": dict(x=(1, 4, 5, 5), w=(4, 3, 3, 3), bias=True, stride=2, padding=1, transposed=True),
    "transposed-grouped": dict(x=(2, 4, 4, 4), w=(4, 3, 2, 2), bias=False, stride=2, groups=2,
                               transposed=True),
}


def _conv_fn(
    case: dict[str, Any], x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
) -> Callable[[], Any]:
    dims = x.dim() - 2
    kw = {k: case[k] for k in ("stride", "padding", "dilation", "groups") if k in case}
    if case.get("transposed"):
        conv = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[dims]
    else:
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    return lambda: conv(x, w, b, **kw)


@pytest.mark.parametrize("name", list(CONV_CASES))
def test_convolution_every_pattern(name: str) -> None:
    """Sum over inputs equals FlopCounterMode, except FlopCounterMode's known ``groups``× over-count of
    the weight gradient of grouped convolutions: there its weight part is ``groups`` times ours."""
    case = CONV_CASES[name]
    groups = case.get("groups", 1)
    out_channels = case["w"][1] * groups if case.get("transposed") else case["w"][0]
    tensors = [R(*case["x"]), R(*case["w"]), R(out_channels) if case["bias"] else None]
    n = 3 if case["bias"] else 2
    forward_flops = None
    for pattern in grad_patterns(n):
        x, w, b = leaves(tensors, pattern)
        fn = _conv_fn(case, x, w, b)
        forward_flops, expected = fcm_backward(fn)
        got = predicted(fn)
        convs = [per for op, per in got if op.overloadpacket is aten.convolution]
        assert len(convs) == 1
        per_input = convs[0]
        assert all(f == 0 for f, need in zip(per_input, pattern, strict=True) if not need)
        if len(per_input) > 2:
            assert per_input[2] == 0  # a bias gradient is a sum: 0 FLOPs
        grad_x, grad_w = per_input[0], per_input[1]
        assert grad_x + groups * grad_w == expected, (name, pattern, per_input, expected)
        assert grad_x in (0, forward_flops) and grad_w in (0, forward_flops)


def test_flop_counter_overcounts_grouped_weight_gradient() -> None:
    """The discrepancy documented in backward_flops: FlopCounterMode charges a depthwise 3×3 conv's weight
    gradient C times its forward; the kernel does the forward's MACs."""
    x, w = R(1, 16, 8, 8), R(16, 1, 3, 3).requires_grad_()
    fwd, bwd = fcm_backward(lambda: F.conv2d(x, w, groups=16, padding=1))
    assert bwd == 16 * fwd
    (per_input,) = [per for o, per in predicted(lambda: F.conv2d(x, w, groups=16, padding=1))
                    if o.overloadpacket is aten.convolution]
    assert per_input == (0, fwd)


def test_first_layer_conv_input_needs_no_grad() -> None:
    x = R(1, 3, 16, 16)  # the image
    conv1, conv2 = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 1, 1)
    fn = lambda: conv2(F.relu(conv1(x)))  # noqa: E731
    fwd, expected = fcm_backward(fn)
    got = predicted(fn)
    first = next(per for op, per in got if op.overloadpacket is aten.convolution)
    assert first[0] == 0 and first[1] > 0  # no grad_input for the image, grad_weight yes
    assert predicted_total(fn) == expected
    conv1.requires_grad_(False)  # frozen first layer: its backward disappears entirely
    assert predicted_total(fn) == fcm_backward(fn)[1]
    assert next(per for op, per in predicted(fn) if op.overloadpacket is aten.convolution) == (0, 0, 0)


# --------------------------------------------------------------------------------------------------
# Linear and matmul through their decompositions
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("x_shape", [(4, 8), (2, 5, 8), (2, 3, 5, 8)], ids=["2d", "3d", "4d"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_every_pattern(x_shape: tuple[int, ...], bias: bool) -> None:
    tensors = [R(*x_shape), R(6, 8), R(6) if bias else None]
    for pattern in grad_patterns(3 if bias else 2):
        x, w, b = leaves(tensors, pattern)
        fn = lambda: F.linear(x, w, b)  # noqa: E731
        assert predicted_total(fn) == fcm_backward(fn)[1], (x_shape, bias, pattern)


@pytest.mark.parametrize("shapes", [
    ((2, 5, 8), (2, 8, 4)),  # bmm of two activations
    ((2, 3, 5, 8), (2, 3, 8, 4)),  # attention-style 4-D
    ((2, 3, 5, 8), (3, 8, 4)),  # broadcast batch
    ((2, 5, 8), (8, 4)),  # folded into mm
    ((5, 8), (2, 8, 4)),  # 2-D @ 3-D: decomposition depends on requires_grad
    ((2, 8, 5), (8, 4)),  # non-contiguous after transpose below
], ids=["3d@3d", "4d@4d", "4d@3d", "3d@2d", "2d@3d", "3dT@2d"])
def test_matmul_of_activations_every_pattern(shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
    a0, b0 = R(*shapes[0]), R(*shapes[1])
    transpose = shapes[0] == (2, 8, 5)
    for pattern in grad_patterns(2):
        a, b = leaves([a0, b0], pattern)
        fn = (lambda: torch.matmul(a.transpose(-1, -2), b)) if transpose else (lambda: torch.matmul(a, b))
        assert predicted_total(fn) == fcm_backward(fn)[1], (shapes, pattern)


# --------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------

SDPA_SHAPES = [((1, 2, 4, 8), (1, 2, 4, 8)), ((2, 3, 5, 4), (2, 3, 7, 4))]


@pytest.mark.parametrize("q_shape,kv_shape", SDPA_SHAPES)
def test_sdpa_cpu_backward(q_shape: tuple[int, ...], kv_shape: tuple[int, ...]) -> None:
    """FlopCounterMode counts nothing for the CPU flash op (forward or backward). Our count is the one
    FlopCounterMode applies to the CUDA flash backward, charged in full whenever any of q, k, v needs
    grad, and equal to the math backend's four backward matmuls plus the recomputation of QKᵀ."""
    op = aten._scaled_dot_product_flash_attention_for_cpu.default
    q0, k0, v0 = R(*q_shape), R(*kv_shape), R(*kv_shape)
    cuda_formula = sdpa_backward_flop_count(q_shape, q_shape, kv_shape, kv_shape)
    b, h, length, embed = q_shape
    recompute = 2 * b * h * length * kv_shape[2] * embed
    for pattern in grad_patterns(3):
        q, k, v = leaves([q0, k0, v0], pattern)
        fwd, bwd = fcm_backward(lambda: op(q, k, v))
        assert (fwd, bwd) == (0, 0)  # not in FlopCounterMode's registry
        (per_input,) = [per for o, per in predicted(lambda: op(q, k, v)) if o is op]
        assert all(f == 0 for f, need in zip(per_input, pattern, strict=True) if not need)
        assert sum(per_input) == (cuda_formula if any(pattern) else 0)
    q, k, v = leaves([q0, k0, v0], (True, True, True))
    with sdpa_kernel(SDPBackend.MATH):
        _, math_backward = fcm_backward(lambda: F.scaled_dot_product_attention(q, k, v))
    assert cuda_formula == math_backward + recompute


def test_sdpa_split_between_inputs() -> None:
    q = TensorMeta((1, 2, 4, 8), torch.float32)
    unit = 2 * 2 * 4 * 4  # 2 · B·H · L · S
    full = unit * (3 * 8 + 2 * 8)
    op = aten._scaled_dot_product_flash_attention_for_cpu.default
    per = B.backward_flops(op, (q, q, q), (q, q, q), (), (False, False, True))
    assert per == (0, 0, full)  # only v trained: the kernel still computes everything
    per = B.backward_flops(op, (q, q, q), (q, q, q), (), (True, True, True))
    assert per == (unit * 8 + unit * 16, unit * 8, unit * 8) and sum(per) == full


# --------------------------------------------------------------------------------------------------
# Element-wise, norms, pooling: 0 by convention — and FlopCounterMode agrees
# --------------------------------------------------------------------------------------------------


def test_elementwise_and_norm_backward_count_zero() -> None:
    x0 = R(2, 4, 6, 6)
    bn, ln = nn.BatchNorm2d(4), nn.LayerNorm(6)
    fns = [lambda x: F.relu(x), lambda x: F.hardtanh(x, 0, 6), lambda x: bn(x), lambda x: ln(x),
           lambda x: F.max_pool2d(x, 2), lambda x: F.avg_pool2d(x, 2), lambda x: x.mean((2, 3)),
           lambda x: F.interpolate(x, scale_factor=2), lambda x: torch.sigmoid(x) * x,
           lambda x: F.log_softmax(x, 1)]
    for f in fns:
        x = x0.clone().requires_grad_()
        assert fcm_backward(lambda: f(x))[1] == 0
        assert predicted_total(lambda: f(x)) == 0


def test_api_shapes_and_unknown_ops() -> None:
    m = TensorMeta((3, 4), torch.float32)
    assert B.backward_flops(aten.relu.default, (m,), (m,), (m,), (True,)) == (0,)
    assert not B.has_backward_formula(aten.relu.default)
    assert B.has_backward_formula(aten.convolution.default)
    a, b = TensorMeta((3, 4), torch.float32), TensorMeta((4, 5), torch.float32)
    out = (TensorMeta((3, 5), torch.float32),)
    assert B.backward_flops(aten.mm.default, (a, b), (a, b), out, (True, False)) == (120, 0)
    assert B.backward_flops(aten.mm.default, (a, b), (a, b), out, (False, False)) == (0, 0)


# --------------------------------------------------------------------------------------------------
# Whole models and update sets
# --------------------------------------------------------------------------------------------------


class _Net(nn.Module):
    """Convs (no groups: FlopCounterMode is exact there), BN, a residual, linear on 3-D tokens, an
    explicit-matmul attention (counted by FlopCounterMode, unlike the CPU flash op)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1))
        self.qkv, self.proj, self.head = nn.Linear(8, 24), nn.Linear(8, 8), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.block(x)
        tokens = x.flatten(2).transpose(1, 2)  # [N, HW, C]
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        attn = torch.softmax(q @ k.transpose(1, 2) / 8 ** 0.5, dim=-1)
        tokens = tokens + self.proj(attn @ v)
        return self.head(tokens.mean(1))


@pytest.mark.parametrize("update", ["all", "head", "biases", "stem", "attention", "none-but-input"])
def test_whole_model_backward_matches_flop_counter(update: str) -> None:
    torch.manual_seed(0)
    net = _Net()
    x = R(2, 3, 16, 16)
    chosen = {
        "all": lambda n: True,
        "head": lambda n: n.startswith("head"),
        "biases": lambda n: n.endswith("bias"),
        "stem": lambda n: n.startswith("stem"),
        "attention": lambda n: n.startswith(("qkv", "proj")),
        "none-but-input": lambda n: False,
    }[update]
    for name, p in net.named_parameters():
        p.requires_grad_(chosen(name))
    if update == "none-but-input":
        x.requires_grad_()
    fn = lambda: net(x)  # noqa: E731
    torch.manual_seed(0)
    expected = fcm_backward(fn)[1]
    assert predicted_total(fn) == expected, (update, predicted_total(fn), expected)
