"""fi.mup.coord_check: flat under muP, growing under the standard parametrization (the
check must be able to fail), on Linen and NNX models and a transformer with its
structure; the plot; the errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import flaxinit as fi
from flaxinit.models import GPT, MLP, NNXMLP

X = jax.random.normal(jax.random.key(0), (32, 8))
Y = jnp.arange(32) % 4
WIDTHS = (64, 128, 256)


def test_linen_mlp_flat_under_mup_and_growing_under_sp(tmp_path):
    make = lambda w: MLP(features=(w, w), num_classes=4)
    mup = fi.mup.coord_check(make, WIDTHS, (X, Y), steps=3, learning_rate=1e-2)
    sp = fi.mup.coord_check(make, WIDTHS, (X, Y), steps=3, learning_rate=1e-2, parametrization="sp")
    assert mup.sites == sp.sites == ("hidden_0", "hidden_1", "head")
    assert mup.values.shape == (3, 4, 3)
    assert mup.flat, str(mup)
    assert not sp.flat
    # Adam under SP: the hidden layer's and the logits' size grow with width after one step.
    assert set(sp.growing) >= {"hidden_1", "head"}
    assert sp.slopes[1:, 2].max() > 0.5
    assert np.abs(mup.slopes[1:, :2]).max() < 0.1
    # The output may shrink with width early in training under muP (microsoft/mup's note
    # on the coord check); it must not grow.
    assert mup.slopes[1:, 2].max() < 0.2
    assert np.isnan(mup.slopes[0, 2])  # the zero readout at step 0 has no slope
    assert (mup.changes[:, 0] == 0).all()
    assert "flat" in str(mup)
    assert "grows with width: " in sp.verdict
    path = mup.plot(tmp_path / "coord.png")
    assert path.stat().st_size > 1000


def test_nnx_mlp_flat_under_mup():
    make = lambda w: NNXMLP(8, (w, w), num_classes=4, rngs=nnx.Rngs(0))
    check = fi.mup.coord_check(make, WIDTHS, (X, Y), steps=2, optimizer="sgd", learning_rate=0.1)
    assert check.sites[-1] == "head"
    assert check.flat, str(check)


def test_transformer_with_structure_flat_under_mup():
    tokens = (jnp.arange(4 * 8).reshape(4, 8) * 5) % 64
    labels = (tokens + 1) % 64
    make = lambda w: GPT(d_model=w, num_layers=1, num_heads=2, mlp_ratio=2)
    check = fi.mup.coord_check(
        make, (16, 32, 64), (tokens, labels), steps=2, learning_rate=1e-2, structure=True
    )
    assert check.flat, str(check)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"widths": (64, 128)}, ValueError, "widths must be >= 3 distinct positive ints"),
        ({"steps": 0}, ValueError, "steps must be an int >= 1"),
        ({"parametrization": "ntk"}, ValueError, "parametrization must be 'mup' or 'sp'"),
        ({"optimizer": "lion"}, ValueError, "optimizer must be 'adam' or 'sgd'"),
        ({"batch": X}, TypeError, r"batch must be an \(inputs, labels\) pair"),
    ],
)
def test_bad_inputs(kwargs, error, message):
    args = {"widths": WIDTHS, "batch": (X, Y), **kwargs}
    with pytest.raises(error, match=message):
        fi.mup.coord_check(
            lambda w: MLP(features=(w,)), args.pop("widths"), args.pop("batch"), **args
        )


def test_make_model_must_return_a_model():
    with pytest.raises(TypeError, match=r"must return a flax\.linen or flax\.nnx Module, got dict"):
        fi.mup.coord_check(lambda w: {}, WIDTHS, (X, Y))
