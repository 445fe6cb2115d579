"""Statistical tests: each initializer draws the distribution its docstring states.

Fixed keys; std checked within a tolerance derived from the sample size (and within
1%); Kolmogorov-Smirnov against the exact scipy distribution with p > 1e-4; hard
bounds checked exactly.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import assert_ks, sample_tolerance
from scipy import stats

import flaxinit as fi
from flaxinit.initializers.basic import truncated_standard_normal

KEY = jax.random.key(20261122)
N_SHAPE = (512, 1024)  # 524,288 samples
N = math.prod(N_SHAPE)


def draw(init, shape=N_SHAPE, dtype=jnp.float32, key=KEY):
    return np.asarray(init(key, shape, dtype)).astype(np.float64)


def assert_std(x, expected, *, mean=0.0):
    tol = min(sample_tolerance(x.size), 0.01)
    assert abs(x.std() / expected - 1) < tol, (x.std(), expected, tol)
    # The sample mean's standard error is std / sqrt(n).
    assert abs(x.mean() - mean) < 6 * expected / math.sqrt(x.size), (x.mean(), mean)


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


def test_uniform_range():
    x = draw(fi.uniform_range(-0.3, 0.7))
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
def test_truncated_std_matches_scipy(lower, upper):
    assert fi.truncated_std(lower, upper) == pytest.approx(
        stats.truncnorm(lower, upper).std(), rel=1e-12
    )


@pytest.mark.parametrize(
    ("mean", "std", "a", "b"),
    [(0.0, 1.0, -2.0, 2.0), (0.0, 0.02, -0.03, 0.03), (1.0, 2.0, 0.0, 4.0)],
)
def test_trunc_normal_absolute_bounds(mean, std, a, b):
    x = draw(fi.trunc_normal(mean, std, a, b))
    assert x.min() >= a
    assert x.max() <= b
    dist = stats.truncnorm((a - mean) / std, (b - mean) / std, loc=mean, scale=std)
    assert_std(x, dist.std(), mean=dist.mean())
    assert_ks(x, dist.cdf)


def test_trunc_normal_small_std_is_effectively_untruncated():
    # PyTorch/timm's trunc_normal_(std=0.02) with bounds +-2 is a plain normal.
    x = draw(fi.trunc_normal(std=0.02))
    assert_std(x, 0.02)
    assert_ks(x, stats.norm(0, 0.02).cdf)


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
    ("trunc_normal", fi.trunc_normal()),
    ("uniform_range", fi.uniform_range()),
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


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_std(dtype):
    x = np.asarray(fi.he_normal()(KEY, VS_SHAPE, dtype).astype(jnp.float32)).astype(np.float64)
    std = math.sqrt(2 / fi.compute_fans(VS_SHAPE)[0])
    # bf16 rounding adds a relative error of at most 2^-9 per value.
    assert abs(x.std() / std - 1) < sample_tolerance(x.size) + 2**-8


@pytest.mark.parametrize("key_index", [4, 7])
def test_far_truncation_bounds_have_no_spike_at_the_bound(key_index):
    # jax.random.truncated_normal(k, -100, 100) returns exactly -100 for one of these
    # 10^6 draws (erf(-100 / sqrt 2) rounds to -1, where erf_inv is -inf); a normal
    # sample beyond 6 std has probability 2e-9 per draw.
    key = jax.random.key(key_index)
    z = truncated_standard_normal(key, -100.0, 100.0, (1000, 1000), jnp.float32)
    assert float(jnp.abs(z).max()) < 6.0
    w = fi.trunc_normal(std=0.02)(key, (1000, 1000))
    assert float(jnp.abs(w).max()) < 6 * 0.02
