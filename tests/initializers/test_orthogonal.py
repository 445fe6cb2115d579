"""orthogonal and delta_orthogonal: exact orthogonality, Haar distribution, dtypes, stacks."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import assert_ks
from scipy import stats

import flaxinit as fi

KEY = jax.random.key(7)


def as_matrix(w, column_axis=-1):
    w = np.moveaxis(
        np.asarray(w, dtype=np.float64 if not np.iscomplexobj(w) else np.complex128),
        column_axis,
        -1,
    )
    return w.reshape(-1, w.shape[-1])


@pytest.mark.parametrize(
    "shape", [(3, 4), (4, 3), (64, 64), (20, 2, 3, 4), (2, 3, 4, 5), (3, 3, 32, 16)]
)
@pytest.mark.parametrize("scale", [1.0, 1.7])
def test_orthogonality(shape, scale):
    m = as_matrix(fi.orthogonal(scale)(KEY, shape))
    rows, cols = m.shape
    gram = m.T @ m if rows >= cols else m @ m.T
    np.testing.assert_allclose(gram, scale**2 * np.eye(min(rows, cols)), atol=1e-5)


@pytest.mark.parametrize("column_axis", [0, 1, -2])
def test_column_axis(column_axis):
    shape = (8, 3, 5)
    m = as_matrix(fi.orthogonal(column_axis=column_axis)(KEY, shape), column_axis)
    small = min(m.shape)
    gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    np.testing.assert_allclose(gram, np.eye(small), atol=1e-5)


def test_complex_is_unitary():
    q = np.asarray(fi.orthogonal()(KEY, (16, 16), jnp.complex64)).astype(np.complex128)
    np.testing.assert_allclose(q.conj().T @ q, np.eye(16), atol=1e-5)
    assert np.abs(q.imag).max() > 0.1


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision(dtype):
    # jax's orthogonal raises NotImplementedError in 16-bit: no 16-bit QR kernels.
    q = fi.orthogonal()(KEY, (64, 64), dtype)
    assert q.dtype == dtype
    m = np.asarray(q.astype(jnp.float32)).astype(np.float64)
    eps = float(jnp.finfo(dtype).eps)
    # Each entry carries a relative rounding error <= eps/2, so each Gram entry is off
    # by at most about eps (sum of |q_i q_j| over a unit row is <= 1).
    np.testing.assert_allclose(m.T @ m, np.eye(64), atol=2 * eps)


def test_haar_distribution():
    # For Haar O(3) the entry Q[0, 0] is uniform on [-1, 1] and tr Q has mean 0 and
    # second moment 1. Without the sign fix E[tr Q] is about -0.5 (measured).
    n_draws = 20_000
    keys = jax.random.split(jax.random.key(3), n_draws)
    qs = np.asarray(jax.vmap(lambda k: fi.orthogonal()(k, (3, 3)))(keys), dtype=np.float64)
    assert_ks(qs[:, 0, 0], stats.uniform(-1, 2).cdf)
    trace = np.trace(qs, axis1=1, axis2=2)
    assert abs(trace.mean()) < 6 * trace.std() / math.sqrt(n_draws)
    assert abs((trace**2).mean() - 1) < 6 * (trace**2).std() / math.sqrt(n_draws)


def test_batch_axis_makes_each_slice_orthogonal():
    shape = (12, 32, 32)
    q = np.asarray(fi.orthogonal(batch_axis=0)(KEY, shape), dtype=np.float64)
    for layer in q:
        np.testing.assert_allclose(layer.T @ layer, np.eye(32), atol=1e-5)
    # Slice i is orthogonal()(split(key, 12)[i]): the same as a loop over layers.
    keys = jax.random.split(KEY, 12)
    loop = np.stack([np.asarray(fi.orthogonal()(k, shape[1:])) for k in keys])
    np.testing.assert_allclose(q, loop, atol=1e-6)
    # Without batch_axis the stack is one tall matrix; its slices are not orthogonal.
    tall = np.asarray(fi.orthogonal()(KEY, shape), dtype=np.float64)
    assert abs(np.linalg.norm(tall[0], axis=0).mean() - 1 / math.sqrt(12)) < 0.05


def test_batch_axis_not_leading():
    q = np.asarray(fi.orthogonal(batch_axis=1)(KEY, (16, 3, 8)), dtype=np.float64)
    for i in range(3):
        np.testing.assert_allclose(q[:, i].T @ q[:, i], np.eye(8), atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 4, 8), (3, 3, 4, 8), (3, 5, 3, 6, 6), (4, 4, 8, 8)])
def test_delta_orthogonal(shape):
    w = np.asarray(fi.delta_orthogonal(scale=2.0)(KEY, shape), dtype=np.float64)
    centre = tuple((k - 1) // 2 for k in shape[:-2])
    tap = w[centre]
    np.testing.assert_allclose(tap @ tap.T, 4.0 * np.eye(shape[-2]), atol=1e-5)
    rest = w.copy()
    rest[centre] = 0
    assert not rest.any()


def test_delta_orthogonal_norm_preserving_conv():
    import flax.linen as nn

    conv = nn.Conv(16, (3, 3), padding="SAME", use_bias=False, kernel_init=fi.delta_orthogonal())
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 16))
    y, _ = conv.init_with_output(jax.random.key(2), x)
    chex.assert_trees_all_close(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)


def test_matches_jax_float32():
    for shape in [(64, 32), (3, 3, 8, 16)]:
        np.testing.assert_array_equal(
            fi.orthogonal(1.3)(KEY, shape), jax.nn.initializers.orthogonal(1.3)(KEY, shape)
        )
    np.testing.assert_array_equal(
        fi.delta_orthogonal()(KEY, (3, 3, 8, 16)),
        jax.nn.initializers.delta_orthogonal()(KEY, (3, 3, 8, 16)),
    )


# Bad arguments raise when the initializer is built, naming the argument and its value.
@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: fi.orthogonal(-1.0), ValueError, "scale must be >= 0"),
        (lambda: fi.orthogonal(math.nan), ValueError, "finite"),
        (lambda: fi.orthogonal(column_axis=(0, 1)), TypeError, "column_axis"),
        (lambda: fi.delta_orthogonal(math.inf), ValueError, "finite"),
    ],
)
def test_errors_at_build_time(build, error, match):
    with pytest.raises(error, match=match):
        build()


# Shape-dependent problems raise at the call.
@pytest.mark.parametrize(
    ("init", "shape", "dtype", "error", "match"),
    [
        (fi.orthogonal(), (5,), jnp.float32, ValueError, "at least 2"),
        (fi.orthogonal(batch_axis=0), (3, 4), jnp.float32, ValueError, "at least 2 dimensions"),
        (
            fi.orthogonal(column_axis=0, batch_axis=0),
            (3, 4, 4),
            jnp.float32,
            ValueError,
            "also a batch_axis",
        ),
        (
            fi.delta_orthogonal(),
            (3, 3, 8, 4),
            jnp.float32,
            ValueError,
            "in_channels <= out_channels",
        ),
        (fi.delta_orthogonal(), (8, 8), jnp.float32, ValueError, "3-D, 4-D or 5-D"),
    ],
)
def test_errors_at_call_time(init, shape, dtype, error, match):
    with pytest.raises(error, match=match):
        init(KEY, shape, dtype)
