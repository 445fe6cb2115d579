"""Diagnostics on the way stock Flax models are written (issue 15, "no silent wrong result").

* A norm between a linear layer and its nonlinearity (Dense -> LayerNorm/BatchNorm -> relu):
  a declared ``activation=`` is applied to what the model feeds the nonlinearity, the norm's
  output, not to the linear output.
* A model returning several arrays (``(logits, cache)``): the default loss finds the one
  output that fits the labels, or asks for ``loss_fn=``.
* NNX state other than params (BatchNorm statistics, dropout RNG counts): the backward pass
  works and leaves the model alone; an ``nnx.scan`` stack with BatchNorm gets the probe's own
  "inside a JAX transform" error.

Every expected value is computed here from the model's own intermediates (Linen
``capture_intermediates``, ``nnx.capture``), not copied from the output under test.
"""

from __future__ import annotations

import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import flaxinit as fi
from flaxinit.diagnostics import activation_stats, default_loss, gradient_stats, health_report

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "structure"))

import lookalike_models as lm

B = 64


def dead(a) -> float:
    """The fraction of units (last axis) that are 0 for the whole batch."""
    a = np.asarray(a, np.float64)
    return float(np.mean(np.all(a.reshape(-1, a.shape[-1]) == 0, axis=0)))


def saturated(a, level=0.99) -> float:
    return float(np.mean(np.abs(np.asarray(a, np.float64)) > level))


def linen_outputs(model, variables, x, types, **kwargs):
    """``{module path: output}`` of every module of ``types``, by capture_intermediates."""
    _, state = model.apply(
        variables,
        x,
        capture_intermediates=lambda m, name: isinstance(m, types) and name == "__call__",
        mutable=["intermediates", "batch_stats"],
        **kwargs,
    )
    flat = jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
    out = {}
    for path, value in flat:
        keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        out["/".join(keys[:-1])] = np.asarray(value)
    return out


# --------------------------------------------------------------------------------------------
# Item 9: a norm between the linear layer and the declared activation
# --------------------------------------------------------------------------------------------


class NormedMLP(nn.Module):
    """``Dense -> LayerNorm -> relu`` three times (or ``Dense -> relu -> LayerNorm`` when
    ``post``), then a readout. A bias of -3 makes ``relu(Dense)`` zero almost everywhere,
    while the norm re-centres every example, so the two measurements differ widely."""

    post: bool = False

    @nn.compact
    def __call__(self, x):
        for _ in range(3):
            h = nn.Dense(32, bias_init=fi.constant(-3.0))(x)
            x = nn.LayerNorm()(jax.nn.relu(h)) if self.post else jax.nn.relu(nn.LayerNorm()(h))
        return nn.Dense(4)(x)


@pytest.fixture(scope="module")
def x16():
    return jax.random.normal(jax.random.key(1), (B, 16))


def test_linen_declared_relu_after_a_layernorm_measures_the_norm_output(x16):
    model = NormedMLP()
    variables = model.init(jax.random.key(0), x16)
    records = activation_stats(model, x16, variables=variables, activation="relu")
    dense = linen_outputs(model, variables, x16, nn.Dense)
    norms = linen_outputs(model, variables, x16, nn.LayerNorm)
    hidden = [r for r in records if r.kind == "linear"][:-1]
    assert [r.path for r in hidden] == ["Dense_0", "Dense_1", "Dense_2"]
    for i, record in enumerate(hidden):
        real = dead(jax.nn.relu(norms[f"LayerNorm_{i}"]))
        naive = dead(jax.nn.relu(dense[f"Dense_{i}"]))
        assert naive - real > 0.5, "the model must tell the two measurements apart"
        assert record.dead_fraction == pytest.approx(real, abs=1e-6), record.path
        assert record.normalized_by == f"LayerNorm_{i}"
        # the forward signal stays the linear layer's own output
        assert record.std == pytest.approx(np.std(dense[record.path]), rel=1e-4)
    readout = [r for r in records if r.kind == "linear"][-1]
    assert readout.activation is None
    assert readout.normalized_by is None


def test_linen_norm_after_the_activation_changes_nothing(x16):
    model = NormedMLP(post=True)
    variables = model.init(jax.random.key(0), x16)
    records = activation_stats(model, x16, variables=variables, activation="relu")
    dense = linen_outputs(model, variables, x16, nn.Dense)
    for record in [r for r in records if r.kind == "linear"][:-1]:
        assert record.normalized_by is None
        assert record.dead_fraction == pytest.approx(dead(jax.nn.relu(dense[record.path])))


class NNXNormedTanh(nnx.Module):
    """``Linear -> BatchNorm -> tanh`` twice: weights of std 3 saturate ``tanh(Linear)``,
    the batch norm brings the pre-activation back to unit scale."""

    def __init__(self, rngs):
        init = fi.normal(3.0)
        self.fc = nnx.List([nnx.Linear(16, 32, kernel_init=init, rngs=rngs)])
        self.fc.append(nnx.Linear(32, 32, kernel_init=init, rngs=rngs))
        self.bn = nnx.List([nnx.BatchNorm(32, use_running_average=False, rngs=rngs)])
        self.bn.append(nnx.BatchNorm(32, use_running_average=False, rngs=rngs))
        self.head = nnx.Linear(32, 4, rngs=rngs)

    def __call__(self, x):
        for fc, bn in zip(self.fc, self.bn, strict=True):
            x = jnp.tanh(bn(fc(x)))
        return self.head(x)


def test_nnx_declared_tanh_after_a_batchnorm_measures_the_norm_output(x16):
    model = NNXNormedTanh(nnx.Rngs(0))
    records = activation_stats(model, x16, activation="tanh")
    _, captured = nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(x16)
    outputs = {
        "/".join(map(str, p[:-1])): np.asarray(v.get_value()[0])
        for p, v in nnx.to_flat_state(captured)
    }
    hidden = [r for r in records if r.kind == "linear"][:-1]
    assert [r.path for r in hidden] == ["fc/0", "fc/1"]
    for i, record in enumerate(hidden):
        real = saturated(np.tanh(outputs[f"bn/{i}"]))
        naive = saturated(np.tanh(outputs[f"fc/{i}"]))
        assert naive - real > 0.3, "the model must tell the two measurements apart"
        assert record.saturated_fraction == pytest.approx(real, abs=1e-6), record.path
        assert record.normalized_by == f"bn/{i}"


def test_lookalike_resnet_conv_bn_relu():
    # The Flax ImageNet ResNet's layout: conv -> BatchNorm -> relu, with batch statistics
    # (train=True). Where relu follows the norm directly, the dead fraction is that of
    # relu(norm output); the residual branch ends in a norm whose output is added to the
    # shortcut before the relu, which the docstring names as the limit of activation=.
    case = lm.make_resnet_bn_like()
    x = jax.random.normal(jax.random.key(2), (8, *case.args[0].shape[1:]))
    variables = case.model.init(jax.random.key(0), x)
    kwargs = {"train": True, "mutable": "batch_stats"}
    records = activation_stats(
        case.model, x, variables=variables, activation="relu", call_kwargs=kwargs
    )
    by_path = {r.path: r for r in records}
    assert by_path["conv_init"].normalized_by == "bn_init"
    assert by_path["ResNetBlock_0/Conv_0"].normalized_by == "ResNetBlock_0/BatchNorm_0"
    assert by_path["ResNetBlock_1/conv_proj"].normalized_by == "ResNetBlock_1/norm_proj"
    assert by_path["Dense_0"].normalized_by is None
    norms = linen_outputs(case.model, variables, x, nn.BatchNorm, train=True)
    for conv, norm in [
        ("conv_init", "bn_init"),
        ("ResNetBlock_0/Conv_0", "ResNetBlock_0/BatchNorm_0"),
    ]:
        want = dead(jax.nn.relu(norms[norm]))
        assert by_path[conv].dead_fraction == pytest.approx(want, abs=1e-6), conv


# --------------------------------------------------------------------------------------------
# Item 11: models that return several arrays
# --------------------------------------------------------------------------------------------


class CachedLM(nn.Module):
    """A tiny LM returning ``(logits, cache)``; the cache is 4-d, like a KV cache."""

    features_first: bool = False
    flat_cache: bool = False

    @nn.compact
    def __call__(self, tokens):
        h = nn.Embed(20, 16)(tokens)
        h = jax.nn.relu(nn.Dense(16)(h))
        logits = nn.Dense(20)(h)
        cache = h if self.flat_cache else h.reshape(*h.shape[:2], 4, 4)
        if self.features_first:
            return cache, logits
        return logits, {"cache": cache, "step": jnp.int32(tokens.shape[1])}


class NNXCachedLM(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(20, 16, rngs=rngs)
        self.fc = nnx.Linear(16, 16, rngs=rngs)
        self.head = nnx.Linear(16, 20, rngs=rngs)

    def __call__(self, tokens):
        h = jax.nn.relu(self.fc(self.embed(tokens)))
        return self.head(h), (h.reshape(*h.shape[:2], 4, 4),)


@pytest.fixture(scope="module")
def tokens():
    kt, kl = jax.random.split(jax.random.key(5))
    return jax.random.randint(kt, (4, 6), 0, 20), jax.random.randint(kl, (4, 6), 0, 20)


def _same(a, b):
    assert [r.path for r in a] == [r.path for r in b]
    for r, s in zip(a, b, strict=True):
        for field in ("std", "grad_rms", "grad_norm"):
            if getattr(r, field, None) is not None:
                assert getattr(r, field) == pytest.approx(getattr(s, field), rel=1e-6), r.path


def test_linen_logits_and_cache_use_the_logits(tokens):
    t, y = tokens
    model = CachedLM()
    variables = model.init(jax.random.key(0), t)
    # The reference picks the logits by hand.
    by_hand = lambda out, labels: default_loss(out[0], labels)
    report = health_report(model, t, y, variables=variables)
    reference = health_report(model, t, y, variables=variables, loss_fn=by_hand)
    _same(report.activations, reference.activations)
    _same(report.gradients, reference.gradients)
    assert all(r.grad_rms is not None and r.grad_rms > 0 for r in report.activations)
    _same(
        activation_stats(model, t, y, variables=variables),
        activation_stats(model, t, y, variables=variables, loss_fn=by_hand),
    )
    _same(
        gradient_stats(model, t, y, variables=variables),
        gradient_stats(model, t, y, variables=variables, loss_fn=by_hand),
    )


def test_nnx_logits_and_cache_use_the_logits(tokens):
    t, y = tokens
    model = NNXCachedLM(nnx.Rngs(0))
    by_hand = lambda out, labels: default_loss(out[0], labels)
    _same(gradient_stats(model, t, y), gradient_stats(model, t, y, loss_fn=by_hand))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"flat_cache": True}, "2 outputs fit the labels"),
        ({"features_first": True, "flat_cache": True}, "2 outputs fit the labels"),
    ],
)
def test_several_fitting_outputs_ask_for_loss_fn(tokens, kwargs, fragment):
    t, y = tokens
    model = CachedLM(**kwargs)
    variables = model.init(jax.random.key(0), t)
    with pytest.raises(ValueError, match="loss_fn=") as info:
        health_report(model, t, y, variables=variables)
    assert fragment in str(info.value)
    assert "(4, 6, 16)" in str(info.value)
    assert "(4, 6, 20)" in str(info.value)


def test_no_fitting_output_asks_for_loss_fn(tokens):
    t, _ = tokens
    model = CachedLM()
    variables = model.init(jax.random.key(0), t)
    wrong = jnp.zeros((4,), jnp.int32)  # one label per sequence, the model predicts per token
    with pytest.raises(ValueError, match=r"no output of the model fits the labels.*loss_fn="):
        health_report(model, t, wrong, variables=variables)


def test_float_labels_of_another_shape_are_refused(x16):
    # (64, 4) outputs against (64,) targets would broadcast to (64, 64) in the squared error.
    model = NormedMLP()
    variables = model.init(jax.random.key(0), x16)
    with pytest.raises(ValueError, match="does not fit the labels") as info:
        gradient_stats(model, x16, jnp.zeros((B,)), variables=variables)
    for fragment in ("(64, 4) float32", "(64,) float32", "loss_fn="):
        assert fragment in str(info.value)


# --------------------------------------------------------------------------------------------
# Item 12: NNX state other than params; nnx.scan stacks with BatchNorm
# --------------------------------------------------------------------------------------------


class NNXBNDropout(nnx.Module):
    def __init__(self, rngs):
        self.fc = nnx.Linear(16, 32, rngs=rngs)
        self.bn = nnx.BatchNorm(32, use_running_average=False, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.head = nnx.Linear(32, 4, rngs=rngs)

    def __call__(self, x):
        return self.head(self.drop(jax.nn.relu(self.bn(self.fc(x)))))


def host_state(model):
    """Every array of an NNX model's state on the host (RNG keys as their key data)."""

    def host(a):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a = jax.random.key_data(a)
        return np.asarray(a)

    return jax.tree.map(host, nnx.to_pure_dict(nnx.state(model)))


def test_nnx_batchnorm_and_dropout_with_labels_leave_the_model_alone(x16):
    model = NNXBNDropout(nnx.Rngs(0))
    before = host_state(model)
    y = jnp.arange(B) % 4
    report = health_report(model, x16, y)
    assert [r.path for r in report.linear] == ["fc", "head"]
    assert all(r.grad_rms > 0 for r in report.linear)
    jax.tree.map(np.testing.assert_array_equal, before, host_state(model))


class NNXBlock(nnx.Module):
    def __init__(self, rngs):
        self.fc = nnx.Linear(16, 16, rngs=rngs)
        self.bn = nnx.BatchNorm(16, use_running_average=False, rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.bn(self.fc(x)))


class NNXScanBN(nnx.Module):
    def __init__(self, rngs):
        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(r):
            return NNXBlock(r)

        self.blocks = make(rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def step(x, block):
            return block(x)

        return step(x, self.blocks)


@pytest.mark.parametrize("labels", [False, True])
def test_nnx_scan_with_batchnorm_raises_the_transform_error(x16, labels):
    model = NNXScanBN(nnx.Rngs(0))
    y = jnp.zeros((B, 16)) if labels else None
    with pytest.raises(ValueError, match=r"runs inside a JAX transform.*unrolled"):
        health_report(model, x16, y)
