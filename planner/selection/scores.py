"""Data-driven neuron-group scores for the planner's objective.

``grad_norm_scores`` follows TraDy (the seed's authors, 2025): a group's score is the L2 norm of the loss
gradient over its rows, accumulated over a few batches, divided by the group's parameter count — the
gradient norm per unit of what training it costs. The result plugs into
``plan_update(..., scores=...)`` or, saved with :func:`save_scores`, into
``budgetplan analyze --objective FILE``.

A scores file maps a parameter's qualified name to one score per neuron group (a list, or a 1-D tensor)
or to one score for the whole parameter (a number, or a 0-d tensor). Two formats, chosen by suffix:
``.json`` and a ``torch.save`` file (``.pt``/``.pth``) of a dict of tensors, which is read with
``torch.load(weights_only=True)``: it never runs code from the file.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import pickle
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from budgetplan.errors import InputError, first_line
from budgetplan.schemas import read_bytes, read_document, validate
from budgetplan.model.graph import LayerGraph
from budgetplan.model.graph import parameter_groups

Scores = dict[str, "list[float] | float"]
TENSOR_SUFFIXES = (".pt", ".pth")


def grad_norm_scores(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    graph: LayerGraph,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, list[float] | float]:
    """Per parameter: one score per neuron group (grouped weights and biases) or one score (whole
    tensors). ``batches`` yields ``(inputs, targets)``; ``loss_fn`` defaults to cross-entropy. The
    caller's model is not changed (a copy is used)."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    net = copy.deepcopy(model)
    for p in net.parameters():
        p.requires_grad_(True)
        p.grad = None
    count = 0
    for inputs, targets in batches:
        loss = loss_fn(net(inputs), targets)
        loss.backward()
        count += 1
    if count == 0:
        raise InputError("grad-norm scores need at least one batch")
    grads = {name: (p.grad if p.grad is not None else torch.zeros_like(p)) for name, p in net.named_parameters()}
    scores: dict[str, list[float] | float] = {}
    for name, groups in parameter_groups(graph).items():
        if name not in grads:
            continue
        g = grads[name].detach().float()
        if len(groups) == 1 and groups[0][2]:  # whole tensor
            scores[name] = float(g.norm()) / max(g.numel(), 1)
            continue
        per_group = []
        for start, stop, _ in groups:
            rows = g[start:stop]
            per_group.append(float(rows.norm()) / max(rows.numel(), 1))
        scores[name] = per_group
    for value in scores.values():
        values = value if isinstance(value, list) else [value]
        if any(math.isnan(v) for v in values):
            raise InputError("the gradients contain NaN; check the loss and the data")
    return scores


def _score_value(name: str, value: object, where: str) -> list[float] | float:
    """One parameter's entry: a number, a 0-d/1-d tensor or a list of numbers, all finite."""
    if isinstance(value, torch.Tensor):
        if value.dim() > 1 or value.is_complex() or value.dtype == torch.bool:
            raise InputError(f"{where}: scores for '{name}' must be a real number or a 1-D tensor, got "
                             f"{value.dtype} of shape {list(value.shape)}")
        value = value.detach().double().tolist()
    if isinstance(value, bool):
        raise InputError(f"{where}: score for '{name}' is not a number: {value!r}")
    if isinstance(value, (int, float)):
        numbers = [float(value)]
    elif isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        numbers = [float(v) for v in value]
    else:
        raise InputError(f"{where}: scores for '{name}' must be a number or a list of numbers")
    if not all(math.isfinite(v) for v in numbers):
        raise InputError(f"{where}: scores for '{name}' contain NaN or infinity")
    return numbers[0] if isinstance(value, (int, float)) else numbers


def _plain(name: object, value: object, where: str) -> object:
    """A tensor file's entry as JSON data (a number or a list), for the scores schema."""
    if isinstance(value, torch.Tensor):
        if value.dim() > 1 or value.is_complex() or value.dtype == torch.bool:
            raise InputError(f"{where}: scores for '{name}' must be a real number or a 1-D tensor, got "
                             f"{value.dtype} of shape {list(value.shape)}")
        return value.detach().double().tolist()
    return value


def load_scores(path: str | os.PathLike) -> Scores:
    """Read a scores file (``.json``, or ``.pt``/``.pth`` written by :func:`save_scores` or ``torch.save``
    of a dict of tensors) and validate it against the scores schema (``budgetplan schema scores``). Bad
    files raise a one-line :class:`InputError`; names are checked against the model later, by the
    planner."""
    where = str(path)
    if Path(path).suffix.lower() in TENSOR_SUFFIXES:
        blob = read_bytes(path, "scores file")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's protocol-version notice for foreign pickles
                data = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise InputError(f"{where} is not a plain tensor file (refused to run code from it: "
                             f"{first_line(exc)})") from None
        except Exception as exc:  # a damaged or foreign file: torch raises many kinds
            raise InputError(f"{where} is not a torch.save file: {first_line(exc, with_type=True)}") from None
        if isinstance(data, Mapping):
            if not all(isinstance(k, str) for k in data):
                raise InputError(f"{where}: scores must map parameter names (strings) to scores")
            data = {name: _plain(name, value, where) for name, value in data.items()}
        elif isinstance(data, torch.Tensor):
            raise InputError(f"{where}: scores must map parameter names to scores, got a single tensor")
    else:
        data = read_document(path, "scores file")
    validate(data, "scores", where)
    scores: Scores = {}
    for name, value in data.items():
        numbers = value if isinstance(value, list) else [value]
        if not all(math.isfinite(v) for v in numbers):
            raise InputError(f"{where}: scores for '{name}' contain NaN or infinity")
        scores[name] = [float(v) for v in value] if isinstance(value, list) else float(value)
    return scores


def save_scores(scores: Mapping[str, "list[float] | float"], path: str | os.PathLike, *,
                overwrite: bool = False) -> Path:
    """Write ``scores`` as ``.json`` or, for ``.pt``/``.pth``, as a dict of float64 tensors. Refuses to
    replace an existing file unless ``overwrite``."""
    file = Path(path)
    if file.exists() and not overwrite:
        raise InputError(f"{file} exists; pass overwrite=True to replace it")
    checked = {name: _score_value(name, value, str(file)) for name, value in scores.items()}
    if file.suffix.lower() in TENSOR_SUFFIXES:
        torch.save({name: torch.tensor(value, dtype=torch.float64) for name, value in checked.items()}, file)
    else:
        file.write_text(json.dumps(checked, indent=1) + "\n", encoding="utf-8")
    return file
