"""The issue's known answers: each pathological init is flagged, and each healthy one is not."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import flaxinit as fi
from flaxinit.diagnostics import Thresholds, findings, health_report
from flaxinit.models import NNXMLP

DRIFT = {
    "vanishing_activations",
    "exploding_activations",
    "vanishing_gradients",
    "exploding_gradients",
}


def _errors(report):
    return {f.code for f in report.findings if f.severity == "error"}


def nnx_mlp(kernel_init, depth=8, width=64, activation="relu", model=None):
    """An NNXMLP on the 64 digit pixels whose kernels are drawn from ``kernel_init``.

    The kernels are written into a default-initialized model (or into ``model``) rather
    than passed to its constructor. The NNX graph then stays the same for every
    initializer, so the jitted pass compiles once per depth, width and activation.
    """
    model = model or NNXMLP(64, (width,) * depth, 10, activation=activation, rngs=nnx.Rngs(0))
    layers = [*model.hidden, model.head]
    for key, layer in zip(jax.random.split(jax.random.key(0), len(layers)), layers, strict=True):
        layer.kernel[...] = kernel_init(key, layer.kernel.shape)
    return model


@pytest.fixture(scope="module")
def small(batch):
    """128 digits: the batch of the small-model tests."""
    return batch[0][:128], batch[1][:128]


@pytest.fixture(scope="module")
def xavier_report(deep_mlp, batch, init_with):
    x, y = batch
    return health_report(deep_mlp, x, y, variables=init_with(fi.glorot_uniform()))


@pytest.fixture(scope="module")
def he_report(deep_mlp, batch, init_with):
    x, y = batch
    return health_report(deep_mlp, x, y, variables=init_with(fi.he_normal()))


def test_xavier_on_deep_relu_is_flagged_vanishing(xavier_report):
    assert {"vanishing_activations", "vanishing_gradients"} <= _errors(xavier_report)
    assert xavier_report.status == "error"
    # ReLU halves the second moment at every layer: std falls by about 2**-14.5 over the
    # 29 steps from hidden layer 1 to 30. The finite width adds a few percent per layer,
    # so allow a factor 10.
    layers = xavier_report.profile
    assert [r.path for r in layers] == [f"hidden_{i}" for i in range(30)]  # not the readout
    ratio = layers[-1].std / layers[0].std
    assert 2**-14.5 / 10 < ratio < 2**-14.5 * 10
    grads = next(f for f in xavier_report.findings if f.code == "vanishing_gradients")
    assert "layer 1 (hidden_0)" in grads.message
    assert "layer 30 (hidden_29)" in grads.message
    assert "he_normal" in grads.fix


def test_he_on_deep_relu_is_not_flagged(he_report):
    assert not DRIFT & he_report.codes
    assert he_report.status == "ok", [str(f) for f in he_report.findings]
    layers = he_report.profile
    assert 0.1 < layers[-1].std / layers[0].std < 10
    assert 0.1 < layers[0].grad_rms / layers[-1].grad_rms < 10


def test_thresholds_are_overridable_without_rerunning(xavier_report):
    lax = Thresholds(drift_warning=1e9, drift_error=1e10)
    again = findings(xavier_report.activations, xavier_report.gradients, xavier_report.weights, lax)
    assert not DRIFT & {f.code for f in again}
    strict = Thresholds(drift_warning=1.01, drift_error=1.02)
    report = xavier_report
    assert {"vanishing_activations"} <= {
        f.code for f in findings(report.activations, report.gradients, report.weights, strict)
    }


def test_xavier_on_deep_relu_nnx_is_flagged_and_he_is_not(batch):
    x, y = batch[0][:128], batch[1][:128]
    model = nnx_mlp(fi.glorot_uniform(), depth=30, width=64)
    xavier = health_report(model, x, y)
    he = health_report(nnx_mlp(fi.he_normal(), model=model), x, y)
    assert {"vanishing_activations", "vanishing_gradients"} <= _errors(xavier)
    assert not DRIFT & he.codes


def test_zero_init_is_flagged_symmetric_rank_deficient_and_collapsed(small):
    report = health_report(nnx_mlp(fi.zeros), *small)
    assert {"symmetric", "rank_deficient", "collapsed", "dead_units"} <= _errors(report)
    for w in report.weights:
        assert w.rank == 0
        assert w.duplicate_cols == w.cols - 1
        assert w.duplicate_rows == w.rows - 1


def test_constant_init_is_flagged_symmetric_and_rank_one(small):
    report = health_report(nnx_mlp(fi.constant(0.05)), *small)
    assert {"symmetric", "rank_deficient"} <= _errors(report)
    assert [w.rank for w in report.weights] == [1] * len(report.weights)
    # A constant layer still passes a per-example signal (sum of the inputs): not collapsed.
    assert "collapsed" not in report.codes


def test_tanh_with_unit_normal_weights_is_flagged_saturated(small):
    report = health_report(nnx_mlp(fi.normal(1.0), depth=6, activation="tanh"), *small)
    assert "saturated" in _errors(report)
    # Pre-activations have std ~ sqrt(64) = 8, so P(|tanh| > 0.99) = P(|z| > 2.65) ~ 0.74.
    *hidden, head = report.linear
    for r in hidden:
        assert (r.activation, r.activation_source) == ("tanh", "inferred")
        assert r.saturated_fraction > 0.5
    assert head.activation is None


def test_tanh_with_lecun_weights_is_not_saturated(small):
    report = health_report(nnx_mlp(fi.lecun_normal(), depth=6, activation="tanh"), *small)
    assert "saturated" not in report.codes
    assert report.status == "ok", [str(f) for f in report.findings]


class _ResidualTanh(nn.Module):
    """tanh of a residual sum: not a function of the Dense output alone, so nothing is
    inferred for it; a declared ``activation=`` is applied to the Dense output."""

    @nn.compact
    def __call__(self, x):
        # Pre-activation std ~8 (64 unit inputs), then ~12 (16 inputs of |tanh| ~1):
        # |tanh| > 0.99 on most of them.
        x = nn.Dense(16, kernel_init=fi.normal(1.0))(x)
        for _ in range(2):
            x = jnp.tanh(x + nn.Dense(16, kernel_init=fi.normal(3.0))(x))
        return nn.Dense(10)(x)


def test_declared_activation_where_none_is_inferred(small):
    x, y = small[0][:64], small[1][:64]
    model = _ResidualTanh()
    variables = model.init(jax.random.key(0), x)
    blind = health_report(model, x, y, variables=variables)
    assert "saturated" not in blind.codes
    assert all(r.activation is None for r in blind.activations)
    told = health_report(model, x, y, variables=variables, activation="tanh")
    assert "saturated" in _errors(told)
    *hidden, head = told.linear
    assert all(r.activation_source == "declared" and r.saturated_fraction > 0.5 for r in hidden)
    assert head.activation is None
    assert head.saturated_fraction is None


def test_too_large_weights_are_flagged_exploding(small):
    # std*sqrt(fan_in) = 0.5*sqrt(64) = 4 where ReLU wants 1.41: x2.8 per layer.
    report = health_report(nnx_mlp(fi.normal(0.5)), *small)
    assert {"exploding_activations", "exploding_gradients"} <= _errors(report)
    assert "too large" in next(f for f in report.findings if f.code.startswith("exploding")).fix


def test_overflow_is_flagged_nonfinite(small):
    # x8e4 per layer: float32 overflows by layer 9.
    report = health_report(nnx_mlp(fi.normal(1e4)), *small)
    assert "nonfinite" in _errors(report)


def test_dead_units_from_negative_biases_are_flagged(small):
    model = nnx_mlp(fi.he_normal())
    model.hidden[1].bias[...] = jnp.full((64,), -1e3)
    report = health_report(model, *small)
    dead = next(f for f in report.findings if f.code == "dead_units")
    assert dead.severity == "error"
    # relu(hidden/1) is off everywhere, so hidden/2 sees only its zero bias: everything
    # after dies. The relu is read from the jaxpr and applied to each hidden output.
    assert dead.layers == tuple(f"hidden/{i}" for i in range(1, 8))
