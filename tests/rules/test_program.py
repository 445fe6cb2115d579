"""The compiled program and its cache (flaxinit.rules.program)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from flaxinit.rules import (
    apply_rules,
    program,
    scale,
)


def test_an_equal_recipe_reuses_the_compiled_program_and_a_changed_one_does_not():
    from flaxinit import recipes
    from flaxinit.models import GPT

    tokens = jnp.zeros((1, 4), jnp.int32)
    shapes = jax.eval_shape(GPT(num_layers=1).init, jax.random.key(0), tokens)
    tree = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
    key = jax.random.key(3)
    first = apply_rules(tree, recipes.gpt2(1), key=key)
    programs = dict(program._PROGRAMS)
    # A new call of the recipe builds new closures with the same code and values.
    again = apply_rules(tree, recipes.gpt2(1), key=key)
    assert dict(program._PROGRAMS).keys() == programs.keys()
    chex.assert_trees_all_equal(first, again)
    # Another std is another program and other values, never a stale result.
    other = apply_rules(tree, recipes.gpt2(1, std=0.03), key=key)
    assert len(set(program._PROGRAMS) - set(programs)) == 1
    w = other["params"]["blocks_0"]["mlp"]["fc1"]["kernel"]
    v = first["params"]["blocks_0"]["mlp"]["fc1"]["kernel"]
    np.testing.assert_allclose(np.asarray(w), 1.5 * np.asarray(v), rtol=1e-5)


_FACTOR = 0.5


def test_a_cached_program_sees_a_changed_global():
    global _FACTOR
    tree = {"w": jnp.ones((3,))}
    rules = lambda: [("w", scale(lambda ctx: _FACTOR))]
    assert float(apply_rules(tree, rules())["w"][0]) == 0.5
    _FACTOR = 2.0
    try:
        assert float(apply_rules(tree, rules())["w"][0]) == 2.0
    finally:
        _FACTOR = 0.5


def test_a_cached_program_sees_a_mutated_object():
    class Config:
        factor = 0.5

    config = Config()
    tree = {"w": jnp.ones((3,))}
    rules = lambda: [("w", scale(lambda ctx: config.factor))]
    assert float(apply_rules(tree, rules())["w"][0]) == 0.5
    config.factor = 3.0
    assert float(apply_rules(tree, rules())["w"][0]) == 3.0


def test_a_stack_of_no_layers_passes_through_every_action():
    import flax.linen as nn

    import flaxinit as fi

    empty = jnp.zeros((0, 4, 4))
    tree = {"layers": {"kernel": nn.Partitioned(empty, names=("layers", None, None))}}
    for action in (fi.reinit(fi.normal(1.0)), fi.per_layer(fi.normal(1.0)), fi.scale(lambda c: 2)):
        out = fi.apply_rules(tree, [("kernel", action)], key=jax.random.key(0))
        assert out["layers"]["kernel"].value.shape == (0, 4, 4), action
