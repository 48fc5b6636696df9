"""How budgetplan runs the forward passes it only needs for shapes, storages and op records.

Loading checks a model with one forward pass (``loading._check_forward``) and the graph recorder runs
another (``build_layer_graph``), whoever calls them; neither needs fast
kernels, but both pay for slow ones: with several intra-op threads on a busy 2-core machine PyTorch's
OpenMP workers spin against each other (a 40 ms MobileNetV2 forward took 2.5 s), and models whose eval-mode
activations vanish run on denormal floats, which x86 CPUs process up to 100x slower. :func:`planning_compute`
runs such passes on one thread with denormals flushed to zero and restores both settings afterwards.
The values computed under it are never used for anything but shapes and storage identities.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["planning_compute"]


@contextmanager
def planning_compute() -> Iterator[None]:
    """One intra-op thread and denormals flushed to zero inside the block; the caller's settings after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    flushed = torch.set_flush_denormal(True)  # returns False where the CPU cannot flush
    try:
        yield
    finally:
        if flushed:
            torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
