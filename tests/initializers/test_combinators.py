"""flaxinit.initializers.combinators: scaled, layerwise, blockwise."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxinit as fi
import flaxinit.initializers as fii

KEY = jax.random.key(11)


def test_combinators():
    x = fii.scaled(fi.ones, 3.0)(KEY, (2, 2))
    chex.assert_trees_all_equal(x, jnp.full((2, 2), 3.0))
    stack = np.asarray(fii.layerwise(fi.orthogonal())(KEY, (5, 8, 8)), dtype=np.float64)
    keys = jax.random.split(KEY, 5)
    for i in range(5):
        np.testing.assert_allclose(stack[i], fi.orthogonal()(keys[i], (8, 8)), atol=1e-6)
    stack_last = fii.layerwise(fi.he_normal(), axis=-1)(KEY, (8, 8, 5))
    assert stack_last.shape == (8, 8, 5)


def test_blockwise_lstm_gates_orthogonal():
    hidden = 16
    w = np.asarray(fii.blockwise(fi.orthogonal(), 4)(KEY, (hidden, 4 * hidden)), dtype=np.float64)
    for gate in range(4):
        block = w[:, gate * hidden : (gate + 1) * hidden]
        np.testing.assert_allclose(block.T @ block, np.eye(hidden), atol=1e-5)
    fused = np.asarray(fi.orthogonal()(KEY, (hidden, 4 * hidden)), dtype=np.float64)
    block = fused[:, :hidden]
    assert not np.allclose(block.T @ block, np.eye(hidden), atol=0.1)


def test_blockwise_packed_qkv_fans():
    embed = 256
    w = np.asarray(fii.blockwise(fi.xavier_normal(), 3)(KEY, (embed, 3 * embed)), dtype=np.float64)
    # Each block has the fans of one (E, E) projection: std sqrt(2 / 2E).
    for i in range(3):
        block = w[:, i * embed : (i + 1) * embed]
        assert abs(block.std() / math.sqrt(1 / embed) - 1) < 6 / math.sqrt(2 * block.size)


# Bad arguments raise when the initializer is built, naming the argument and its value.
@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: fii.scaled(fi.ones, math.nan), ValueError, "factor must be finite"),
        (lambda: fii.scaled("he_normal", 1.0), TypeError, "init must be an initializer"),
        (lambda: fii.blockwise(fi.orthogonal(), 0), ValueError, "num_blocks must be an int >= 1"),
    ],
)
def test_errors_at_build_time(build, error, match):
    with pytest.raises(error, match=match):
        build()


# Shape-dependent problems raise at the call.
@pytest.mark.parametrize(
    ("init", "shape", "dtype", "error", "match"),
    [
        (fii.blockwise(fi.orthogonal(), 3), (4, 8), jnp.float32, ValueError, "num_blocks=3"),
    ],
)
def test_errors_at_call_time(init, shape, dtype, error, match):
    with pytest.raises(error, match=match):
        init(KEY, shape, dtype)
