"""Layers and the orthonormal pre-init (``lsuv/layers.py``): orthonormal kernels, one key per
layer, same-shape layers decomposed together with the values of a layer-by-layer draw."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _lsuv_helpers import (
    KEY,
    LinenMLP,
    batch,
)

from flaxinit.lsuv import lsuv


def test_different_keys_give_different_pre_init():
    model = LinenMLP(depth=2)
    x = batch((64, 64))
    v1, _ = lsuv(model, None, x, key=jax.random.key(1))
    v2, _ = lsuv(model, None, x, key=jax.random.key(2))
    assert not np.array_equal(v1["params"]["Dense_0"]["kernel"], v2["params"]["Dense_0"]["kernel"])


def test_orthonormal_pre_init():
    model = LinenMLP(depth=3)
    x = batch((64, 64), scale=1.0, shift=0.0)
    variables = model.init(KEY, x)
    new, report = lsuv(model, variables, x, key=KEY)
    kernel = np.asarray(new["params"]["Dense_1"]["kernel"], dtype=np.float64)
    scale = report[1].scale
    np.testing.assert_allclose(kernel.T @ kernel, scale**2 * np.eye(64), atol=1e-4 * scale**2)


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg", "unsafe_rbg"])
def test_grouped_pre_init_equals_layer_by_layer(impl):
    # Same-shape layers share one decomposition and the layer keys come from one
    # vectorized fold-in; every kernel must still be the one its own draw gives.
    from flaxinit.lsuv.layers import LayerInfo, layer_key, orthonormal_kernel, orthonormal_kernels

    shapes = [(32, 16), (32, 16), (3, 3, 4, 8), (32, 16)]
    infos = [
        LayerInfo(
            f"layer_{i}", "Dense", ("params", f"layer_{i}", "kernel"), None, s, (), (len(s) - 1,)
        )
        for i, s in enumerate(shapes)
    ]
    leaves = [jnp.zeros(s) for s in shapes]
    leaves[1] = jnp.zeros((5, 32, 16))  # a stacked (scanned) layer
    key = jax.random.key(3, impl=impl)
    grouped = jax.jit(lambda k: orthonormal_kernels(k, infos, leaves))(key)
    for info, leaf, got in zip(infos, leaves, grouped, strict=True):
        want = jax.jit(lambda k, i=info, x=leaf: orthonormal_kernel(layer_key(k, i), i, x))(key)
        np.testing.assert_array_equal(got, want)
