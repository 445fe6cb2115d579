"""flaxinit.initializers.variance_scaling: variance_scaling and the jax (Glorot, He, LeCun)
and PyTorch (Xavier, Kaiming) presets, statistically against scipy's exact distributions
(fixed keys, tolerances from the sample size)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import assert_ks, assert_std, draw, sample_tolerance
from scipy import stats

import flaxinit as fi

KEY = jax.random.key(20261122)

VS_SHAPE = (4, 4, 128, 256)  # 524,288 samples, fan_in 2048, fan_out 4096


def fan_denominator(mode, shape=VS_SHAPE):
    fan_in, fan_out = fi.compute_fans(shape)
    return {
        "fan_in": fan_in,
        "fan_out": fan_out,
        "fan_avg": (fan_in + fan_out) / 2,
        "fan_geo_avg": math.sqrt(fan_in * fan_out),
    }[mode]


def exact_distribution(distribution, std):
    if distribution == "truncated_normal":
        return stats.truncnorm(-2, 2, scale=std / 0.8796256610342398)
    if distribution == "normal":
        return stats.norm(0, std)
    limit = math.sqrt(3) * std
    return stats.uniform(-limit, 2 * limit)


@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg", "fan_geo_avg"])
@pytest.mark.parametrize("distribution", ["truncated_normal", "normal", "uniform"])
def test_variance_scaling(mode, distribution):
    scale = 2.0
    std = math.sqrt(scale / fan_denominator(mode))
    x = draw(fi.variance_scaling(scale, mode, distribution), VS_SHAPE)
    assert_std(x, std)
    dist = exact_distribution(distribution, std)
    assert_ks(x, dist.cdf)
    lo, hi = dist.support()
    assert x.min() >= lo * (1 + 1e-6)
    assert x.max() <= hi * (1 + 1e-6)


@pytest.mark.parametrize(
    ("init", "variance", "distribution"),
    [
        (fi.glorot_uniform(), lambda fi_, fo: 2 / (fi_ + fo), "uniform"),
        (fi.glorot_normal(), lambda fi_, fo: 2 / (fi_ + fo), "truncated_normal"),
        (fi.lecun_uniform(), lambda fi_, fo: 1 / fi_, "uniform"),
        (fi.lecun_normal(), lambda fi_, fo: 1 / fi_, "truncated_normal"),
        (fi.he_uniform(), lambda fi_, fo: 2 / fi_, "uniform"),
        (fi.he_normal(), lambda fi_, fo: 2 / fi_, "truncated_normal"),
        # PyTorch semantics: plain normals, gains.
        (fi.xavier_uniform(gain=5 / 3), lambda fi_, fo: (5 / 3) ** 2 * 2 / (fi_ + fo), "uniform"),
        (fi.xavier_normal(gain=0.5), lambda fi_, fo: 0.25 * 2 / (fi_ + fo), "normal"),
        (fi.kaiming_uniform(a=math.sqrt(5)), lambda fi_, fo: 1 / (3 * fi_), "uniform"),
        (fi.kaiming_normal(), lambda fi_, fo: 2 / fi_, "normal"),
        (fi.kaiming_normal(mode="fan_out", nonlinearity="relu"), lambda fi_, fo: 2 / fo, "normal"),
        (fi.kaiming_normal(a=0.2), lambda fi_, fo: 2 / (1 + 0.04) / fi_, "normal"),
        (fi.kaiming_uniform(nonlinearity="tanh"), lambda fi_, fo: (25 / 9) / fi_, "uniform"),
    ],
)
def test_presets(init, variance, distribution):
    std = math.sqrt(variance(*fi.compute_fans(VS_SHAPE)))
    x = draw(init, VS_SHAPE)
    assert_std(x, std)
    assert_ks(x, exact_distribution(distribution, std).cdf)


def test_kaiming_uniform_sqrt5_is_torch_linear_default():
    # torch.nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    x = draw(fi.kaiming_uniform(a=math.sqrt(5)), (300, 200))
    bound = 1 / math.sqrt(300)
    assert np.abs(x).max() <= bound * (1 + 1e-6)
    assert np.abs(x).max() > bound * 0.999


COMPLEX_SHAPE = (256, 2048)


@pytest.mark.parametrize("distribution", ["truncated_normal", "normal", "uniform"])
@pytest.mark.parametrize("dtype", [jnp.complex64])
def test_complex_variance_scaling(distribution, dtype):
    init = fi.variance_scaling(1.0, "fan_in", distribution)
    z = np.asarray(init(KEY, COMPLEX_SHAPE, dtype)).astype(np.complex128).ravel()
    assert z.dtype == np.complex128
    target = 1 / 256
    power = np.abs(z) ** 2
    # E|z|^2 within 6 standard errors of the target variance.
    se = power.std() / math.sqrt(z.size)
    assert abs(power.mean() - target) < 6 * se, (power.mean(), target)
    # Circular symmetry: E z = 0, E z^2 = 0, phase uniform on (-pi, pi].
    assert abs(z.mean()) < 6 * math.sqrt(target / z.size)
    assert abs((z**2).mean()) < 6 * math.sqrt(np.mean(power**2) / z.size)
    assert_ks(np.angle(z), stats.uniform(-math.pi, 2 * math.pi).cdf)
    if distribution == "truncated_normal":
        # |z| < 2 before rescaling to unit power.
        bound = 2 / math.sqrt(1 - 4 * math.exp(-4) / (1 - math.exp(-4)))
        assert np.abs(z).max() <= bound * math.sqrt(target) * (1 + 1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_std(dtype):
    x = np.asarray(fi.he_normal()(KEY, VS_SHAPE, dtype).astype(jnp.float32)).astype(np.float64)
    std = math.sqrt(2 / fi.compute_fans(VS_SHAPE)[0])
    # bf16 rounding adds a relative error of at most 2^-9 per value.
    assert abs(x.std() / std - 1) < sample_tolerance(x.size) + 2**-8


def test_zero_scale_is_allowed_and_gives_zeros():
    x = fi.variance_scaling(0.0, "fan_in", "truncated_normal")(KEY, (4, 4))
    assert not jnp.any(x)
    assert not jnp.isnan(x).any()


# Bad arguments raise when the initializer is built, naming the argument and its value.
@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: fi.variance_scaling(-1.0, "fan_in", "normal"), ValueError, "scale must be >= 0"),
        (
            lambda: fi.variance_scaling(math.nan, "fan_in", "normal"),
            ValueError,
            "scale must be finite",
        ),
        (lambda: fi.variance_scaling(math.inf, "fan_in", "normal"), ValueError, "finite"),
        (lambda: fi.variance_scaling(1.0, "fan_sum", "normal"), ValueError, "got mode=.fan_sum."),
        (lambda: fi.variance_scaling(1.0, "fan_in", "cauchy"), ValueError, "distribution=.cauchy."),
        (
            lambda: fi.variance_scaling("big", "fan_in", "normal"),
            TypeError,
            "scale must be a real number",
        ),
        (lambda: fi.variance_scaling(1.0, "fan_in", "normal", in_axis=1.5), TypeError, "in_axis"),
        (lambda: fi.xavier_uniform(gain=-1.0), ValueError, "gain"),
        (
            lambda: fi.kaiming_normal(mode="fan_avg"),
            ValueError,
            "mode must be one of 'fan_in', 'fan_out', got mode='fan_avg'",
        ),
        (
            lambda: fi.kaiming_normal(nonlinearity="gelu"),
            ValueError,
            "unsupported nonlinearity 'gelu'",
        ),
        (lambda: fi.kaiming_uniform(a=True), TypeError, "a must be a real number"),
    ],
)
def test_errors_at_build_time(build, error, match):
    with pytest.raises(error, match=match):
        build()


# Shape-dependent problems raise at the call.
@pytest.mark.parametrize(
    ("init", "shape", "dtype", "error", "match"),
    [
        (fi.he_normal(), (5,), jnp.float32, ValueError, "at least 2"),
        (fi.glorot_uniform(), (), jnp.float32, ValueError, "at least 2"),
        (fi.he_normal(in_axis=3), (4, 4), jnp.float32, ValueError, "got in_axis=3"),
        (fi.he_normal(), (4, -1), jnp.float32, ValueError, "non-negative ints, got shape"),
        (fi.he_normal(), (4, 2.0), jnp.float32, TypeError, "shape must be a sequence of"),
        (fi.he_normal(), (4, 4), jnp.int32, TypeError, "dtype=int32"),
    ],
)
def test_errors_at_call_time(init, shape, dtype, error, match):
    with pytest.raises(error, match=match):
        init(KEY, shape, dtype)
