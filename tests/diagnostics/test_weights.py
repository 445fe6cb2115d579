"""Weight statistics: the matrix view, rank against numpy, duplicate rows and columns."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxinit.diagnostics import weight_stats
from flaxinit.models import NNXMLP

EPS32 = float(np.finfo(np.float32).eps)


def _one(w, **kw):
    (record,) = weight_stats({"w": jnp.asarray(w, jnp.float32)}, **kw)
    return record


@pytest.mark.parametrize(("m", "n", "k"), [(12, 8, 3), (8, 12, 5), (16, 16, 1), (10, 6, 6)])
def test_rank_of_products_matches_numpy(m, n, k):
    rng = np.random.default_rng(m * 100 + n * 10 + k)
    w = (rng.standard_normal((m, k)) @ rng.standard_normal((k, n))).astype(np.float32)
    r = _one(w)
    s = np.linalg.svd(np.float64(w), compute_uv=False)
    tol = s[0] * max(m, n) * EPS32  # the documented tolerance
    assert r.rank == np.linalg.matrix_rank(w, tol=tol) == k
    assert r.full_rank == min(m, n)
    # sv_min is float32 round-off (~ s_max * eps) when k < min(m, n).
    assert r.sv_ratio == pytest.approx(s[-1] / s[0], abs=10 * max(m, n) * EPS32)


def test_duplicated_columns_and_rows_are_counted():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((9, 7)).astype(np.float32)
    w[:, 3] = w[:, 1]
    w[:, 5] = w[:, 1]  # a group of three equal columns: 2 duplicates
    w[:, 6] = w[:, 0]  # and a pair: 1 more
    w[4, :] = w[2, :]  # one repeated row
    r = _one(w)
    assert (r.duplicate_cols, r.duplicate_rows) == (3, 1)
    assert r.rank == 4  # 7 columns, 4 distinct ones


def test_duplicate_tolerance_is_relative_to_the_largest_entry():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 5)).astype(np.float32)
    scale = np.abs(w).max()
    near, far = w.copy(), w.copy()
    near[:, 4] = w[:, 0] + 1e-7 * scale  # within the default tol of 1e-6 * max|W|
    far[:, 4] = w[:, 0] + 1e-4 * scale
    assert _one(near).duplicate_cols == 1
    assert _one(far).duplicate_cols == 0
    assert _one(near, duplicate_tol=0.0).duplicate_cols == 0


def test_matrix_view_folds_leading_axes_into_rows():
    conv = jax.random.normal(jax.random.key(0), (3, 3, 2, 4))
    r = _one(conv)
    assert (r.rows, r.cols, r.shape) == (18, 4, (3, 3, 2, 4))
    np.testing.assert_allclose(r.gain, float(jnp.std(conv)) * np.sqrt(18), rtol=1e-5)


def test_biases_are_skipped_and_nnx_paths_sort_numerically():
    model = NNXMLP(4, (3,) * 12, rngs=nnx.Rngs(0))
    paths = [r.path for r in weight_stats(model)]
    assert paths == ["head/kernel"] + [f"hidden/{i}/kernel" for i in range(12)]
    assert [r.index for r in weight_stats(model)] == list(range(13))


def test_zero_and_orthogonal_extremes():
    zero = _one(np.zeros((5, 3)))
    assert (zero.rank, zero.duplicate_rows, zero.duplicate_cols) == (0, 4, 2)
    assert np.isnan(zero.sv_ratio)
    q = np.linalg.qr(np.random.default_rng(2).standard_normal((6, 6)))[0]
    ortho = _one(q)
    assert ortho.rank == 6
    assert ortho.sv_ratio == pytest.approx(1.0, abs=1e-5)


def test_stacked_weights_get_a_record_per_layer():
    # Layer 1 of the stack is rank 1 with duplicated columns; folded into one matrix
    # with the other layers, neither would show.
    rng = np.random.default_rng(0)
    stack = rng.standard_normal((3, 8, 6)).astype(np.float32)
    stack[1] = np.outer(rng.standard_normal(8), np.ones(6))
    tree = {"blocks": {"fc": {"kernel": jnp.asarray(stack)}}, "head": {"kernel": jnp.ones((6, 2))}}
    records = weight_stats(tree, layer_stacks="**/blocks/**")
    assert [r.path for r in records] == [
        "blocks/fc/kernel[0]",
        "blocks/fc/kernel[1]",
        "blocks/fc/kernel[2]",
        "head/kernel",
    ]
    for i, record in enumerate(records[:3]):
        alone = _one(stack[i])
        assert record.shape == (8, 6)
        assert (record.rank, record.duplicate_cols) == (alone.rank, alone.duplicate_cols)
        assert record.sv_max == pytest.approx(alone.sv_max, rel=1e-6)
        assert record.std == pytest.approx(float(stack[i].std()), rel=1e-5)
    assert (records[1].rank, records[1].duplicate_cols) == (1, 5)
    (folded,) = [r for r in weight_stats(tree) if r.path == "blocks/fc/kernel"]
    assert (folded.rank, folded.duplicate_cols) == (6, 0)


def test_stacked_patterns_must_place_a_stack():
    tree = {"blocks": {"kernel": jnp.ones((2, 4, 4))}, "head": {"kernel": jnp.ones((4, 2))}}
    with pytest.raises(ValueError, match="matched no weight"):
        weight_stats(tree, layer_stacks="**/encoder/**")
    with pytest.raises(ValueError, match="3 or more axes"):
        weight_stats(tree, layer_stacks="**/head/*")
    with pytest.raises(TypeError, match="strings"):
        weight_stats(tree, layer_stacks=[3])


def test_stacked_is_the_deprecated_name_of_layer_stacks():
    tree = {"blocks": {"kernel": jnp.ones((2, 4, 4))}, "head": {"kernel": jnp.ones((4, 2))}}
    with pytest.warns(DeprecationWarning, match=r"use weight_stats\(layer_stacks=\.\.\.\)"):
        old = weight_stats(tree, stacked="**/blocks/**")
    assert old == weight_stats(tree, layer_stacks="**/blocks/**")
    with (
        pytest.warns(DeprecationWarning, match="stacked"),
        pytest.raises(TypeError, match="layer_stacks= only"),
    ):
        weight_stats(tree, stacked="**/blocks/**", layer_stacks="**/blocks/**")
