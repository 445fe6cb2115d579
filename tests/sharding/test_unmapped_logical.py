"""Logical axis names that no logical_axis_rules entry maps (and, in NNX, that are not
mesh axes either) raise one ValueError listing them and how to map them, before
anything compiles, instead of replicating the parameters they label without a word."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from flaxinit.sharding import init_sharded, nnx_init_sharded, partition_specs

MESH = jax.make_mesh((2, 4), ("data", "model"))
KEY = jax.random.key(0)
X = jnp.ones((1, 16))


def logical(*names):
    return nn.with_logical_partitioning(nn.initializers.lecun_normal(), names)


class MLP(nn.Module):
    names_in: tuple = ("embed", "mlp")
    names_out: tuple = ("mlp", "embed")

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(32, kernel_init=logical(*self.names_in), name="fc1")(x)
        return nn.Dense(16, kernel_init=logical(*self.names_out), name="fc2")(x)


class NNXMLP(nnx.Module):
    def __init__(self, names=("embed", "mlp"), rngs=None):
        self.fc1 = nnx.Linear(16, 32, kernel_metadata={"out_sharding": names}, rngs=rngs)
        self.fc2 = nnx.Linear(32, 16, kernel_metadata={"out_sharding": names[::-1]}, rngs=rngs)


def no_compile(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("compiled before the layout was checked")

    monkeypatch.setattr(jax, "jit", refuse)


def test_linen_without_rules_raises_listing_the_names(monkeypatch):
    no_compile(monkeypatch)
    with pytest.raises(ValueError, match="logical axis names 'embed', 'mlp'") as info:
        init_sharded(MLP(), KEY, X, mesh=MESH)
    message = str(info.value)
    assert "'params/fc1/kernel'" in message
    assert "logical_axis_rules=[('embed', 'data'), ('mlp', 'model')]" in message
    assert "None" in message  # how to replicate on purpose
    assert "data=2, model=4" in message


def test_linen_with_some_rules_lists_only_the_unmapped():
    with pytest.raises(ValueError, match=r"logical axis name 'mlp' ") as info:
        init_sharded(MLP(), KEY, X, mesh=MESH, logical_axis_rules=[("embed", "data")])
    assert "'embed'" not in str(info.value).split("logical_axis_rules=")[0]


def test_linen_names_like_mesh_axes_still_need_rules():
    # Linen maps logical names only through the rules: ('data', 'model') without
    # rules is replicated by Flax.
    model = MLP(names_in=("data", "model"), names_out=("model", "data"))
    with pytest.raises(ValueError, match="'data', 'model'"):
        partition_specs(jax.eval_shape(model.init, KEY, X), mesh=MESH)


def test_mapping_to_none_replicates_on_purpose():
    rules = [("embed", "data"), ("mlp", None)]
    variables = init_sharded(MLP(), KEY, X, mesh=MESH, logical_axis_rules=rules)
    assert variables["params"]["fc1"]["kernel"].value.sharding.spec == P("data", None)


def test_active_context_rules_count():
    with nn.logical_axis_rules([("embed", "data"), ("mlp", "model")]):
        specs = partition_specs(jax.eval_shape(MLP().init, KEY, X), mesh=MESH)
    assert nn.meta.unbox(specs)["params"]["fc1"]["kernel"] == P("data", "model")


def test_linen_strict_false_replicates_as_flax_does():
    specs = partition_specs(jax.eval_shape(MLP().init, KEY, X), mesh=MESH, strict=False)
    assert nn.meta.unbox(specs)["params"]["fc1"]["kernel"] == P(None, None)


def test_linen_scanned_layers_name_needs_a_rule():
    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            return nn.Dense(16, kernel_init=logical("embed", "mlp"))(x), None

    class Stack(nn.Module):
        @nn.compact
        def __call__(self, x):
            scan = nn.scan(
                Block,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                length=2,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            return scan(name="layers")(x, None)[0]

    abstract = jax.eval_shape(Stack().init, KEY, X)
    rules = [("embed", "data"), ("mlp", "model")]
    with pytest.raises(ValueError, match="logical axis name 'layers' "):
        partition_specs(abstract, mesh=MESH, logical_axis_rules=rules)
    specs = partition_specs(abstract, mesh=MESH, logical_axis_rules=[*rules, ("layers", None)])
    assert nn.meta.unbox(specs)["params"]["layers"]["Dense_0"]["kernel"] == P(None, "data", "model")


def test_nnx_without_rules_lists_every_unmapped_name(monkeypatch):
    no_compile(monkeypatch)
    with pytest.raises(ValueError, match="logical axis names 'embed', 'mlp'") as info:
        nnx_init_sharded(lambda: NNXMLP(rngs=nnx.Rngs(0)), mesh=MESH)
    assert "logical_axis_rules=[('embed', 'data'), ('mlp', 'model')]" in str(info.value)


def test_nnx_partial_rules_and_mesh_axis_names():
    with pytest.raises(ValueError, match=r"logical axis name 'mlp' "):
        nnx_init_sharded(
            lambda: NNXMLP(rngs=nnx.Rngs(0)), mesh=MESH, logical_axis_rules=[("embed", "data")]
        )
    # Names that are mesh axes need no rule in NNX: they are used as they are.
    model = nnx_init_sharded(lambda: NNXMLP(("data", "model"), rngs=nnx.Rngs(0)), mesh=MESH)
    assert model.fc1.kernel[...].sharding.spec == P("data", "model")
