"""Update sets: the three input forms, canonical form, round-trips and one-line errors."""

from __future__ import annotations

import json

import pytest
from torch import nn

from budgetplan.errors import InputError
from budgetplan.model.update_set import (
    looks_like_file,
    resolve_update_spec,
    UpdateSet,
    conv_layers,
    from_patterns,
    from_plan_json,
    from_sparse_update_config,
    named_shapes,
    split_patterns,
    to_sparse_update_config,
)


class TinyCNN(nn.Module):
    """conv0 (BN, no bias) -> conv1 depthwise (BN, no bias) -> conv2 pointwise (own bias)
    -> conv3 pointwise (no bias, no BN) -> pool -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.dw = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6()
        )
        self.pw = nn.Conv2d(8, 16, 1)
        self.proj = nn.Conv2d(16, 8, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):  # noqa: D102
        return self.fc(self.pool(self.proj(self.pw(self.dw(self.stem(x))))).flatten(1))


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):  # noqa: D102
        return self.fc2(self.act(self.fc1(x)))


def one_line_error(fn, *args, match: str = "", **kwargs) -> str:
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert match in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------------
# UpdateSet itself
# ---------------------------------------------------------------------------------------------------


def test_updateset_queries_and_canonical_form():
    us = UpdateSet({"fc.weight": [2, 0], "fc.bias": None})
    assert us.entries["fc.weight"] == (0, 2)
    assert us.is_updated("fc.bias") and not us.is_updated("pw.bias")
    assert us.channels("fc.weight") == (0, 2)
    assert us.channels("fc.bias") is None
    assert us.channels("pw.bias") == ()
    assert us.parameter_names() == ("fc.weight", "fc.bias")
    assert us.has_channel_subsets() and not us.is_empty and len(us) == 2
    assert UpdateSet.none().is_empty
    assert us == UpdateSet({"fc.weight": (0, 2), "fc.bias": None})
    assert hash(us) == hash(UpdateSet({"fc.bias": None, "fc.weight": (2, 0)}))
    with pytest.raises(TypeError):
        us.entries["x"] = None  # read-only


def test_validated_orders_and_collapses_full_range():
    m = TinyMLP()
    us = UpdateSet({"fc2.bias": None, "fc1.weight": list(range(8))}).validated(m)
    assert us.parameter_names() == ("fc1.weight", "fc2.bias")
    assert us.channels("fc1.weight") is None  # all 8 output channels == the whole tensor


def test_num_trained_elements_by_hand():
    m = TinyCNN()
    # pw.weight is (16, 8, 1, 1): 4 rows of 8; fc is 4*8 + 4; stem.1.bias 8.
    us = from_patterns(m, ["pw.weight[0:4]", "fc", "stem.1.bias"])
    assert us.num_trained_elements(m) == 4 * 8 + (32 + 4) + 8
    assert UpdateSet.full(m).num_trained_elements(m) == sum(p.numel() for p in m.parameters())
    # also from shapes alone
    assert us.num_trained_elements(named_shapes(m)) == 4 * 8 + 36 + 8


@pytest.mark.parametrize(
    "entries, match",
    [
        ({"fc.weight": []}, "empty channel list"),
        ({"fc.weight": [1, 1]}, "duplicate channel indices [1]"),
        ({"fc.weight": [-1]}, "negative channel index -1"),
        ({"fc.weight": ["a"]}, "must be integers"),
        ({"fc.weight": [True]}, "must be integers"),
        ({"fc.weight": "0:4"}, "channels must be null or a list"),
        ({"": None}, "non-empty strings"),
        ({3: None}, "non-empty strings"),
    ],
)
def test_updateset_bad_entries(entries, match):
    one_line_error(UpdateSet, entries, match=match)


def test_validated_errors():
    m = TinyMLP()
    msg = one_line_error(UpdateSet({"fc3.weight": None}).validated, m, match="unknown parameter 'fc3.weight'")
    assert "fc2.weight" in msg or "fc1.weight" in msg
    one_line_error(
        UpdateSet({"fc2.weight": [3]}).validated,
        m,
        match="channel index 3 is out of range for parameter 'fc2.weight' (dim 0 has size 3)",
    )


# ---------------------------------------------------------------------------------------------------
# Patterns
# ---------------------------------------------------------------------------------------------------


def test_patterns_whole_parameters_and_modules():
    m = TinyCNN()
    names = [n for n, _ in m.named_parameters()]
    assert from_patterns(m, ["all"]).parameter_names() == tuple(names)
    assert from_patterns(m, ["full"]) == from_patterns(m, ["*"]) == UpdateSet.full(m)
    assert from_patterns(m, ["none"]).is_empty
    assert from_patterns(m, []).is_empty
    biases = ("stem.1.bias", "dw.1.bias", "pw.bias", "fc.bias")
    assert from_patterns(m, ["*.bias"]).parameter_names() == biases
    assert from_patterns(m, ["fc"]).parameter_names() == ("fc.weight", "fc.bias")  # module name
    assert from_patterns(m, "fc.weight").parameter_names() == ("fc.weight",)  # a lone string is one pattern
    assert from_patterns(m, ["stem.*"]).parameter_names() == ("stem.0.weight", "stem.1.weight", "stem.1.bias")
    assert from_patterns(m, ["stem.1"]).parameter_names() == ("stem.1.weight", "stem.1.bias")
    # union, in model order, regardless of pattern order
    union = from_patterns(m, ["fc", "none", "pw.weight"])
    assert union.parameter_names() == ("pw.weight", "fc.weight", "fc.bias")


def test_module_name_is_not_a_string_prefix():
    m = nn.Sequential(*[nn.Linear(2, 2) for _ in range(12)])
    assert from_patterns(m, ["1"]).parameter_names() == ("1.weight", "1.bias")  # not 10.*, 11.*
    assert from_patterns(m, ["1?"]).parameter_names() == ("10.weight", "10.bias", "11.weight", "11.bias")
    # a bracket group that is not a channel selector stays an fnmatch character class
    assert from_patterns(m, ["[23].weight"]).parameter_names() == ("2.weight", "3.weight")


def test_named_shapes_input_forms():
    shapes = {"a.weight": (4, 2), "a.bias": (4,), "b.weight": (3, 4)}
    assert from_patterns(shapes, ["a"]).parameter_names() == ("a.weight", "a.bias")
    pairs = list(shapes.items())
    assert from_patterns(pairs, ["*.weight[1:3]"]).entries == {"a.weight": (1, 2), "b.weight": (1, 2)}


def test_channel_selectors():
    m = TinyCNN()
    assert from_patterns(m, ["pw.weight[0:8]"]).channels("pw.weight") == tuple(range(8))
    assert from_patterns(m, ["pw.weight[0,2,5]"]).channels("pw.weight") == (0, 2, 5)
    assert from_patterns(m, ["pw.weight[ 5, 0 ]"]).channels("pw.weight") == (0, 5)
    assert from_patterns(m, ["pw.weight[12:]"]).channels("pw.weight") == (12, 13, 14, 15)
    assert from_patterns(m, ["pw.weight[:2]"]).channels("pw.weight") == (0, 1)
    assert from_patterns(m, ["pw.weight[0:8:2]"]).channels("pw.weight") == (0, 2, 4, 6)
    assert from_patterns(m, ["pw.weight[0:2,7]"]).channels("pw.weight") == (0, 1, 7)
    # a selector on a module applies to all its parameters (weight and bias share dim 0)
    assert from_patterns(m, ["pw[0:2]"]).entries == {"pw.weight": (0, 1), "pw.bias": (0, 1)}
    # depthwise: dim 0 is the channel
    assert from_patterns(m, ["dw.0.weight[3]"]).channels("dw.0.weight") == (3,)
    # two selections are united; a whole match wins; covering dim 0 means the whole tensor
    assert from_patterns(m, ["pw.weight[0:2]", "pw.weight[4]"]).channels("pw.weight") == (0, 1, 4)
    assert from_patterns(m, ["pw.weight[0:2]", "pw.*"]).channels("pw.weight") is None
    assert from_patterns(m, ["pw.weight[0:8]", "pw.weight[8:16]"]).channels("pw.weight") is None


def test_split_patterns():
    assert split_patterns("layer4.*, fc.weight[0,2], *.bias") == ["layer4.*", "fc.weight[0,2]", "*.bias"]
    assert split_patterns(" , ") == []


@pytest.mark.parametrize(
    "pattern, match",
    [
        ("stm.*", "update pattern 'stm.*' matches no parameter or module; nearest: stem"),
        ("xyzzy", "top-level names: stem, dw, pw, proj, fc"),
        ("pw.weight[16]", "channel index 16 is out of range for parameter 'pw.weight' (dim 0 has size 16"),
        ("pw.weight[0:17]", "channel index 16 is out of range for parameter 'pw.weight' (dim 0 has size 16"),
        ("fc.weight[-1]", "negative channel index -1"),
        ("fc.weight[0:-1]", "negative channel index -1"),
        ("fc.weight[0,0]", "duplicate channel indices [0]"),
        ("fc.weight[0:2,1]", "duplicate channel indices [1]"),
        ("fc.weight[2:2]", "selects no channels"),
        ("fc.weight[]", "empty channel selector"),
        ("fc.weight[0,]", "empty channel selector"),
        ("fc.weight[0:2:0]", "step must be positive"),
        ("fc.weight[1:2:3:4]", "bad channel slice"),
        ("[0:2]", "has a channel selector but no name"),
        ("   ", "empty update pattern"),
    ],
)
def test_pattern_errors(pattern, match):
    one_line_error(from_patterns, TinyCNN(), [pattern], match=match)


def test_pattern_error_scalar_and_types():
    shapes = {"scale": (), "w": (4, 4)}
    one_line_error(from_patterns, shapes, ["scale[0]"], match="'scale' is a scalar (0-d)")
    assert from_patterns(shapes, ["scale"]).parameter_names() == ("scale",)
    one_line_error(from_patterns, TinyMLP(), [3], match="must be strings")
    one_line_error(from_patterns, {"w": "ab"}, ["w"], match="mapping of parameter name to shape")


# ---------------------------------------------------------------------------------------------------
# Plan JSON
# ---------------------------------------------------------------------------------------------------


def test_plan_json_forms_and_round_trip(tmp_path):
    m = TinyCNN()
    us = from_patterns(m, ["pw.weight[0,3]", "fc", "*.bias"])
    doc = us.to_json()
    assert doc["update"][0] == {"parameter": "stem.1.bias", "channels": None}
    assert {"parameter": "pw.weight", "channels": [0, 3]} in doc["update"]
    assert from_plan_json(doc, m) == us
    assert from_plan_json(doc["update"], m) == us  # bare list
    assert UpdateSet.from_json(json.loads(json.dumps(doc))) == us
    # whole plan object with extra keys, written to a file, entries out of model order, unsorted channels
    plan = {
        "budget": 262144,
        "update": [
            {"parameter": "fc.weight", "channels": None, "bytes": 128},
            {"parameter": "pw.weight", "channels": [3, 0]},
        ],
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    got = from_plan_json(path, m)
    assert got.parameter_names() == ("pw.weight", "fc.weight")
    assert got.channels("pw.weight") == (0, 3)
    assert from_plan_json(str(path), m) == got
    assert from_plan_json({"update": []}, m).is_empty


@pytest.mark.parametrize(
    "obj, match",
    [
        # the update-set schema (budgetplan schema update) first: one line naming the place
        ({"plan": []}, 'update set: has no "update" (required)'),
        ({"update": "fc"}, "update set: update: must be an array, got string"),
        ({"update": ["fc.weight"]}, "update[0]: must be an object"),
        ({"update": [{"channels": None}]}, 'update[0]: has no "parameter" (required)'),
        ({"update": [{"parameter": 7}]}, "update[0].parameter: must be a string, got integer 7"),
        ({"update": [{"parameter": ""}]}, "update[0].parameter: must not be empty"),
        ({"update": [{"parameter": "fc.weight", "channels": [1, 1]}]}, "update[0].channels: has integer 1 twice"),
        ({"update": [{"parameter": "fc.weight", "channels": [-2]}]}, "update[0].channels[0]: must be at least 0"),
        ({"update": [{"parameter": "fc.weight", "channels": "0:2"}]}, "channels: must be an array or null"),
        ({"update": [{"parameter": "fc.weight", "channels": [0.5]}]}, "channels[0]: must be an integer"),
        ({"update": [{"parameter": "fc.weight", "channels": [True]}]}, "channels[0]: must be an integer, got true"),
        ({"update": [{"parameter": "fc.weight", "channels": []}]}, "channels: must not be empty"),
        (42, "update set: must be an object, got integer 42"),
        # then what the schema cannot say: a name listed twice, names and ranges against the model
        ({"update": [{"parameter": "fc.bias"}, {"parameter": "fc.bias"}]}, "listed twice"),
        ({"update": [{"parameter": "fc.weight", "channels": [4]}]}, "channel index 4 is out of range"),
        ({"update": [{"parameter": "fc.wieght"}]}, "unknown parameter 'fc.wieght'; nearest: fc.weight"),
    ],
)
def test_plan_json_errors(obj, match):
    one_line_error(from_plan_json, obj, TinyCNN(), match=match)


def test_plan_json_file_errors(tmp_path):
    one_line_error(from_plan_json, tmp_path / "missing.json", TinyCNN(), match="plan file not found")
    bad = tmp_path / "bad.json"
    bad.write_text('{"update": [')
    one_line_error(from_plan_json, bad, TinyCNN(), match="is not valid JSON")


# ---------------------------------------------------------------------------------------------------
# tiny-training sparse-update config
# ---------------------------------------------------------------------------------------------------


def test_conv_layers_are_conv2d_in_definition_order():
    assert [n for n, _ in conv_layers(TinyCNN())] == ["stem.0", "dw.0", "pw", "proj"]


def test_sparse_config_semantics():
    m = TinyCNN()
    cfg = {"n_bias_update": 4, "manual_weight_idx": [1, 2, 3], "weight_update_ratio": [0.25, 0.125, 1]}
    us = from_sparse_update_config(cfg, m)
    assert us.entries == {
        "stem.1.bias": None,  # conv 0 has no bias: the BN defined right after it stands in (beta only)
        "dw.0.weight": (0, 1),  # depthwise, 8 channels, ceil(0.25 * 8) = 2
        "dw.1.bias": None,
        "pw.weight": (0, 1),  # ceil(0.125 * 16) = 2 output channels
        "pw.bias": None,  # own bias
        "proj.weight": None,  # ratio 1; conv 3 has neither bias nor BN, so no bias to train
        "fc.weight": None,  # the classifier (last Linear) is always trained unless freeze_fc
        "fc.bias": None,
    }
    assert not us.is_updated("stem.1.weight")  # BN gamma is not part of a bias update


def test_sparse_config_forms():
    m = TinyCNN()
    dash = from_sparse_update_config(
        {"n_bias_update": 2, "manual_weight_idx": "2-3", "weight_update_ratio": "0.5-0.25"}, m
    )
    assert dash.entries == {
        "pw.weight": tuple(range(8)),
        "pw.bias": None,
        "proj.weight": (0, 1),
        "fc.weight": None,
        "fc.bias": None,
    }
    # one ratio for every weight layer; n_bias_update 'all'; freeze_fc
    one = from_sparse_update_config(
        {"n_bias_update": "all", "manual_weight_idx": 3, "weight_update_ratio": 0.5, "freeze_fc": 1}, m
    )
    assert one.entries == {
        "stem.1.bias": None,
        "dw.1.bias": None,
        "pw.bias": None,
        "proj.weight": (0, 1, 2, 3),
    }
    # n_weight_update instead of manual_weight_idx (the last n convs); 'all' = n_bias_update
    nw = from_sparse_update_config({"n_bias_update": 2, "n_weight_update": "all"}, m)
    assert nw.parameter_names() == ("pw.weight", "pw.bias", "proj.weight", "fc.weight", "fc.bias")
    assert nw == from_sparse_update_config({"n_bias_update": 2, "n_weight_update": 2}, m)
    # manual_weight_idx wins over n_weight_update (as in tiny-training's compiled configs)
    both = from_sparse_update_config({"n_bias_update": 2, "n_weight_update": 0, "manual_weight_idx": [3]}, m)
    assert both.is_updated("proj.weight") and not both.is_updated("pw.weight")
    # ratio 0 = weight not trained; integer > 1 = a channel count
    zero = from_sparse_update_config(
        {"n_bias_update": 2, "manual_weight_idx": [2, 3], "weight_update_ratio": [0, 3]}, m
    )
    assert not zero.is_updated("pw.weight") and zero.channels("proj.weight") == (0, 1, 2)
    # pw1_weight_only keeps 1x1 expansion convs (C_out > C_in) only: pw (8->16), not proj (16->8)
    pw1 = from_sparse_update_config(
        {"n_bias_update": 2, "manual_weight_idx": [2, 3], "pw1_weight_only": 1, "weight_update_ratio": [1]}, m
    )
    assert pw1.is_updated("pw.weight") and not pw1.is_updated("proj.weight")
    # bias-only, nothing else; ignored keys
    bias_only = from_sparse_update_config(
        {
            "backward_config": {
                "enable_backward_config": 1,
                "n_bias_update": 1,
                "weight_select_criteria": "magnitude+",
                "quantize_gradient": 0,
                "train_scale": 0,
                "freeze_fc": 1,
            }
        },
        m,
    )
    assert bias_only.is_empty  # conv 3 (proj) has nothing to stand in for a bias
    assert from_sparse_update_config({"n_bias_update": 0, "freeze_fc": 1}, m).is_empty


def test_sparse_config_from_file(tmp_path):
    m = TinyCNN()
    path = tmp_path / "su.json"
    path.write_text(json.dumps({"n_bias_update": 2, "manual_weight_idx": [2], "weight_update_ratio": [0.5]}))
    assert from_sparse_update_config(path, m).channels("pw.weight") == tuple(range(8))
    missing = tmp_path / "nope.json"
    one_line_error(from_sparse_update_config, missing, m, match="sparse-update config not found")


@pytest.mark.parametrize(
    "cfg, match",
    [
        # the config schema (budgetplan schema config): types and keys
        ({"n_bias_updates": 2}, 'unknown key "n_bias_updates" (did you mean "n_bias_update"?)'),
        ({"manual_weight_idx": [3]}, 'has no "n_bias_update" (required)'),
        ({"n_bias_update": -1}, "n_bias_update: must be at least 0, got integer -1"),
        ({"n_bias_update": "most"}, 'n_bias_update: must be an integer or "all", got string "most"'),
        ({"n_bias_update": "3"}, 'n_bias_update: must be an integer or "all", got string "3"'),
        ({"n_bias_update": True}, 'n_bias_update: must be an integer or "all", got true'),
        ({"n_bias_update": 4, "manual_weight_idx": [2, 2]}, "manual_weight_idx: has integer 2 twice"),
        ({"n_bias_update": 4, "manual_weight_idx": "2-x"}, "manual_weight_idx: must be conv indices joined by '-'"),
        ({"n_bias_update": 4, "manual_weight_idx": [3], "weight_update_ratio": [-0.5]}, "must be at least 0"),
        ({"n_bias_update": 4, "manual_weight_idx": [3], "weight_update_ratio": ["half"]}, "must be a number"),
        ({"n_bias_update": 4, "manual_weight_idx": [3], "weight_update_ratio": "1-x"}, "must be ratios joined"),
        ({"n_bias_update": 1, "freeze_fc": "yes"}, 'freeze_fc: must be one of 0, 1, false, true, null; got string'),
        ({"n_bias_update": 1, "freeze_fc": "false"}, "freeze_fc: must be one of"),
        ({"backward_config": {"n_bias_update": 1, "train_scal": 1}}, 'backward_config: unknown key "train_scal"'),
        ([1, 2], "must be an object"),
        # then what depends on the model or on several keys
        ({"n_bias_update": 5}, "n_bias_update=5 but the model has 4 Conv2d layers"),
        (
            {"n_bias_update": 1, "manual_weight_idx": [2]},
            "weight layer 2 (pw) is not among the last n_bias_update=1",
        ),
        ({"n_bias_update": 4, "manual_weight_idx": [4]}, "conv index 4 is out of range"),
        ({"n_bias_update": 4, "manual_weight_idx": [3, 2]}, "must be ascending"),
        ({"n_bias_update": 4, "manual_weight_idx": [2, 3], "weight_update_ratio": [1]}, "has 1 values for 2"),
        ({"n_bias_update": 4, "manual_weight_idx": [3], "weight_update_ratio": [1.5]}, "must be in [0, 1]"),
        ({"n_bias_update": 4, "manual_weight_idx": [3], "weight_update_ratio": [9]}, "exceeds the 8 output"),
        ({"n_bias_update": 4, "n_weight_update": 9}, "n_weight_update=9"),
        ({"n_bias_update": 1, "n_weight_update": 2}, "not among the last n_bias_update=1"),
        ({"enable_backward_config": 0, "n_bias_update": 1}, "enable_backward_config is 0"),
        ({"n_bias_update": 1, "train_scale": 1}, "train_scale=1"),
    ],
)
def test_sparse_config_errors(cfg, match):
    one_line_error(from_sparse_update_config, cfg, TinyCNN(), match=match)


@pytest.mark.parametrize(
    "patterns, expected",
    [
        (
            ["pw.bias", "proj.weight", "fc"],
            {"n_bias_update": 2, "manual_weight_idx": [3], "weight_update_ratio": [1], "freeze_fc": 0},
        ),
        (
            ["pw.weight[0:3]", "pw.bias"],
            {"n_bias_update": 2, "manual_weight_idx": [2], "weight_update_ratio": [3], "freeze_fc": 1},
        ),
        (
            ["*.bias", "fc.weight", "dw.0.weight[0]", "pw.weight[0:4]", "proj.weight[0:4]"],
            {"n_bias_update": 4, "manual_weight_idx": [1, 2, 3], "weight_update_ratio": [0.125, 0.25, 0.5],
             "freeze_fc": 0},
        ),
        (["none"], {"n_bias_update": 0, "manual_weight_idx": [], "weight_update_ratio": [], "freeze_fc": 1}),
        (["fc"], {"n_bias_update": 0, "manual_weight_idx": [], "weight_update_ratio": [], "freeze_fc": 0}),
    ],
)
def test_sparse_config_export_and_round_trip(patterns, expected):
    m = TinyCNN()
    us = from_patterns(m, patterns)
    cfg = to_sparse_update_config(us, m)
    assert {k: cfg[k] for k in expected} == expected
    assert cfg["enable_backward_config"] == 1 and cfg["pw1_weight_only"] == 0
    assert from_sparse_update_config(json.loads(json.dumps(cfg)), m) == us


def test_sparse_config_import_export_round_trip():
    m = TinyCNN()
    cfg = {"n_bias_update": 3, "manual_weight_idx": [1, 2, 3], "weight_update_ratio": [0.5, 1, 0.125]}
    us = from_sparse_update_config(cfg, m)
    back = to_sparse_update_config(us, m)
    assert back["n_bias_update"] == 3 and back["manual_weight_idx"] == [1, 2, 3]
    assert back["weight_update_ratio"] == [0.5, 1, 0.125]
    assert from_sparse_update_config(back, m) == us


@pytest.mark.parametrize(
    "patterns, match",
    [
        (["stem.1.weight"], "'stem.1.weight' is neither a conv weight"),  # BN gamma
        (["dw.1.bias"], "'pw.bias' (conv 2) is frozen while conv 1 (dw.0) is trained"),
        (["pw.weight[1:3]", "pw.bias"], "not a prefix of dim 0"),
        (["pw.weight[0]", "pw.bias"], "trains 1 of 16 channels"),
        (["pw.bias[0:4]"], "trained on a channel subset"),
        (["fc.weight"], "the classifier is trained only partly"),
        (["fc.weight[0]", "fc.bias"], "classifier parameter 'fc.weight' is trained on a channel subset"),
    ],
)
def test_sparse_config_not_expressible(patterns, match):
    m = TinyCNN()
    msg = one_line_error(to_sparse_update_config, from_patterns(m, patterns), m, match=match)
    assert msg.startswith("not expressible as a sparse-update config")


def test_sparse_config_mlp_middle_linear_not_expressible():
    m = TinyMLP()  # no convs; fc2 is the classifier, fc1 is not expressible
    assert to_sparse_update_config(from_patterns(m, ["fc2"]), m)["n_bias_update"] == 0
    one_line_error(to_sparse_update_config, from_patterns(m, ["fc1.bias"]), m, match="'fc1.bias' is neither")
    assert from_sparse_update_config({"n_bias_update": 0}, m).parameter_names() == ("fc2.weight", "fc2.bias")


# ---------------------------------------------------------------------------------------------------
# A spec from the command line: files only when they look like files; several specs unite (issue 12)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, is_file", [
    ("plan.json", True), ("missing.json", True), ("conf.YAML", True), ("dir/patterns", True), ("./fc", True),
    ("fc", False), ("fc.weight[0:8]", False), ("*.bias", False), (",".join(["fc"] * 5000), False),
    ("a" * 300, False), ("x\x00y", False),
])
def test_looks_like_file(text: str, is_file: bool, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plan.json").write_text("{}")
    assert looks_like_file(text) is is_file


def test_an_existing_file_without_a_suffix_is_a_file(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fc").write_text(json.dumps({"update": [{"parameter": "proj.weight", "channels": [0]}]}))
    assert resolve_update_spec(TinyCNN(), "fc").entries == {"proj.weight": (0,)}


def test_several_specs_train_their_union(tmp_path) -> None:
    m = TinyCNN()
    path = tmp_path / "u.json"
    path.write_text(json.dumps({"update": [{"parameter": "pw.weight", "channels": [1, 2]},
                                           {"parameter": "fc.bias"}]}))  # channels may be left out: whole
    us = resolve_update_spec(m, ["fc.weight[0:2]", str(path), "pw.weight[2,5]", "fc.weight[3]"])
    assert us.entries == {"pw.weight": (1, 2, 5), "fc.weight": (0, 1, 3), "fc.bias": None}
    assert resolve_update_spec(m, ["fc.weight[0:2]", "fc"]).entries == {"fc.weight": None, "fc.bias": None}
    assert resolve_update_spec(m, ["fc.weight[0:2]", "fc.weight[2:]"]).entries == {"fc.weight": None}
    assert resolve_update_spec(m, None) == UpdateSet.full(m)
    with pytest.raises(InputError, match="empty update spec"):
        resolve_update_spec(m, [])


def test_duplicate_detection_is_linear_and_names_the_repeats() -> None:
    values = list(range(300_000)) + [5, 7, 7]
    msg = one_line_error(UpdateSet, {"fc.weight": values}, match="duplicate channel indices [5, 7]")
    assert len(msg) < 200
    many = list(range(20)) * 2
    one_line_error(UpdateSet, {"fc.weight": many}, match="[0, 1, 2, 3, 4, 5, 6, 7, ... (20 in all)]")
