"""Scanned (stacked) GPTs from the model zoo, initialized on a mesh with the depth-indexed
GPT-2 recipe: bitwise the single-device values, each leaf laid out as its rule says,
including rules that shard the stack's layer axis itself."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import flaxinit as fi
from flaxinit.rules.paths import tree_paths
from flaxinit.rules.patterns import compile_pattern

LAYERS = 4
KEY = jax.random.key(0)
RULES_KEY = jax.random.key(7)
TOKENS = jnp.zeros((1, 8), jnp.int32)
SIZES = {"vocab_size": 64, "d_model": 32, "num_layers": LAYERS, "num_heads": 4, "scan": True}
LAYOUT = [
    ("**/blocks/mlp/fc1/kernel", P(None, "data", "model")),
    ("**/blocks/mlp/fc2/kernel", P(None, "model", "data")),
    ("**/blocks/attn/out/kernel", P(None, "model", None, None)),
    ("**/blocks/attn/*/kernel", P(None, None, "model", None)),
    # The layer axis itself split over "data": each device holds half the layers.
    ("**/blocks/ln[12]/scale", P("data", None)),
    ("**/wte/embedding", P("model", None)),
]


def expected_spec(path):
    for pattern, spec in LAYOUT:
        if compile_pattern(pattern).matches(path):
            return spec
    return P()


@pytest.mark.parametrize(
    ("framework", "axis_type"), [("linen", AxisType.Explicit), ("nnx", AxisType.Auto)]
)
def test_stacked_gpt_sharded_equals_single_device(framework, axis_type):
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis_type,) * 2)
    rules = fi.recipes.gpt2(LAYERS)
    if framework == "linen":
        model = fi.models.GPT(**SIZES)
        reference = fi.apply_rules(jax.jit(model.init)(KEY, TOKENS), rules, key=RULES_KEY)
        tree = fi.init_sharded(
            model, KEY, TOKENS, mesh=mesh, rules=rules, rules_key=RULES_KEY, partition_rules=LAYOUT
        )
    else:

        def make():
            return fi.models.NNXGPT(**SIZES, rngs=nnx.Rngs(0))

        reference = fi.apply_rules(jax.jit(lambda: nnx.state(make()))(), rules, key=RULES_KEY)
        tree = nnx.state(
            fi.nnx_init_sharded(make, mesh=mesh, rules=rules, key=RULES_KEY, partition_rules=LAYOUT)
        )
    ref, got = dict(tree_paths(reference)), dict(tree_paths(tree))
    assert sorted(got) == sorted(ref)
    for path, x in got.items():
        np.testing.assert_array_equal(np.asarray(x), np.asarray(ref[path]), err_msg=path)
        assert x.sharding == NamedSharding(mesh, expected_spec(path)), path
    # The per-layer residual rule drew each layer of the stack with its own std.
    out = np.asarray(next(x for p, x in got.items() if p.endswith("blocks/mlp/fc2/kernel")))
    assert out.shape[0] == LAYERS
    std = 0.02 / np.sqrt(2 * LAYERS)
    n = out[0].size
    for layer in out:  # std within 6 standard errors of a normal sample's std
        assert abs(layer.std() - std) < 6 * std / np.sqrt(2 * n)
    assert len({layer.tobytes() for layer in out}) == LAYERS
    scale = next(x for p, x in got.items() if p.endswith("blocks/ln1/scale"))
    assert scale.addressable_shards[0].data.shape == (LAYERS // 2, SIZES["d_model"])
