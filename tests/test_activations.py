"""The one table of nonlinearities, and that each of its users reads it: the probe's
classification, LSUV's variance bound, calculate_gain and the jaxpr walk's names."""

import math

import jax
import jax.numpy as jnp
import pytest

import flaxinit as fi
from flaxinit import activations
from flaxinit.diagnostics import inferred, nonlinearity
from flaxinit.lsuv import activation_variance_bound

TABLE = activations.ACTIVATIONS


def test_names_and_aliases_are_unique_and_name_jax_functions():
    names = [n for info in TABLE for n in info.names]
    assert len(names) == len(set(names))
    for info in TABLE:
        assert callable(activations.function(info.name))
        for alias in info.aliases:
            assert activations.lookup(alias) is info
    assert activations.function("swish") is jax.nn.silu
    assert activations.lookup("softsign") is activations.lookup("soft_sign")


def test_families_and_bounds_agree():
    for info in TABLE:
        assert info.family in ("rectifier", "saturating", None)
        assert (info.bounds is not None) == (info.family == "saturating"), info.name
        if info.bounds is not None:
            low, high = info.bounds
            # The bounds are attained in the limit: the function stays inside them.
            y = activations.function(info.name)(jnp.linspace(-50.0, 50.0, 1001))
            assert low - 1e-6 <= float(y.min()) < low + 0.05
            assert high - 0.05 < float(y.max()) <= high + 1e-6


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match=r"no jax\.nn or jax\.numpy function named 'nope'"):
        activations.function("nope")
    with pytest.raises(TypeError, match="a function or a name"):
        activations.function(3)


@pytest.mark.parametrize("info", TABLE, ids=lambda info: info.name)
def test_every_user_reads_the_table(info):
    fn = activations.function(info.name)
    # The diagnostics' classification, by canonical name, alias or function.
    for given in (*info.names, fn):
        nl = nonlinearity(given)
        assert (nl.name, nl.family, nl.bounds) == (info.name, info.family, info.bounds)
    # LSUV's bound on the output variance, by the function's name.
    assert activation_variance_bound(fn) == info.variance_bound
    # calculate_gain's nonlinearity gains (PyTorch's table: only some have one).
    if info.gain is not None:
        assert fi.calculate_gain(info.name) == info.gain
    elif info.name != "leaky_relu":
        with pytest.raises(ValueError, match="unsupported nonlinearity"):
            fi.calculate_gain(info.name)
    # The jaxpr walk names the function the model applies.
    marked = lambda x: fn(inferred.marker(inferred.SITE, 0)(x))
    (found,) = inferred.inferred_nonlinearities(jax.make_jaxpr(marked)(jnp.ones((2, 3))), 1)
    assert nonlinearity(found).name == info.name


def test_the_gains_are_pytorchs():
    assert activations.lookup("relu").gain == math.sqrt(2.0)
    assert activations.lookup("tanh").gain == 5.0 / 3
    assert (activations.lookup("sigmoid").gain, activations.lookup("selu").gain) == (1.0, 0.75)
    assert activation_variance_bound(jnp.tanh) == 1.0
    assert activation_variance_bound(jax.nn.sigmoid) == 0.25
