"""Backward workspace rules against PyTorch's own behaviour, as the oracle (measure.py) sees it.

For every registered packet, over several shapes and every needs-grad pattern, the rule must equal
what :func:`budgetplan.cost_models.workspace.trace_backward` measures by running the op's backward
under a live-bytes dispatch mode with ``FlopCounterMode`` nested inside it, as ``measure_step`` does.
A second check runs the same backward under measure.py's own tracker, so the probe's bookkeeping is
the oracle's.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from budgetplan.runtime import measure as M
from budgetplan.cost_models import workspace as W
from budgetplan.cost_models.meta import TensorMeta, to_meta
from op_support import P, R, CountingOp, Metas, metas

aten = torch.ops.aten


# --------------------------------------------------------------------------------------------------
# Cases: every registered packet, several shapes
# --------------------------------------------------------------------------------------------------


@dataclass
class Case:
    op: Any
    make: Callable[[], tuple]
    kwargs: dict[str, Any]
    grad: tuple[int, ...] | None  # flat inputs that may require grad (None: every floating one)
    id: str


def C(op: Any, *makers: Callable[[], tuple], kw: dict[str, Any] | None = None,
      grad: tuple[int, ...] | None = None) -> list[Case]:
    tag = "-" + ",".join(f"{k}={v}" for k, v in kw.items()) if kw else ""
    return [Case(op, m, dict(kw or {}), grad, f"{op}{tag}-{i}") for i, m in enumerate(makers)]


conv = aten.convolution.default
UNARY_SHAPES = (lambda: (R(2, 4, 5, 5),), lambda: (R(3, 7),))
CASES: list[Case] = [
    # decomposed activations (the oracle's FlopCounterMode decomposes silu_backward, mish_backward)
    *[c for op in (aten.silu.default, aten.silu_.default, aten.mish.default, aten.mish_.default)
      for c in C(op, *UNARY_SHAPES)],
    # element-wise activations with a fused backward
    *[c for op in (aten.relu.default, aten.relu_.default, aten.hardswish.default, aten.hardswish_.default,
                   aten.hardsigmoid.default, aten.hardsigmoid_.default, aten.gelu.default,
                   aten.sigmoid.default, aten.sigmoid_.default, aten.tanh.default, aten.tanh_.default,
                   aten.leaky_relu.default, aten.leaky_relu_.default, aten.elu.default, aten.elu_.default)
      for c in C(op, *UNARY_SHAPES)],
    *C(aten.gelu.default, lambda: (R(2, 6),), kw={"approximate": "tanh"}),
    *C(aten.hardtanh.default, lambda: (R(2, 4, 5, 5), 0.0, 6.0)),
    *C(aten.hardtanh_.default, lambda: (R(3, 7), 0.0, 6.0)),
    *C(aten.threshold.default, lambda: (R(3, 7), 0.0, 0.0)),
    *C(aten.threshold_.default, lambda: (R(2, 4, 5, 5), 0.0, 0.0)),
    # softmax, normalisation
    *C(aten._softmax.default, lambda: (R(2, 4, 5, 5), 1, False), lambda: (R(3, 7), -1, False)),
    *C(aten._log_softmax.default, lambda: (R(2, 4, 5, 5), 1, False), lambda: (R(3, 7), -1, False)),
    *C(aten.native_layer_norm.default, lambda: (R(2, 5, 8), [8], R(8), R(8), 1e-5),
       lambda: (R(2, 3, 4, 4), [4, 4], R(4, 4), R(4, 4), 1e-5), lambda: (R(3, 6), [6], None, None, 1e-5)),
    *C(aten.native_batch_norm.default,
       lambda: (R(2, 4, 3, 3), R(4), R(4), torch.zeros(4), torch.ones(4), True, 0.1, 1e-5),
       lambda: (R(3, 5), R(5), R(5), torch.zeros(5), torch.ones(5), True, 0.1, 1e-5),
       lambda: (R(2, 4, 3, 3), R(4), R(4), torch.zeros(4), torch.ones(4), False, 0.1, 1e-5),
       grad=(0, 1, 2)),
    *C(aten.native_batch_norm.default,
       lambda: (R(2, 4, 3, 3), None, None, torch.zeros(4), torch.ones(4), True, 0.1, 1e-5), grad=(0,)),
    *C(aten._native_batch_norm_legit.default,
       lambda: (R(2, 4, 3, 3), R(4), R(4), torch.zeros(4), torch.ones(4), True, 0.1, 1e-5), grad=(0, 1, 2)),
    *C(aten._native_batch_norm_legit_no_training.default,
       lambda: (R(2, 4, 3, 3), R(4), R(4), torch.zeros(4), P(4), 0.1, 1e-5), grad=(0, 1, 2)),
    *C(aten.native_group_norm.default, lambda: (R(2, 8, 3, 3), R(8), R(8), 2, 8, 9, 4, 1e-5),
       lambda: (R(1, 6, 5), R(6), R(6), 1, 6, 5, 3, 1e-5)),
    # pooling, padding, resampling
    *C(aten.max_pool2d_with_indices.default, lambda: (R(2, 4, 6, 6), [3, 3], [2, 2], [1, 1]),
       lambda: (R(1, 3, 5, 7), [2, 2], [2, 2], [0, 0], [1, 1], True)),
    *C(aten.avg_pool2d.default, lambda: (R(2, 4, 6, 6), [2, 2], [2, 2]),
       lambda: (R(1, 3, 5, 7), [3, 3], [2, 2], [1, 1], False, False)),
    *C(aten._adaptive_avg_pool2d.default, lambda: (R(2, 4, 6, 6), [1, 1]), lambda: (R(1, 3, 7, 5), [3, 2])),
    *C(aten.constant_pad_nd.default, lambda: (R(2, 4, 5, 5), [1, 1, 1, 1]), lambda: (R(3, 7), [0, 2], 1.5)),
    *C(aten.upsample_nearest2d.default, lambda: (R(2, 4, 3, 3), [6, 6]), lambda: (R(1, 3, 2, 5), [4, 7])),
    *C(aten.upsample_bilinear2d.default, lambda: (R(2, 4, 3, 3), [6, 6], False),
       lambda: (R(1, 3, 2, 5), [4, 7], True)),
    # reductions, concatenation, views
    *C(aten.mean.dim, lambda: (R(2, 4, 5, 5), [2, 3], True), lambda: (R(3, 7), [0])),
    *C(aten.mean.default, lambda: (R(2, 4, 5, 5),)),
    *C(aten.sum.dim_IntList, lambda: (R(2, 4, 5, 5), [2, 3], True), lambda: (R(3, 7), [1])),
    *C(aten.sum.default, lambda: (R(3, 7),)),
    *C(aten.cat.default, lambda: ([R(2, 3, 4), R(2, 5, 4)], 1), lambda: ([R(3, 7), R(1, 7), R(2, 7)],)),
    *C(aten.view.default, lambda: (R(2, 4, 5, 5), [2, 100])),
    *C(aten._unsafe_view.default, lambda: (R(3, 7), [7, 3])),
    *C(aten.t.default, lambda: (R(3, 7),)),
    *C(aten.transpose.int, lambda: (R(2, 4, 5), 1, 2)),
    *C(aten.permute.default, lambda: (R(2, 4, 5, 5), [0, 2, 3, 1])),
    *C(aten.expand.default, lambda: (R(2, 1, 5), [2, 4, 5]), lambda: (R(5,), [3, 5])),
    *C(aten.unsqueeze.default, lambda: (R(3, 7), 1)),
    *C(aten.squeeze.dim, lambda: (R(3, 1, 7), 1)),
    *C(aten.slice.Tensor, lambda: (R(4, 6), 1, 1, 5), lambda: (R(2, 4, 5, 5), 0, 0, 1)),
    *C(aten.select.int, lambda: (R(4, 6), 0, 2)),
    *C(aten.alias.default, lambda: (R(3, 7),)),
    # broadcasting arithmetic
    *[c for op in (aten.mul.Tensor, aten.div.Tensor, aten.add.Tensor, aten.sub.Tensor)
      for c in C(op, lambda: (R(2, 4, 5, 5), P(2, 4, 1, 1)), lambda: (P(2, 1, 6), P(1, 8, 6)),
                 lambda: (R(8, 6), P(2, 1, 6)), lambda: (R(3, 7), P(3, 7)), lambda: (R(4, 1), P(4, 5)),
                 lambda: (R(3, 7), P()))],
    *[c for op in (aten.mul.Tensor, aten.div.Tensor) for c in C(op, lambda: (R(3, 7), 2.5))],
    *[c for op in (aten.add.Tensor, aten.sub.Tensor)
      for c in C(op, lambda: (R(2, 4, 5, 5), P(4, 1, 1)), lambda: (P(2, 1, 6), P(1, 8, 6)), kw={"alpha": 2})],
    *[c for op in (aten.mul_.Tensor, aten.div_.Tensor, aten.add_.Tensor, aten.sub_.Tensor)
      for c in C(op, lambda: (R(2, 4, 5, 5), P(4, 1, 1)), lambda: (R(3, 7), P(3, 7)))],
    # matmul family
    *C(aten.mm.default, lambda: (R(6, 10), R(10, 4)), lambda: (R(1, 7), R(7, 2))),
    *C(aten.bmm.default, lambda: (R(3, 6, 10), R(3, 10, 4))),
    *C(aten.addmm.default, lambda: (R(4), R(6, 10), R(10, 4)), lambda: (R(6, 4), R(6, 10), R(10, 4))),
    *C(aten.addmm.default, lambda: (R(5), R(3, 4), R(4, 5)), lambda: (R(3, 5), R(3, 4), R(4, 5)),
       kw={"beta": 0.5, "alpha": 2.0}),
    *C(aten.addmm.default, lambda: (R(1, 5), R(3, 4), R(4, 5)), kw={"beta": 0.5}),
    *C(aten.baddbmm.default, lambda: (R(2, 3, 5), R(2, 3, 4), R(2, 4, 5)),
       lambda: (R(5), R(2, 3, 4), R(2, 4, 5))),
    *C(aten.baddbmm.default, lambda: (R(3, 5), R(2, 3, 4), R(2, 4, 5)), kw={"beta": 2.0, "alpha": 0.5}),
    # convolution: oneDNN (batch > 1, grouped, depthwise, 5x5, 1d) and native (batch 1: slow2d, dilated,
    # transposed, 3d) backends; with and without bias
    *C(conv,
       lambda: (R(2, 4, 5, 5), R(6, 4, 3, 3), R(6), [1, 1], [1, 1], [1, 1], False, [0, 0], 1),
       lambda: (R(1, 4, 5, 5), R(6, 4, 3, 3), R(6), [1, 1], [1, 1], [1, 1], False, [0, 0], 1),
       lambda: (R(1, 4, 6, 6), R(4, 1, 3, 3), R(4), [1, 1], [1, 1], [1, 1], False, [0, 0], 4),
       lambda: (R(1, 4, 6, 6), R(6, 2, 3, 3), R(6), [2, 2], [1, 1], [1, 1], False, [0, 0], 2),
       lambda: (R(1, 3, 12, 12), R(8, 3, 5, 5), R(8), [1, 1], [2, 2], [1, 1], False, [0, 0], 1),
       lambda: (R(1, 4, 5, 5), R(6, 4, 1, 1), R(6), [1, 1], [0, 0], [1, 1], False, [0, 0], 1),
       lambda: (R(1, 4, 7, 7), R(6, 4, 3, 3), R(6), [1, 1], [2, 2], [2, 2], False, [0, 0], 1),
       lambda: (R(1, 4, 5, 5), R(4, 3, 2, 2), R(3), [2, 2], [0, 0], [1, 1], True, [0, 0], 1),
       lambda: (R(2, 4, 5, 5), R(4, 3, 3, 3), R(3), [2, 2], [1, 1], [1, 1], True, [1, 1], 1),
       lambda: (R(2, 3, 9), R(5, 3, 3), R(5), [1], [0], [1], False, [0], 1),
       lambda: (R(1, 2, 4, 4, 4), R(3, 2, 3, 3, 3), R(3), [1] * 3, [1] * 3, [1] * 3, False, [0] * 3, 1),
       lambda: (R(2, 4, 5, 5), R(6, 4, 3, 3), None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)),
    # attention (CPU flash kernel): every gradient is computed, needed or not
    *C(aten._scaled_dot_product_flash_attention_for_cpu.default,
       lambda: (R(2, 4, 16, 8), R(2, 4, 12, 8), R(2, 4, 12, 8)),
       lambda: (R(1, 2, 5, 4), R(1, 2, 7, 4), R(1, 2, 7, 4))),
    *C(aten._scaled_dot_product_flash_attention_for_cpu.default,
       lambda: (R(2, 2, 6, 4), R(2, 2, 6, 4), R(2, 2, 6, 4)), kw={"is_causal": True}),
]


def _patterns(inputs: Metas, grad: tuple[int, ...] | None) -> list[tuple[bool, ...]]:
    """Every non-empty needs-grad pattern over the inputs that may require grad."""
    allowed = [i for i, m in enumerate(inputs) if m.dtype.is_floating_point and (grad is None or i in grad)]
    return [tuple(i in combo for i in range(len(inputs)))
            for r in range(1, len(allowed) + 1) for combo in itertools.combinations(allowed, r)]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule_matches_probe(case: Case) -> None:
    """Under the oracle's FlopCounterMode (what measure.py sees) and in a plain eager backward."""
    torch.manual_seed(0)
    args = case.make()
    args_meta, inputs, outputs = metas(case.op, args, case.kwargs)
    kwargs_meta = to_meta(case.kwargs) or None
    patterns = _patterns(inputs, case.grad)
    assert patterns
    for needs, flop_counter in itertools.product(patterns, (True, False)):
        rule = W.workspace_rule(case.op, args_meta, inputs, outputs, needs, kwargs_meta,
                                flop_counter=flop_counter)
        assert rule is not None, f"no rule for {case.op} {inputs}"
        trace = W.trace_backward(case.op, args_meta, inputs, outputs, needs, kwargs_meta,
                                 flop_counter=flop_counter)
        assert rule == trace.workspace_bytes, (
            f"{case.op} needs={needs} flop_counter={flop_counter}: rule {rule} B, PyTorch "
            f"{trace.workspace_bytes} B (peak {trace.peak_bytes} B, gradients {trace.gradient_bytes} B, "
            f"ops {trace.ops})")


def test_every_registered_packet_has_a_case() -> None:
    covered = {c.op.overloadpacket for c in CASES}
    missing = sorted(str(p) for p in W.WORKSPACE_REGISTRY if p not in covered)
    assert not missing, f"registered without a test case: {missing}"


# --------------------------------------------------------------------------------------------------
# Facts worth pinning down by name
# --------------------------------------------------------------------------------------------------


def _ws(op: Any, args: tuple, needs: tuple[bool, ...], kwargs: dict | None = None) -> int:
    args_meta, inputs, outputs = metas(op, args, kwargs or {})
    return W.backward_workspace(op, args_meta, inputs, outputs, needs, to_meta(kwargs or {}))


def test_silu_backward_is_decomposed_only_under_the_flop_counter() -> None:
    args_meta, inputs, outputs = metas(aten.silu.default, (R(2, 8, 6, 6),), {})
    counted = W.trace_backward(aten.silu.default, args_meta, inputs, outputs, (True,))
    plain = W.trace_backward(aten.silu.default, args_meta, inputs, outputs, (True,), flop_counter=False)
    assert counted.workspace_bytes == 5 * inputs[0].nbytes
    assert "aten.sigmoid.default" in counted.ops and "aten.silu_backward.default" not in counted.ops
    assert plain.workspace_bytes == 0 and plain.ops.count("aten.silu_backward.default") == 1
    call = (aten.silu.default, args_meta, inputs, outputs, (True,))
    assert W.backward_workspace(*call) == 5 * inputs[0].nbytes
    assert W.backward_workspace(*call, flop_counter=False) == 0


def test_conv_bias_only_costs_a_weight_gradient_on_onednn() -> None:
    w = R(6, 4, 3, 3)
    onednn = (R(2, 4, 5, 5), w, R(6), [1, 1], [1, 1], [1, 1], False, [0, 0], 1)  # batch 2: oneDNN
    native = (R(1, 4, 5, 5), w, R(6), [1, 1], [1, 1], [1, 1], False, [0, 0], 1)  # batch 1, 3x3: slow2d
    bias_only = (False, False, True)
    assert _ws(conv, onednn, bias_only) == w.numel() * 4
    assert _ws(conv, native, bias_only) == 0
    assert _ws(conv, onednn, (True, True, True)) == 0


def test_broadcast_operand_gradient_is_reduced_from_an_output_sized_tensor() -> None:
    x, scale = R(2, 8, 6, 6), P(2, 8, 1, 1)  # squeeze-and-excitation style
    out_bytes = x.numel() * 4
    assert _ws(aten.mul.Tensor, (x, scale), (False, True)) == out_bytes
    assert _ws(aten.mul.Tensor, (x, scale), (True, False)) == 0
    assert _ws(aten.add.Tensor, (x, scale), (True, True)) == 0  # reduced straight from the incoming grad
    assert _ws(aten.div.Tensor, (x, scale), (False, True)) == 4 * out_bytes - scale.numel() * 4


def test_sdpa_cpu_computes_every_gradient() -> None:
    q, k, v = R(1, 2, 8, 4), R(1, 2, 6, 4), R(1, 2, 6, 4)
    op = aten._scaled_dot_product_flash_attention_for_cpu.default
    assert _ws(op, (q, k, v), (True, False, False)) == (k.numel() + v.numel()) * 4


def test_needing_nothing_costs_nothing() -> None:
    assert _ws(aten.silu.default, (R(3, 4),), (False,)) == 0
    args_meta, inputs, outputs = metas(aten.erf.default, (R(3, 4),), {})
    assert W.probe_workspace(aten.erf.default, args_meta, inputs, outputs, (False,)) == 0


# --------------------------------------------------------------------------------------------------
# The probe: fallback, cache, failures, and agreement with measure.py's own tracker
# --------------------------------------------------------------------------------------------------


def test_unknown_op_falls_back_to_the_probe() -> None:
    op = aten.pow.Tensor_Scalar  # grad · (3 · x²): x², 3 · x² are temporaries
    args = (P(4, 5), 3)
    args_meta, inputs, outputs = metas(op, args, {})
    assert W.workspace_rule(op, args_meta, inputs, outputs, (True,)) is None
    W.clear_workspace_cache()
    value = W.backward_workspace(op, args_meta, inputs, outputs, (True,))
    assert W.workspace_cache_size() == 1
    assert value == W.trace_backward(op, args_meta, inputs, outputs, (True,)).workspace_bytes
    assert value > 0


def test_probe_is_cached() -> None:
    op = CountingOp(aten.div.Tensor)
    args_meta, inputs, outputs = metas(aten.div.Tensor, (R(3, 4), P(1, 4)), {})
    first = W.probe_workspace(op, args_meta, inputs, outputs, (True, True))
    assert op.calls == 1 and first > 0
    assert W.probe_workspace(op, args_meta, inputs, outputs, (True, True)) == first
    assert op.calls == 1  # answered from the cache
    W.probe_workspace(op, args_meta, inputs, outputs, (True, False))
    assert op.calls == 2  # another needs-grad pattern is another probe
    other = to_meta((R(2, 4), P(1, 4)))
    W.probe_workspace(op, other, other, (TensorMeta((2, 4), torch.float32),), (True, True))
    assert op.calls == 3  # and so is another shape


def test_probe_failure_answers_zero_and_is_visible() -> None:
    bad = (TensorMeta((3, 4), torch.float32), TensorMeta((5, 6), torch.float32))  # mm shape mismatch
    out = (TensorMeta((3, 6), torch.float32),)
    n = len(W.WORKSPACE_PROBE_FAILURES)
    assert W.backward_workspace(aten.addcmul.default, None, bad, out, (True, True)) == 0  # no args recorded
    assert W.probe_workspace(aten.mm.default, bad, bad, out, (True, True)) == 0
    failures = W.WORKSPACE_PROBE_FAILURES[n:]
    assert [f.op for f in failures] == ["aten.addcmul.default", "aten.mm.default"]
    assert "no recorded arguments" in failures[0].reason and failures[1].needs_grad == (True, True)


class _Dispatched(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_probe_inside_a_dispatch_mode_and_no_grad() -> None:
    """The planner records under no_grad inside a TorchDispatchMode; the probe must still work."""
    args_meta, inputs, outputs = metas(aten.silu.default, (R(3, 4),), {})
    mode = _Dispatched()
    with torch.no_grad(), mode:
        trace = W.trace_backward(aten.silu.default, args_meta, inputs, outputs, (True,))
    assert trace.workspace_bytes == 5 * 48
    assert mode.ops == []  # the probe's own ops were not recorded


def _oracle_peak(op: Any, args: tuple, needs: tuple[bool, ...]) -> int:
    """Peak of new live bytes during the op's backward under measure.py's tracker, nested as there."""
    leaves: list[torch.Tensor] = []
    real = []
    for a, n in zip(args, needs, strict=True):
        if n and isinstance(a, torch.Tensor):
            leaves.append(a.detach().clone().requires_grad_())
            real.append(leaves[-1].clone())
        else:
            real.append(a)
    tracker = M._LiveBytes()
    for t in [*args, *leaves, *real]:
        if isinstance(t, torch.Tensor):
            tracker.add(t, "baseline", record=False)

    def pack(t: torch.Tensor) -> torch.Tensor:
        tracker.add(t, "saved")
        return t

    try:
        with tracker:
            with FlopCounterMode(display=False), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = op(*real)
            seed = torch.ones_like(out)
            tracker.add(seed, "seed")
            start = tracker.peak = tracker.current
            with FlopCounterMode(display=False):
                torch.autograd.grad([out], leaves, [seed])
        return tracker.peak - start
    finally:
        tracker.detach_finalizers()


@pytest.mark.parametrize("op,args,needs", [
    (aten.silu.default, (R(2, 8, 6, 6),), (True,)),
    (aten.silu_.default, (R(2, 8, 6, 6),), (True,)),
    (aten.div.Tensor, (R(2, 8, 6, 6), P(2, 8, 1, 1)), (True, True)),
    (aten.mul.Tensor, (R(8, 6), P(2, 1, 6)), (True, True)),
    (conv, (R(2, 4, 5, 5), R(6, 4, 3, 3), R(6), [1, 1], [1, 1], [1, 1], False, [0, 0], 1),
     (False, False, True, False, False, False, False, False, False)),
])
def test_probe_peak_is_what_measure_py_sees(op: Any, args: tuple, needs: tuple[bool, ...]) -> None:
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    flat_needs = tuple(n for a, n in zip(args, needs, strict=True) if isinstance(a, torch.Tensor))
    args_meta, inputs, outputs = metas(op, args, {})
    trace = W.trace_backward(op, args_meta, inputs, outputs, flat_needs)
    assert trace.peak_bytes == _oracle_peak(op, args, needs) > 0
    assert len(tensors) == len(inputs)
