"""flaxinit.initializers.basic: constants, normal, uniform (one-sided and between bounds),
truncated normal (bounds in stds and absolute).

Statistical tests: each initializer draws the distribution its docstring states. Fixed
keys; std checked within a tolerance derived from the sample size (and within 1%);
Kolmogorov-Smirnov against the exact scipy distribution with p > 1e-4; hard bounds
checked exactly.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import assert_ks, assert_std, draw, sample_tolerance
from scipy import stats

import flaxinit as fi
import flaxinit.initializers as fii
from flaxinit.initializers.basic import truncated_standard_normal

KEY = jax.random.key(20261122)
N = math.prod((512, 1024))


@pytest.mark.parametrize(("stddev", "mean"), [(1.0, 0.0), (0.02, 0.0), (0.5, 3.0)])
def test_normal(stddev, mean):
    x = draw(fi.normal(stddev, mean=mean))
    assert_std(x, stddev, mean=mean)
    assert_ks(x, stats.norm(mean, stddev).cdf)


@pytest.mark.parametrize("scale", [1.0, 0.01])
def test_uniform_is_jax_one_sided(scale):
    x = draw(fi.uniform(scale))
    assert x.min() >= 0
    assert x.max() < scale
    assert_ks(x, stats.uniform(0, scale).cdf)


def test_uniform_between():
    x = draw(fi.uniform_between(-0.3, 0.7))
    assert x.min() >= -0.3
    assert x.max() < 0.7
    assert_ks(x, stats.uniform(-0.3, 1.0).cdf)


@pytest.mark.parametrize(
    ("stddev", "lower", "upper"), [(1.0, -2.0, 2.0), (0.02, -2.0, 2.0), (0.5, -1.0, 3.0)]
)
def test_truncated_normal_std_units(stddev, lower, upper):
    x = draw(fi.truncated_normal(stddev, lower=lower, upper=upper))
    f32 = np.float32
    assert x.min() >= f32(lower) * f32(stddev)
    assert x.max() <= f32(upper) * f32(stddev)
    dist = stats.truncnorm(lower, upper, scale=stddev)
    assert_std(x, dist.std(), mean=dist.mean())
    assert_ks(x, dist.cdf)


def test_truncated_normal_is_not_std_corrected_by_default():
    x = draw(fi.truncated_normal(0.02))
    assert abs(x.std() / (0.02 * 0.8796256610342398) - 1) < sample_tolerance(N)


def test_truncated_normal_correct_std():
    x = draw(fi.truncated_normal(0.02, correct_std=True))
    assert_std(x, 0.02)
    assert_ks(x, stats.truncnorm(-2, 2, scale=0.02 / 0.8796256610342398).cdf)


@pytest.mark.parametrize(("lower", "upper"), [(-2, 2), (-1, 3), (0, 1), (-math.inf, 0.5)])
def test_truncated_normal_std_matches_scipy(lower, upper):
    assert fii.truncated_normal_std(lower, upper) == pytest.approx(
        stats.truncnorm(lower, upper).std(), rel=1e-12
    )


@pytest.mark.parametrize(
    ("mean", "std", "a", "b"),
    [(0.0, 1.0, -2.0, 2.0), (0.0, 0.02, -0.03, 0.03), (1.0, 2.0, 0.0, 4.0)],
)
def test_truncated_normal_between_absolute_bounds(mean, std, a, b):
    x = draw(fi.truncated_normal_between(mean, std, a, b))
    assert x.min() >= a
    assert x.max() <= b
    dist = stats.truncnorm((a - mean) / std, (b - mean) / std, loc=mean, scale=std)
    assert_std(x, dist.std(), mean=dist.mean())
    assert_ks(x, dist.cdf)


def test_truncated_normal_between_small_std_is_effectively_untruncated():
    # PyTorch/timm's trunc_normal_(std=0.02) with bounds +-2 is a plain normal.
    x = draw(fi.truncated_normal_between(std=0.02))
    assert_std(x, 0.02)
    assert_ks(x, stats.norm(0, 0.02).cdf)


def test_complex_normal():
    z = np.asarray(fi.normal(0.5)(KEY, (1024, 512), jnp.complex64)).ravel()
    power = np.abs(z) ** 2
    assert abs(power.mean() / 0.25 - 1) < 6 / math.sqrt(z.size)
    assert_ks(z.real, stats.norm(0, 0.5 / math.sqrt(2)).cdf)


LOW_PRECISION = [
    ("normal", fi.normal(1.0)),
    ("truncated_normal", fi.truncated_normal(1.0)),
    ("he_normal", fi.he_normal()),
    ("glorot_uniform", fi.glorot_uniform()),
    ("kaiming_normal", fi.kaiming_normal()),
    ("truncated_normal_between", fi.truncated_normal_between()),
    ("uniform_between", fi.uniform_between()),
]


@pytest.mark.parametrize(("name", "init"), LOW_PRECISION, ids=[n for n, _ in LOW_PRECISION])
def test_bfloat16_keeps_resolution(name, init):
    x = init(KEY, (100, 100), jnp.bfloat16)
    assert x.dtype == jnp.bfloat16
    # jax draws bf16 directly and gets ~128 distinct values; drawing in f32 and
    # casting keeps > 1000 (PyTorch's test_trunc_normal_unique_values bar).
    assert len(np.unique(np.asarray(x.astype(jnp.float32)))) > 1000


def test_bfloat16_normal_keeps_tails():
    x = np.asarray(fi.normal(1.0)(KEY, (1000, 1000), jnp.bfloat16).astype(jnp.float32))
    # P(|x| > 3) = 2.70e-3 -> 2700 expected, sd 52; jax's in-dtype draw gives 0.
    count = int((np.abs(x) > 3).sum())
    expected = 1e6 * 2 * stats.norm.sf(3)
    assert abs(count - expected) < 6 * math.sqrt(expected), count
    assert np.abs(x).max() > 4.0


@pytest.mark.parametrize("key_index", [4, 7])
def test_far_truncation_bounds_have_no_spike_at_the_bound(key_index):
    # jax.random.truncated_normal(k, -100, 100) returns exactly -100 for one of these
    # 10^6 draws (erf(-100 / sqrt 2) rounds to -1, where erf_inv is -inf); a normal
    # sample beyond 6 std has probability 2e-9 per draw.
    key = jax.random.key(key_index)
    z = truncated_standard_normal(key, -100.0, 100.0, (1000, 1000), jnp.float32)
    assert float(jnp.abs(z).max()) < 6.0
    w = fi.truncated_normal_between(std=0.02)(key, (1000, 1000))
    assert float(jnp.abs(w).max()) < 6 * 0.02


# Bad arguments raise when the initializer is built, naming the argument and its value.
@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: fi.normal(-0.1), ValueError, "stddev must be >= 0"),
        (lambda: fi.normal(math.nan), ValueError, "stddev must be finite"),
        (lambda: fi.normal(0.1, 0.0), TypeError, "dtype must be a dtype"),
        (lambda: fi.uniform(-1.0), ValueError, "scale"),
        (
            lambda: fi.uniform_between(1.0, 1.0),
            ValueError,
            "maxval must be > minval=1, got maxval=1.0",
        ),
        (
            lambda: fi.truncated_normal(0.1, lower=2.0, upper=-2.0),
            ValueError,
            "upper must be > lower=2",
        ),
        (lambda: fi.truncated_normal(0.1, lower=9.0, upper=10.0), ValueError, "mass"),
        (lambda: fi.truncated_normal_between(std=0.0), ValueError, "std must be > 0, got std=0.0"),
        (
            lambda: fi.truncated_normal_between(minval=1.0, maxval=0.0),
            ValueError,
            "maxval must be > minval=1, got maxval=0.0",
        ),
        (lambda: fi.constant(math.nan), ValueError, "value must be a number, not NaN"),
    ],
)
def test_errors_at_build_time(build, error, match):
    with pytest.raises(error, match=match):
        build()


# Shape-dependent problems raise at the call.
@pytest.mark.parametrize(
    ("init", "shape", "dtype", "error", "match"),
    [
        (fi.constant(jnp.ones(3)), (4, 4), jnp.float32, ValueError, "does not broadcast"),
        (fi.normal(), (4, 4), jnp.bool_, TypeError, "dtype=bool"),
        (fi.normal(), (4, 4), "not-a-dtype", TypeError, "dtype"),
        (fi.uniform(), (4, 4), jnp.complex64, TypeError, "complex"),
        (fi.truncated_normal(), (4, 4), jnp.complex64, TypeError, "complex"),
    ],
)
def test_errors_at_call_time(init, shape, dtype, error, match):
    with pytest.raises(error, match=match):
        init(KEY, shape, dtype)
