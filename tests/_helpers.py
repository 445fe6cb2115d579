"""Helpers shared by the tests: the initializer catalogue and statistical checks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

import flaxinit as fi
import flaxinit.initializers as fii

# One built instance of every initializer, with the smallest rank it accepts.
# (name, initializer, min_ndim, max_ndim, real_only)
CATALOGUE = [
    ("zeros", fi.zeros, 0, None, False),
    ("ones", fi.ones, 0, None, False),
    ("constant", fi.constant(0.5), 0, None, False),
    ("normal", fi.normal(0.02), 0, None, False),
    ("normal_mean", fi.normal(0.02, mean=1.0), 0, None, False),
    ("uniform", fi.uniform(0.1), 0, None, True),
    ("uniform_between", fi.uniform_between(-0.1, 0.1), 0, None, True),
    ("truncated_normal", fi.truncated_normal(0.02), 0, None, True),
    (
        "truncated_normal_between",
        fi.truncated_normal_between(std=0.02, minval=-0.04, maxval=0.04),
        0,
        None,
        True,
    ),
    ("variance_scaling", fi.variance_scaling(2.0, "fan_geo_avg", "normal"), 2, None, False),
    ("glorot_uniform", fi.glorot_uniform(), 2, None, False),
    ("glorot_normal", fi.glorot_normal(), 2, None, False),
    ("he_normal", fi.he_normal(), 2, None, False),
    ("he_uniform", fi.he_uniform(), 2, None, False),
    ("lecun_normal", fi.lecun_normal(), 2, None, False),
    ("lecun_uniform", fi.lecun_uniform(), 2, None, False),
    ("xavier_uniform", fi.xavier_uniform(gain=2.0), 2, None, False),
    ("xavier_normal", fi.xavier_normal(), 2, None, False),
    ("kaiming_uniform", fi.kaiming_uniform(a=math.sqrt(5)), 2, None, False),
    ("kaiming_normal", fi.kaiming_normal(mode="fan_out", nonlinearity="relu"), 2, None, False),
    ("orthogonal", fi.orthogonal(), 2, None, False),
    ("delta_orthogonal", fi.delta_orthogonal(), 3, 5, False),
    ("sparse", fi.sparse(sparsity=0.5), 2, None, True),
    ("identity", fi.identity(), 2, 2, False),
    ("dirac", fi.dirac(), 3, None, False),
    ("scaled", fii.scaled(fi.he_normal(), 0.5), 2, None, False),
    ("layerwise", fii.layerwise(fi.orthogonal()), 3, None, False),
    ("blockwise", fii.blockwise(fi.orthogonal(), 2), 2, None, False),
]

RANDOM = {
    name for name, *_ in CATALOGUE if name not in {"zeros", "ones", "constant", "identity", "dirac"}
}


def fits(entry, shape) -> bool:
    """Whether a catalogue entry accepts `shape` (rank and per-initializer constraints)."""
    name, _, lo, hi, _ = entry
    if len(shape) < lo or (hi is not None and len(shape) > hi):
        return False
    if name == "delta_orthogonal" and shape[-1] < shape[-2]:
        return False
    return not (name == "blockwise" and shape[-1] % 2)


def sample_tolerance(n: int, sigmas: float = 6.0) -> float:
    """Relative tolerance of a sample std over `n` draws: `sigmas` standard errors.

    The std's relative standard error is about 1/sqrt(2n) for a normal; heavier
    or lighter tails change it by a small factor, covered by the 6 sigma margin.
    """
    return sigmas / math.sqrt(2 * n)


def assert_ks(samples, cdf, p_min: float = 1e-4):
    """Kolmogorov-Smirnov test of `samples` against a scipy cdf, p > p_min."""
    x = np.asarray(samples, dtype=np.float64).ravel()
    result = stats.kstest(x, cdf)
    assert result.pvalue > p_min, f"KS p={result.pvalue:.3g} (D={result.statistic:.4g})"


# Statistical draws: 524,288 samples from a fixed key.
DRAW_KEY = jax.random.key(20261122)
DRAW_SHAPE = (512, 1024)


def draw(init, shape=DRAW_SHAPE, dtype=jnp.float32, key=DRAW_KEY):
    """``init(key, shape, dtype)`` as a float64 NumPy array."""
    return np.asarray(init(key, shape, dtype)).astype(np.float64)


def assert_std(x, expected, *, mean=0.0):
    """Sample std within the sample-size tolerance (and 1%), and sample mean within 6
    standard errors (std / sqrt(n)) of ``mean``."""
    tol = min(sample_tolerance(x.size), 0.01)
    assert abs(x.std() / expected - 1) < tol, (x.std(), expected, tol)
    assert abs(x.mean() - mean) < 6 * expected / math.sqrt(x.size), (x.mean(), mean)
