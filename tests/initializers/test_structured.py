"""identity, dirac and sparse: exact structure, pass-through convs, per-unit counts."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import assert_ks
from flax import nnx
from scipy import stats

import flaxinit as fi

KEY = jax.random.key(11)


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (5, 3)])
def test_identity(shape):
    np.testing.assert_array_equal(fi.identity(2.0)(KEY, shape), 2.0 * np.eye(*shape))


def test_identity_dense_passes_through():
    dense = nn.Dense(6, kernel_init=fi.identity())
    x = jax.random.normal(KEY, (3, 6))
    y, _ = dense.init_with_output(KEY, x)
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize(("spatial", "groups"), [(1, 1), (2, 1), (3, 1), (2, 2), (1, 3)])
def test_dirac_counts(spatial, groups):
    in_per_group, out = 3, 6 * groups
    shape = (3,) * spatial + (in_per_group, out)
    w = np.asarray(fi.dirac(groups)(KEY, shape))
    expected = min(in_per_group, out // groups) * groups
    assert np.count_nonzero(w) == expected
    assert w.sum() == expected


@pytest.mark.parametrize("spatial", [1, 2, 3])
def test_dirac_linen_conv_is_identity(spatial):
    channels_in, channels_out = 3, 5
    conv = nn.Conv(channels_out, (3,) * spatial, padding="SAME", kernel_init=fi.dirac())
    x = jax.random.normal(KEY, (2,) + (5,) * spatial + (channels_in,))
    y, _ = conv.init_with_output(KEY, x)
    np.testing.assert_array_equal(y[..., :channels_in], x)
    assert not np.asarray(y[..., channels_in:]).any()


def test_dirac_grouped_conv():
    groups, in_per_group, out_per_group = 2, 3, 4
    conv = nn.Conv(
        groups * out_per_group,
        (3, 3),
        padding="SAME",
        feature_group_count=groups,
        kernel_init=fi.dirac(groups),
    )
    x = jax.random.normal(KEY, (2, 6, 6, groups * in_per_group))
    y, _ = conv.init_with_output(KEY, x)
    for g in range(groups):
        got = y[..., g * out_per_group : g * out_per_group + in_per_group]
        np.testing.assert_array_equal(got, x[..., g * in_per_group : (g + 1) * in_per_group])
        assert not np.asarray(
            y[..., g * out_per_group + in_per_group : (g + 1) * out_per_group]
        ).any()


def test_dirac_nnx_conv_even_window():
    conv = nnx.Conv(4, 4, (4, 4), padding="SAME", kernel_init=fi.dirac(), rngs=nnx.Rngs(0))
    x = jax.random.normal(KEY, (1, 7, 7, 4))
    np.testing.assert_array_equal(conv(x), x)


@pytest.mark.parametrize(
    ("kwargs", "shape", "nonzero"),
    [
        ({"nonzero": 15}, (784, 64), 15),
        ({"sparsity": 0.1}, (33, 40), 33 - math.ceil(0.1 * 33)),
        ({"sparsity": 0.9}, (3, 3, 8, 16), 72 - math.ceil(0.9 * 72)),
        ({"nonzero": 4}, (4, 7), 4),
    ],
)
def test_sparse_counts_per_unit(kwargs, shape, nonzero):
    w = np.asarray(fi.sparse(**kwargs, stddev=1.0)(KEY, shape))
    per_unit = (w.reshape(-1, shape[-1]) != 0).sum(axis=0)
    np.testing.assert_array_equal(per_unit, nonzero)


def test_sparse_values_and_determinism():
    init = fi.sparse(nonzero=20, stddev=0.5)
    w = np.asarray(init(KEY, (500, 1000)))
    np.testing.assert_array_equal(w, init(KEY, (500, 1000)))  # same key, same mask and values
    other = np.asarray(init(jax.random.key(12), (500, 1000)))
    assert ((w != 0) != (other != 0)).any()  # another key, another mask
    assert_ks(w[w != 0], stats.norm(0, 0.5).cdf)
    # The mask is uniform over inputs: each input is chosen with probability 20/500.
    hits = (w != 0).sum(axis=1)  # per input, over 1000 units
    p = 20 / 500
    assert abs(hits.mean() - 1000 * p) < 1e-9
    assert stats.chisquare(hits).pvalue > 1e-4


def test_sparse_too_many_nonzero():
    with pytest.raises(ValueError, match="exceeds the 4 incoming"):
        fi.sparse(nonzero=5)(KEY, (4, 3))


# Bad arguments raise when the initializer is built, naming the argument and its value.
@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: fi.sparse(), ValueError, "exactly one of sparsity"),
        (lambda: fi.sparse(sparsity=0.5, nonzero=3), ValueError, "exactly one of sparsity"),
        (lambda: fi.sparse(sparsity=1.0), ValueError, "sparsity must be < 1, got sparsity=1.0"),
        (lambda: fi.sparse(nonzero=0), ValueError, "nonzero must be an int >= 1, got nonzero=0"),
        (lambda: fi.dirac(groups=0), ValueError, "groups must be an int >= 1, got groups=0"),
    ],
)
def test_errors_at_build_time(build, error, match):
    with pytest.raises(error, match=match):
        build()


# Shape-dependent problems raise at the call.
@pytest.mark.parametrize(
    ("init", "shape", "dtype", "error", "match"),
    [
        (fi.sparse(nonzero=1), (5,), jnp.float32, ValueError, "at least 2"),
        (fi.identity(), (3, 3, 4, 4), jnp.float32, ValueError, "use dirac"),
        (fi.dirac(groups=3), (3, 3, 4, 8), jnp.float32, ValueError, "groups=3"),
        (fi.dirac(), (4, 4), jnp.float32, ValueError, "spatial"),
    ],
)
def test_errors_at_call_time(init, shape, dtype, error, match):
    with pytest.raises(error, match=match):
        init(KEY, shape, dtype)
