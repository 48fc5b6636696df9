"""One registry type for every per-op table in ``cost_models`` (FLOPs, backward FLOPs, saved tensors,
backward workspace, microcontroller rules).

A table maps an op key (an ATen op packet such as ``aten.mm``, or a normalised layer op name such as
``"conv2d"``) to a small pure function of shapes. Registering a second function for a key that already
has one is an error, as in ``torch.utils.flop_counter.register_flop_formula``: a silent overwrite would
change a cost model depending on import order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["DuplicateRegistration", "OpRegistry", "op_key"]

F = TypeVar("F", bound=Callable[..., Any])


class DuplicateRegistration(ValueError):
    """A second function registered for an op key that already has one."""


def op_key(op: Any) -> Any:
    """The key an op is registered under: an ATen overload's packet (``aten.mm.default`` -> ``aten.mm``),
    anything else as it is."""
    return getattr(op, "overloadpacket", op)


class OpRegistry(Generic[F]):
    """An op key -> function table that refuses duplicate registrations.

    ``table.register(aten.mm, aten.bmm)`` is a decorator; ``table.get(op)`` and ``op in table`` accept an
    overload or a packet."""

    def __init__(self, what: str) -> None:
        self.what = what  # e.g. "FLOP formula", for error messages
        self._table: dict[Any, F] = {}

    def register(self, *ops: Any) -> Callable[[F], F]:
        """Register the decorated function for each of ``ops``; a key registered twice raises."""

        def wrap(fn: F) -> F:
            for op in ops:
                key = op_key(op)
                if key in self._table:
                    raise DuplicateRegistration(
                        f"{self.what} for {key} registered twice ({self._table[key].__name__}, {fn.__name__})")
                self._table[key] = fn
            return fn

        return wrap

    def get(self, op: Any, default: F | None = None) -> F | None:
        return self._table.get(op_key(op), default)

    def __contains__(self, op: object) -> bool:
        return op_key(op) in self._table

    def __getitem__(self, op: Any) -> F:
        return self._table[op_key(op)]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def keys(self) -> Any:
        return self._table.keys()

    def items(self) -> Any:
        return self._table.items()
