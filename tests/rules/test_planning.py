"""Plans: layer contexts, stacks and per_layer (flaxinit.rules.planning)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _rules_helpers import (
    DEPTH_RULES,
    KEY,
    Scanned,
    Unrolled,
    assert_trees_bitwise_equal,
    ctx_probe,
    h32,
)
from flax import nnx

from flaxinit.initializers import normal
from flaxinit.rules import (
    apply_rules,
    at,
    explain_rules,
    fill,
    per_layer,
    scale,
)


def test_layer_and_num_layers_from_paths_and_context():
    z = jnp.zeros((2, 2))
    tree = {
        "enc": {f"layers_{i}": {"w": z} for i in range(2)},
        "dec": {f"block_{i}": {"w": z} for i in range(4)},
        "head": {"w": z},
    }
    seen = {}
    apply_rules(tree, [("w", ctx_probe(seen))])
    assert seen[("enc/layers_1/w", 1)].num_layers == 2
    assert seen[("dec/block_3/w", 3)].num_layers == 4
    assert seen[("head/w", None)].num_layers == 4  # the tree's largest stack
    seen.clear()
    apply_rules(tree, [("w", ctx_probe(seen))], num_layers=12)
    assert {c.num_layers for c in seen.values()} == {12}
    seen.clear()
    layer_of = lambda path: 7 if path.startswith("head") else None
    apply_rules(tree, [("w", ctx_probe(seen))], layer_of=layer_of)
    assert seen[("head/w", 7)].num_layers == 8
    assert ("enc/layers_1/w", None) in seen


def test_no_layers_gives_none():
    seen = {}
    apply_rules({"w": jnp.zeros((2, 2))}, [("w", ctx_probe(seen))])
    assert seen[("w", None)].num_layers is None


def test_linen_scan_matches_unrolled_per_layer():
    x = jnp.ones((1, 4))
    unrolled = Unrolled().init(jax.random.key(0), x)
    scanned = Scanned().init(jax.random.key(1), x)
    run = lambda t: apply_rules(t, DEPTH_RULES, key=KEY)
    eager = run(scanned)
    assert_trees_bitwise_equal(jax.jit(run)(scanned), eager)
    u, s = nn.unbox(run(unrolled))["params"], eager["params"]["layers"]
    assert type(s["out"]["kernel"]) is nn.LogicallyPartitioned
    assert s["out"]["kernel"].names == ("layers", "mlp", "embed")
    s = nn.unbox(s)
    for i in range(3):
        for leaf in (("out", "kernel"), ("fc", "kernel"), ("fc", "bias")):
            np.testing.assert_array_equal(
                s[leaf[0]][leaf[1]][i], u[f"layers_{i}"][leaf[0]][leaf[1]]
            )
        np.testing.assert_array_equal(u[f"layers_{i}"]["fc"]["bias"], i + 30)
        # The depth recipe itself: layer i's draw times 1/sqrt(2(i+1)).
        k = jax.random.fold_in(jax.random.fold_in(KEY, h32("params/layers/out/kernel")), i)
        draw = normal(0.02)(jax.random.fold_in(k, h32("out/kernel#0")), (4, 4), jnp.float32)
        np.testing.assert_allclose(
            s["out"]["kernel"][i], draw / math.sqrt(2 * (i + 1)), rtol=1e-6, atol=0
        )


class NBlock(nnx.Module):
    def __init__(self, rngs):
        self.fc = nnx.Linear(4, 4, rngs=rngs)
        self.out = nnx.Linear(4, 4, kernel_metadata={"out_sharding": ("mlp", "embed")}, rngs=rngs)


class NStack(nnx.Module):
    def __init__(self, rngs):
        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make(rngs):
            return NBlock(rngs)

        self.blocks = make(rngs)


class NList(nnx.Module):
    def __init__(self, rngs):
        self.blocks = nnx.List([NBlock(rngs) for _ in range(3)])


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg", "unsafe_rbg"])
def test_nnx_vmap_matches_list_per_layer(impl):
    with nnx.use_eager_sharding(False):
        stacked, unrolled = NStack(nnx.Rngs(0)), NList(nnx.Rngs(1))
    key = jax.random.key(5, impl=impl)
    s = apply_rules(stacked, DEPTH_RULES, key=key)
    u = apply_rules(unrolled, DEPTH_RULES, key=key)
    for i in range(3):
        for mod, p in (("out", "kernel"), ("fc", "kernel"), ("fc", "bias")):
            got = getattr(getattr(s.blocks, mod), p)[...][i]
            want = getattr(getattr(u.blocks[i], mod), p)[...]
            np.testing.assert_array_equal(got, want)
    assert s.blocks.out.kernel.get_metadata()["out_sharding"] == ("layers", "mlp", "embed")


def test_per_layer_axis_and_opt_out():
    tree = {"a": jnp.zeros((4, 3, 5)), "b": jnp.zeros((3, 2))}
    out = apply_rules(
        tree,
        [
            ("a", per_layer(fill(lambda ctx: ctx.layer), axis=1)),
            ("b", per_layer(fill(lambda ctx: ctx.num_layers), axis=-2)),
        ],
    )
    for i in range(3):
        np.testing.assert_array_equal(out["a"][:, i, :], i)
    np.testing.assert_array_equal(out["b"], 3.0)
    with pytest.raises(ValueError, match="out of range"):
        apply_rules(tree, [("b", per_layer(fill(0.0), axis=2))])

    # `at` inside a stacked leaf indexes one layer's slice.
    stack = {"bias": jnp.zeros((3, 8))}
    static = at[..., 2:4](fill(lambda ctx: ctx.layer + 1))
    dynamic = at(lambda ctx: slice(ctx.shape[-1] // 2, None), fill(lambda ctx: -ctx.layer))
    out = apply_rules(stack, [("bias", per_layer(static)), ("bias", per_layer(dynamic))])
    expected = np.zeros((3, 8), np.float32)
    for i in range(3):
        expected[i, 2:4] = i + 1
        expected[i, 4:] = -i
    np.testing.assert_array_equal(out["bias"], expected)

    box = nn.LogicallyPartitioned(jnp.zeros((3, 4)), names=("layers", "embed"))
    seen = {}
    apply_rules({"w": box}, [("w", per_layer(ctx_probe(seen), axis=None))])
    assert seen[("w", None)].shape == (3, 4)
    seen.clear()
    apply_rules({"w": box}, [("w", ctx_probe(seen))])
    assert seen[("w", 2)].shape == (4,)
    assert seen[("w", 2)].is_layer_slice


def test_per_layer_refuses_a_leaf_nothing_says_is_a_stack():
    tree = {"head": {"kernel": jnp.ones((64, 10)), "bias": jnp.zeros((10,))}}
    with pytest.raises(ValueError, match=r"'head/kernel' of shape \(64, 10\).*axis=0"):
        apply_rules(tree, [("head/kernel", per_layer(scale(lambda ctx: ctx.layer)))])
    # Said outright, it is sliced.
    out = apply_rules(tree, [("head/kernel", per_layer(scale(lambda ctx: ctx.layer), axis=0))])
    assert float(out["head"]["kernel"][3, 0]) == 3.0
    # A scanned module: every leaf of the module shares the stack length.
    stack = {"blocks": {"fc": {"kernel": jnp.ones((3, 4, 5)), "bias": jnp.ones((3, 5))}}}
    out = apply_rules(stack, [("fc/*", per_layer(scale(lambda ctx: ctx.layer)))])
    assert float(out["blocks"]["fc"]["bias"][2, 0]) == 2.0


def test_stacking_is_the_actions_own_property():
    import dataclasses

    from flaxinit.rules import Action

    @dataclasses.dataclass(frozen=True)
    class LayerNumber(Action):
        """Fills each slice along axis 1 with its layer index: stacked by its own say."""

        def layer_plan(self, info):
            return 1, self

        def __call__(self, key, leaf, ctx):
            return jnp.full(leaf.shape, ctx.layer if ctx.is_layer_slice else -1, leaf.dtype)

    out = apply_rules({"w": jnp.zeros((2, 3))}, [("w", LayerNumber())])["w"]
    np.testing.assert_array_equal(out, np.broadcast_to(np.arange(3.0), (2, 3)))
    assert (
        explain_rules({"w": jnp.zeros((2, 3))}, [("w", LayerNumber())])[0]
        .actions[0]
        .startswith("per layer(axis 1, 3 layers)")
    )
