"""The LSTM recipe on Linen LSTMCell/OptimizedLSTMCell and NNX LSTMCell/OptimizedLSTMCell."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from _recipe_helpers import (
    KEY,
    abstract_linen,
    abstract_nnx,
    assert_uniform,
    assert_untouched,
    run,
    select,
)
from flax import nnx

from flaxinit.models import LSTMClassifier, NNXLSTMClassifier
from flaxinit.recipes import lstm
from flaxinit.rules import apply_rules

F, H = 64, 64
GATES = "ifgo"


def classifier(framework: str, cell: str):
    if framework == "linen":
        return abstract_linen(LSTMClassifier(hidden=H, cell=cell), jnp.ones((1, 3, F)))
    return abstract_nnx(lambda: NNXLSTMClassifier(F, hidden=H, cell=cell, rngs=nnx.Rngs(0)))


def assert_orthogonal(q):
    np.testing.assert_allclose(q.T @ q, np.eye(q.shape[1]), atol=1e-5)


def check_untouched_is_the_head(tree, rules, before, after):
    untouched = assert_untouched(tree, rules, before, after)
    assert sorted(p.split("/")[-2:] for p in untouched) == [["head", "bias"], ["head", "kernel"]]


@pytest.mark.parametrize(
    ("framework", "cell"), [("linen", "lstm"), ("linen", "optimized"), ("nnx", "lstm")]
)
def test_lstm_per_gate_cells(framework, cell):
    tree = classifier(framework, cell)
    rules = lstm(forget_bias=1.0)
    before, after, _ = run(tree, rules)
    check_untouched_is_the_head(tree, rules, before, after)
    inputs = select(after, "cell/i[ifgo]_?/kernel")
    assert len(inputs) == 4
    bound = math.sqrt(6 / (F + H))  # Xavier uniform with the fans of one gate
    assert_uniform(np.concatenate([a.ravel() for a in inputs.values()]), bound)
    for g in GATES:
        (w,) = select(after, f"cell/h{g}/kernel").values()
        assert_orthogonal(w)
        (b,) = select(after, f"cell/h{g}/bias").values()
        np.testing.assert_array_equal(b, 1.0 if g == "f" else 0.0)


def test_lstm_nnx_fused_optimized_cell():
    tree = classifier("nnx", "optimized")
    rules = lstm(forget_bias=2.5, fused=True)
    before, after, _ = run(tree, rules)
    check_untouched_is_the_head(tree, rules, before, after)
    (wi,) = select(after, "cell/dense_i/kernel").values()
    (wh,) = select(after, "cell/dense_h/kernel").values()
    (b,) = select(after, "cell/dense_h/bias").values()
    assert wi.shape == (F, 4 * H)
    assert wh.shape == (H, 4 * H)
    # The fused weights hold 4 gate blocks (i, f, g, o), each drawn like an unfused gate.
    assert_uniform(wi, math.sqrt(6 / (F + H)))
    for g in range(4):
        assert_orthogonal(wh[:, g * H : (g + 1) * H])
    expected = np.zeros(4 * H, np.float32)
    expected[H : 2 * H] = 2.5
    np.testing.assert_array_equal(b, expected)


@pytest.mark.parametrize("framework", ["linen", "nnx"])
def test_lstm_strict_raises_on_the_other_layout(framework):
    per_gate = classifier(framework, "lstm")
    with pytest.raises(ValueError, match="dense_i/kernel' matched no leaf"):
        apply_rules(per_gate, lstm(fused=True), key=KEY)


@pytest.mark.parametrize("strict", [True, False])
def test_lstm_on_the_fused_nnx_cell_names_fused_true(strict):
    # NNX's OptimizedLSTMCell is fused: without fused=True the per-gate patterns match
    # none of its leaves, and strict=False used to leave it untouched without a word.
    fused = classifier("nnx", "optimized")
    with pytest.raises(ValueError, match=r"lstm\(fused=True\)") as info:
        apply_rules(fused, lstm(), key=KEY, strict=strict)
    message = str(info.value)
    assert "lstm(fused=True)" in message, message
    assert "OptimizedLSTMCell" in message
    assert "'hf/bias' matched no leaf" in message
    assert "rnn/0/cell/dense_h/bias" in message


def test_lstm_guard_leaves_other_nnx_cells_alone():
    # GRUCell and SimpleCell also have dense_i/dense_h, but no dense_h/bias.
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.lstm = nnx.LSTMCell(3, 8, rngs=rngs)
            self.gru = nnx.GRUCell(3, 8, rngs=rngs)
            self.simple = nnx.SimpleCell(3, 8, rngs=rngs)

    net = Net(nnx.Rngs(0))
    before = nnx.state(net)
    after = nnx.state(apply_rules(net, lstm(), key=KEY))
    for cell in ("gru", "simple"):
        for path, x in nnx.to_flat_state(after[cell]):
            np.testing.assert_array_equal(x[...], before[cell][path[0]][path[1]][...])
    np.testing.assert_array_equal(after["lstm"]["hf"]["bias"][...], 1.0)


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: lstm(float("inf")), ValueError, "forget_bias"),
        (lambda: lstm("1"), TypeError, "forget_bias"),
        (lambda: lstm(fused=1), TypeError, "fused"),
        (lambda: lstm(biases=3), TypeError, "biases"),
    ],
)
def test_bad_arguments_raise_when_built(build, error, match):
    with pytest.raises(error, match=match):
        build()
