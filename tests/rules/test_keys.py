"""The one key derivation (flaxinit.rules.keys): documented chains, independence, bitwise."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _rules_helpers import KEY, assert_trees_bitwise_equal, h32, rule_key

from flaxinit.initializers import he_normal, normal
from flaxinit.rules import (
    action,
    apply_rules,
    at,
    scale,
)
from flaxinit.rules.keys import derive_keys


def test_rules_draw_independently_and_keys_follow_pattern():
    record = at[0](action(lambda key, leaf, ctx: jax.random.key_data(key)))
    record2 = at[1](action(lambda key, leaf, ctx: jax.random.key_data(key)))
    tree = {"k": jnp.zeros((2, 2), jnp.uint32)}
    out = apply_rules(tree, [("k", record), ("k", record2)], key=KEY)["k"]
    np.testing.assert_array_equal(out[0], jax.random.key_data(rule_key(KEY, "k", "k", 0)))
    np.testing.assert_array_equal(out[1], jax.random.key_data(rule_key(KEY, "k", "k", 1)))
    assert not np.array_equal(out[0], out[1])


def test_unrelated_rules_do_not_change_draws():
    tree = {"a": jnp.zeros((8, 8)), "b": jnp.zeros((8, 8))}
    alone = apply_rules(tree, [("a", normal(1.0))], key=KEY)
    more = apply_rules(tree, [("b", normal(1.0)), ("b", scale(3.0)), ("a", normal(1.0))], key=KEY)
    np.testing.assert_array_equal(alone["a"], more["a"])


def test_order_independence_when_leaves_are_added_or_reordered():
    z = jnp.zeros((4, 4))
    small = {"enc": {"w": z}, "dec": {"w": z}}
    bigger = {"aaa": z, "dec": {"w": z, "extra": z}, "enc": {"w": z}, "zzz": [z, z]}
    rules = [("**", normal(1.0))]
    a = apply_rules(small, rules, key=KEY)
    b = apply_rules(bigger, rules, key=KEY)
    np.testing.assert_array_equal(a["enc"]["w"], b["enc"]["w"])
    np.testing.assert_array_equal(a["dec"]["w"], b["dec"]["w"])
    assert not np.array_equal(a["enc"]["w"], a["dec"]["w"])


def test_order_independence_on_real_models():
    class Small(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(4, name="out")(nn.Dense(8, name="fc")(x))

    class Bigger(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(8, name="fc")(x)
            x = nn.Dense(8, name="adapter")(x)  # a new layer in the middle
            return nn.Dense(4, name="out")(x)

    x = jnp.ones((1, 8))
    rules = [("kernel", he_normal())]
    a = apply_rules(Small().init(jax.random.key(0), x), rules, key=KEY)["params"]
    b = apply_rules(Bigger().init(jax.random.key(1), x), rules, key=KEY)["params"]
    np.testing.assert_array_equal(a["fc"]["kernel"], b["fc"]["kernel"])
    np.testing.assert_array_equal(a["out"]["kernel"], b["out"]["kernel"])


def test_typed_and_legacy_keys_agree():
    tree = {"w": jnp.zeros((16, 16)), "layers_2": {"w": jnp.zeros((4, 4))}}
    rules = [("**/w", he_normal())]
    typed = apply_rules(tree, rules, key=jax.random.key(3))
    legacy = apply_rules(tree, rules, key=jax.random.PRNGKey(3))
    assert_trees_bitwise_equal(typed, legacy)
    with pytest.raises(TypeError, match="key"):
        apply_rules(tree, rules, key=3)
    with pytest.raises(ValueError, match="single key"):
        apply_rules(tree, rules, key=jax.random.split(KEY, 2))


def test_same_key_same_tree_same_bits_and_other_key_differs():
    tree = {"w": jnp.zeros((16, 16))}
    a = apply_rules(tree, [("w", normal(1.0))], key=KEY)
    b = apply_rules(tree, [("w", normal(1.0))], key=KEY)
    c = apply_rules(tree, [("w", normal(1.0))], key=jax.random.key(8))
    np.testing.assert_array_equal(a["w"], b["w"])
    assert not np.array_equal(a["w"], c["w"])


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_derive_keys_folds_each_chain_in_order_vectorized_or_not(impl):
    key = jax.random.key(11, impl=impl)
    chains = [(5, 9), (5, 0, 9), (5, 1, 9), (6, 9)]
    one, layers, other = derive_keys(key, [[chains[0]], chains[1:3], [chains[3]]])

    def folded(chain):
        k = key
        for c in chain:
            k = jax.random.fold_in(k, c)
        return jax.random.key_data(k)

    assert (one.shape, layers.shape, other.shape) == ((1,), (2,), (1,))
    for got, chain in zip([one[0], layers[0], layers[1], other[0]], chains, strict=True):
        np.testing.assert_array_equal(jax.random.key_data(got), folded(chain))


def test_key_chain_of_an_indexed_leaf_and_of_a_stacks_slice_agree():
    from flaxinit.rules.keys import key_chain
    from flaxinit.rules.paths import flatten_tree

    unrolled = flatten_tree({"blocks": [{"w": np.zeros(2)}] * 3}).infos[2]
    stacked = flatten_tree({"blocks": {"w": np.zeros((3, 2))}}).infos[0]
    assert unrolled.path == "blocks/2/w"
    assert key_chain(unrolled, tag=4) == key_chain(stacked, tag=4, layer_slice=2)
    assert key_chain(stacked, tag=4) == (h32("blocks/w"), 4)
