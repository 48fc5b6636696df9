"""The host oracle, checked against hand computations on tiny models (float32: 4 bytes per element)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from budgetplan.errors import InputError
from budgetplan.runtime.measure import Measurement, measure_step
from budgetplan.model.update_set import UpdateSet, from_patterns

F32 = 4


def mlp(act: nn.Module) -> nn.Sequential:
    """Linear(4, 8) -> act -> Linear(8, 3); fed a (2, 4) input. Names: 0.weight, 0.bias, 2.weight, 2.bias."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), act, nn.Linear(8, 3))


X = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
HIDDEN = 2 * 8 * F32  # 64 bytes: one (2, 8) activation
# parameters 4*8+8 + 8*3+3 = 67 floats = 268 bytes; input 8 floats = 32 bytes
PARAMS = (32 + 8 + 24 + 3) * F32
BASELINE = PARAMS + 2 * 4 * F32


def measure(model: nn.Module, patterns: list[str], x: torch.Tensor = X, **kw) -> Measurement:
    return measure_step(model, (x,), from_patterns(model, patterns), **kw)


# ---------------------------------------------------------------------------------------------------
# Saved activations
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "patterns, saved, grads",
    [
        # ReLU6 (hardtanh) saves its INPUT a = fc1(x); fc2 saves its input h = relu6(a) for its weight grad.
        (["all"], 2 * HIDDEN, PARAMS),
        # fc2 only: nothing before fc2 requires grad, so only h (fc2's input) is saved.
        (["2"], HIDDEN, (24 + 3) * F32),
        # fc1 only: relu6 saves a; fc2 needs its weight (a parameter) to pass the gradient back, not h.
        (["0"], HIDDEN, (32 + 8) * F32),
        # fc1's bias only: same, and fc1 does not need x at all.
        (["0.bias"], HIDDEN, 8 * F32),
    ],
)
def test_saved_bytes_relu6_mlp_by_hand(patterns, saved, grads):
    r = measure(mlp(nn.ReLU6()), patterns)
    assert r.saved_activation_bytes == saved
    assert r.gradient_bytes == grads
    assert r.backward_ran and r.baseline_bytes == BASELINE


def test_relu_output_and_next_input_share_one_storage():
    # ReLU saves its output h; fc2 saves its input, the same h: one storage, counted once.
    r = measure(mlp(nn.ReLU()), ["all"])
    assert r.saved_activation_bytes == HIDDEN
    assert [(t["shape"], t["bytes"], t["op"]) for t in r.saved_tensors] == [([2, 8], 64, "aten.relu.default")]


def test_parameters_input_and_aliases_are_excluded():
    # saved but excluded: x (fc1 needs it for its weight grad, 32 B) and fc2.weight.t() (a view of a
    # parameter, 96 B). fc1's weight is not saved (x does not require grad).
    r = measure(mlp(nn.ReLU6()), ["all"])
    assert r.saved_excluded_bytes == 2 * 4 * F32 + 3 * 8 * F32
    assert all(t["bytes"] == HIDDEN for t in r.saved_tensors)


def cnn(train: bool) -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(100, 2)
    )
    return m.train(train)


def test_batchnorm_train_mode_saves_input_mean_invstd():
    x = torch.randn(1, 3, 5, 5)
    r = measure(cnn(True), ["all"], x)
    act = 1 * 4 * 5 * 5 * F32  # 400 bytes
    # conv saves x and its weight (excluded); BN saves its input (the conv output), mean and invstd
    # (4 channels each); ReLU saves its output, which Flatten views and Linear saves again (same storage).
    assert r.saved_activation_bytes == act + 4 * F32 + 4 * F32 + act
    assert sorted(t["bytes"] for t in r.saved_tensors) == [16, 16, 400, 400]


def test_batchnorm_eval_mode_saves_input_only():
    x = torch.randn(1, 3, 5, 5)
    r = measure(cnn(False), ["all"], x)
    # eval mode: BN saves its input and the running stats (buffers, excluded); mean/invstd are empty.
    assert r.saved_activation_bytes == 400 + 400


def test_inplace_relu6_saves_a_copy_of_its_input():
    # An eager-mode fact the cost model must know: hardtanh_ (ReLU6(inplace=True)) needs its original
    # input for backward, so autograd saves a clone of it before overwriting.
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU6(inplace=True), nn.Linear(8, 3))
    r = measure(m, ["all"])
    ops = sorted(t["op"] for t in r.saved_tensors)
    assert ops == ["aten.addmm.default", "aten.clone.default"]  # clone of a; a itself (clamped), seen by fc2
    assert r.saved_activation_bytes == 2 * HIDDEN


def test_cross_entropy_saves_log_probs_and_total_weight():
    r = measure(mlp(nn.ReLU6()), ["all"], loss="cross-entropy")
    # log_softmax saves its output (2x3), nll_loss saves it (same storage), the target (excluded) and
    # total_weight (a 0-d float).
    assert r.saved_activation_bytes == 2 * HIDDEN + 2 * 3 * F32 + F32


# ---------------------------------------------------------------------------------------------------
# Gradients, optimizer state, peak
# ---------------------------------------------------------------------------------------------------


def test_frozen_parameters_get_no_grad():
    r = measure(mlp(nn.ReLU6()), ["2.weight", "0.bias"])
    assert r.grads == {"0.bias": 8 * F32, "2.weight": 24 * F32}


def test_optimizer_state_bytes():
    m = mlp(nn.ReLU6())
    assert measure(m, ["all"], optimizer="sgd").optimizer_state_bytes == 0
    assert measure(m, ["all"], optimizer="sgd-momentum").optimizer_state_bytes == PARAMS  # momentum buffers
    adam = measure(m, ["all"], optimizer="adam")
    # exp_avg + exp_avg_sq per parameter, plus a float32 0-d 'step' counter for each of the 4 parameters
    assert adam.optimizer_state_bytes == 2 * PARAMS + 4 * F32
    assert adam.optimizer_scalar_state_bytes == 4 * F32
    assert any("step counters" in n for n in adam.notes)


def test_peak_sgd_by_hand():
    r = measure(mlp(nn.ReLU6()), ["all"], optimizer="sgd")
    # Walk through the step (bytes):
    #   baseline: params 268 + input 32                                             = 300
    #   forward: a 64, h 64, y (2x3) 24; loss 4; y is freed once the loss exists    -> 432
    #   backward: seed 4; grad_h 64; fc2.weight.grad 96; fc2.bias.grad 12; h freed;
    #     grad_a 64; grad_h freed; a freed; fc1.weight.grad 128; fc1.bias.grad 32  -> peak here:
    #   300 + loss 4 + seed 4 + all grads 268 + grad_a 64                           = 640
    #   SGD (no momentum) updates in place and allocates nothing.
    assert r.peak_bytes == BASELINE + 4 + 4 + PARAMS + HIDDEN == 640
    assert max(b for _, b in r.timeline) == r.peak_bytes
    assert r.timeline[0] == ("baseline: parameters, buffers, input", BASELINE)
    # after the step only the baseline and the gradients are alive: nothing leaked
    assert r.timeline[-1] == ("end", BASELINE + PARAMS)


def test_peak_momentum_and_adam():
    m = mlp(nn.ReLU6())
    mom = measure(m, ["all"], optimizer="sgd-momentum")
    # the momentum buffers are clones of the gradients, created after backward (grads 268 + bufs 268)
    assert mom.peak_bytes == BASELINE + 4 + 2 * PARAMS
    adam = measure(m, ["all"], optimizer="adam")
    floor = BASELINE + 4 + PARAMS + adam.optimizer_state_bytes
    # Adam's for-loop step also allocates a sqrt and a division temporary per parameter (largest: 128 B)
    assert floor < adam.peak_bytes <= floor + 2 * 32 * F32


def test_flops_by_hand():
    r = measure(mlp(nn.ReLU6()), ["all"])
    assert r.forward_flops == 2 * (2 * 4 * 8) + 2 * (2 * 8 * 3)  # 224
    # backward: fc2 weight grad + grad of h (2*2*8*3 each) + fc1 weight grad (2*2*4*8); no grad of x
    assert r.backward_flops == 2 * 48 + 2 * 48 + 2 * 64
    assert measure(mlp(nn.ReLU6()), ["2"]).backward_flops == 2 * 48


def test_empty_update_set_measures_forward_only():
    r = measure(mlp(nn.ReLU6()), ["none"])
    assert not r.backward_ran
    assert r.saved_activation_bytes == 0 and r.gradient_bytes == 0 and r.optimizer_state_bytes == 0
    assert r.backward_flops == 0 and r.forward_flops == 224
    assert r.peak_bytes == BASELINE + 2 * HIDDEN  # a and h alive together inside relu6
    assert any("forward pass only" in n for n in r.notes)


def test_unused_trained_parameter_measures_forward_only():
    class WithSpare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(4, 2)
            self.spare = nn.Linear(4, 2)

        def forward(self, x):  # noqa: D102
            return self.used(x)

    m = WithSpare()
    r = measure_step(m, X, from_patterns(m, ["spare"]))
    assert not r.backward_ran and r.grads == {}
    assert any("influences the loss" in n for n in r.notes)


def test_channel_subsets_are_measured_as_full():
    r = measure(mlp(nn.ReLU6()), ["2.weight[0:1]"])
    assert r.channel_subsets_measured_as_full
    assert r.gradient_bytes == 24 * F32  # the whole (3, 8) gradient
    assert not measure(mlp(nn.ReLU6()), ["2.weight"]).channel_subsets_measured_as_full


# ---------------------------------------------------------------------------------------------------
# The caller's objects are untouched
# ---------------------------------------------------------------------------------------------------


def test_caller_model_input_and_rng_unchanged():
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)
    )
    m.train()
    m[4].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    flags = {n: p.requires_grad for n, p in m.named_parameters()}
    x = torch.randn(2, 4)
    x_before = x.clone()
    rng = torch.get_rng_state()
    r = measure_step(m, (x,), UpdateSet.full(m), optimizer="adam", lr=0.5)
    assert r.backward_ran
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running stats
    assert {n: p.requires_grad for n, p in m.named_parameters()} == flags
    assert all(p.grad is None for p in m.parameters())
    assert m.training and m[3].training
    assert torch.equal(x, x_before)  # the in-place ReLU ran on a clone
    assert torch.equal(torch.get_rng_state(), rng)  # dropout drew from a forked generator


def test_to_dict_is_json_ready():
    d = measure(mlp(nn.ReLU6()), ["all"]).to_dict()
    text = json.dumps(d)
    assert json.loads(text)["peak_bytes"] == 640
    assert isinstance(d["timeline"][0], list)


# ---------------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------------


def one_line_error(fn, *args, match: str, **kwargs) -> None:
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value) and match in str(info.value), str(info.value)


def test_bad_inputs_are_one_line_errors():
    m = mlp(nn.ReLU6())
    full = UpdateSet.full(m)
    one_line_error(measure_step, m, (X,), full, optimizer="rmsprop", match="unknown optimizer 'rmsprop'")
    one_line_error(measure_step, m, (X,), full, loss="mse", match="unknown loss 'mse'")
    one_line_error(measure_step, m, (X,), full, lr=0, match="learning rate must be a positive number")
    one_line_error(measure_step, m, (X,), UpdateSet({"9.weight": None}), match="unknown parameter '9.weight'")
    one_line_error(measure_step, m, (X,), UpdateSet({"2.weight": [7]}), match="out of range")
    one_line_error(measure_step, m, ("x",), full, match="tensor or a tuple of tensors")
    wrong = (torch.randn(2, 5),)
    one_line_error(measure_step, m, wrong, full, match="the model failed on the example inputs")
    conv = cnn(True)
    one_line_error(
        measure_step, nn.Sequential(*list(conv)[:3]), (torch.randn(1, 3, 5, 5),), UpdateSet.full(conv[:3]),
        loss="cross-entropy", match="needs (N, C) logits",
    )


def test_conv_saves_its_input_even_for_a_bias_only_update():
    # Eager fact: convolution's autograd node saves input and weight whenever it records a graph,
    # although a bias gradient needs neither. conv2's bias alone keeps h (the ReLU6 output, 400 B).
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU6(), nn.Conv2d(4, 4, 3, padding=1))
    x = torch.randn(1, 3, 5, 5)
    act = 4 * 5 * 5 * F32
    bias_only = measure_step(m, x, from_patterns(m, ["2.bias"]))
    assert bias_only.saved_activation_bytes == act
    assert bias_only.saved_excluded_bytes == 4 * 4 * 9 * F32  # conv2's weight
    # conv0's bias: x and both weights (excluded), relu6's input and conv2's input (h)
    first = measure_step(m, x, from_patterns(m, ["0.bias"]))
    assert first.saved_activation_bytes == 2 * act
    assert first.saved_excluded_bytes == 3 * 25 * F32 + 4 * 3 * 9 * F32 + 4 * 4 * 9 * F32


def test_discarded_branch_is_not_counted_as_saved():
    # The side branch's graph is dropped during forward: what it saved is not held for backward.
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(4, 8)
            self.fc2 = nn.Linear(8, 3)

        def forward(self, x):  # noqa: D102
            h = self.fc1(x).relu()
            _unused = (h * 1.0).relu()  # saves its own output, then dies with the local
            del _unused
            return self.fc2(h)

    m = Branchy()
    r = measure_step(m, X, UpdateSet.full(m))
    assert r.saved_activation_bytes == HIDDEN  # only h (relu output == fc2 input)
