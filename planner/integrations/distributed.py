"""Re-selection under ``torch.distributed`` with plain ``DistributedDataParallel`` (``torchrun``).

The :class:`~budgetplan.runtime.reselect.Reselector` already makes every rank agree (velocities averaged
by one all-reduce, rank 0 solves and broadcasts the plan, every rank calls ``set_update`` in the same
step). What changes with the update set is the set of tensors DDP must reduce: parameters switched off
no longer get a gradient, the new row parameters of channel subsets are new tensors. DDP fixes its
reducer (buckets, autograd hooks) when it is built, so after a step that changed the plan the model is
wrapped again: :func:`reselect_ddp` does the step and returns a new ``DistributedDataParallel`` around the
same compiled module, with the old one's options, whose reducer covers exactly the trained parameters.
The new wrapper is built with ``init_sync=False``: the ranks' weights are already identical (they trained
under DDP and switched to the same plan), so nothing is broadcast again.

::

    sel = Reselector(planner, val_inputs)            # on every rank, after init_process_group
    compiled = sel.compile(model)
    ddp = DistributedDataParallel(compiled)          # wrap the compiled module, not `model`
    for epoch in range(epochs):
        optimizer = torch.optim.SGD(compiled.trainable_parameters(), lr=0.05)
        train_one_epoch(ddp, optimizer)              # a DistributedSampler shards the data
        ddp = reselect_ddp(sel, ddp)                 # same plan on every rank; reducer rebuilt if it changed

See docs/distributed.md for what each rank computes and sends.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from budgetplan.errors import InputError
from budgetplan.runtime.compiled import CompiledModule
from budgetplan.runtime.reselect import Reselector

__all__ = ["ddp_options", "rebuild_ddp", "reduced_bytes_per_step", "reselect_ddp"]

_log = logging.getLogger(__name__)


def ddp_options(ddp: DistributedDataParallel) -> dict[str, Any]:
    """The constructor options of an existing wrapper that a rebuilt one must keep."""
    options: dict[str, Any] = {
        "device_ids": ddp.device_ids,
        "output_device": ddp.output_device,
        "process_group": ddp.process_group,
        "find_unused_parameters": ddp.find_unused_parameters,
        "gradient_as_bucket_view": ddp.gradient_as_bucket_view,
        "static_graph": bool(getattr(ddp, "static_graph", False)),
    }
    if not getattr(ddp, "bucket_bytes_cap_default", False):  # a size the user chose (else DDP's defaults)
        options["bucket_cap_mb"] = ddp.bucket_bytes_cap / (1024 * 1024)
    if hasattr(ddp, "forward_sync_buffers"):
        options["forward_sync_buffers"] = ddp.forward_sync_buffers
    return options


def rebuild_ddp(module: nn.Module, old: DistributedDataParallel | None = None,
                **options: Any) -> DistributedDataParallel:
    """A new ``DistributedDataParallel`` around ``module`` whose reducer covers the parameters that
    require a gradient now. ``old``: the wrapper it replaces (its options are kept, its autograd hooks
    removed); ``options`` override them. No parameter is broadcast (``init_sync=False``): call it only
    when the ranks' weights are identical, as they are after DDP training and a shared re-selection."""
    if not any(p.requires_grad for p in module.parameters()):
        raise InputError("the plan trains no parameter: there is nothing for DistributedDataParallel to reduce")
    kwargs = ddp_options(old) if old is not None else {}
    kwargs.update(options)
    if old is not None and hasattr(old, "_remove_autograd_hooks"):
        old._remove_autograd_hooks()  # the old reducer must not see the new backward passes
    kwargs.setdefault("init_sync", False)
    return DistributedDataParallel(module, **kwargs)


def reselect_ddp(selector: Reselector, ddp: DistributedDataParallel, **options: Any) -> DistributedDataParallel:
    """After an epoch, on every rank: ``selector.step`` on the compiled module inside ``ddp``. Returns
    ``ddp`` itself when the update set did not change, else :func:`rebuild_ddp` of the same compiled
    module (build the optimizer again from ``compiled.trainable_parameters()`` either way after a change:
    the row parameters are new). ``options`` override the rebuilt wrapper's DDP options."""
    compiled = ddp.module
    if not isinstance(compiled, CompiledModule):
        raise InputError("reselect_ddp needs DistributedDataParallel(compiled) around the module that "
                         "budgetplan.compile / Reselector.compile returned (its row parameters must be inside DDP)")
    before = compiled.update
    selector.step(compiled)
    if compiled.update == before:
        return ddp
    new = rebuild_ddp(compiled, ddp, **options)
    _log.debug("rank %d: DDP rebuilt over %d trained tensors", selector.rank,
               sum(1 for p in compiled.parameters() if p.requires_grad))
    return new


def reduced_bytes_per_step(module: nn.Module) -> int:
    """Bytes of gradients DDP all-reduces per optimizer step for ``module`` as it is now: every tensor that
    requires a gradient (frozen ones are not in the reducer), at its element size."""
    return sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
