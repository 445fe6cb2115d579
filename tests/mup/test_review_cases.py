"""fi.mup on the layouts a review found wrong or silent: depth-only transfer, fused and
packed query projections, a branch that ends in a norm, a block whose branch end is not
found, indexed groups that are not blocks, unused kernels, tied readouts without a
structure, and coordinate checks with non-finite, zero or shrinking values."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxinit as fi
from flaxinit.models import GPT
from flaxinit.mup.coordinate_check import CoordCheck, _slopes

TOKENS = jnp.zeros((2, 8), jnp.int32)


def plan_of(model, base_model, x, **kwargs):
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    base = jax.eval_shape(base_model.init, jax.random.key(1), x)
    structure = fi.model_structure(model, x, variables=params)
    plan = fi.mup.parametrize(params, base, structure=structure, **kwargs)
    return {p.path: p for p in plan.leaves}


def test_depth_only_transfer_moves_the_branch_multiplier():
    plan = plan_of(GPT(num_layers=8), GPT(num_layers=2), TOKENS, depth="completep")
    fc2 = plan["params/blocks_5/mlp/fc2/kernel"]
    assert fc2.shape.kind == "finite"
    assert (fc2.init, fc2.init_scale, fc2.lr_multiplier) == ("scale", 0.25, 0.25)
    assert plan["params/blocks_5/mlp/fc2/bias"].init_scale == 0.25
    assert plan["params/blocks_5/mlp/fc1/kernel"].lr_multiplier == 1.0


class Attention(nn.Module):
    d: int
    fused: bool

    @nn.compact
    def __call__(self, inputs):
        x = nn.Dense(self.d, name="embed")(inputs)
        heads, b, t = 2, *x.shape[:2]
        if self.fused:
            qkv = nn.Dense(3 * self.d, name="qkv")(x).reshape(b, t, 3, heads, -1)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            q, k, v = (
                nn.Dense(self.d, name=n)(x).reshape(b, t, heads, -1)
                for n in ("q_proj", "k_proj", "v_proj")
            )
        a = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]), -1)
        h = x + nn.Dense(self.d, name="o_proj")(
            jnp.einsum("bhqk,bkhd->bqhd", a, v).reshape(x.shape)
        )
        return nn.Dense(5, name="head")(h)


@pytest.mark.parametrize("fused", [True, False])
def test_fused_and_packed_query_projections_are_refused(fused):
    x = jnp.ones((2, 4, 8))
    model, base = Attention(64, fused), Attention(32, fused)
    message = "is a fused projection" if fused else "packs heads and head dimension in one axis"
    with pytest.raises(ValueError, match=message):
        plan_of(model, base, x)
    plan = plan_of(
        model, base, x, query=[] if fused else None, head_dim_mult=None if fused else 2.0
    )
    if not fused:  # two heads: d_head 16 -> 32
        assert plan["params/q_proj/kernel"].init_scale == pytest.approx(2**-0.5 * 2**-0.5)


class PostNormBlock(nn.Module):
    d: int

    @nn.compact
    def __call__(self, h):
        y = nn.Dense(self.d, name="fc2")(nn.gelu(nn.Dense(2 * self.d, name="fc1")(h)))
        return h + nn.RMSNorm(name="post")(y)


class Head(nn.Module):
    d: int

    @nn.compact
    def __call__(self, h):
        return nn.Dense(16, name="layers_2")(nn.relu(nn.Dense(self.d, name="layers_0")(h)))


class PostNormNet(nn.Module):
    d: int
    layers: int

    @nn.compact
    def __call__(self, tokens):
        h = nn.Embed(16, self.d, name="wte")(tokens)
        for i in range(self.layers):
            h = PostNormBlock(self.d, name=f"blocks_{i}")(h)
        return Head(self.d, name="head")(h)


def test_a_branch_ending_in_a_norm_gets_the_multiplier_on_its_gain():
    tokens = jnp.zeros((2, 4), jnp.int32)
    plan = plan_of(PostNormNet(64, 8), PostNormNet(32, 2), tokens, depth="completep")
    post = plan["params/blocks_3/post/scale"]
    assert (post.init, post.init_scale, post.lr_multiplier) == ("scale", 0.25, 0.25)
    # The head's indexed sublayers (head/layers_0, head/layers_2) are not blocks: no depth.
    assert plan["params/head/layers_0/kernel"].lr_multiplier == pytest.approx(0.5)
    assert not any("in-block" in w for w in plan["params/head/layers_2/kernel"].why)


def test_a_block_without_a_found_branch_end_is_refused():
    class Block(nn.Module):
        @nn.compact
        def __call__(self, h):
            gamma = self.param("gamma", nn.initializers.constant(0.1), (h.shape[-1],))
            return h + gamma * nn.Dense(h.shape[-1], name="fc2")(h)

    class Net(nn.Module):
        layers: int

        @nn.compact
        def __call__(self, x):
            h = nn.Dense(32, name="embed")(x)
            for i in range(self.layers):
                h = Block(name=f"blocks_{i}")(h)
            return nn.Dense(3, name="head")(h)

    with pytest.raises(ValueError, match=r"block 0 of 'params/blocks' has no residual branch end"):
        plan_of(Net(4), Net(2), jnp.ones((2, 8)), depth="depth_mup")


def test_an_unused_growing_kernel_and_a_tied_readout_without_structure_are_refused():
    class Net(nn.Module):
        d: int

        @nn.compact
        def __call__(self, tokens):
            self.param("aux", nn.initializers.lecun_normal(), (self.d, self.d))
            embed = nn.Embed(16, self.d)
            return embed.attend(nn.Dense(self.d)(embed(tokens)))

    with pytest.raises(ValueError, match=r"'params/aux' .* grows in 2 axes .*role 'other'"):
        plan_of(Net(64), Net(32), TOKENS)
    params = jax.eval_shape(Net(64).init, jax.random.key(0), TOKENS)
    base = jax.eval_shape(Net(32).init, jax.random.key(0), TOKENS)
    with pytest.raises(ValueError, match="no output leaf"):
        fi.mup.parametrize(params, base)


def test_slopes_flag_non_finite_and_partly_zero_values():
    widths = (64, 128, 256)
    values = np.array(
        [
            [[1.0, 1.0, 0.0, 0.0, 1.0]],
            [[30.0, np.inf, 0.0, 1.0, 1.0]],
            [[np.nan, 2.0, 0.0, 2.0, 1.0]],
        ]
    )
    slopes = _slopes(widths, values)[0]
    assert slopes[0] == np.inf  # NaN at one width: diverged
    assert slopes[1] == np.inf  # inf at one width
    assert np.isnan(slopes[2])  # zero everywhere: nothing to fit
    assert slopes[3] == np.inf  # appears with width
    assert slopes[4] == 0.0
    check = CoordCheck("mup", widths, tuple("abcde"), values, values, _slopes(widths, values), 0.2)
    assert not check.flat
    assert check.diverged == ("a", "b")


def test_a_shrinking_hidden_layer_is_not_flat_but_the_output_may_shrink():
    widths = (64, 128, 256)
    shrink = np.array([1.0, 0.5, 0.25])[:, None, None] * np.ones((3, 2, 2))
    values = np.concatenate([np.ones((3, 2, 1)), shrink[:, :, :1]], axis=2)
    slopes = _slopes(widths, values)
    hidden_shrinks = CoordCheck(
        "mup", widths, ("out", "hidden"), values, values, slopes, 0.2, may_shrink=("out",)
    )
    assert not hidden_shrinks.flat
    assert "shrinks with width: hidden" in hidden_shrinks.verdict
    output_shrinks = CoordCheck(
        "mup", widths, ("hidden", "out"), values, values, slopes, 0.2, may_shrink=("out",)
    )
    assert output_shrinks.flat
