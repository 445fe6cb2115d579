"""Every statistic against the same quantity computed directly with numpy, in float64.

The net is small (4 -> 6 relu -> 5 tanh -> 3) and runs in float32. Its sums have at most
a few hundred terms. The float32 results are therefore within ``n * eps32 ~ 1e-5``
relative of the float64 ones, and RTOL = 1e-4 leaves a margin of 10.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxinit.diagnostics import (
    Activation,
    NNXActivation,
    activation_stats,
    gradient_stats,
    health_report,
    weight_stats,
)

RTOL = 1e-4
B = 32


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        a = Activation(jax.nn.relu)(nn.Dense(6)(x))
        t = Activation(jnp.tanh)(nn.Dense(5)(a))
        return nn.Dense(3)(t)


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.d0 = nnx.Linear(4, 6, rngs=rngs)
        self.a0 = NNXActivation(jax.nn.relu)
        self.d1 = nnx.Linear(6, 5, rngs=rngs)
        self.a1 = NNXActivation(jnp.tanh)
        self.d2 = nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, x):
        return self.d2(self.a1(self.d1(self.a0(self.d0(x)))))


@pytest.fixture(scope="module")
def data():
    kx, ky = jax.random.split(jax.random.key(42))
    x = 2.0 * jax.random.normal(kx, (B, 4))
    y = jax.random.randint(ky, (B,), 0, 3)
    return x, y


@pytest.fixture(scope="module")
def linen(data):
    model = LinenNet()
    variables = model.init(jax.random.key(1), data[0])
    params = jax.tree.map(np.array, variables["params"])  # writable copies
    params["Dense_0"]["bias"][2] = -100.0  # unit 2 of the relu layer: dead on every example
    params["Dense_1"]["kernel"] *= 4.0  # drive the tanh layer into saturation
    ws = [(params[f"Dense_{i}"]["kernel"], params[f"Dense_{i}"]["bias"]) for i in range(3)]
    return model, {"params": jax.tree.map(jnp.asarray, params)}, ws


@pytest.fixture(scope="module")
def nnx_model(linen):
    """The NNX twin, holding exactly the Linen net's weights."""
    model = NNXNet(nnx.Rngs(0))
    for layer, (w, b) in zip((model.d0, model.d1, model.d2), linen[2], strict=True):
        layer.kernel[...] = jnp.asarray(w)
        layer.bias[...] = jnp.asarray(b)
    return model


def reference(ws, x, y):
    """Forward and backward in float64 numpy: site outputs, their gradients, param grads."""
    (w0, b0), (w1, b1), (w2, b2) = [(np.float64(w), np.float64(b)) for w, b in ws]
    x = np.asarray(x, np.float64)
    h0 = x @ w0 + b0
    a0 = np.maximum(h0, 0)
    h1 = a0 @ w1 + b1
    a1 = np.tanh(h1)
    out = a1 @ w2 + b2
    p = np.exp(out - out.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d_out = (p - np.eye(3)[np.asarray(y)]) / len(x)  # d mean cross-entropy / d logits
    d_a1 = d_out @ w2.T
    d_h1 = d_a1 * (1 - a1**2)
    d_a0 = d_h1 @ w1.T
    d_h0 = d_a0 * (h0 > 0)
    sites = [h0, a0, h1, a1, out]
    deltas = [d_h0, d_a0, d_h1, d_a1, d_out]
    grads = {
        "0/kernel": x.T @ d_h0,
        "0/bias": d_h0.sum(0),
        "1/kernel": a0.T @ d_h1,
        "1/bias": d_h1.sum(0),
        "2/kernel": a1.T @ d_out,
        "2/bias": d_out.sum(0),
    }
    params = {f"{i}/kernel": w for i, (w, _) in enumerate([(w0, b0), (w1, b1), (w2, b2)])}
    params |= {f"{i}/bias": b for i, (_, b) in enumerate([(w0, b0), (w1, b1), (w2, b2)])}
    return sites, deltas, grads, params


def check_activations(records, ws, x, y):
    sites, deltas, _, _ = reference(ws, x, y)
    assert [r.kind for r in records] == ["linear", "activation"] * 2 + ["linear"]
    assert [r.activation for r in records] == [None, "relu", None, "tanh", None]
    for r, v, d in zip(records, sites, deltas, strict=True):
        np.testing.assert_allclose(r.mean, v.mean(), rtol=RTOL, atol=RTOL * v.std())
        np.testing.assert_allclose(r.var, v.var(), rtol=RTOL)
        np.testing.assert_allclose(r.std, v.std(), rtol=RTOL)
        np.testing.assert_allclose(r.grad_rms, np.sqrt(np.mean(d**2)), rtol=RTOL)
        # Fractions are float32 means of 0/1 values: exact counts, one rounding at the end.
        assert r.zero_fraction == pytest.approx(np.mean(v == 0), rel=1e-6)
        assert r.shape == v.shape
    relu, tanh = records[1], records[3]
    assert np.mean(np.all(sites[1] == 0, axis=0)) == 1 / 6
    assert relu.dead_fraction == pytest.approx(1 / 6, rel=1e-6)
    assert relu.saturated_fraction is None
    # The tanh values closest to 0.99 are 1e-3 away, far beyond float32 rounding.
    assert np.min(np.abs(np.abs(sites[3]) - 0.99)) > 1e-4
    expected = np.mean(np.abs(sites[3]) > 0.99)
    assert 0 < expected < 1
    assert tanh.saturated_fraction == pytest.approx(expected, rel=1e-6)
    assert tanh.dead_fraction is None


def check_gradients(records, ws, x, y, prefix):
    _, _, grads, params = reference(ws, x, y)
    assert len(records) == 6
    assert sum(np.isinf(r.ratio) for r in records) == 2  # the two zero biases
    for r in records:
        key = r.path.removeprefix(prefix)
        g, p = grads[key], params[key]
        np.testing.assert_allclose(r.grad_norm, np.linalg.norm(g), rtol=RTOL)
        np.testing.assert_allclose(r.grad_mean_abs, np.mean(np.abs(g)), rtol=RTOL)
        np.testing.assert_allclose(r.param_norm, np.linalg.norm(p), rtol=RTOL)
        with np.errstate(divide="ignore"):  # zero biases: ratio inf, as documented
            ratio = np.linalg.norm(g) / np.linalg.norm(p)
        np.testing.assert_allclose(r.ratio, ratio, rtol=RTOL)


def test_linen_activation_stats_match_numpy(linen, data):
    model, variables, ws = linen
    records = activation_stats(model, *data, variables=variables)
    assert [r.path for r in records] == [
        "Dense_0",
        "Activation_0",
        "Dense_1",
        "Activation_1",
        "Dense_2",
    ]
    assert [r.depth for r in records] == [1, 1, 2, 2, 3]
    check_activations(records, ws, *data)


def test_nnx_activation_stats_match_numpy(nnx_model, linen, data):
    records = activation_stats(nnx_model, *data)
    assert [r.path for r in records] == ["d0", "a0", "d1", "a1", "d2"]
    check_activations(records, linen[2], *data)


def test_linen_gradient_stats_match_numpy(linen, data):
    model, variables, ws = linen
    records = gradient_stats(model, *data, variables=variables)
    assert [r.layer for r in records] == ["Dense_0"] * 2 + ["Dense_1"] * 2 + ["Dense_2"] * 2
    check_gradients(records, ws, *data, prefix="Dense_")


def test_nnx_gradient_stats_match_numpy(nnx_model, linen, data):
    records = gradient_stats(nnx_model, *data)
    assert [r.layer for r in records] == ["d0", "d0", "d1", "d1", "d2", "d2"]
    check_gradients(records, linen[2], *data, prefix="d")


def test_forward_only_stats_have_no_gradients(linen, data):
    model, variables, _ = linen
    records = activation_stats(model, data[0], variables=variables)
    assert all(r.grad_rms is None for r in records)
    with pytest.raises(ValueError, match="labels or a loss_fn"):
        gradient_stats(model, data[0], variables=variables)


def test_custom_loss_is_used(linen, data):
    model, variables, ws = linen
    x = data[0]
    loss = lambda out, _: 0.5 * jnp.sum(out**2)
    records = activation_stats(model, x, variables=variables, loss_fn=loss)
    sites = reference(ws, x, data[1])[0]
    # d(0.5 * sum(out**2)) / d out = out.
    np.testing.assert_allclose(records[-1].grad_rms, np.sqrt(np.mean(sites[-1] ** 2)), rtol=RTOL)


def test_weight_stats_match_numpy(linen):
    _, variables, ws = linen
    records = weight_stats(variables)
    assert [r.path for r in records] == ["Dense_0/kernel", "Dense_1/kernel", "Dense_2/kernel"]
    eps = np.finfo(np.float32).eps
    for r, (w, _) in zip(records, ws, strict=True):
        s = np.linalg.svd(np.float64(w), compute_uv=False)
        assert (r.rows, r.cols) == w.shape
        np.testing.assert_allclose(r.std, np.std(np.float64(w)), rtol=RTOL)
        np.testing.assert_allclose(r.gain, np.std(np.float64(w)) * np.sqrt(w.shape[0]), rtol=RTOL)
        np.testing.assert_allclose(r.sv_max, s[0], rtol=RTOL)
        np.testing.assert_allclose(r.sv_min, s[-1], rtol=RTOL)
        tol = s[0] * max(w.shape) * eps
        assert r.rank == np.linalg.matrix_rank(w, tol=tol) == min(w.shape)
        assert r.duplicate_rows == r.duplicate_cols == 0


def assert_same_records(a, b):
    """Same records: static fields equal, numbers equal up to float32 rounding."""
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert type(ra) is type(rb)
        for f in dataclasses.fields(ra):
            va, vb = getattr(ra, f.name), getattr(rb, f.name)
            if isinstance(va, float):
                assert va == pytest.approx(vb, rel=1e-6, abs=1e-12), f.name
            else:
                assert va == vb, f.name


def test_report_pass_equals_separate_passes(linen, data):
    model, variables, _ = linen
    report = health_report(model, *data, variables=variables)
    assert_same_records(report.activations, activation_stats(model, *data, variables=variables))
    assert_same_records(report.gradients, gradient_stats(model, *data, variables=variables))
    assert_same_records(report.weights, weight_stats(variables))


def host(records):
    """Records returned from a jit hold 0-d arrays: to Python numbers."""
    assert all(isinstance(v, jax.Array) for v in jax.tree.leaves(records))
    return jax.tree.map(lambda a: a.item(), jax.device_get(records))


def test_linen_stats_under_jit_match_numpy(linen, data):
    model, variables, ws = linen

    @jax.jit
    def stats(variables, x, y):
        acts = activation_stats(model, x, y, variables=variables)
        return acts, gradient_stats(model, x, y, variables=variables), weight_stats(variables)

    acts, grads, weights = map(host, stats(variables, *data))
    check_activations(acts, ws, *data)
    check_gradients(grads, ws, *data, prefix="Dense_")
    assert_same_records(weights, weight_stats(variables))


def test_nnx_stats_under_jit_match_numpy(nnx_model, linen, data):
    @nnx.jit
    def stats(model, x, y):
        return activation_stats(model, x, y), gradient_stats(model, x, y), weight_stats(model)

    acts, grads, weights = map(host, stats(nnx_model, *data))
    check_activations(acts, linen[2], *data)
    check_gradients(grads, linen[2], *data, prefix="d")
    assert_same_records(weights, weight_stats(nnx_model))


def test_a_vanished_signal_is_measured_not_rounded_to_zero():
    # y ~ 1e-30: y**2 underflows in float32, but std and grad_rms must not.
    x = 1e-30 * jax.random.normal(jax.random.key(5), (64, 8))
    model = nn.Dense(4, use_bias=False)
    variables = model.init(jax.random.key(6), x)
    y = np.float64(x) @ np.float64(variables["params"]["kernel"])
    loss = lambda out, _: 1e-30 * jnp.sum(out)  # d loss / d out = 1e-30 everywhere
    (r,) = activation_stats(model, x, variables=variables, loss_fn=loss)
    np.testing.assert_allclose(r.std, y.std(), rtol=RTOL)
    np.testing.assert_allclose(r.grad_rms, 1e-30, rtol=RTOL)
    assert r.var == 0.0  # std**2 = 1e-60 underflows, as documented
    (g,) = gradient_stats(model, x, variables=variables, loss_fn=lambda out, _: jnp.sum(out))
    # d sum(x @ W) / dW = x^T @ ones: entries ~1e-29, whose squares underflow.
    expected = np.linalg.norm(np.float64(x).T @ np.ones((64, 4)))
    np.testing.assert_allclose(g.grad_norm, expected, rtol=RTOL)


def test_the_nnx_model_is_not_modified(nnx_model, data):
    calls = {cls: cls.__dict__["__call__"] for cls in (NNXNet, NNXActivation, nnx.Linear)}
    before = jax.tree.map(np.array, nnx.state(nnx_model))
    activation_stats(nnx_model, *data)
    after = jax.tree.map(np.array, nnx.state(nnx_model))
    jax.tree.map(np.testing.assert_array_equal, before, after)
    # The probe wraps __call__ of the model's classes while tracing, then restores them.
    assert all(cls.__dict__["__call__"] is call for cls, call in calls.items())
