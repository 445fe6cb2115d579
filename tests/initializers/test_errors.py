"""Bad arguments raise clear errors when the initializer is built, or at the call for
shape-dependent problems, naming the argument and its value."""

import math

import jax
import jax.numpy as jnp
import pytest

import flaxinit as fi

KEY = jax.random.key(0)


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
        (lambda: fi.variance_scaling(1.0, "fan_sum", "normal"), ValueError, "mode=.fan_sum."),
        (lambda: fi.variance_scaling(1.0, "fan_in", "cauchy"), ValueError, "distribution=.cauchy."),
        (
            lambda: fi.variance_scaling("big", "fan_in", "normal"),
            TypeError,
            "scale must be a real number",
        ),
        (lambda: fi.variance_scaling(1.0, "fan_in", "normal", in_axis=1.5), TypeError, "in_axis"),
        (lambda: fi.normal(-0.1), ValueError, "stddev must be >= 0"),
        (lambda: fi.normal(math.nan), ValueError, "stddev must be finite"),
        (lambda: fi.normal(0.1, 0.0), TypeError, "dtype must be a dtype"),
        (lambda: fi.uniform(-1.0), ValueError, "scale"),
        (lambda: fi.uniform_range(1.0, 1.0), ValueError, "maxval must be > minval"),
        (lambda: fi.truncated_normal(0.1, lower=2.0, upper=-2.0), ValueError, "lower < upper"),
        (lambda: fi.truncated_normal(0.1, lower=9.0, upper=10.0), ValueError, "mass"),
        (lambda: fi.trunc_normal(std=0.0), ValueError, "std must be > 0"),
        (lambda: fi.trunc_normal(a=1.0, b=0.0), ValueError, "lower < upper"),
        (lambda: fi.orthogonal(-1.0), ValueError, "scale must be >= 0"),
        (lambda: fi.orthogonal(math.nan), ValueError, "finite"),
        (lambda: fi.orthogonal(column_axis=(0, 1)), TypeError, "column_axis"),
        (lambda: fi.delta_orthogonal(math.inf), ValueError, "finite"),
        (lambda: fi.xavier_uniform(gain=-1.0), ValueError, "gain"),
        (
            lambda: fi.kaiming_normal(mode="fan_avg"),
            ValueError,
            "mode must be 'fan_in' or 'fan_out'",
        ),
        (
            lambda: fi.kaiming_normal(nonlinearity="gelu"),
            ValueError,
            "unsupported nonlinearity 'gelu'",
        ),
        (lambda: fi.kaiming_uniform(a=True), TypeError, "a must be a real number"),
        (lambda: fi.sparse(), ValueError, "exactly one of sparsity"),
        (lambda: fi.sparse(sparsity=0.5, nonzero=3), ValueError, "exactly one of sparsity"),
        (lambda: fi.sparse(sparsity=1.0), ValueError, "sparsity must be < 1"),
        (lambda: fi.sparse(nonzero=0), ValueError, "nonzero must be a positive int"),
        (lambda: fi.dirac(groups=0), ValueError, "groups must be a positive int"),
        (lambda: fi.constant(math.nan), ValueError, "NaN"),
        (lambda: fi.scaled(fi.ones, math.nan), ValueError, "factor must be finite"),
        (lambda: fi.scaled("he_normal", 1.0), TypeError, "init must be an initializer"),
        (lambda: fi.blockwise(fi.orthogonal(), 0), ValueError, "num_blocks must be >= 1"),
    ],
)
def test_errors_at_build_time(build, error, match):
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize(
    ("init", "shape", "dtype", "error", "match"),
    [
        (fi.he_normal(), (5,), jnp.float32, ValueError, "at least 2"),
        (fi.glorot_uniform(), (), jnp.float32, ValueError, "at least 2"),
        (fi.orthogonal(), (5,), jnp.float32, ValueError, "at least 2"),
        (fi.sparse(nonzero=1), (5,), jnp.float32, ValueError, "at least 2"),
        (fi.orthogonal(batch_axis=0), (3, 4), jnp.float32, ValueError, "at least 2 dimensions"),
        (
            fi.orthogonal(column_axis=0, batch_axis=0),
            (3, 4, 4),
            jnp.float32,
            ValueError,
            "also a batch_axis",
        ),
        (fi.he_normal(in_axis=3), (4, 4), jnp.float32, ValueError, "in_axis=3 is out of range"),
        (
            fi.delta_orthogonal(),
            (3, 3, 8, 4),
            jnp.float32,
            ValueError,
            "in_channels <= out_channels",
        ),
        (fi.delta_orthogonal(), (8, 8), jnp.float32, ValueError, "3-D, 4-D or 5-D"),
        (fi.identity(), (3, 3, 4, 4), jnp.float32, ValueError, "use dirac"),
        (fi.dirac(groups=3), (3, 3, 4, 8), jnp.float32, ValueError, "groups=3"),
        (fi.dirac(), (4, 4), jnp.float32, ValueError, "spatial"),
        (fi.blockwise(fi.orthogonal(), 3), (4, 8), jnp.float32, ValueError, "num_blocks=3"),
        (fi.constant(jnp.ones(3)), (4, 4), jnp.float32, ValueError, "does not broadcast"),
        (fi.he_normal(), (4, -1), jnp.float32, ValueError, "negative"),
        (fi.he_normal(), (4, 2.0), jnp.float32, TypeError, "shape must contain ints"),
        (fi.he_normal(), (4, 4), jnp.int32, TypeError, "dtype=int32"),
        (fi.normal(), (4, 4), jnp.bool_, TypeError, "dtype=bool"),
        (fi.normal(), (4, 4), "not-a-dtype", TypeError, "dtype"),
        (fi.uniform(), (4, 4), jnp.complex64, TypeError, "complex"),
        (fi.truncated_normal(), (4, 4), jnp.complex64, TypeError, "complex"),
    ],
)
def test_errors_at_call_time(init, shape, dtype, error, match):
    with pytest.raises(error, match=match):
        init(KEY, shape, dtype)


def test_zero_scale_is_allowed_and_gives_zeros():
    x = fi.variance_scaling(0.0, "fan_in", "truncated_normal")(KEY, (4, 4))
    assert not jnp.any(x)
    assert not jnp.isnan(x).any()
