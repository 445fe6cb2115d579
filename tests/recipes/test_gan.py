"""DCGAN recipes (``recipes/gan.py``) on the zoo's generator and discriminator."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from _recipe_helpers import (
    abstract_linen,
    abstract_nnx,
    assert_std,
    assert_untouched,
    pooled,
    run,
    select,
)
from flax import nnx

from flaxinit.models import Discriminator, Generator, NNXDiscriminator, NNXGenerator
from flaxinit.recipes import dcgan, dcgan_he

W, Z = 32, 16


def gan(framework: str, net: str):
    if framework == "linen":
        if net == "g":
            return abstract_linen(Generator(latent=Z, width=W), jnp.ones((1, Z)))
        return abstract_linen(Discriminator(width=W), jnp.ones((1, 16, 16, 1)))
    if net == "g":
        return abstract_nnx(lambda: NNXGenerator(Z, W, rngs=nnx.Rngs(0)))
    return abstract_nnx(lambda: NNXDiscriminator(1, W, rngs=nnx.Rngs(0)))


def assert_norm_stats_untouched(untouched):
    assert untouched
    assert all(p.split("/")[-1] in ("mean", "var") for p in untouched)


@pytest.mark.parametrize("framework", ["linen", "nnx"])
@pytest.mark.parametrize("net", ["g", "d"])
def test_dcgan(framework, net):
    tree = gan(framework, net)
    rules = dcgan()
    before, after, _ = run(tree, rules)
    assert_norm_stats_untouched(assert_untouched(tree, rules, before, after))
    assert_std(pooled(select(after, "kernel").values()), 0.02)
    assert_std(pooled(select(after, "bn[0-9]/scale").values()), 0.02, mean=1.0)
    for path, b in select(after, "bias").items():
        np.testing.assert_array_equal(b, 0.0, err_msg=path)


@pytest.mark.parametrize("framework", ["linen", "nnx"])
def test_dcgan_he_discriminator(framework):
    tree = gan(framework, "d")
    rules = dcgan_he(negative_slope=0.2)
    before, after, _ = run(tree, rules)
    assert_norm_stats_untouched(assert_untouched(tree, rules, before, after))
    gain = math.sqrt(2 / (1 + 0.2**2))  # leaky-ReLU gain
    fan_in = {"conv1/kernel": 4 * 4 * 1, "conv2/kernel": 4 * 4 * W, "head/kernel": 4 * 4 * 2 * W}
    for tail, fan in fan_in.items():
        (k,) = select(after, tail).values()
        assert_std(k, gain / math.sqrt(fan))
    assert_std(pooled(select(after, "bn2/scale").values()), 0.02, mean=1.0)


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: dcgan(std=-1), ValueError, "std"),
        (lambda: dcgan_he(negative_slope=-0.2), ValueError, "negative_slope"),
    ],
)
def test_bad_arguments_raise_when_built(build, error, match):
    with pytest.raises(error, match=match):
        build()
