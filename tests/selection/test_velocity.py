"""NEq velocity tracker: φ, Δφ and v against numbers computed by hand, the two sign conventions, the
per-group scores, bounded memory, modes restored, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from budgetplan.errors import InputError
from budgetplan.model.graph import build_layer_graph
from budgetplan.model.tracing import trace_model
from budgetplan.selection.velocity import VelocityTracker

SQRT_HALF = 1 / math.sqrt(2)


def _pointwise(rows: list[list[float]]) -> nn.Conv2d:
    """A 1×1 conv from 2 input channels, no bias, weight rows as given."""
    conv = nn.Conv2d(2, len(rows), 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(rows).reshape(len(rows), 2, 1, 1))
    return conv


def _set_rows(conv: nn.Conv2d, rows: list[list[float]]) -> None:
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(rows).reshape(len(rows), 2, 1, 1))


# One sample, a 1×2 image: input channel 0 = [1, 0], channel 1 = [0, 1]. The output of neuron c over the two
# positions is then exactly its weight row (w_c0, w_c1), so φ is the cosine between consecutive rows.
ONE_SAMPLE = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])

# Weight rows per measurement (epoch 0..4) for neurons 0 and 1.
EPOCHS = [
    [[1, 0], [1, 0]],
    [[1, 1], [2, 0]],  # cos: 1/√2 ; 1 (a scaled row has the same direction)
    [[0, 1], [3, 4]],  # cos((1,1),(0,1)) = 1/√2 ; cos((2,0),(3,4)) = 6/(2·5) = 0.6
    [[-1, 0], [4, 3]],  # cos((0,1),(-1,0)) = 0 ; cos((3,4),(4,3)) = 24/25 = 0.96
    [[-1, 0], [4, 3]],  # unchanged: 1 ; 1
]
PHI = [None, [SQRT_HALF, 1.0], [SQRT_HALF, 0.6], [0.0, 0.96], [1.0, 1.0]]


def _run(sign: str, momentum: float = 0.5) -> tuple[VelocityTracker, list]:
    conv = _pointwise(EPOCHS[0])
    tracker = VelocityTracker(conv, ONE_SAMPLE, momentum=momentum, sign=sign)
    seen = []
    for rows in EPOCHS:
        _set_rows(conv, rows)
        report = tracker.measure()
        seen.append((report, tracker.phi, tracker.delta_phi, tracker.velocity, tracker.scores()))
    return tracker, seen


def test_phi_delta_and_velocity_by_hand_paper_sign() -> None:
    _, seen = _run("paper")
    # measurement 0: outputs only; 1: φ; 2: Δφ and the first velocity (v^1 = 0)
    assert seen[0][1] is None and seen[0][3] is None and seen[0][4] is None and not seen[0][0].ready
    assert seen[1][2] is None and seen[1][3] is None and not seen[1][0].ready
    for m in range(1, 5):
        assert seen[m][1]["weight"].tolist() == pytest.approx(PHI[m], abs=1e-6)
    # Δφ^2 = φ^2 − φ^1 = [0, −0.4]; v^2 = Δφ^2
    assert seen[2][2]["weight"].tolist() == pytest.approx([0.0, -0.4], abs=1e-6)
    assert seen[2][3]["weight"].tolist() == pytest.approx([0.0, -0.4], abs=1e-6)
    assert seen[2][0].ready
    # Δφ^3 = [−1/√2, 0.36]; v^3 = Δφ^3 − 0.5·v^2 = [−0.70711, 0.56]
    assert seen[3][2]["weight"].tolist() == pytest.approx([-SQRT_HALF, 0.36], abs=1e-6)
    assert seen[3][3]["weight"].tolist() == pytest.approx([-0.7071068, 0.56], abs=1e-6)
    # Δφ^4 = [1, 0.04]; v^4 = [1 + 0.5·0.70711, 0.04 − 0.5·0.56] = [1.35355, −0.24]
    assert seen[4][3]["weight"].tolist() == pytest.approx([1.3535534, -0.24], abs=1e-6)
    assert seen[4][4]["weight"] == pytest.approx([1.3535534, 0.24], abs=1e-6)  # scores are |v|


def test_reference_code_sign() -> None:
    _, seen = _run("reference")
    assert seen[2][3]["weight"].tolist() == pytest.approx([0.0, -0.4], abs=1e-6)  # same until t = 2
    # v^3 = Δφ^3 + 0.5·v^2 = [−0.70711, 0.36 − 0.2 = 0.16]; v^4 = [1 − 0.35355, 0.04 + 0.08]
    assert seen[3][3]["weight"].tolist() == pytest.approx([-0.7071068, 0.16], abs=1e-6)
    assert seen[4][3]["weight"].tolist() == pytest.approx([0.6464466, 0.12], abs=1e-6)


def test_momentum_zero_is_the_change_of_phi() -> None:
    _, seen = _run("paper", momentum=0.0)
    assert seen[3][3]["weight"].tolist() == pytest.approx([-SQRT_HALF, 0.36], abs=1e-6)
    assert seen[4][3]["weight"].tolist() == pytest.approx([1.0, 0.04], abs=1e-6)


def test_phi_is_the_mean_over_samples() -> None:
    # sample 2: both input channels = [1, 0] → output (w_c0 + w_c1, 0): a direction of ±1 only
    x = torch.cat([ONE_SAMPLE, torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]]]])])
    conv = _pointwise(EPOCHS[0])
    tracker = VelocityTracker(conv, x)
    tracker.measure()
    _set_rows(conv, EPOCHS[1])
    tracker.measure()
    # neuron 0: sample 1 cos = 1/√2, sample 2: (1,0) → (2,0), cos 1 → mean (0.70711 + 1) / 2
    assert tracker.phi["weight"].tolist() == pytest.approx([(SQRT_HALF + 1) / 2, 1.0], abs=1e-6)


def test_max_samples_cuts_the_validation_set() -> None:
    x = torch.cat([ONE_SAMPLE, torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]]]])])
    conv = _pointwise(EPOCHS[0])
    tracker = VelocityTracker(conv, x, max_samples=1)
    assert tracker.samples == 1
    tracker.measure()
    _set_rows(conv, EPOCHS[1])
    tracker.measure()
    assert tracker.phi["weight"].tolist() == pytest.approx([SQRT_HALF, 1.0], abs=1e-6)


def test_linear_on_flat_input_uses_the_samples_as_the_vector() -> None:
    fc = nn.Linear(2, 1, bias=False)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1.0, 0.0]]))
    tracker = VelocityTracker(fc, x)
    tracker.measure()  # outputs over the samples: [1, 0, 1]
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[0.0, 1.0]]))
    tracker.measure()  # [0, 1, 1]: cos = 1 / (√2 · √2) = 0.5
    assert tracker.phi["weight"].tolist() == pytest.approx([0.5], abs=1e-6)


def test_zero_outputs() -> None:
    conv = _pointwise([[0, 0], [0, 0]])
    tracker = VelocityTracker(conv, ONE_SAMPLE)
    tracker.measure()
    _set_rows(conv, [[0, 0], [1, 0]])
    tracker.measure()
    # two zero vectors: unchanged (1); zero then non-zero: 0
    assert tracker.phi["weight"].tolist() == [1.0, 0.0]


def _train_by_noise(model: nn.Module, tracker: VelocityTracker, measurements: int = 3) -> None:
    """Move every parameter a little between measurements, as training epochs would."""
    for _ in range(measurements):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        tracker.measure()


def test_group_scores_share_a_neuron_between_weight_and_bias_and_sum_over_a_group() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    x = torch.randn(5, 3, 4, 4)
    graph = build_layer_graph(trace_model(model, x[:1]), (x[:1],), group_size=2)
    tracker = VelocityTracker(model, x, graph=graph)
    assert [layer.weight for layer in tracker.layers] == ["0.weight", "3.weight"]
    assert tracker.layers[0].groups == ((0, 2), (2, 4))
    assert tracker.layers[0].row_elements == (27, 1)
    assert tracker.group_scores() is None
    _train_by_noise(model, tracker)
    v = tracker.velocity["0.weight"].abs().tolist()
    scores = tracker.group_scores()
    # weight rows: 27 elements, bias: 1 → shares 27/28 and 1/28; group k sums neurons 2k, 2k+1
    assert scores["0.weight"] == pytest.approx([(v[0] + v[1]) * 27 / 28, (v[2] + v[3]) * 27 / 28])
    assert scores["0.bias"] == pytest.approx([(v[0] + v[1]) / 28, (v[2] + v[3]) / 28])
    per_cost = tracker.group_scores(per_cost=True)
    # per element: |v| / C_i with C_i = 28 (27 weights + 1 bias), for weight and bias alike
    assert per_cost["0.weight"] == pytest.approx([(v[0] + v[1]) / 28 / 2, (v[2] + v[3]) / 28 / 2])
    assert per_cost["0.bias"] == pytest.approx(per_cost["0.weight"])
    assert len(scores["3.weight"]) == 2 and len(scores["3.bias"]) == 2  # 3 neurons in groups of 2


def test_batch_norm_after_a_conv_shares_its_neurons_velocity_and_gets_planned() -> None:
    """BatchNorm affine parameters (decided whole by the planner) score the share of the conv's neurons
    that their elements are: weight row 18 + BN weight 1 + BN bias 1 elements per neuron (no conv bias)."""
    from budgetplan.selection.planner import plan_update
    from budgetplan.targets import load_target

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()
    x = torch.randn(5, 2, 4, 4)
    graph = build_layer_graph(trace_model(model, x[:1]), (x[:1],))
    tracker = VelocityTracker(model, x, graph=graph)
    assert tracker.layers[0].followers == ("1.weight", "1.bias")
    _train_by_noise(model, tracker)
    v = tracker.velocity["0.weight"].abs().tolist()
    scores = tracker.group_scores()
    assert scores["0.weight"] == pytest.approx([x * 18 / 20 for x in v])
    assert scores["1.weight"] == pytest.approx(sum(v) / 20) and scores["1.bias"] == pytest.approx(sum(v) / 20)
    per_cost = tracker.group_scores(per_cost=True)
    assert per_cost["1.weight"] == pytest.approx(sum(v) / 20 / 4)
    # the planner accepts them (a number for a whole parameter) and, with room to spare, trains them
    plan = plan_update(graph, load_target("host"), 10 ** 7, scores=scores)
    assert plan.update.is_updated("1.weight") and plan.update.is_updated("1.bias")


def test_stored_bytes_reported_and_bounded() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(4, 3, 6, 6)
    tracker = VelocityTracker(conv, x)
    tracker.measure()
    # 4 samples · 8 neurons · 36 positions · 4 bytes + one zero flag per (sample, neuron)
    outputs = 4 * 8 * 36 * 4 + 4 * 8
    assert tracker.stored_bytes == outputs
    tracker.measure()
    assert tracker.stored_bytes == outputs + 8 * 8  # + φ per neuron (float64)
    tracker.measure()
    assert tracker.stored_bytes == outputs + 3 * 8 * 8  # + Δφ and v

    with pytest.raises(InputError, match="max_bytes"):
        VelocityTracker(conv, x, max_bytes=outputs - 1).measure()

    small = VelocityTracker(conv, x, max_bytes=outputs // 4, on_excess="subsample")
    report = small.measure()
    assert report.subsampled and report.stored_bytes <= outputs // 4
    small.measure()  # the same positions every time: an unchanged model has φ = 1
    assert small.phi["weight"].tolist() == pytest.approx([1.0] * 8)
    small.measure()
    assert small.ready and small.stored_bytes <= outputs // 4  # φ, Δφ and v are inside the bound too

    with pytest.raises(InputError, match="one position"):
        VelocityTracker(conv, x, max_bytes=10, on_excess="subsample").measure()


def test_modes_and_buffers_restored() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    model.train()
    model[1].eval()  # mixed modes survive
    before = model[1].running_mean.clone()
    model[1].train()
    tracker = VelocityTracker(model, torch.randn(3, 3, 5, 5))
    model[0].eval()
    tracker.measure()
    assert model.training and model[1].training and not model[0].training
    assert torch.equal(model[1].running_mean, before)  # ran in eval mode: statistics untouched


def test_bad_input() -> None:
    conv = nn.Conv2d(3, 4, 1)
    with pytest.raises(InputError, match="empty"):
        VelocityTracker(conv, torch.zeros(0, 3, 4, 4))
    with pytest.raises(InputError, match="sign"):
        VelocityTracker(conv, torch.zeros(1, 3, 4, 4), sign="plus")
    with pytest.raises(InputError, match="momentum"):
        VelocityTracker(conv, torch.zeros(1, 3, 4, 4), momentum=-1)
    with pytest.raises(InputError, match="max_samples"):
        VelocityTracker(conv, torch.zeros(1, 3, 4, 4), max_samples=0)
    with pytest.raises(InputError, match="not a module or weight"):
        VelocityTracker(nn.Sequential(conv), torch.zeros(1, 3, 4, 4), layers=["1"])
    with pytest.raises(InputError, match="no conv or linear"):
        VelocityTracker(nn.ReLU(), torch.zeros(1, 3))
    with pytest.raises(InputError, match="tensor"):
        VelocityTracker(conv, [[1, 2]])


def test_state_dict_continues_the_hand_computed_history() -> None:
    """Saved after measurement 2 and loaded into a fresh tracker on another conv object, the history
    gives the hand-computed φ, Δφ and v of measurements 3 and 4."""
    _, reference = _run("paper")
    conv = _pointwise(EPOCHS[0])
    tracker = VelocityTracker(conv, ONE_SAMPLE, momentum=0.5)
    for rows in EPOCHS[:3]:
        _set_rows(conv, rows)
        tracker.measure()
    saved = tracker.state_dict()
    other = _pointwise(EPOCHS[2])
    fresh = VelocityTracker(other, ONE_SAMPLE, momentum=0.5)
    fresh.load_state_dict(saved)
    assert fresh.measurements == 3 and [h.index for h in fresh.history] == [0, 1, 2]
    for index, rows in enumerate(EPOCHS[3:], start=3):
        _set_rows(other, rows)
        report = fresh.measure()
        assert report.index == index and report.reduced_bytes == 0  # one process: nothing reduced
        expected = reference[index]
        assert torch.allclose(fresh.phi["weight"], expected[1]["weight"])
        assert torch.allclose(fresh.velocity["weight"], expected[3]["weight"])
    with pytest.raises(InputError, match="momentum"):
        VelocityTracker(_pointwise(EPOCHS[0]), ONE_SAMPLE, momentum=0.9).load_state_dict(saved)
    with pytest.raises(InputError, match="other layers"):
        VelocityTracker(_pointwise([[1, 0]] * 3), ONE_SAMPLE).load_state_dict({**saved, "weights": ["x.weight"]})
