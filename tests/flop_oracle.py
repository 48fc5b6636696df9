"""Backward-FLOP oracle: ``FlopCounterMode``, with two gaps of it filled from its own formulas.

* ``FlopCounterMode`` over-counts ``convolution_backward`` for grouped (and depthwise) convolutions: its
  weight-gradient formula ignores ``groups``. Each ``convolution_backward`` that autograd really ran is
  re-priced with FlopCounterMode's *forward* formula (``torch.utils.flop_counter.conv_flop_count``, which
  handles groups): the input gradient of a convolution is a transposed convolution of the output
  gradient, the weight gradient a correlation with the forward's MAC count.
* It counts nothing for the CPU attention backward (``_scaled_dot_product_flash_attention_for_cpu_backward``
  is not in its registry); those calls are priced with its ``sdpa_backward_flop_count``.

Neither part is budgetplan code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_backward_flop_count

aten = torch.ops.aten


class _ConvBackwardCalls(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.flops = 0
        self.replaced_conv = False

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func.overloadpacket is aten.convolution_backward:
            grad_out, inp, weight = args[0], args[1], args[2]
            transposed, mask = args[7], args[10]
            forward_flops = conv_flop_count(list(inp.shape), list(weight.shape), list(grad_out.shape), transposed)
            self.flops += forward_flops * (int(bool(mask[0])) + int(bool(mask[1])))
            self.replaced_conv = True
        elif func.overloadpacket is aten._scaled_dot_product_flash_attention_for_cpu_backward:
            grad_out, query, key, value = args[0], args[1], args[2], args[3]
            self.flops += sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)
        return func(*args, **(kwargs or {}))


def backward_flops(step: Callable[[], torch.Tensor]) -> int:
    """Backward FLOPs of ``step().backward()``: FlopCounterMode's count with conv backward re-priced."""
    loss = step()
    convs = _ConvBackwardCalls()
    with FlopCounterMode(display=False) as counter, convs:
        loss.backward()
    counts = counter.get_flop_counts().get("Global", {})
    fcm_conv_backward = int(counts.get(aten.convolution_backward, 0))
    return int(counter.get_total_flops()) - fcm_conv_backward + convs.flops
