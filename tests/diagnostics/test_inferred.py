"""Nonlinearities read from the model's jaxpr: named where the model applies one to a
linear output alone, nothing where it does not (never a guess), and their precedence."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxinit.diagnostics import Activation, activation_stats, activation_values, inferred, probe

X = jnp.linspace(-2.0, 2.0, 24).reshape(4, 6)


class Linen(nn.Module):
    """``Dense -> [norm] -> fn -> Dense``."""

    fn: object
    norm: str = ""

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(8)(x)
        if self.norm == "layer":
            h = nn.LayerNorm()(h)
        elif self.norm == "batch":
            h = nn.BatchNorm(use_running_average=True)(h)
        return nn.Dense(3)(self.fn(h))


class NNX(nnx.Module):
    """The NNX twin of :class:`Linen`."""

    def __init__(self, fn, norm=""):
        rngs = nnx.Rngs(0)
        self.fn = fn
        self.first, self.last = nnx.Linear(6, 8, rngs=rngs), nnx.Linear(8, 3, rngs=rngs)
        norms = {
            "layer": lambda: nnx.LayerNorm(8, rngs=rngs),
            "batch": lambda: nnx.BatchNorm(8, use_running_average=True, rngs=rngs),
        }
        self.norm = nnx.data(norms[norm]() if norm else None)

    def __call__(self, x):
        h = self.first(x)
        if self.norm is not None:
            h = self.norm(h)
        return self.last(self.fn(h))


def _found(model, x=X):
    """The names read from the jaxpr per site (one abstract trace, nothing compiled)."""
    variables = (
        None if isinstance(model, nnx.Module) else jax.eval_shape(model.init, jax.random.key(0), x)
    )
    spec, dynamic = probe.prepare(model, variables)
    spec = probe.unwrap(spec)
    _, found = probe._marked_trace(spec, dynamic, probe.params_of(spec, dynamic), x)
    return [None if nl is None else nl.name for nl in found]


FUNCTIONS = [
    (jax.nn.relu, "relu"),
    (nn.relu, "relu"),
    (nnx.relu, "relu"),
    (jax.nn.gelu, "gelu"),
    (lambda h: jax.nn.gelu(h, approximate=False), "gelu"),
    (jax.nn.silu, "silu"),
    (jnp.tanh, "tanh"),
    (jax.nn.sigmoid, "sigmoid"),
    (jax.nn.leaky_relu, "leaky_relu"),
]


@pytest.mark.parametrize("norm", ["", "layer", "batch"])
@pytest.mark.parametrize(
    ("fn", "name"), FUNCTIONS, ids=[f"{n}{i}" for i, (_, n) in enumerate(FUNCTIONS)]
)
def test_named_in_linen_and_nnx_after_norms(fn, name, norm):
    assert _found(Linen(fn, norm)) == [name, None]
    assert _found(NNX(fn, norm)) == [name, None]


def test_named_in_sequential_and_through_reshapes_and_user_calls():
    assert _found(nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)])) == ["relu", None]
    reshaped = lambda h: jnp.tanh(h.reshape(h.shape[0], 2, 4).astype(jnp.float32))
    assert _found(Linen(reshaped)) == ["tanh", None]
    user_jit = jax.jit(lambda h: jax.nn.silu(h) * 2.0)  # the first op on h is silu
    assert _found(Linen(user_jit)) == ["silu", None]
    assert _found(Linen(jax.checkpoint(jax.nn.relu))) == ["relu", None]


class Residual(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(6)(x)
        return nn.Dense(3)(jax.nn.relu(x + h))


class Scaled(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(jnp.tanh(2.0 * nn.Dense(8)(x)))


class UsedTwice(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(8)(x)
        return nn.Dense(3)(jax.nn.relu(h) + h)


class Concatenated(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.concatenate([nn.Dense(4)(x), nn.Dense(4)(x)], axis=-1)
        return nn.Dense(3)(jax.nn.relu(h))


@pytest.mark.parametrize(
    ("model", "found"),
    [
        # Named by their call, but with parameters the table's defaults would not use.
        (Linen(lambda h: jax.nn.leaky_relu(h, 0.5)), [None, None]),
        (Linen(lambda h: jax.nn.elu(h, alpha=2.0)), [None, None]),
        (Residual(), [None, None]),  # relu of a residual sum, not of the Dense output
        (Scaled(), [None, None]),  # tanh(2 h): applied to h it would describe another input
        (UsedTwice(), [None, None]),
        (Concatenated(), [None, None, None]),
    ],
    ids=["leaky-relu-slope", "elu-alpha", "residual", "scaled", "used-twice", "concatenated"],
)
def test_nothing_is_guessed(model, found):
    assert _found(model) == found


def test_walk_on_hand_written_jaxprs():
    mark = lambda k: inferred.marker(inferred.SITE, k)
    closed = jax.make_jaxpr(lambda x: (jax.nn.relu(mark(0)(x)), mark(1)(x)))(X)
    assert [getattr(f, "__name__", None) for f in inferred.inferred_nonlinearities(closed, 3)] == [
        "relu",
        None,  # returned by the function: nothing is applied to it
        None,  # never marked
    ]
    inlined = jax.make_jaxpr(lambda x: jnp.maximum(mark(0)(x), 0.0))(X)
    assert inferred.inferred_nonlinearities(inlined, 1) == (jax.nn.relu,)


class Wrapped(nn.Module):
    """One wrapped nonlinearity (an Activation layer) and one bare."""

    @nn.compact
    def __call__(self, x):
        x = Activation(jax.nn.relu)(nn.Dense(8)(x))
        x = jnp.tanh(nn.Dense(8)(x))
        return nn.Dense(3)(x)


def test_precedence_layer_then_declared_then_inferred():
    model = Wrapped()
    variables = model.init(jax.random.key(0), X)
    summary = lambda records: [(r.path, r.activation, r.activation_source) for r in records]
    assert summary(activation_stats(model, X, variables=variables)) == [
        ("Dense_0", None, None),  # its Activation layer's record has the relu
        ("Activation_0", "relu", "layer"),
        ("Dense_1", "tanh", "inferred"),
        ("Dense_2", None, None),
    ]
    declared = activation_stats(model, X, variables=variables, activation="sigmoid")
    assert summary(declared) == [
        ("Dense_0", None, None),
        ("Activation_0", "relu", "layer"),
        ("Dense_1", "sigmoid", "declared"),
        ("Dense_2", None, None),  # the declared one skips the last linear layer
    ]


def test_an_inferred_nonlinearity_is_measured_as_a_declared_one():
    # Dead units and saturation come from the function applied to the pre-activation,
    # whichever way it was found: the numbers are the same, and those of numpy.
    x = jax.random.normal(jax.random.key(1), (32, 6))
    for fn, name in ((jax.nn.relu, "relu"), (jnp.tanh, "tanh")):
        model = Linen(fn)
        variables = model.init(jax.random.key(0), x)
        found, told = (
            activation_stats(model, x, variables=variables, activation=a)[0] for a in (None, name)
        )
        assert (found.activation_source, told.activation_source) == ("inferred", "declared")
        assert dataclasses.replace(found, activation_source="declared") == told
        pre = np.asarray(activation_values(model, x, variables=variables)["Dense_0"])
        if name == "relu":
            assert found.dead_fraction == pytest.approx(np.mean(np.all(pre <= 0, axis=0)))
        else:
            assert found.saturated_fraction == pytest.approx(np.mean(np.abs(np.tanh(pre)) > 0.99))
