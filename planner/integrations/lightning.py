"""``BudgetCallback``: per-epoch re-selection under a memory budget inside a Lightning 2.x ``Trainer``.

::

    from budgetplan.integrations.lightning import BudgetCallback

    callback = BudgetCallback(val_images[:10], target="cortex-m7", ram="64k", example_input=x[:1])
    trainer = lightning.Trainer(max_epochs=10, callbacks=[callback])   # strategy="ddp" works too
    trainer.fit(lit_module, loader)

What it does, hook by hook (docs/api.md, "Lightning"):

* ``setup`` (stage ``fit``, after the process group exists and before the strategy wraps the model or
  builds the optimizers): plans (``planner_for`` + the initial plan, or the ``plan`` given), compiles the
  LightningModule's network in place (``budgetplan.compile`` through
  :meth:`~budgetplan.runtime.reselect.Reselector.compile`: frozen parameters stop requiring a gradient,
  channel subsets get row parameters) and registers the row parameters on the LightningModule, so
  ``configure_optimizers``' ``self.parameters()`` and DDP see them. The rows add nothing to the
  LightningModule's ``state_dict``: they are written into the original tensors before it is read, so a
  checkpoint has the model's own keys and shapes.
* ``on_train_epoch_end``: :meth:`Reselector.step` (velocity, re-solve, re-price, ``set_update``; on
  several ranks: one all-reduce of the velocities, rank 0 solves, the plan is broadcast). When the plan
  changed, DDP's reducer is rebuilt around the trained parameters and the optimizers and LR schedulers
  are built again through ``trainer.strategy.setup_optimizers`` (your ``configure_optimizers``); the
  new ones keep the old ones' hyper-parameters (learning rate as scheduled so far, momentum, ...), the
  optimizer state of tensors trained before and after, and the schedulers' state. Each
  :class:`~budgetplan.runtime.reselect.EpochLog` goes to the Trainer's loggers (``budgetplan/...``).
* ``state_dict`` / ``load_state_dict``: the plan in use, the log and the velocity history; a run resumed
  from a checkpoint continues with the same update set and the same next velocity.
* ``teardown``: the rows are written back and the network is restored (:meth:`CompiledModule.release`):
  after ``fit`` it is your plain module with the trained weights.

Strategies: single device and ``DDPStrategy`` (``"ddp"``, ``"ddp_spawn"``, ...); FSDP and DeepSpeed shard
parameters, which a channel subset cannot follow (an :class:`InputError` at ``setup``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

try:
    import lightning.pytorch as pl
    from lightning.fabric.utilities.optimizer import _optimizers_to_device
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("budgetplan.integrations.lightning needs Lightning 2.x: pip install 'budgetplan[lightning]'") \
        from exc

from budgetplan.errors import InputError
from budgetplan.integrations.distributed import rebuild_ddp
from budgetplan.runtime.compiled import CompiledModule
from budgetplan.runtime.reselect import EpochLog, Reselector
from budgetplan.selection.planner import Planner, PlanResult, planner_for

__all__ = ["BudgetCallback"]

_log = logging.getLogger(__name__)
_HOLDER = "budgetplan_rows"  # the attribute of the LightningModule that holds the row parameters
#: EpochLog fields sent to the Trainer's loggers (numbers only).
LOGGED_FIELDS = ("groups_changed", "groups_selected", "groups_total", "predicted_peak_bytes", "budget_bytes",
                 "solve_seconds", "score_seconds", "switch_seconds", "objective", "fits", "kept_previous",
                 "collective_bytes")


class _RowHolder(nn.Module):
    """Holds the compiled module's row parameters as parameters of the LightningModule, outside its
    state dict: they are saved through the original tensors (synced before every ``state_dict``), and
    after a load the rows re-read those tensors (version counters, see budgetplan.runtime.compiled)."""

    def set_rows(self, compiled: CompiledModule) -> None:
        self._parameters.clear()
        for binding in compiled.row_bindings():
            self._parameters[binding.parameter.replace(".", "__")] = binding.rows

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        return None

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        return None


class BudgetCallback(pl.Callback):
    """Plan, compile, re-select every epoch and restore, for a LightningModule (module docstring).

    Args:
        val_batch: the fixed validation batch of the velocity (inputs, or ``(inputs, targets)`` for
            ``scores="grad-norm"``), the same on every rank.
        plan: a :class:`~budgetplan.selection.planner.PlanResult` (its planner, and the plan as the first
            epoch's) or a :class:`~budgetplan.selection.planner.Planner`; ``None``: planned at ``setup``
            with :func:`~budgetplan.selection.planner.planner_for` (``target``, ``ram``, ``group_size``,
            ``batchnorm``, ``planner_options``) on ``example_input``.
        module: the network inside the LightningModule, as an attribute path (``"model"``,
            ``"net.backbone"``); ``""``: the LightningModule itself; ``None`` (default): its only child
            module (an :class:`InputError` names the children when there are several).
        example_input: one training input of the batch size the budget is for (default: the first
            validation sample).
        target, ram, group_size, batchnorm: as in ``budgetplan.plan`` (``batchnorm`` is also the compiled
            module's BatchNorm policy).
        planner_options: more :class:`Planner` options (``optimizer``, ``solver``, ``time_limit``, ``gap``).
        log_prefix: prefix of the metrics sent to the loggers.
        reselect_options: :class:`~budgetplan.runtime.reselect.Reselector` options (``scores``, ``strategy``,
            ``gap``, ``time_limit``, ``on_overflow``, ``momentum``, ``seed``, ...).

    Attributes (after ``setup``): ``reselector``, ``compiled``, ``planner``; ``reselector.log`` is the
    list of :class:`EpochLog`.
    """

    def __init__(self, val_batch: Any, *, plan: PlanResult | Planner | None = None, module: str | None = None,
                 example_input: Any = None, target: Any = "host", ram: str | int | None = None,
                 group_size: int = 1, batchnorm: str = "frozen", planner_options: Mapping[str, Any] | None = None,
                 log_prefix: str = "budgetplan/", **reselect_options: Any) -> None:
        super().__init__()
        self.val_batch = val_batch
        self.plan = plan
        self.module_path = module
        self.example_input = example_input
        self.target = target
        self.ram = ram
        self.group_size = group_size
        self.batchnorm = batchnorm
        self.planner_options = dict(planner_options or {})
        self.log_prefix = log_prefix
        self.reselect_options = reselect_options
        self.reselector: Reselector | None = None
        self.compiled: CompiledModule | None = None
        self.planner: Planner | None = None
        self._pl_module: pl.LightningModule | None = None
        self._holder: _RowHolder | None = None
        self._hook: Any = None
        self._pending_state: Mapping[str, Any] | None = None
        self._logged_epochs: set[int] = set()

    # -- the network ---------------------------------------------------------------------------------
    def _network(self, pl_module: pl.LightningModule) -> nn.Module:
        path = self.module_path
        if path is None:
            children = [name for name, _ in pl_module.named_children() if name != _HOLDER]
            if len(children) == 1:
                path = children[0]
            elif not children:
                path = ""
            else:
                raise InputError(f"the LightningModule has {len(children)} submodules ({', '.join(children)}): "
                                 "say which one is the network with BudgetCallback(module=...)")
            self.module_path = path
        try:
            return pl_module.get_submodule(path) if path else pl_module
        except AttributeError:
            raise InputError(f"the LightningModule has no submodule {path!r}") from None

    def _inputs(self) -> tuple[Any, Any]:
        batch = self.val_batch
        inputs = batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else batch
        if not isinstance(inputs, torch.Tensor) or inputs.dim() == 0 or inputs.shape[0] == 0:
            raise InputError("BudgetCallback needs a validation batch: an inputs tensor or (inputs, targets)")
        example = self.example_input if self.example_input is not None else inputs[:1]
        return inputs, example

    @contextmanager
    def _rows_detached(self) -> Iterator[None]:
        """Without the row holder on the LightningModule: when the network is the LightningModule itself,
        the compiled module must not see the rows as parameters of the model."""
        pl_module = self._pl_module
        holder = pl_module._modules.pop(_HOLDER, None) if pl_module is not None else None
        try:
            yield
        finally:
            if holder is not None and pl_module is not None:
                pl_module._modules[_HOLDER] = holder

    def _attach_rows(self) -> None:
        assert self._holder is not None and self.compiled is not None
        self._holder.set_rows(self.compiled)

    # -- Lightning hooks -------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.compiled is not None:
            return
        if not isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy)):
            raise InputError(f"BudgetCallback works with single-device and DDP strategies, not "
                             f"{type(trainer.strategy).__name__} (it shards parameters; a channel subset cannot "
                             "follow)")
        network = self._network(pl_module)
        _, example = self._inputs()
        plan = self.plan
        if plan is None:
            plan = planner_for(network, example, target=self.target, ram=self.ram, group_size=self.group_size,
                               batchnorm=self.batchnorm, **self.planner_options)
        self.planner = plan.planner if isinstance(plan, PlanResult) else plan
        self.reselector = Reselector(plan, self.val_batch, **self.reselect_options)
        self.compiled = self.reselector.compile(network, batchnorm=self.batchnorm, example_inputs=example)
        self._pl_module = pl_module
        self._holder = _RowHolder()
        pl_module.add_module(_HOLDER, self._holder)
        self._attach_rows()
        compiled = self.compiled
        self._hook = pl_module.register_state_dict_pre_hook(lambda *_: compiled.sync())
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self.load_state_dict(state)
        _log.info("BudgetCallback: %s compiled, %d of %d groups trained, predicted peak %d of %d bytes",
                  self.module_path or type(pl_module).__name__, self.reselector.log[-1].groups_selected,
                  self.reselector.log[-1].groups_total, self.reselector.log[-1].predicted_peak_bytes,
                  self.reselector.planner.budget_bytes)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.reselector is None:
            return
        self.reselector.to(pl_module.device)
        self._log_epoch(trainer, self.reselector.log[-1])

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sel = self.reselector
        if sel is None:
            return
        if sel.epoch < trainer.current_epoch:
            # resumed from a checkpoint written after the last epoch ended but before its re-selection
            # (e.g. at validation end): do it now, on the same weights the uninterrupted run used
            _log.info("BudgetCallback: re-selection of epoch %d was not in the checkpoint; doing it now", sel.epoch + 1)
            self._reselect(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.reselector is not None:
            self._reselect(trainer)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.compiled is None:
            return
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        pl_module._modules.pop(_HOLDER, None)
        self.compiled.release()
        self.compiled = None
        self._holder = None
        self._pl_module = None

    # -- re-selection ----------------------------------------------------------------------------------
    def _reselect(self, trainer: pl.Trainer) -> None:
        sel, compiled = self.reselector, self.compiled
        assert sel is not None and compiled is not None
        before = compiled.update
        with self._rows_detached():
            sel.step(compiled)
        if compiled.update != before:
            self._attach_rows()
            self._rebuild(trainer)
        self._log_epoch(trainer, sel.log[-1])

    def _rebuild(self, trainer: pl.Trainer) -> None:
        """DDP's reducer around the trained parameters, then the optimizers and schedulers through the
        strategy, carrying over what survives the change of plan."""
        strategy = trainer.strategy
        pl_module = self._pl_module
        assert pl_module is not None
        if isinstance(strategy.model, torch.nn.parallel.DistributedDataParallel):
            strategy.model = rebuild_ddp(pl_module, strategy.model)
            if hasattr(strategy, "_register_ddp_hooks"):
                strategy._register_ddp_hooks()
        old_optimizers = list(strategy.optimizers)
        old_schedulers = list(strategy.lr_scheduler_configs)
        strategy.setup_optimizers(trainer)
        for old, new in zip(old_optimizers, strategy.optimizers):
            _carry_optimizer(old, new)
        for old_cfg, new_cfg in zip(old_schedulers, strategy.lr_scheduler_configs):
            if type(old_cfg.scheduler) is type(new_cfg.scheduler):
                new_cfg.scheduler.load_state_dict(old_cfg.scheduler.state_dict())
        _optimizers_to_device(strategy.optimizers, strategy.root_device)

    def _log_epoch(self, trainer: pl.Trainer, entry: EpochLog) -> None:
        if entry.epoch in self._logged_epochs:
            return
        self._logged_epochs.add(entry.epoch)
        metrics = {f"{self.log_prefix}{name}": float(getattr(entry, name)) for name in LOGGED_FIELDS}
        metrics[f"{self.log_prefix}epoch"] = float(entry.epoch)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    # -- checkpoints -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {} if self.reselector is None else {"reselector": self.reselector.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "reselector" not in state_dict:
            return
        if self.reselector is None or self.compiled is None:  # loaded before setup: applied there
            self._pending_state = state_dict
            return
        with self._rows_detached():
            self.reselector.load_state_dict(state_dict["reselector"], self.compiled)
        self._attach_rows()
        self._logged_epochs.update(entry.epoch for entry in self.reselector.log)


def _carry_optimizer(old: torch.optim.Optimizer, new: torch.optim.Optimizer) -> None:
    """Hyper-parameters of matching parameter groups (learning rate as scheduled so far, momentum, ...)
    and the state of tensors that both optimizers train."""
    if len(old.param_groups) == len(new.param_groups):
        for old_group, new_group in zip(old.param_groups, new.param_groups):
            for key, value in old_group.items():
                if key != "params":
                    new_group[key] = value
    kept = {id(p) for group in new.param_groups for p in group["params"]}
    for p, state in old.state.items():
        if id(p) in kept and state:
            new.state[p] = state
