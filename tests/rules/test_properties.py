"""Hypothesis properties on random nested trees of small arrays of random dtypes."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from flaxinit.rules import apply_rules, at, explain_rules, fill, per_layer

DTYPES = [np.float32, jnp.bfloat16, np.float16, np.int32, np.bool_]
NAMES = ["kernel", "bias", "w", "layers_0", "layers_1", "blocks", "h_2", "a"]


def _is_float(x):
    return jnp.issubdtype(x.dtype, jnp.inexact)


def noise(key, x, ctx):
    """Re-draws float leaves, leaves others alone (a dtype-agnostic re-draw)."""
    if not _is_float(x):
        return x
    return (jax.random.normal(key, x.shape, jnp.float32) * 0.1).astype(x.dtype)


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
