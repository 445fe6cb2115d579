"""Where results are produced (flaxinit.rules.layout)."""

import jax
import jax.numpy as jnp
import numpy as np
from _rules_helpers import KEY

from flaxinit.initializers import normal
from flaxinit.rules import (
    apply_rules,
    fill,
)


def test_eager_call_keeps_committed_shardings():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("a", "b"))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("a", "b"))
    w = jax.device_put(jnp.zeros((16, 8)), sharding)
    rules = [("w", normal(1.0)), ("b", fill(1.0))]
    out = apply_rules({"w": w, "b": np.zeros(8, np.float32)}, rules, key=KEY)
    assert out["w"].sharding == sharding
    reference = apply_rules({"w": jnp.zeros((16, 8)), "b": jnp.zeros(8)}, rules, key=KEY)
    np.testing.assert_array_equal(out["w"], reference["w"])
    np.testing.assert_array_equal(out["b"], 1.0)
