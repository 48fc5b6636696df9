"""The base of budgetplan's ``TorchDispatchMode``s (the graph recorder, the live-bytes oracle, the
workspace probe).

PyTorch wraps every mode's ``__torch_dispatch__`` in ``torch._dynamo.disable`` unless the mode opts out,
which imports ``torch._dynamo`` on first use (2-3 s) and adds a wrapper to every dispatched op. None of
these modes compiles anything, so they opt out.
"""

from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["RecordingMode"]


class RecordingMode(TorchDispatchMode):
    """A ``TorchDispatchMode`` that opts out of PyTorch's per-mode dynamo wrapper (see the module doc)."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False
