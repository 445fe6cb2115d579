"""The fitting pass (``lsuv/fitting.py``): the exact and the iterating solver, post-activation
targets, mean centring, and the layers it leaves unchanged and flags (unreachable target,
zero or non-finite variance, not converged)."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from _lsuv_helpers import (
    KEY,
    TOL,
    LinenMLP,
    batch,
    linen_output_vars,
    nnx_output_vars,
    variance_over_blob,
)
from flax import nnx

import flaxinit as fi
from flaxinit.lsuv import lsuv


def test_post_activation_measurement():
    model = LinenMLP(depth=6, activation="tanh")
    x = batch((256, 64))
    variables, report = lsuv(
        model, None, x, key=KEY, measure="activation", activation=jnp.tanh, target_var=0.5
    )
    assert report.converged
    captured = linen_output_vars(model, variables, x)
    for i in range(6):
        assert abs(np.var(np.tanh(np.asarray(captured[f"Dense_{i}"], np.float64))) - 0.5) < TOL


def test_unreachable_target_is_reported_not_blown_up():
    class SigmoidNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(3):
                x = nn.sigmoid(nn.Dense(32)(x))
            return x

    model = SigmoidNet()
    x = batch((64, 32))
    variables = model.init(KEY, x)
    new, report = lsuv(
        model, variables, x, key=KEY, measure="activation", activation=jax.nn.sigmoid, pre_init=None
    )
    assert all("unreachable" in r.status for r in report)
    assert not report.converged
    chex.assert_trees_all_equal(new, variables)


def test_zero_variance_layer_is_left_unchanged_and_flagged():
    class Dead(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Dense(16, kernel_init=fi.zeros)(x))
            return nn.Dense(4)(x)

    model = Dead()
    x = batch((32, 8))
    variables, report = lsuv(model, None, x, key=KEY, pre_init=None)
    assert report[0].status.startswith("zero variance")
    assert report[0].scale == 1.0
    assert report[1].status.startswith("zero variance")  # its input is all zeros
    for leaf in jax.tree.leaves(variables):
        assert np.isfinite(np.asarray(leaf)).all()


def test_layers_without_bias():
    class NoBias(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Dense(64, use_bias=False)(x))
            x = nn.relu(nn.Dense(64)(x))
            return nn.Dense(64, use_bias=False)(x)

    model = NoBias()
    x = batch((128, 32))
    variables, report = lsuv(model, None, x, key=KEY)
    captured = linen_output_vars(model, variables, x)
    assert len(report) == len(captured) == 3
    for record in report:
        measured = variance_over_blob(captured[record.path])
        assert abs(measured - 1.0) < TOL, record.path
        assert abs(record.var_after - measured) < 1e-4, record.path
    nnx_model = nnx.Sequential(
        nnx.Linear(32, 64, use_bias=False, rngs=nnx.Rngs(0)),
        nnx.relu,
        nnx.Linear(64, 64, use_bias=False, rngs=nnx.Rngs(1)),
    )
    _, nnx_report = lsuv(nnx_model, None, x, key=KEY)
    nnx_captured = nnx_output_vars(nnx_model, x)
    assert len(nnx_captured) == 2
    for name, y in nnx_captured.items():
        assert abs(variance_over_blob(y) - 1.0) < TOL, name
    assert [r.rounds for r in nnx_report] == [1, 1]


def test_non_finite_layer_is_left_unchanged_and_flagged():
    class Huge(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(16, kernel_init=fi.constant(1e30))(x)  # z^2 overflows float32
            return nn.Dense(4)(x)

    model = Huge()
    x = batch((32, 8))
    variables = model.init(KEY, x)
    new, report = lsuv(model, variables, x, key=KEY, pre_init=None)
    assert [r.status.startswith("non-finite") for r in report] == [True, True]
    assert [r.scale for r in report] == [1.0, 1.0]
    chex.assert_trees_all_equal(new, variables)


def test_not_converged_is_reported():
    model = LinenMLP(depth=3, activation="tanh")
    x = batch((64, 64))
    _, report = lsuv(
        model,
        None,
        x,
        key=KEY,
        measure="activation",
        activation=jnp.tanh,
        target_var=0.95,
        tol=0.001,
        max_iters=2,
    )
    assert any(r.status == "not converged" and r.rounds == 2 for r in report)


def test_mean_centring():
    model = LinenMLP(depth=4)
    x = batch((128, 64))
    variables, _report = lsuv(model, None, x, key=KEY, center=True)
    for name, y in linen_output_vars(model, variables, x).items():
        assert abs(np.mean(np.asarray(y, np.float64))) < 1e-4, name
        assert abs(variance_over_blob(y) - 1) < TOL


def test_iterate_solver_follows_the_paper():
    model = LinenMLP(depth=8)
    x = batch((128, 64))
    variables, report = lsuv(model, None, x, key=KEY, solver="iterate", tol=0.01)
    assert report.converged
    assert all(r.rounds >= 1 for r in report)
    for name, y in linen_output_vars(model, variables, x).items():
        assert abs(variance_over_blob(y) - 1.0) < 0.01, name
    exact, exact_report = lsuv(model, None, x, key=KEY)
    assert {r.rounds for r in exact_report} <= {0, 1}
    rounds = {r.path: r.rounds for r in exact_report}
    for name, y in linen_output_vars(model, exact, x).items():
        # one exact round lands on the target; a layer already within tol is left alone
        assert abs(variance_over_blob(y) - 1.0) < (1e-4 if rounds[name] else TOL), name


def test_bias_larger_than_target_is_unreachable():
    class BigBias(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(64, bias_init=fi.normal(3.0))(x)

    model = BigBias()
    x = batch((64, 64))
    variables = model.init(KEY, x)
    new, report = lsuv(model, variables, x, key=KEY, pre_init=None)
    assert report[0].status.startswith("target unreachable")
    chex.assert_trees_all_equal(new, variables)
