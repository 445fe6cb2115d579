"""apply_rules end to end on real Linen and NNX models (flaxinit.rules.engine)."""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _rules_helpers import KEY, LINEN_RULES, assert_trees_bitwise_equal, rule_key
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import flaxinit.rules
from flaxinit.initializers import he_normal, normal, orthogonal
from flaxinit.rules import (
    action,
    apply_rules,
    apply_rules_,
    at,
    explain_rules,
    fill,
    per_layer,
    reinit,
    scale,
)


@pytest.fixture(scope="module")
def linen_out(linen_vars):
    return apply_rules(linen_vars, LINEN_RULES, key=KEY)


def test_linen_model_rules(linen_vars, linen_out):
    v, out = linen_vars, linen_out
    p, q = v["params"], out["params"]
    for name in ("Conv_0", "Conv_1"):
        expected = he_normal()(
            rule_key(KEY, f"params/{name}/kernel", "Conv_*/kernel"), (2, 4, 4), jnp.float32
        )
        np.testing.assert_array_equal(q[name]["kernel"], expected)
        np.testing.assert_array_equal(q[name]["bias"], p[name]["bias"])
    w = q["attn"]["query"]["kernel"].reshape(4, 4)
    np.testing.assert_allclose(w @ w.T, np.eye(4), atol=1e-5)
    box = q["attn"]["out"]["kernel"]
    assert type(box) is nn.LogicallyPartitioned
    assert box.names == ("heads", "kv", "embed")
    np.testing.assert_array_equal(box.value, p["attn"]["out"]["kernel"].value * np.float32(0.5))
    for cell in ("lstm", "olstm"):
        np.testing.assert_array_equal(q[cell]["hf"]["bias"], np.ones(4, np.float32))
        np.testing.assert_array_equal(q[cell]["hi"]["bias"], p[cell]["hi"]["bias"])
        np.testing.assert_array_equal(q[cell]["hf"]["kernel"], p[cell]["hf"]["kernel"])
    np.testing.assert_array_equal(q["head"]["kernel"], 0.0)
    chex.assert_trees_all_equal_shapes_and_dtypes(nn.unbox(v), nn.unbox(out))
    assert jax.tree.structure(v) == jax.tree.structure(out)


def test_linen_jit_bitwise(linen_vars, linen_out):
    jitted = jax.jit(lambda t, k: apply_rules(t, LINEN_RULES, key=k))(linen_vars, KEY)
    assert_trees_bitwise_equal(linen_out, jitted)


def test_linen_without_params_level(linen_vars):
    out = apply_rules(linen_vars["params"], [("/head/kernel", fill(2.0)), ("hf/bias", fill(1.0))])
    np.testing.assert_array_equal(out["head"]["kernel"], 2.0)
    np.testing.assert_array_equal(out["lstm"]["hf"]["bias"], 1.0)
    assert type(out["attn"]["out"]["kernel"]) is nn.LogicallyPartitioned
    with pytest.raises(ValueError, match="closest paths: 'head/kernel'"):
        apply_rules(linen_vars["params"], [("/params/head/kernel", fill(2.0))])


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(4, 4, kernel_size=(2,), rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=2,
            in_features=4,
            qkv_features=4,
            decode=False,
            kernel_metadata={"out_sharding": (None, "heads", None)},
            rngs=rngs,
        )
        self.lstm = nnx.LSTMCell(4, 4, rngs=rngs)
        self.olstm = nnx.OptimizedLSTMCell(4, 4, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)


@pytest.fixture(scope="module")
def nnx_net():
    with nnx.use_eager_sharding(False):
        return NNXNet(nnx.Rngs(0))


def forget_gate(ctx):
    h = ctx.shape[-1] // 4
    return (..., slice(h, 2 * h))


NNX_RULES = [
    ("conv/kernel", he_normal()),
    ("attn/query/kernel", reinit(orthogonal(), in_axis=0, out_axis=(1, 2))),
    ("attn/out/kernel", scale(0.5)),
    ("lstm/hf/bias", fill(1.0)),
    ("olstm/dense_h/bias", at(forget_gate, fill(1.0))),
    ("olstm/dense_h/kernel", at[:, 4:8](orthogonal())),
]


@pytest.fixture(scope="module")
def nnx_out(nnx_net):
    before = jax.tree.map(np.asarray, nnx.state(nnx_net))
    out = apply_rules(nnx_net, NNX_RULES, key=KEY)
    assert_trees_bitwise_equal(nnx.state(nnx_net), before)  # the input is left alone
    return out


def test_nnx_module_rules(nnx_net, nnx_out):
    m, out = nnx_net, nnx_out
    assert type(out) is NNXNet
    assert out is not m
    expected = he_normal()(rule_key(KEY, "conv/kernel", "conv/kernel"), (2, 4, 4), jnp.float32)
    np.testing.assert_array_equal(out.conv.kernel[...], expected)
    w = out.attn.query.kernel[...].reshape(4, 4)
    np.testing.assert_allclose(w @ w.T, np.eye(4), atol=1e-5)
    np.testing.assert_array_equal(
        out.attn.out.kernel[...], m.attn.out.kernel[...] * np.float32(0.5)
    )
    np.testing.assert_array_equal(out.lstm.hf.bias[...], 1.0)
    np.testing.assert_array_equal(out.lstm.if_.kernel[...], m.lstm.if_.kernel[...])
    bias = np.zeros(16, np.float32)
    bias[4:8] = 1.0
    np.testing.assert_array_equal(out.olstm.dense_h.bias[...], bias)
    kernel = out.olstm.dense_h.kernel[...]
    np.testing.assert_allclose(kernel[:, 4:8].T @ kernel[:, 4:8], np.eye(4), atol=1e-5)
    np.testing.assert_array_equal(kernel[:, :4], m.olstm.dense_h.kernel[...][:, :4])
    np.testing.assert_array_equal(kernel[:, 8:], m.olstm.dense_h.kernel[...][:, 8:])
    # Variables keep their type and metadata.
    assert type(out.bn.mean) is nnx.BatchStat
    assert type(out.attn.query.kernel) is nnx.Param
    assert out.attn.query.kernel.get_metadata() == m.attn.query.kernel.get_metadata()
    assert out.attn.query.kernel.get_metadata()["out_sharding"] == (None, "heads", None)


def test_nnx_jit_bitwise_on_state_and_module(nnx_net, nnx_out):
    expected = nnx.state(nnx_out)
    jitted = jax.jit(lambda s, k: apply_rules(s, NNX_RULES, key=k))(nnx.state(nnx_net), KEY)
    assert_trees_bitwise_equal(jitted, expected)
    jit_module = jax.jit(lambda m, k: apply_rules(m, NNX_RULES, key=k))(nnx_net, KEY)
    assert_trees_bitwise_equal(nnx.state(jit_module), expected)


def test_apply_rules_in_place():
    m = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    kernel_var = m.kernel
    expected = apply_rules(m, [("kernel", normal(1.0)), ("bias", fill(0.5))], key=KEY)
    assert apply_rules_(m, [("kernel", normal(1.0)), ("bias", fill(0.5))], key=KEY) is m
    assert m.kernel is kernel_var
    np.testing.assert_array_equal(m.kernel[...], expected.kernel[...])
    np.testing.assert_array_equal(m.bias[...], 0.5)
    with pytest.raises(TypeError, match=r"nnx\.Module"):
        apply_rules_({"a": jnp.ones(2)}, [("a", fill(0.0))])


def test_all_matching_rules_apply_in_order():
    tree = {"w": jnp.zeros((64, 32))}
    drawn = apply_rules(tree, [("w", normal(1.0))], key=KEY)["w"]
    chained = apply_rules(tree, [("w", normal(1.0)), ("**", scale(2.0))], key=KEY)["w"]
    np.testing.assert_array_equal(chained, drawn * np.float32(2.0))
    reversed_ = apply_rules(tree, [("**", scale(2.0)), ("w", normal(1.0))], key=KEY)["w"]
    np.testing.assert_array_equal(reversed_, drawn)  # the re-draw wins when it comes last


def test_no_rules_and_non_strict_unmatched_return_the_same_values(linen_vars):
    assert_trees_bitwise_equal(apply_rules(linen_vars, []), linen_vars)
    out = apply_rules(linen_vars, [("nope", fill(0.0))], strict=False)
    assert_trees_bitwise_equal(out, linen_vars)


def test_shape_or_dtype_change_raises_naming_path_and_both():
    tree = {"params": {"w": jnp.ones((2, 3))}}
    with pytest.raises(ValueError, match=r"'params/w'.*shape \(2, 3\) -> \(3, 2\)"):
        apply_rules(tree, [("w", action(lambda key, x, ctx: x.T))])
    with pytest.raises(ValueError, match=r"'params/w'.*dtype float32 -> float16"):
        apply_rules(tree, [("w", action(lambda key, x, ctx: x.astype(jnp.float16)))])
    wrong_dtype_init = lambda key, shape, dtype=None: jnp.zeros(shape, jnp.int32)
    with pytest.raises(ValueError, match=r"dtype float32 -> int32"):
        apply_rules(tree, [("w", wrong_dtype_init)], key=KEY)


# Hypothesis properties on random nested trees of small arrays of random dtypes.


DTYPES = [np.float32, jnp.bfloat16, np.float16, np.int32, np.bool_]
NAMES = ["kernel", "bias", "w", "layers_0", "layers_1", "blocks", "h_2", "a"]


def _is_float(x):
    return jnp.issubdtype(x.dtype, jnp.inexact)


@action
def noise(key, x, ctx):
    """Re-draws float leaves, leaves others alone (a dtype-agnostic re-draw)."""
    if not _is_float(x):
        return x
    return (jax.random.normal(key, x.shape, jnp.float32) * 0.1).astype(x.dtype)


@action
def double_floats(key, x, ctx):
    return x * jnp.asarray(2, x.dtype) if _is_float(x) else x


RULES = [
    ("**", noise),
    ("kernel", fill(1)),
    ("bias", at[..., :1](fill(0))),
    ("*/layers_?/*", double_floats),
    ("re:.*h_\\d+.*", per_layer(fill(lambda ctx: ctx.layer))),
    ("w", double_floats),
]


@st.composite
def leaves(draw):
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    dtype = draw(st.sampled_from(DTYPES))
    return (np.arange(math.prod(shape)).reshape(shape) % 3).astype(dtype)


trees = st.recursive(
    leaves(),
    lambda children: st.one_of(
        st.dictionaries(st.sampled_from(NAMES), children, min_size=1, max_size=3),
        st.lists(children, min_size=1, max_size=3),
    ),
    max_leaves=6,
)
rule_sets = st.lists(st.sampled_from(RULES), min_size=1, max_size=4)


@settings(max_examples=25, deadline=None)
@given(tree=trees, rules=rule_sets, seed=st.integers(0, 2**31 - 1))
def test_structure_shapes_dtypes_preserved_and_jit_bitwise(tree, rules, seed):
    key = jax.random.key(seed)
    out = apply_rules(tree, rules, key=key, strict=False)
    assert jax.tree.structure(out) == jax.tree.structure(tree)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, jax.tree.map(jnp.asarray, tree))
    jitted = jax.jit(lambda t, k: apply_rules(t, rules, key=k, strict=False))(tree, key)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    report = explain_rules(tree, rules)
    assert len(report) == len(jax.tree.leaves(tree))
    assert [r.path for r in report if not r.touched] == list(report.untouched)


@settings(max_examples=15, deadline=None)
@given(
    tree=st.dictionaries(st.sampled_from(NAMES), trees, min_size=1, max_size=3),
    extra=leaves(),
    seed=st.integers(0, 2**31 - 1),
)
def test_adding_a_leaf_changes_no_other_leaf(tree, extra, seed):
    rules = [("**", noise), ("kernel", double_floats)]
    key = jax.random.key(seed)
    before = apply_rules(tree, rules, key=key, strict=False)
    after = apply_rules({**tree, "zz_new": extra}, rules, key=key, strict=False)
    after.pop("zz_new")
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_names_that_left_the_engine_module_still_load_and_warn():
    from flaxinit.rules import engine

    for name in ("LeafReport", "RulesReport", "UnmatchedRule", "explain_rules", "stable_hash"):
        with pytest.warns(DeprecationWarning, match=rf"use flaxinit\.rules\.{name}"):
            old = getattr(engine, name)
        assert old is getattr(flaxinit.rules, name)
