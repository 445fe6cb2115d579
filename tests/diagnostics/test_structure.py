"""Diagnostics with a model structure: embeddings (any Embed subclass) stay out of the
depth profile, weight gains use the kernels' true fan axes, and a fix names the layers
whose gain is off."""

from __future__ import annotations

import math
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import flaxinit as fi
from flaxinit.diagnostics import activation_stats, health_report, weight_stats
from flaxinit.diagnostics.report import depth_profile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "structure"))

import lookalike_models as lm


class Embedder(nnx.Embed):
    """A Gemma-style embedding: an ``nnx.Embed`` subclass with its own name."""

    def encode(self, tokens):
        return self(tokens) * jnp.sqrt(self.features).astype(jnp.float32)


class TinyLM(nnx.Module):
    def __init__(self, rngs):
        self.embedder = Embedder(50, 16, rngs=rngs)
        self.hidden = nnx.List([nnx.Linear(16, 16, rngs=rngs) for _ in range(3)])
        self.head = nnx.Linear(16, 50, rngs=rngs)

    def __call__(self, tokens):
        x = self.embedder.encode(tokens)
        for layer in self.hidden:
            x = jax.nn.relu(layer(x))
        return self.head(x)


def test_an_embed_subclass_is_not_a_layer_of_depth():
    model = TinyLM(nnx.Rngs(0))
    records = activation_stats(model, jnp.zeros((2, 6), jnp.int32))
    embed = [r for r in records if r.path == "embedder"]
    assert len(embed) == 1
    assert embed[0].embedding
    assert embed[0].module == "Embedder"
    assert [r.path for r in depth_profile(records)] == ["hidden/0", "hidden/1", "hidden/2"]


def test_weight_gains_on_true_fan_axes():
    case = lm.make_gemma_like()
    s = fi.model_structure(case.model, *case.args)
    records = {r.path: r for r in weight_stats(case.model, structure=s)}
    q = records["layers/0/attn/q_einsum/w"]
    w = np.asarray(nnx.state(case.model)["layers"][0]["attn"]["q_einsum"]["w"][...])
    # (heads, d, head_dim) viewed as (d, heads * head_dim): rows are d.
    assert (q.rows, q.cols) == (lm.D_MODEL, lm.HEADS * lm.HEAD_DIM)
    matrix = np.transpose(w, (1, 0, 2)).reshape(lm.D_MODEL, -1)
    assert q.gain == pytest.approx(matrix.std() * math.sqrt(lm.D_MODEL), rel=1e-5)
    # The fused key/value kernel gives one record per part, the embedding none.
    assert {"layers/0/attn/kv_einsum/w[0]", "layers/0/attn/kv_einsum/w[1]"} <= set(records)
    assert not any(p.startswith("embedder") for p in records)
    # Without the structure the raw (..., in, out) view folds heads into the rows.
    raw = {r.path: r for r in weight_stats(case.model)}["layers/0/attn/q_einsum/w"]
    assert raw.rows == lm.HEADS * lm.D_MODEL


def test_scanned_stack_gets_a_record_per_layer():
    case = lm.make_scanned_linen_like()
    s = fi.model_structure(case.model, *case.args)
    variables = jax.eval_shape(case.model.init, jax.random.key(0), *case.args)
    variables = jax.tree.map(
        lambda x: jax.random.normal(jax.random.key(1), x.shape, x.dtype), variables
    )
    paths = [r.path for r in weight_stats(variables, structure=s)]
    assert "blocks/fc1/kernel[1]" in paths
    with pytest.raises(ValueError, match="layer_stacks= or structure="):
        weight_stats(variables, structure=s, layer_stacks="**/blocks/**")


class SmallMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        for i in range(6):
            x = nn.relu(nn.Dense(32, kernel_init=fi.normal(0.01), name=f"hidden_{i}")(x))
        return nn.Dense(4, name="head")(x)


def test_the_fix_names_the_layers_whose_gain_is_off():
    model = SmallMLP()
    x = jax.random.normal(jax.random.key(0), (64, 32))
    variables = model.init(jax.random.key(1), x)
    s = fi.model_structure(model, x)
    report = health_report(model, x, variables=variables, structure=s)
    finding = next(f for f in report.findings if f.code == "vanishing_activations")
    # N(0, 0.01) on fan_in 32: gain 0.01 * sqrt(32) = 0.057, far below 1. The bare relu
    # is read from the model, so the target is a relu net's 1.4: hidden_3..5 and the head
    # (LeCun's 1) are named too, as with a declared activation="relu".
    assert "too small for a relu net" in finding.fix, finding.fix
    assert "(layers: hidden_0/kernel 0.05" in finding.fix, finding.fix
    assert "hidden_2/kernel" in finding.fix
    assert "and 4 more" in finding.fix
