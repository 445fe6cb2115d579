"""rule_labels / rule_mask driving real optax transformations."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from flaxinit.rules import apply_rules, fill, rule_labels, rule_mask


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        boxed = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
        x = nn.Dense(4, kernel_init=boxed, name="fc")(x)
        x = nn.LayerNorm(name="norm")(x)
        return nn.Dense(2, name="head")(x)


@pytest.fixture(scope="module")
def boxed_vars():
    return Net().init(jax.random.key(0), jnp.ones((1, 3)))


RULES = [("/params/head/**", "head"), ("norm/*", "frozen"), ("bias", "frozen")]
TXS = {"head": optax.sgd(1.0), "body": optax.sgd(0.5), "frozen": optax.set_to_zero()}


def _step(tx, params):
    grads = jax.tree.map(jnp.ones_like, params)
    state = tx.init(params)
    updates, _ = tx.update(grads, state, params)
    return optax.apply_updates(params, updates)


def test_labels_first_match_wins_and_default(boxed_vars):
    labels = rule_labels(boxed_vars, RULES, default="body")
    assert labels == {
        "params": {
            "fc": {"bias": "frozen", "kernel": "body"},
            "head": {"bias": "head", "kernel": "head"},  # first rule wins over "bias"
            "norm": {"bias": "frozen", "scale": "frozen"},
        }
    }


def test_multi_transform_step_on_plain_linen_params(boxed_vars):
    params = nn.unbox(boxed_vars)["params"]
    rules = [(p.replace("/params/", "/"), label) for p, label in RULES]
    tx = optax.multi_transform(TXS, rule_labels(params, rules, default="body"))
    new = _step(tx, params)
    np.testing.assert_allclose(new["head"]["kernel"], params["head"]["kernel"] - 1.0)
    np.testing.assert_allclose(new["fc"]["kernel"], params["fc"]["kernel"] - 0.5)
    np.testing.assert_array_equal(new["fc"]["bias"], params["fc"]["bias"])
    np.testing.assert_array_equal(new["norm"]["scale"], params["norm"]["scale"])


def test_multi_transform_step_on_boxed_params_under_jit(boxed_vars):
    labels = rule_labels(boxed_vars, RULES, default="body")
    tx = optax.multi_transform(TXS, labels)
    new = jax.jit(lambda p: _step(tx, p))(boxed_vars)
    box = new["params"]["fc"]["kernel"]
    assert type(box) is nn.LogicallyPartitioned
    assert box.names == ("embed", "mlp")
    old = boxed_vars["params"]
    np.testing.assert_allclose(box.value, old["fc"]["kernel"].value - 0.5)
    np.testing.assert_array_equal(new["params"]["fc"]["bias"], old["fc"]["bias"])


class NNet(nnx.Module):
    def __init__(self, rngs):
        self.fc = nnx.Linear(3, 4, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.head = nnx.Linear(4, 2, rngs=rngs)


def test_nnx_optimizer_with_labels_and_mask():
    model = NNet(nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    labels = rule_labels(params, [("head/*", "head"), ("bn/*", "frozen")], default="body")
    assert labels["bn"]["scale"] == "frozen"
    assert labels["fc"]["kernel"] == "body"
    tx = optax.chain(
        optax.multi_transform(TXS, labels),
        optax.add_decayed_weights(0.25, mask=rule_mask(params, "kernel")),
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    before = jax.tree.map(np.array, nnx.state(model))
    grads = apply_rules(params, [("**", fill(0.0)), ("head/kernel", fill(1.0))])
    optimizer.update(model, grads)
    head = before["head"]["kernel"]
    # sgd(1.0) on a gradient of 1, then decay 0.25 * w added to the update.
    np.testing.assert_allclose(model.head.kernel[...], head - 1.0 + 0.25 * head, rtol=1e-6)
    fc = before["fc"]["kernel"]
    np.testing.assert_allclose(model.fc.kernel[...], fc + 0.25 * fc, rtol=1e-6)
    np.testing.assert_array_equal(model.fc.bias[...], before["fc"]["bias"])
    np.testing.assert_array_equal(model.bn.scale[...], before["bn"]["scale"])


def test_nnx_optimizer_with_a_label_function():
    model = NNet(nnx.Rngs(0))
    label_fn = lambda params: rule_labels(params, [("bias", "frozen")], default="body")
    optimizer = nnx.Optimizer(model, optax.multi_transform(TXS, label_fn), wrt=nnx.Param)
    before = np.array(model.fc.kernel[...])
    optimizer.update(model, jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param)))
    np.testing.assert_allclose(model.fc.kernel[...], before - 0.5)
    np.testing.assert_array_equal(model.fc.bias[...], 0.0)


def test_mask_values_and_masked_transform(boxed_vars):
    params = nn.unbox(boxed_vars)["params"]
    mask = rule_mask(params, ["kernel", "norm/scale"])
    assert mask == {
        "fc": {"bias": False, "kernel": True},
        "head": {"bias": False, "kernel": True},
        "norm": {"bias": False, "scale": True},
    }
    new = _step(optax.masked(optax.sgd(1.0), mask), params)
    np.testing.assert_allclose(new["fc"]["kernel"], params["fc"]["kernel"] - 1.0)
    # optax.masked passes masked-out updates through unchanged: the raw gradient 1.
    np.testing.assert_allclose(new["fc"]["bias"], params["fc"]["bias"] + 1.0)


def test_strictness_and_errors(boxed_vars):
    with pytest.raises(ValueError, match="label rule 1 pattern 'nrom/\\*'"):
        rule_labels(boxed_vars, [("kernel", "a"), ("nrom/*", "b")], default="c")
    assert rule_labels(boxed_vars, [("nrom/*", "b")], default="c", strict=False)["params"][
        "norm"
    ] == {"bias": "c", "scale": "c"}
    with pytest.raises(ValueError, match="no rule labels 'params/fc/bias'"):
        rule_labels(boxed_vars, [("kernel", "a")])
    with pytest.raises(TypeError, match="hashable"):
        rule_labels(boxed_vars, [("kernel", ["a"])], default="b")
    with pytest.raises(ValueError, match="mask pattern 0 pattern 'kernal'"):
        rule_mask(boxed_vars, "kernal")
    with pytest.raises(TypeError, match=r"nnx\.state"):
        rule_labels(NNet(nnx.Rngs(0)), [("kernel", "a")], default="b")
    with pytest.raises(TypeError, match="pair"):
        rule_labels(boxed_vars, ["kernel"], default="b")
