"""``fi.lsuv`` itself (``lsuv/__init__.py``): deterministic and idempotent, layer selection,
bad batches and arguments, a sharded batch."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from _lsuv_helpers import (
    KEY,
    LinenMLP,
    batch,
)
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from flaxinit.lsuv import lsuv


def test_idempotent_and_deterministic():
    model = LinenMLP(depth=10)
    x = batch((128, 64))
    v1, _ = lsuv(model, None, x, key=KEY)
    v1_again, _ = lsuv(model, None, x, key=KEY)
    chex.assert_trees_all_equal(v1, v1_again)
    v2, report = lsuv(model, v1, x, pre_init=None)
    assert all(r.rounds == 0 for r in report)
    chex.assert_trees_all_close(v1, v2, rtol=0, atol=0)


def test_layer_selection_by_pattern_and_type():
    model = LinenMLP(depth=4)
    x = batch((64, 64))
    _, report = lsuv(model, None, x, key=KEY, layers=["Dense_[02]"])
    assert [r.path for r in report] == ["Dense_0", "Dense_2"]
    _, report = lsuv(model, None, x, key=KEY, layers=[nn.Dense])
    assert len(report) == 5
    with pytest.raises(ValueError, match="matched no linear layer"):
        lsuv(model, None, x, key=KEY, layers=["attn/*"])


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (jnp.ones((1, 8)), "at least 2 examples"),
        (jnp.ones((4, 8)).at[0, 0].set(jnp.nan), "NaN or Inf"),
        (jnp.ones((4, 8)).at[1, 2].set(jnp.inf), "NaN or Inf"),
    ],
)
def test_bad_batches(x, match):
    with pytest.raises(ValueError, match=match):
        lsuv(LinenMLP(depth=1, width=8), None, x, key=KEY)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tol": 0.0}, ValueError, "tol"),
        ({"target_var": -1.0}, ValueError, "target_var"),
        ({"max_iters": 0}, ValueError, "max_iters"),
        ({"measure": "input"}, ValueError, "measure"),
        ({"measure": "activation"}, ValueError, "activation="),
        ({"pre_init": "svd"}, ValueError, "pre_init"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        lsuv(LinenMLP(depth=1, width=8), None, jnp.ones((4, 8)), key=KEY, **kwargs)


def test_sharded_batch_equals_unsharded():
    model = LinenMLP(depth=8)
    x = batch((64, 64))
    variables = model.init(KEY, x)
    reference, ref_report = lsuv(model, variables, x, key=KEY)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded_x = jax.device_put(x, NamedSharding(mesh, P("data")))
    result, report = lsuv(model, variables, sharded_x, key=KEY)
    chex.assert_trees_all_close(result, reference, rtol=1e-5, atol=1e-6)
    for a, b in zip(report, ref_report, strict=True):
        assert a.rounds == b.rounds
        assert a.var_after == pytest.approx(b.var_after, rel=1e-5)
