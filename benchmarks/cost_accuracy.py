"""How close the host cost model is to PyTorch, and the microcontroller ladder on MobileNetV2-w0.35.

Part 1 — for each model × update set (BatchNorm in train mode, and in eval mode on the BN models), it
prints the host estimate's error against one real training step:
  act%   saved-for-backward activation bytes vs ``saved_tensors_hooks`` (distinct storages)
  grad   parameter-gradient bytes vs ``.grad`` storages ("=" when exact)
  opt    Adam state bytes vs ``optimizer.state`` ("=" when exact)
  peak%  predicted peak vs live bytes measured on the traced program (frees at last use)
  eager% predicted peak vs the user's eager forward (Python locals may live longer)
  bwd%   backward FLOPs vs FlopCounterMode (grouped-conv backward re-priced, tests/flop_oracle.py)

Part 2 — the tiny-training ladder (Lin et al. 2022, MobileNetV2-w0.35, 128×128, batch 1): full update
→ sparse update → sparse update + operator reordering, on the cortex-m7 target.

Run: ``.venv/bin/python benchmarks/cost_accuracy.py`` (about two minutes on 2 cores).
"""

from __future__ import annotations

import copy
import random
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from flop_oracle import backward_flops  # noqa: E402
from model_styles import STYLE_MODELS  # noqa: E402

from budgetplan import zoo  # noqa: E402
from budgetplan.pricing.host.exact import estimate_host  # noqa: E402
from budgetplan.pricing.mcu.exact import estimate_mcu  # noqa: E402
from budgetplan.pricing.inference import forward_report  # noqa: E402
from budgetplan.model.graph import build_layer_graph  # noqa: E402
from budgetplan.runtime.measure import measure_step  # noqa: E402
from budgetplan.targets import load_target  # noqa: E402
from budgetplan.model.tracing import trace_model  # noqa: E402
from budgetplan.model.update_set import UpdateSet, from_patterns, from_sparse_update_config  # noqa: E402

MODELS = {
    "tinycnn": lambda: (zoo.build("tinycnn")[0], (1, 3, 32, 32)),
    "vit-tiny": lambda: (zoo.build("vit-tiny")[0], (1, 3, 32, 32)),
    "mobilenetv2-w0.35@64": lambda: (zoo.build("mobilenetv2-w0.35", num_classes=10)[0], (1, 3, 64, 64)),
    "mcunet@64": lambda: (zoo.build("mcunet", num_classes=10)[0], (1, 3, 64, 64)),
    "resnet18@64": lambda: (zoo.build("resnet18", num_classes=10)[0], (1, 3, 64, 64)),
    **{name: STYLE_MODELS[name] for name in ("tv_resnet", "tv_densenet", "tv_shufflenetv2", "tv_mobilenetv3",
                                             "timm_efficientnet", "timm_convnext", "hf_vit_sdpa", "unet")},
}
BN_EVAL = ("tinycnn", "mobilenetv2-w0.35@64", "resnet18@64")


def update_sets(model: nn.Module, seed: int = 0) -> dict[str, UpdateSet]:
    """full, bias-only, classifier only, last block, a middle block alone, random 10 % of layers,
    depthwise-only."""
    names = [n for n, _ in model.named_parameters()]
    weights = [n for n, p in model.named_parameters() if p.dim() >= 2]
    rng = random.Random(seed)
    children = [n for n, m in model.named_children() if any(True for _ in m.parameters())]
    blocks = [n for n, m in model.named_modules() if n.count(".") == 1 and any(True for _ in m.parameters())]
    sets: dict[str, UpdateSet] = {"full": UpdateSet.full(model)}
    if any(n.endswith("bias") for n in names):
        sets["bias-only"] = from_patterns(model, ["*.bias"])
    sets["classifier"] = from_patterns(model, [weights[-1].rsplit(".", 1)[0]])
    if blocks:
        sets["last-block"] = from_patterns(model, [blocks[-1]])
        sets["middle-block"] = from_patterns(model, [blocks[len(blocks) // 2]])
    else:
        sets["last-block"] = from_patterns(model, [children[-1]])
    sets["random-10%"] = from_patterns(model, rng.sample(weights, max(1, len(weights) // 10)))
    depthwise = [f"{n}.weight" for n, m in model.named_modules()
                 if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels]
    if depthwise:
        sets["depthwise-only"] = from_patterns(model, depthwise)
    return sets


def oracle_backward_flops(model: nn.Module, x: torch.Tensor, update: UpdateSet) -> int:
    clone = copy.deepcopy(model)
    for name, p in clone.named_parameters():
        p.requires_grad_(update.is_updated(name))
    return backward_flops(lambda: clone(x).sum())


def pct(predicted: float, measured: float) -> str:
    if measured == 0:
        return "=" if predicted == 0 else "n/a"
    return f"{100 * (predicted - measured) / measured:+.2f}"


def host_table() -> dict[str, float]:
    host = load_target("host")
    worst = {"act": 0.0, "peak": 0.0, "eager": 0.0, "bwd": 0.0}
    exact = {"grad": 0, "opt": 0, "rows": 0}
    header = f"{'model':22s} {'bn':5s} {'update set':15s} {'act%':>7s} {'grad':>5s} {'opt':>5s} {'peak%':>7s} " \
             f"{'eager%':>7s} {'bwd%':>7s}"
    print(header)
    print("-" * len(header))
    for name, make in MODELS.items():
        for bn_mode in ("train", "eval") if name in BN_EVAL else ("train",):
            model, shape = make()
            model.train(bn_mode == "train")
            x = torch.randn(shape)
            traced = trace_model(model, (x,))
            graph = build_layer_graph(traced, (x,))
            for label, update in update_sets(model).items():
                est = estimate_host(graph, update, host, optimizer="adam")
                meas = measure_step(traced.graph_module, (x,), update, optimizer="adam")
                eager = measure_step(model, (x,), update, optimizer="adam")
                oracle = oracle_backward_flops(model, x, update)
                cells = {
                    "act": pct(est.memory.activations, meas.saved_activation_bytes),
                    "grad": "=" if est.memory.gradients == meas.gradient_bytes else
                    f"{est.memory.gradients - meas.gradient_bytes:+d}",
                    "opt": "=" if est.memory.optimizer == meas.optimizer_state_bytes else
                    f"{est.memory.optimizer - meas.optimizer_state_bytes:+d}",
                    "peak": pct(est.peak_bytes, meas.peak_bytes),
                    "eager": pct(est.peak_bytes, eager.peak_bytes),
                    "bwd": pct(est.flops["backward"], oracle),
                }
                exact["rows"] += 1
                exact["grad"] += cells["grad"] == "="
                exact["opt"] += cells["opt"] == "="
                for key in worst:
                    if cells[key] not in ("=", "n/a"):
                        worst[key] = max(worst[key], abs(float(cells[key])))
                print(f"{name:22s} {bn_mode:5s} {label:15s} {cells['act']:>7s} {cells['grad']:>5s} "
                      f"{cells['opt']:>5s} {cells['peak']:>7s} {cells['eager']:>7s} {cells['bwd']:>7s}")
    print(f"\nrows: {exact['rows']}; gradient bytes exact in {exact['grad']}, optimizer state exact in "
          f"{exact['opt']}; worst |error| %: activations {worst['act']:.2f}, peak {worst['peak']:.2f} "
          f"(eager {worst['eager']:.2f}), backward FLOPs {worst['bwd']:.2f}")
    return worst


# A sparse-update scheme in tiny-training's config format for MobileNetV2-w0.35 (52 convs): biases of the
# last 20 convs, weights of 8 late pointwise convs at ratios 1 … 1/4 (in the spirit of their 49 KB scheme;
# the exact published config is not available offline).
SPARSE_CONFIG = {"n_bias_update": 20, "manual_weight_idx": [36, 39, 40, 41, 42, 45, 48, 49],
                 "weight_update_ratio": [1, 1, 1, 0.5, 0.5, 1, 0.25, 0.25]}


def mcu_ladder() -> None:
    target = load_target("cortex-m7")
    model, _ = zoo.build("mobilenetv2-w0.35", num_classes=10)
    x = torch.randn(1, 3, 128, 128)
    graph = build_layer_graph(trace_model(model, (x,)), (x,))
    sparse = from_sparse_update_config(SPARSE_CONFIG, model)
    print(f"\nMobileNetV2-w0.35, 128×128, batch 1, 10 classes, target {target.name} "
          f"({target.activation_dtype} activations); paper: 2939 → 335 → 141 KB")
    print(f"inference activation peak (BN not folded): "
          f"{forward_report(graph, target).totals.inference_peak_bytes / 1024:.0f} KiB")
    for label, update, reorder in (("full update", UpdateSet.full(model), False),
                                   ("sparse update", sparse, False),
                                   ("sparse + reorder", sparse, True),
                                   ("full + reorder", UpdateSet.full(model), True)):
        est = estimate_mcu(graph, update, target, reorder=reorder)
        b = est.memory_at_peak
        print(f"  {label:18s} peak {est.peak_bytes / 1024:7.0f} KiB at {est.peak_at:38s} "
              f"(activations {b.activations / 1024:.0f}, weights {b.weights / 1024:.0f}, "
              f"gradients {b.gradients / 1024:.0f} KiB)  latency {est.latency_s:.2f} s")


if __name__ == "__main__":
    torch.manual_seed(0)
    start = time.perf_counter()
    host_table()
    mcu_ladder()
    print(f"\n({time.perf_counter() - start:.0f} s)")
