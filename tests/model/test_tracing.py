"""budgetplan.model.tracing on models written the way published libraries write them (tests/model_styles.py).

For every style model: ``trace_model`` (auto) uses ``torch.fx.symbolic_trace`` where it can and falls
back to ``torch.export`` exactly for the models whose forward has Python control flow on shapes, keeping
a reason that names the user's source line; the traced program computes what the model computes (eval
mode, against the model's own forward); ``fx`` alone refuses the untraceable ones in one line.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from model_styles import STYLE_MODELS, SYMBOLIC_TRACE_FAILS

from budgetplan.errors import TraceError
from budgetplan.model.tracing import trace_model

NAMES = sorted(STYLE_MODELS)


@pytest.mark.parametrize("name", NAMES)
def test_auto_tracing_falls_back_exactly_where_needed_and_computes_the_same(name: str) -> None:
    model, shape = STYLE_MODELS[name]()
    model.eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = trace_model(model, (x,))
    if name in SYMBOLIC_TRACE_FAILS:
        assert traced.method == "export" and traced.exported is not None
        assert traced.fallback_reason and "model_styles.py:" in traced.fallback_reason
    else:
        assert traced.method == "symbolic_trace" and traced.fallback_reason is None
    with torch.no_grad():
        torch.testing.assert_close(traced.graph_module(x), model(x))


@pytest.mark.parametrize("name", sorted(SYMBOLIC_TRACE_FAILS))
def test_fx_only_refuses_control_flow_in_one_line(name: str) -> None:
    model, shape = STYLE_MODELS[name]()
    with pytest.raises(TraceError) as info:
        trace_model(model, (torch.randn(shape),), method="fx")
    message = str(info.value)
    assert "\n" not in message and "--trace export" in message


def test_unknown_method_is_refused() -> None:
    model, shape = STYLE_MODELS[NAMES[0]]()
    with pytest.raises(TraceError, match="unknown trace method"):
        trace_model(model, (torch.randn(shape),), method="jit")  # type: ignore[arg-type]
