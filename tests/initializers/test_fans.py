"""compute_fans and calculate_gain: exact values and errors."""

import math

import pytest

from flaxinit import calculate_gain, compute_fans


@pytest.mark.parametrize(
    ("shape", "kwargs", "expected"),
    [
        ((16, 32), {}, (16, 32)),
        ((3, 3, 16, 32), {}, (144, 288)),  # HWIO conv: receptive field 9
        ((4, 16, 32), {}, (64, 128)),  # a stack counts as receptive field ...
        ((4, 16, 32), {"batch_axis": 0}, (16, 32)),  # ... unless it is a batch axis
        ((8, 4, 32), {"in_axis": (0, 1)}, (32, 32)),
        ((512, 8, 64), {"in_axis": 0, "out_axis": (1, 2)}, (512, 512)),  # q/k/v kernel
        ((8, 64, 512), {"in_axis": (0, 1), "out_axis": 2}, (512, 512)),  # out kernel
        ((100, 16), {"in_axis": 1, "out_axis": 0}, (16, 100)),
        ((2, 3, 5, 7, 11), {"in_axis": 1, "out_axis": -1, "batch_axis": (0,)}, (105, 385)),
        ((0, 5), {}, (0, 5)),
        ((3, 0, 5), {}, (0, 15)),
    ],
)
def test_compute_fans_values(shape, kwargs, expected):
    assert compute_fans(shape, **kwargs) == expected


def test_compute_fans_returns_ints():
    fan_in, fan_out = compute_fans((3, 3, 16, 32))
    assert type(fan_in) is int
    assert type(fan_out) is int


@pytest.mark.parametrize("shape", [(), (5,)])
def test_compute_fans_needs_two_dims(shape):
    with pytest.raises(ValueError, match="at least 2"):
        compute_fans(shape)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_axis": 2}, "in_axis must be in range for a 2-D shape, got in_axis=2"),
        ({"out_axis": -3}, "out_axis must be in range for a 2-D shape, got out_axis=-3"),
        ({"in_axis": 0, "out_axis": 0}, "overlap"),
        ({"batch_axis": -1}, "overlap"),
        (
            {"in_axis": (0, 0)},
            r"in_axis must be distinct axes of a 2-D shape, got in_axis=\(0, 0\)",
        ),
    ],
)
def test_compute_fans_bad_axes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compute_fans((4, 5), **kwargs)


def test_compute_fans_bad_types():
    with pytest.raises(TypeError, match="in_axis"):
        compute_fans((4, 5), in_axis=1.0)
    with pytest.raises(
        ValueError, match=r"shape must be a sequence of non-negative ints, got shape=\(4, -5\)"
    ):
        compute_fans((4, -5))


# PyTorch's values (torch/nn/init.py and test/nn/test_init.py).
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("linear",), 1.0),
        (("conv1d",), 1.0),
        (("conv2d",), 1.0),
        (("conv3d",), 1.0),
        (("conv_transpose1d",), 1.0),
        (("conv_transpose2d",), 1.0),
        (("conv_transpose3d",), 1.0),
        (("sigmoid",), 1.0),
        (("tanh",), 1.6666666666666667),
        (("relu",), 1.4142135623730951),
        (("leaky_relu",), 1.4141428569978354),
        (("leaky_relu", None), 1.4141428569978354),
        (("leaky_relu", 0), 1.4142135623730951),
        (("leaky_relu", 0.01), 1.4141428569978354),
        (("leaky_relu", 0.2), 1.3867504905630728),
        (("leaky_relu", 10), 0.14071950894605836),
        (("leaky_relu", math.sqrt(5)), 0.5773502691896257),
        (("selu",), 0.75),
    ],
)
def test_calculate_gain_table(args, expected):
    assert calculate_gain(*args) == expected


@pytest.mark.parametrize("param", [True, [1], {"a": "b"}, "0.1", float("nan")])
def test_calculate_gain_leaky_relu_only_accepts_numbers(param):
    with pytest.raises(ValueError, match="negative_slope"):
        calculate_gain("leaky_relu", param)


@pytest.mark.parametrize("name", ["gelu", "ReLU", "ab", "swishy", "", "x" * 25])
def test_calculate_gain_unknown(name):
    with pytest.raises(ValueError, match="unsupported nonlinearity"):
        calculate_gain(name)
