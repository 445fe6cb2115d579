"""Partition specs from path rules and metadata: first match wins, strict errors
that name the pattern, path, shape, spec and mesh axis sizes, raised before compiling."""

import flax.linen as nn
import gpt_models as gm
import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import flaxinit as fi
from flaxinit.sharding import check_spec, init_sharded, nnx_init_sharded, partition_specs

MESH = jax.make_mesh((2, 4), ("data", "model"))
KEY = jax.random.key(0)
TOKENS = jnp.zeros((1, 8), jnp.int32)
ABSTRACT = jax.eval_shape(gm.LinenGPT(gm.Config()).init, KEY, TOKENS)


def test_first_matching_rule_wins_and_the_rest_is_replicated():
    rules = [("h_0/**/kernel", P(None, "model")), ("kernel", P("model", None))]
    specs = partition_specs(ABSTRACT, rules, mesh=MESH)["params"]
    assert specs["h_0"]["mlp"]["c_fc"]["kernel"] == P(None, "model")
    assert specs["h_1"]["mlp"]["c_fc"]["kernel"] == P("model", None)
    assert specs["h_1"]["mlp"]["c_fc"]["bias"] == P()
    assert specs["wte"]["embedding"] == P()


def test_specs_from_linen_metadata_match_the_path_rules():
    boxed = jax.eval_shape(gm.LinenGPT(gm.Config(), annotate=True).init, KEY, TOKENS)
    from_metadata = partition_specs(boxed, mesh=MESH, logical_axis_rules=gm.logical_rules(MESH))
    from_rules = partition_specs(ABSTRACT, gm.partition_rules(MESH), mesh=MESH)
    assert nn.meta.unbox(from_metadata) == from_rules


def test_specs_from_nnx_metadata_and_rules_override_it():
    with nnx.use_eager_sharding(False):
        state = nnx.state(nnx.eval_shape(lambda: gm.NnxGPT(annotate=True, rngs=nnx.Rngs(0))))
    logical = gm.logical_rules(MESH)
    specs = partition_specs(state, mesh=MESH, logical_axis_rules=logical)
    assert specs["h"][0]["mlp"]["c_fc"]["kernel"] == P("data", "model")
    specs = partition_specs(state, [("c_fc/kernel", P())], mesh=MESH, logical_axis_rules=logical)
    assert specs["h"][0]["mlp"]["c_fc"]["kernel"] == P()
    assert specs["h"][0]["mlp"]["c_proj"]["kernel"] == P("model", "data")


def test_unmatched_and_shadowed_patterns_raise():
    with pytest.raises(ValueError, match=r"pattern 'mlp/c_fcc/kernel' matched no leaf; closest"):
        partition_specs(ABSTRACT, [("mlp/c_fcc/kernel", P())], mesh=MESH)
    with pytest.raises(ValueError, match=r"rule 1 pattern 'c_fc/kernel' places no leaf"):
        partition_specs(ABSTRACT, [("kernel", P()), ("c_fc/kernel", P())], mesh=MESH)
    specs = partition_specs(ABSTRACT, [("nothing", P())], mesh=MESH, strict=False)
    assert specs["params"]["lm_head"]["kernel"] == P()


def test_spec_that_does_not_divide_names_path_shape_and_mesh():
    # wpe is (32, 64): 32 rows split 8 ways is fine, 64 columns into 8 too; ctx 33 is not.
    abstract = jax.eval_shape(gm.LinenGPT(gm.Config(ctx=33)).init, KEY, TOKENS)
    rules = [("wpe/embedding", P(("data", "model")))]
    with pytest.raises(
        ValueError, match=r"params/wpe/embedding.*\(33, 64\).*8 parts.*data=2, model=4"
    ):
        partition_specs(abstract, rules, mesh=MESH)
    specs = partition_specs(abstract, rules, mesh=MESH, strict=False)
    assert specs["params"]["wpe"]["embedding"] == P(None)


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        (P("expert"), ValueError, r"names axis 'expert', which the mesh \(data=2, model=4\)"),
        (P("model", "model"), ValueError, "uses mesh axis 'model' twice"),
        (P(None, None, "model"), ValueError, r"3 entries but the leaf has shape \(64, 256\)"),
        (P(P.UNCONSTRAINED), ValueError, "UNCONSTRAINED"),
    ],
)
def test_bad_specs(spec, error, match):
    with pytest.raises(error, match=match):
        check_spec("params/h_0/mlp/c_fc/kernel", (64, 256), spec, MESH)


def test_rule_values_must_be_specs():
    with pytest.raises(TypeError, match="PartitionSpec"):
        partition_specs(ABSTRACT, [("kernel", "model")], mesh=MESH)
    assert partition_specs(ABSTRACT, [("kernel", (None, "model"))], mesh=MESH)["params"]["lm_head"][
        "kernel"
    ] == P(None, "model")


def test_logical_names_without_rules_say_so():
    def make():
        return nnx.Linear(
            8, 16, kernel_metadata={"out_sharding": ("embed", "mlp")}, rngs=nnx.Rngs(0)
        )

    with pytest.raises(ValueError, match="logical_axis_rules"):
        nnx_init_sharded(make, mesh=MESH)


def test_errors_come_before_compiling(monkeypatch):
    def no_compile(*args, **kwargs):
        raise AssertionError("compiled")

    monkeypatch.setattr(jax, "jit", no_compile)
    model = gm.LinenGPT(gm.Config())
    with pytest.raises(ValueError, match="'mlp/c_fcc/kernel' matched no leaf"):
        init_sharded(model, KEY, TOKENS, mesh=MESH, partition_rules=[("mlp/c_fcc/kernel", P())])
    with pytest.raises(ValueError, match="rule 0 pattern 'attn/qkv' matched no leaf"):
        init_sharded(model, KEY, TOKENS, mesh=MESH, rules=[("attn/qkv", fi.fill(0.0))])


def test_bad_arguments():
    with pytest.raises(TypeError, match=r"flax\.linen Module"):
        init_sharded(lambda: None, KEY, mesh=MESH)
    with pytest.raises(TypeError, match="make_model must be a function"):
        nnx_init_sharded(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), mesh=MESH)
    with pytest.raises(TypeError, match=r"jax\.sharding\.Mesh"):
        init_sharded(nn.Dense(2), KEY, jnp.ones((1, 2)), mesh=MESH.abstract_mesh)
