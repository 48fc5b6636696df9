"""Import paths from before the package was split into rooms (0.1: ``budgetplan.planning``,
``budgetplan.estimate_mcu``, ...), kept working for one release.

``import budgetplan.planning`` (and ``from budgetplan import planning``) gives the module at its new
path, ``budgetplan.selection.planner``, with a ``DeprecationWarning`` naming that path. The module object
is the same one, so patching or ``isinstance`` checks through either name agree. ``budgetplan.compile``
is not deprecated: it is the public function (see :mod:`budgetplan.runtime.compiled`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

__all__ = ["MOVED", "install"]

#: old submodule name -> its module now (inside ``budgetplan``)
MOVED: dict[str, str] = {
    "compute": "model.compute",
    "loading": "model.loading",
    "zoo": "model.zoo",
    "tracing": "model.tracing",
    "graph": "model.graph",
    "update_set": "model.update_set",
    "backward": "pricing.gradient_flow",
    "forward": "pricing.inference",
    "estimate": "pricing.host.exact",
    "estimate_mcu": "pricing.mcu.exact",
    "linear_cost": "pricing.linear",
    "ilp": "selection.solver",
    "planning": "selection.planner",
    "scores": "selection.scores",
    "velocity": "selection.velocity",
    "plan_file": "emit.plan_file",
    "report_html": "emit.report_html",
    "export_device": "runtime.device_step",
    "arena": "runtime.arena",
    "training_step": "runtime.training_step",
    "measure": "runtime.measure",
    "compile": "runtime.compiled",
    "reselect": "runtime.reselect",
}
_NOT_DEPRECATED = {"compile"}


def resolve(name: str) -> ModuleType:
    """The module an old submodule name now stands for (imported, with a warning where deprecated)."""
    new = f"budgetplan.{MOVED[name]}"
    if name not in _NOT_DEPRECATED:
        warnings.warn(f"budgetplan.{name} moved to {new}; the old path goes away in the next release",
                      DeprecationWarning, stacklevel=3)
    return importlib.import_module(new)


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, name: str) -> None:
        self.name = name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = resolve(self.name)
        self._spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # already executed at its new path; the import system has just set ``__spec__`` to the alias's
        # spec: give the module its own back (pickling and reloading go through it)
        module.__spec__ = self._spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != "budgetplan" or name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(name))


def install() -> None:
    """Put the old paths' finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
