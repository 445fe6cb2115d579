"""The built-in models' old names in ``flaxinit.diagnostics`` warn, naming the zoo's
replacement, and build the zoo's model with the old signature for one release."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import flaxinit.diagnostics as diagnostics
from flaxinit import models


@pytest.mark.parametrize(
    ("old", "new", "kwargs", "want"),
    [
        ("MLP", "MLP", {"depth": 2, "width": 4}, models.MLP((4, 4), 10)),
        ("CNN", "ConvNet", {"depth": 1, "width": 3}, models.ConvNet((3,), 10)),
        (
            "GPT",
            "GPT",
            {"depth": 1, "width": 8, "num_heads": 2},
            models.GPT(17, 64, 8, 1, 2),
        ),
    ],
)
def test_old_linen_names_warn_and_build_the_zoo_model(old, new, kwargs, want):
    message = rf"diagnostics\.{old} .* flaxinit\.models\.{new} \(.*paths are the zoo's"
    with pytest.warns(DeprecationWarning, match=message):
        made = getattr(diagnostics, old)(**kwargs)
    assert made == want


def test_old_nnx_mlp_warns_and_builds_the_zoo_model():
    message = r"use flaxinit\.models\.NNXMLP \(.*paths are the zoo's"
    with pytest.warns(DeprecationWarning, match=message):
        made = diagnostics.NNXMLP(3, depth=2, width=4, activation="tanh", rngs=nnx.Rngs(0))
    want = models.NNXMLP(3, (4, 4), 10, activation="tanh", rngs=nnx.Rngs(0))
    x = jnp.ones((2, 3))
    assert jax.numpy.array_equal(made(x), want(x))


def test_unknown_names_still_raise():
    with pytest.raises(AttributeError, match="no attribute 'ResNet'"):
        diagnostics.ResNet
