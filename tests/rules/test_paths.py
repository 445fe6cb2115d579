"""Paths as the engine sees them: Linen, boxes, NNX, plain pytrees; layer indices."""

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxinit.rules import layer_index, tree_paths
from flaxinit.rules.paths import flatten_tree


def test_linen_paths_with_and_without_params_level():
    v = nn.Dense(3).init(jax.random.key(0), jnp.ones((1, 2)))
    assert [p for p, _ in tree_paths(v)] == ["params/bias", "params/kernel"]
    assert [p for p, _ in tree_paths(v["params"])] == ["bias", "kernel"]


def test_boxes_are_invisible_and_report_the_layer_axis():
    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("a", "b"))
            return nn.Dense(4, kernel_init=init, name="fc")(x), None

    class Stack(nn.Module):
        @nn.compact
        def __call__(self, x):
            scan = nn.scan(
                Block,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                length=3,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            return scan(name="layers")(x, None)[0]

    v = Stack().init(jax.random.key(0), jnp.ones((1, 4)))
    flat = flatten_tree(v)
    by_path = {i.path: i for i in flat.infos}
    assert set(by_path) == {"params/layers/fc/bias", "params/layers/fc/kernel"}
    kernel = by_path["params/layers/fc/kernel"]
    assert kernel.wrapper == "LogicallyPartitioned"
    assert kernel.layer_axis == 0
    with pytest.warns(DeprecationWarning, match="LeafInfo.layer_axis"):
        assert kernel.stacked_axis == 0
    assert kernel.shape == (3, 4, 4)
    assert by_path["params/layers/fc/bias"].layer_axis is None  # unboxed: unknown
    rebuilt = flat.rebuild(flat.arrays)
    assert jax.tree.structure(rebuilt) == jax.tree.structure(v)


def test_nnx_state_and_module_paths_match():
    class Block(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(2, 2, rngs=rngs)

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.blocks = nnx.List([Block(rngs), Block(rngs)])
            self.bn = nnx.BatchNorm(2, rngs=rngs)

    m = Model(nnx.Rngs(0))
    expected = [
        "blocks/0/fc/bias",
        "blocks/0/fc/kernel",
        "blocks/1/fc/bias",
        "blocks/1/fc/kernel",
        "bn/bias",
        "bn/mean",
        "bn/scale",
        "bn/var",
    ]
    assert [p for p, _ in tree_paths(m)] == expected
    assert [p for p, _ in tree_paths(nnx.state(m))] == expected
    infos = flatten_tree(m).infos
    assert infos[0].wrapper == "Param"
    assert infos[5].wrapper == "BatchStat"
    assert infos[0].layer == 0
    assert infos[2].layer == 1


def test_nnx_vmap_stack_metadata_gives_the_layer_axis():
    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs):
        return nnx.Linear(4, 4, kernel_metadata={"out_sharding": ("a", "b")}, rngs=rngs)

    with nnx.use_eager_sharding(False):
        stack = make(nnx.Rngs(0))
    by_path = {i.path: i for i in flatten_tree(stack).infos}
    assert by_path["kernel"].layer_axis == 0
    assert by_path["bias"].layer_axis is None


class Pair(NamedTuple):
    w: jax.Array
    b: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Linear:  # an Equinox-style module: GetAttrKey paths
    weight: jax.Array
    bias: jax.Array


def test_plain_pytrees():
    tree = {
        "mlp/~/linear_0": {"w": np.ones((2, 2)), "b": np.zeros(2)},  # Haiku
        "layers": [Linear(jnp.ones((2, 2)), jnp.ones(2)), Linear(jnp.ones((2, 2)), jnp.ones(2))],
        "pair": Pair(jnp.ones(1), jnp.ones(1)),
        "tuple": (jnp.ones(1),),
        "meta": {"name": "x", "count": 3, "none": None},  # non-array leaves are skipped
    }
    assert [p for p, _ in tree_paths(tree)] == [
        "layers/0/weight",
        "layers/0/bias",
        "layers/1/weight",
        "layers/1/bias",
        "mlp/~/linear_0/b",
        "mlp/~/linear_0/w",
        "pair/w",
        "pair/b",
        "tuple/0",
    ]
    flat = flatten_tree(tree)
    assert flat.rebuild(flat.arrays)["meta"] == {"name": "x", "count": 3, "none": None}


def test_abstract_leaves_are_leaves():
    tree = jax.eval_shape(nn.Dense(3).init, jax.random.key(0), jnp.ones((1, 2)))
    infos = flatten_tree(tree).infos
    assert [(i.path, i.shape) for i in infos] == [("params/bias", (3,)), ("params/kernel", (2, 3))]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("params/layers_3/mlp/kernel", (3, "params/layers", "params/layers/mlp/kernel")),
        ("params/h_11/attn/c_proj/kernel", (11, "params/h", "params/h/attn/c_proj/kernel")),
        ("params/block_2/x", (2, "params/block", "params/block/x")),
        ("params/Block_2/x", (2, "params/Block", "params/Block/x")),
        ("encoderblock_0/mlp", (0, "encoderblock", "encoderblock/mlp")),
        ("dec/DecoderLayer_5/w", (5, "dec/DecoderLayer", "dec/DecoderLayer/w")),
        ("res_blocks_1/conv", (1, "res_blocks", "res_blocks/conv")),
        ("blocks/3/attn/out/kernel", (3, "blocks", "blocks/attn/out/kernel")),
        ("h/0/mlp", (0, "h", "h/mlp")),
        ("layers/12/weight", (12, "layers", "layers/weight")),
        # The outermost index wins (Sequential inside a block).
        (
            "params/layers_2/mlp/layers_0/kernel",
            (2, "params/layers", "params/layers/mlp/layers_0/kernel"),
        ),
        # Not depths: Linen auto-names of library layers, bare list indices.
        ("params/Dense_0/kernel", None),
        ("params/Conv_3/kernel", None),
        ("params/BatchNorm_1/scale", None),
        ("mlp/~/linear_0/w", None),
        ("params/0/kernel", None),
        ("params/layers/kernel", None),
        ("layers_x/kernel", None),
        ("blocks/²/kernel", None),
    ],
)
def test_layer_index(path, expected):
    assert layer_index(path) == expected


def test_the_old_layer_axis_constant_warns_and_keeps_its_value():
    from flaxinit.rules import paths

    with pytest.warns(DeprecationWarning, match=r"use flaxinit\.rules\.paths\.LAYER_AXIS_NAME"):
        assert paths.STACKED_AXIS_NAME == paths.LAYER_AXIS_NAME == "layers"
