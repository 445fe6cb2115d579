"""fi.mup.base_shapes: infinite axes, kinds and width multipliers, with and without a
model structure, and the errors for trees that are not the same model at another width."""

from __future__ import annotations

import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import flaxinit as fi
from flaxinit.models import GPT

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "structure"))

import lookalike_models as lm

X = jnp.ones((1, 8))
TOKENS = jnp.zeros((2, 8), jnp.int32)


def mlp(width: int) -> nn.Module:
    return nn.Sequential([nn.Dense(width), nn.relu, nn.Dense(width), nn.relu, nn.Dense(3)])


def shapes_of(model: nn.Module, x=X):
    return jax.eval_shape(model.init, jax.random.key(0), x)


def test_mlp_kinds_and_width_mults():
    s = fi.mup.base_shapes(shapes_of(mlp(256)), shapes_of(mlp(64)))
    got = {p: (s[p].kind, s[p].infinite_axes, s[p].width_mult) for p in s}
    assert got == {
        "params/layers_0/bias": ("vector", (0,), 4.0),
        "params/layers_0/kernel": ("input", (1,), 4.0),
        "params/layers_2/bias": ("vector", (0,), 4.0),
        "params/layers_2/kernel": ("hidden", (0, 1), 4.0),
        "params/layers_4/bias": ("finite", (), 1.0),
        "params/layers_4/kernel": ("output", (0,), 4.0),
    }
    assert "hidden" in str(s)
    assert repr(s) == "BaseShapes(input=1, hidden=1, output=1, vector=2, finite=1)"


def test_delta_names_the_infinite_axes_at_the_base_width():
    base = shapes_of(mlp(64))
    with pytest.raises(ValueError, match=r"no axis differs.*delta="):
        fi.mup.base_shapes(base, base)
    s = fi.mup.base_shapes(base, base, delta=shapes_of(mlp(128)))
    assert s["params/layers_2/kernel"].kind == "hidden"
    assert s["params/layers_2/kernel"].width_mult == 1.0


def test_dense_general_layout_without_structure_is_refused():
    # Flax's (in=-2, out=-1) convention would read the query (d, heads, head_dim) wrongly.
    with pytest.raises(
        ValueError, match=r"axis 0 of the leaf at 'params/blocks_0/attn/key/kernel'"
    ):
        fi.mup.base_shapes(shapes_of(GPT(d_model=64), TOKENS), shapes_of(GPT(d_model=32), TOKENS))


def test_gemma_einsum_layout_with_the_structure():
    model = lm._build_nnx(lambda: lm.GemmaLike(rngs=nnx.Rngs(0), d=64, head_dim=16, ff=128))
    base = nnx.eval_shape(lambda: lm.GemmaLike(rngs=nnx.Rngs(1)))
    params, base_params = nnx.state(model, nnx.Param), nnx.state(base, nnx.Param)
    structure = fi.model_structure(model, lm._tokens())
    s = fi.mup.base_shapes(params, base_params, structure=structure)
    q = s["layers/0/attn/q_einsum/w"]
    assert (q.kind, q.fan_in_axes, q.fan_out_axes, q.infinite_axes) == (
        "hidden",
        (1,),
        (0, 2),
        (1, 2),
    )
    assert q.fan_in_mult == 2.0
    assert q.fan_out_mult == 2.0
    kv = s["layers/0/attn/kv_einsum/w"]  # (2, kv_heads, d, head_dim): the part axis is finite
    assert kv.kind == "hidden"
    assert kv.fan_in_axes == (2,)
    assert s["layers/0/attn/attn_vec_einsum/w"].kind == "hidden"
    assert s["embedder/embedding"].kind == "input"
    assert s["final_norm/scale"].kind == "vector"
    # The whole parametrization on this layout: the tied `attend` readout is found and
    # refused until the model scales it; x * (1 + scale) gains stay at zero.
    with pytest.raises(ValueError, match=r"'embedder/embedding' is also the readout"):
        fi.mup.parametrize(params, base_params, structure=structure)
    plan = {
        p.path: p
        for p in fi.mup.parametrize(
            params, base_params, structure=structure, tied_readout_scaled=True
        ).leaves
    }
    assert plan["layers/0/pre_ffw_norm/scale"].init == "keep"
    assert plan["layers/0/attn/q_einsum/w"].init_scale == pytest.approx(0.5)  # 1/sqrt2 twice
    assert plan["layers/0/attn/kv_einsum/w"].lr_multiplier == pytest.approx(0.5)


def test_scanned_stack_axis_is_not_a_width():
    s = fi.mup.base_shapes(
        shapes_of(GPT(d_model=64, scan=True), TOKENS),
        shapes_of(GPT(d_model=32, scan=True), TOKENS),
        structure=fi.model_structure(
            GPT(d_model=64, scan=True),
            TOKENS,
            variables=GPT(d_model=64, scan=True).init(jax.random.key(0), TOKENS),
        ),
    )
    fc1 = s["params/blocks/mlp/fc1/kernel"]
    assert (fc1.kind, fc1.layer_axis, fc1.width_mult) == ("hidden", 0, 2.0)
    assert s.num_layers == 2
    assert s.base_num_layers == 2


def test_depth_needs_depth_and_unrolled_blocks_map_to_the_base_layers():
    deep, shallow = shapes_of(GPT(num_layers=4), TOKENS), shapes_of(GPT(num_layers=2), TOKENS)
    with pytest.raises(ValueError, match=r"no leaf at 'params/blocks_2/.*pass depth="):
        fi.mup.base_shapes(deep, shallow)
    s = fi.mup.base_shapes(deep, shallow, depth=True)
    assert (s.num_layers, s.base_num_layers) == (4, 2)
    deep_scan = shapes_of(GPT(num_layers=4, scan=True), TOKENS)
    shallow_scan = shapes_of(GPT(num_layers=2, scan=True), TOKENS)
    with pytest.raises(ValueError, match="grows but is not one of its fan axes"):
        fi.mup.base_shapes(deep_scan, shallow_scan)


@pytest.mark.parametrize(
    ("base", "message"),
    [
        (
            {"params": {"layers_0": {"kernel": jnp.ones((8, 4))}}},
            r"no leaf at 'params/layers_0/bias'",
        ),
        (
            jax.tree.map(lambda s: jnp.ones(s.shape[:1]), shapes_of(mlp(64))),
            r"has shape \(8, 256\) but \(8,\)",
        ),
    ],
)
def test_another_models_tree_is_refused(base, message):
    with pytest.raises(ValueError, match=message):
        fi.mup.base_shapes(shapes_of(mlp(256)), base)


def test_a_growing_conv_window_is_refused():
    conv = lambda k: nn.Sequential([nn.Conv(8, (k, k)), nn.relu, nn.Dense(3)])
    x = jnp.ones((1, 8, 8, 3))
    with pytest.raises(ValueError, match=r"axis 0 of the leaf at 'params/layers_0/kernel'"):
        fi.mup.base_shapes(shapes_of(conv(5), x), shapes_of(conv(3), x))
