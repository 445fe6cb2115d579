"""Models, rules and checks the rules tests share (imported as `_rules_helpers`)."""

import math
import zlib

import flax.linen as nn
import jax
import numpy as np

from flaxinit.initializers import he_normal, normal, orthogonal
from flaxinit.rules import (
    action,
    fill,
    per_layer,
    reinit,
    scale,
)

KEY = jax.random.key(7)


def h32(text):
    return zlib.crc32(text.encode())


def rule_key(key, path, pattern, occurrence=0):
    """The documented per-rule key of a leaf without a layer index."""
    return jax.random.fold_in(jax.random.fold_in(key, h32(path)), h32(f"{pattern}#{occurrence}"))


def assert_trees_bitwise_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        # Tiny sizes: XLA on CPU compiles large 3-D random draws slowly.
        h = nn.Conv(4, (2,))(x)  # Conv_0
        h = nn.Conv(4, (2,))(h)  # Conv_1
        out_init = nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("heads", "kv", "embed")
        )
        h = nn.MultiHeadDotProductAttention(
            num_heads=2, qkv_features=4, out_kernel_init=out_init, name="attn"
        )(h)
        lstm = nn.LSTMCell(4, name="lstm")
        olstm = nn.OptimizedLSTMCell(4, name="olstm")
        _, y = lstm(lstm.initialize_carry(jax.random.key(0), h[:, 0].shape), h[:, 0])
        _, y2 = olstm(olstm.initialize_carry(jax.random.key(0), h[:, 0].shape), h[:, 0])
        return nn.Dense(2, name="head")(y + y2)


LINEN_RULES = [
    ("Conv_*/kernel", reinit(he_normal(), name="he_normal")),
    ("attn/query/kernel", reinit(orthogonal(), in_axis=0, out_axis=(1, 2))),
    ("attn/out/kernel", scale(0.5)),
    ("*/hf/bias", fill(1.0)),
    ("/params/head/**", fill(0.0)),
]


class Block(nn.Module):
    @nn.compact
    def __call__(self, x, _=None):
        boxed = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("mlp", "embed"))
        h = nn.Dense(4, name="fc")(x)  # unboxed: stacking is declared by per_layer
        return x + nn.Dense(4, kernel_init=boxed, name="out")(h), None


class Unrolled(nn.Module):
    @nn.compact
    def __call__(self, x):
        for i in range(3):
            x, _ = Block(name=f"layers_{i}")(x)
        return x


class Scanned(nn.Module):
    @nn.compact
    def __call__(self, x):
        stack = nn.scan(
            Block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=3,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        return stack(name="layers")(x, None)[0]


DEPTH_RULES = [
    ("out/kernel", normal(0.02)),
    ("out/kernel", scale(lambda ctx: 1 / math.sqrt(2 * (ctx.layer + 1)))),
    ("fc/kernel", per_layer(orthogonal())),
    ("fc/bias", per_layer(fill(lambda ctx: ctx.layer + 10 * ctx.num_layers))),
]


def ctx_probe(seen):
    """An action that records each context it is called with under (path, layer)."""

    @action
    def probe(key, leaf, ctx):
        seen[(ctx.path, ctx.layer)] = ctx
        return leaf

    return probe
