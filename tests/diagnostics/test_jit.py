"""One jitted pass: repeated calls reuse the compile; records are pytrees; outputs in order.

Stats inside a user's ``jax.jit`` are checked against numpy in test_numpy_agreement.py.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxinit.diagnostics import (
    ActivationRecord,
    activation_stats,
    activation_values,
    health_report,
)
from flaxinit.diagnostics import report as report_module
from flaxinit.models import MLP


@pytest.fixture(scope="module")
def xy():
    kx, ky = jax.random.split(jax.random.key(3))
    return jax.random.normal(kx, (16, 5)), jax.random.randint(ky, (16,), 0, 10)


def test_records_are_pytrees_with_static_names():
    leaves, treedef = jax.tree.flatten(
        ActivationRecord(
            "a", 0, 1, "linear", "Dense", None, (2,), 1.0, 2.0, 3.0, 0.0, None, None, None
        )
    )
    assert leaves == [1.0, 2.0, 3.0, 0.0]
    assert jax.tree.unflatten(treedef, leaves).path == "a"


TRACES: list = []


class _Counting(nn.Module):
    """Counts how often it is traced (in a global: a field must stay hashable)."""

    @nn.compact
    def __call__(self, x):
        TRACES.append(1)
        return nn.Dense(3)(jnp.tanh(nn.Dense(4)(x)))


def test_one_compile_per_model_reused_across_variables(xy):
    x, y = xy
    TRACES.clear()
    model = _Counting()
    before = report_module._report_pass._cache_size()
    for seed in range(3):
        health_report(model, x, y % 3, variables=model.init(jax.random.key(seed), x))
    assert report_module._report_pass._cache_size() == before + 1
    # init traces once per call; the report traces twice (shapes and nonlinearities from
    # the marked jaxpr, then forward+backward) on its first call only.
    assert len(TRACES) == 3 + 2


def test_activation_values_in_execution_order(xy):
    x, _ = xy
    model = MLP((8, 8))
    variables = model.init(jax.random.key(0), x)
    values = activation_values(model, x, variables=variables)
    assert list(values) == ["hidden_0", "hidden_1", "head"]
    head = variables["params"]["head"]
    expected = jnp.maximum(values["hidden_1"], 0) @ head["kernel"] + head["bias"]
    np.testing.assert_allclose(values["head"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(values["head"], model.apply(variables, x), rtol=1e-6)


class _Shared(nn.Module):
    @nn.compact
    def __call__(self, x):
        dense = nn.Dense(5)
        return dense(jax.nn.relu(dense(x)))


def test_a_shared_layer_is_recorded_per_call(xy):
    x, _ = xy
    x = x[:, :5]
    model = _Shared()
    variables = model.init(jax.random.key(0), x)
    assert list(activation_values(model, x, variables=variables)) == ["Dense_0", "Dense_0#2"]
    records = activation_stats(model, x, variables=variables)
    assert [(r.path, r.depth) for r in records] == [("Dense_0", 1), ("Dense_0", 2)]


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_layers_inside_scan_raise_a_clear_error(api):
    # A scanned stack's layers run in the scan's own trace: their outputs cannot be
    # taken out by the probe, which must say so rather than leak a tracer. Every pass
    # (with or without labels) traces the marked forward first, where this is raised.
    from flax import nnx

    from flaxinit.models import GPT, NNXGPT

    tokens = jnp.zeros((2, 4), jnp.int32)
    size = {"vocab_size": 8, "max_len": 4, "d_model": 8, "num_layers": 1}
    if api == "linen":
        model = GPT(**size, scan=True)
        # jit: run eagerly, nn.scan's init dispatches op by op (several times slower)
        kwargs = {"variables": jax.jit(model.init)(jax.random.key(0), tokens)}
    else:
        model = NNXGPT(**size, scan=True, rngs=nnx.Rngs(0))
        kwargs = {}
    with pytest.raises(ValueError, match=r"inside a JAX transform.*unrolled"):
        activation_stats(model, tokens, tokens, **kwargs)
    unrolled = GPT(**size) if api == "linen" else NNXGPT(**size, rngs=nnx.Rngs(0))
    if api == "linen":
        kwargs = {"variables": unrolled.init(jax.random.key(0), tokens)}
    records = activation_stats(unrolled, tokens, tokens, **kwargs)
    # The bare gelu between fc1 and fc2 is read from the jaxpr; nothing is inferred for
    # the attention projections, whose outputs are not each put through a nonlinearity.
    (fc1,) = [r for r in records if r.activation is not None]
    assert fc1.path.endswith("mlp/fc1")
    assert (fc1.activation, fc1.activation_source) == ("gelu", "inferred")
