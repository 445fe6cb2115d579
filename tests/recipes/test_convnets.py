"""CNN recipes on the zoo's ResNet (with BatchNorm, ReZero gates, Fixup), Linen and NNX."""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np
import pytest
from _recipe_helpers import (
    KEY,
    abstract_linen,
    abstract_nnx,
    assert_std,
    assert_untouched,
    pooled,
    run,
    select,
)
from flax import nnx

from flaxinit.models import NNXResNet, ResNet
from flaxinit.recipes import fixup, he_cnn, rezero, zero_init_residual
from flaxinit.rules import apply_rules

W, BLOCKS = 32, 2
FRAMEWORKS = ["linen", "nnx"]


@functools.cache
def resnet(framework: str, norm: bool = True, gate: str = "none"):
    if framework == "linen":
        model = ResNet(num_blocks=BLOCKS, width=W, norm=norm, gate=gate)
        return abstract_linen(model, jnp.ones((1, 8, 8, 3)))
    return abstract_nnx(lambda: NNXResNet(3, BLOCKS, W, norm=norm, gate=gate, rngs=nnx.Rngs(0)))


def assert_fill(view, pattern, value):
    for path, a in select(view, pattern).items():
        np.testing.assert_array_equal(a, np.float32(value), err_msg=path)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_he_cnn_with_zero_init_residual(framework):
    tree = resnet(framework)
    rules = he_cnn() + zero_init_residual()  # composition: the later rule wins on bn2
    before, after, _ = run(tree, rules)
    untouched = assert_untouched(tree, rules, before, after)
    assert {p.split("/")[-1] for p in untouched} == {"mean", "var", "kernel", "bias"}
    assert all("head" in p or p.split("/")[-1] in ("mean", "var") for p in untouched)
    # Every conv here has fan_out = 3 * 3 * W (the stem too): N(0, 2 / fan_out).
    convs = select(after, "conv[^/]*/kernel")
    assert len(convs) == 1 + 2 * BLOCKS
    assert_std(pooled(convs.values()), math.sqrt(2 / (9 * W)))
    assert_fill(after, "bn(1|_stem)/scale", 1.0)
    assert_fill(after, "bn2/scale", 0.0)
    assert_fill(after, "bn[^/]*/bias", 0.0)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_he_cnn_fan_in(framework):
    tree = resnet(framework)
    _, after, _ = run(tree, he_cnn(mode="fan_in", norm_scales=None, norm_biases=None))
    blocks = [a for p, a in select(after, "conv[12]/kernel").items()]
    (stem,) = select(after, "conv_stem/kernel").values()
    assert_std(pooled(blocks), math.sqrt(2 / (9 * W)))
    assert_std(stem, math.sqrt(2 / (9 * 3)))  # fan_in = 3 * 3 * 3 input channels


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_zero_init_residual_alone(framework):
    tree = resnet(framework)
    rules = zero_init_residual()
    before, after, _ = run(tree, rules)
    untouched = assert_untouched(tree, rules, before, after)
    assert len(untouched) == len(before) - BLOCKS
    assert_fill(after, "bn2/scale", 0.0)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_fixup(framework):
    tree = resnet(framework, norm=False, gate="fixup")
    rules = fixup(BLOCKS)
    before, after, _ = run(tree, rules)
    untouched = assert_untouched(tree, rules, before, after)
    assert sorted(p.split("/")[-2:] for p in untouched) == [
        ["conv_stem", "bias"],
        ["conv_stem", "kernel"],
    ]
    # m = 2: conv1 is He (fan_out) times L^(-1/2); conv2, the head and the scalar
    # biases are 0; the multipliers 1.
    assert_std(pooled(select(after, "conv1/kernel").values()), math.sqrt(2 / (9 * W) / BLOCKS))
    assert_fill(after, "conv2/kernel", 0.0)
    assert_fill(after, "head/(kernel|bias)", 0.0)
    assert_fill(after, "bias[12][ab]", 0.0)
    assert_fill(after, "blocks(_[0-9]+|/[0-9]+)/scale", 1.0)


def test_fixup_bottleneck_exponent():
    # ResNet-50: 16 bottleneck branches of m = 3 layers: x 16^(-1/4) = 0.5 on conv1, conv2.
    k = jnp.zeros((3, 3, 64, 64))
    tree = {f"blocks_{i}": {"conv1": {"kernel": k}, "conv2": {"kernel": k}} for i in range(2)}
    tree["blocks_0"]["conv3"] = {"kernel": jnp.ones((1, 1, 64, 256))}
    out = apply_rules(tree, fixup(16, m=3), key=KEY, strict=False)
    x = pooled(out[b][c]["kernel"] for b in ("blocks_0", "blocks_1") for c in ("conv1", "conv2"))
    assert_std(x, math.sqrt(2 / (9 * 64)) * 0.5)
    np.testing.assert_array_equal(out["blocks_0"]["conv3"]["kernel"], 0.0)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_rezero(framework):
    tree = resnet(framework, gate="rezero")
    rules = rezero()
    before, after, _ = run(tree, rules)
    untouched = assert_untouched(tree, rules, before, after)
    assert len(untouched) == len(before) - BLOCKS
    assert_fill(after, "alpha", 0.0)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_strict_raises_when_the_layout_is_missing(framework):
    with pytest.raises(ValueError, match="'alpha' matched no leaf"):
        apply_rules(resnet(framework), rezero(), key=KEY)
    with pytest.raises(ValueError, match="matched no leaf"):
        apply_rules(resnet(framework), fixup(BLOCKS), key=KEY)
    with pytest.raises(
        ValueError, match=r"'bn2/scale .the fallback of @norm_scale:residual.' matched no leaf"
    ):
        apply_rules(resnet(framework, norm=False, gate="fixup"), zero_init_residual())


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: fixup(0), ValueError, "num_blocks"),
        (lambda: fixup(4, m=1), ValueError, "m must be an int >= 2, got m=1"),
        (lambda: fixup(4, m=2.5), TypeError, "m must be an int"),
        (lambda: he_cnn(mode="fan_avg"), ValueError, "mode"),
        (lambda: rezero(gates=[1]), TypeError, "gates"),
        (lambda: zero_init_residual(last_norms="[bn"), ValueError, "last_norms"),
    ],
)
def test_bad_arguments_raise_when_built(build, error, match):
    with pytest.raises(error, match=match):
        build()
