"""Output recipes (``recipes/output.py``): prior, positive and unit-variance biases on the MLP."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from _recipe_helpers import (
    KEY,
    abstract_linen,
    abstract_nnx,
    assert_untouched,
    run,
    select,
)
from flax import nnx

from flaxinit.models import MLP, NNXMLP
from flaxinit.recipes import positive_bias, prior_bias, unit_variance
from flaxinit.rules import apply_rules


def mlp(framework: str, classes: int = 4, variance: bool = False):
    if framework == "linen":
        return abstract_linen(MLP((32,), classes, variance), jnp.ones((1, 8)))
    return abstract_nnx(lambda: NNXMLP(8, (32,), classes, variance, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("framework", ["linen", "nnx"])
def test_prior_bias_softmax(framework):
    tree = mlp(framework)
    p = [0.1, 0.2, 0.3, 0.4]
    rules = prior_bias(p)
    before, after, _ = run(tree, rules)
    assert len(assert_untouched(tree, rules, before, after)) == len(before) - 1
    (b,) = select(after, "head/bias").values()
    np.testing.assert_array_equal(b, np.log(np.array(p)).astype(np.float32))
    # softmax(b) is the prior.
    np.testing.assert_allclose(np.exp(b) / np.exp(b).sum(), p, rtol=1e-6)


@pytest.mark.parametrize("framework", ["linen", "nnx"])
def test_prior_bias_sigmoid(framework):
    tree = mlp(framework, classes=3)
    p = np.array([0.9, 0.5, 0.01])
    _, after, _ = run(tree, prior_bias(p, activation="sigmoid"))
    (b,) = select(after, "head/bias").values()
    np.testing.assert_allclose(b, np.log(p / (1 - p)), rtol=1e-6)
    assert round(float(b[0]), 3) == 2.197  # 90% positives (the example)
    assert round(float(b[2]), 3) == -4.595  # RetinaNet's pi = 0.01
    np.testing.assert_allclose(1 / (1 + np.exp(-b)), p, rtol=1e-5)


def test_prior_bias_of_the_wrong_length_raises_at_apply():
    with pytest.raises(ValueError, match="broadcast"):
        apply_rules(mlp("linen", classes=4), prior_bias([0.5, 0.5]), key=KEY)


@pytest.mark.parametrize(
    ("framework", "pattern"), [("linen", "hidden_*/bias"), ("nnx", "hidden/*/bias")]
)
def test_positive_bias(framework, pattern):
    tree = mlp(framework)
    rules = positive_bias(0.1, biases=pattern)
    before, after, _ = run(tree, rules)
    assert len(assert_untouched(tree, rules, before, after)) == len(before) - 1
    (b,) = select(after, "hidden(_0|/0)/bias").values()
    np.testing.assert_array_equal(b, np.float32(0.1))


@pytest.mark.parametrize("framework", ["linen", "nnx"])
@pytest.mark.parametrize("log_space", [False, True])
def test_unit_variance(framework, log_space):
    tree = mlp(framework, variance=True)
    rules = unit_variance(log_space=log_space)
    before, after, _ = run(tree, rules)
    assert len(assert_untouched(tree, rules, before, after)) == len(before) - 1
    (v,) = select(after, "variance").values()
    np.testing.assert_array_equal(v, 0.0 if log_space else 1.0)
    with pytest.raises(ValueError, match="'variance' matched no leaf"):
        apply_rules(mlp(framework), rules)


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: prior_bias([0.5, 0.6]), ValueError, "summing to 1"),
        (lambda: prior_bias(0.5), ValueError, "summing to 1"),
        (lambda: prior_bias([0.0, 1.0]), ValueError, r"\(0, 1\)"),
        (lambda: prior_bias([1.2], activation="sigmoid"), ValueError, r"\(0, 1\)"),
        (lambda: prior_bias([-0.5, 1.5]), ValueError, r"\(0, 1\)"),
        (lambda: prior_bias([]), ValueError, "empty"),
        (lambda: prior_bias([[0.5, 0.5]]), ValueError, "1-D"),
        (lambda: prior_bias(["a"]), TypeError, "class_priors"),
        (lambda: prior_bias([0.5, 0.5], activation="tanh"), ValueError, "activation"),
        (lambda: positive_bias(0.0), ValueError, "value"),
        (lambda: positive_bias(-1), ValueError, "value"),
        (lambda: unit_variance(log_space="yes"), TypeError, "log_space"),
    ],
)
def test_bad_arguments_raise_when_built(build, error, match):
    with pytest.raises(error, match=match):
        build()
