"""Shape-only stand-ins for tensors, so cost formulas are pure functions of shapes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_map


@dataclass(frozen=True)
class TensorMeta:
    """Shape, dtype and storage facts of one tensor seen during tracing (no data)."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        """Bytes per element in PyTorch's dtype."""
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def nbytes(self) -> int:
        """Bytes of a dense tensor of this shape and dtype."""
        return self.numel * self.itemsize

    @classmethod
    def of(cls, tensor: torch.Tensor) -> TensorMeta:
        return cls(tuple(int(s) for s in tensor.shape), tensor.dtype)


def to_meta(tree: Any) -> Any:
    """Replace every tensor in a pytree of op arguments by its :class:`TensorMeta`."""
    return tree_map(lambda x: TensorMeta.of(x) if isinstance(x, torch.Tensor) else x, tree)


def storage_key(t: torch.Tensor) -> int | None:
    """Identity of a tensor's C++ StorageImpl: shared by all views of one storage, stable across resizes,
    unique while the storage is alive (also for meta and fake tensors, whose data pointers are all 0).
    ``None`` for tensors without a storage (sparse, some subclasses)."""
    try:
        s = t.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):
        return None
    key = getattr(s, "_cdata", None)
    return int(key) if key is not None else int(s.data_ptr())
