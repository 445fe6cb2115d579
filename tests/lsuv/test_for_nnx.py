"""LSUV on NNX models (``lsuv/for_nnx.py``), in place: MLPs, convs, ``nnx.vmap``/``nnx.scan``
stacks and attention. Variances are measured independently (``nnx.capture``)."""

import jax.numpy as jnp
import numpy as np
import pytest
from _lsuv_helpers import (
    KEY,
    NNXMLP,
    TOL,
    batch,
    nnx_output_vars,
    variance_over_blob,
)
from flax import nnx

import flaxinit as fi
from flaxinit.lsuv import lsuv


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_nnx_deep_mlp_in_place(activation):
    model = NNXMLP(30, activation=activation, rngs=nnx.Rngs(0))
    x = batch((256, 64))
    returned, report = lsuv(model, None, x, key=KEY)
    assert returned is model
    assert report.converged
    assert len(report) == 31
    captured = nnx_output_vars(model, x)
    assert len(captured) == 31
    for name, y in captured.items():
        assert abs(variance_over_blob(y) - 1.0) < TOL, name
    assert [r.path for r in report][:3] == ["layers/0", "layers/1", "layers/2"]
    assert report[-1].path == "head"
    # the class patch is gone and no mark is left on the modules
    assert "_flaxinit_lsuv" not in vars(model.layers[0])
    np.testing.assert_array_equal(model(x), model(x))


class NNXConvNet(nnx.Module):
    def __init__(self, rngs):
        self.c1 = nnx.Conv(3, 16, (3, 3), rngs=rngs)
        self.c2 = nnx.Conv(16, 16, (3, 3), rngs=rngs)
        self.head = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.c1(x))
        x = nnx.relu(self.c2(x))
        return self.head(x.mean(axis=(1, 2)))


def test_nnx_conv_net():
    model = NNXConvNet(nnx.Rngs(0))
    x = batch((32, 10, 10, 3))
    _, report = lsuv(model, None, x)
    assert [r.path for r in report] == ["c1", "c2", "head"]
    for name, y in nnx_output_vars(model, x).items():
        assert abs(variance_over_blob(y) - 1.0) < TOL, name


class NNXBlock(nnx.Module):
    def __init__(self, rngs):
        self.fc = nnx.Linear(32, 32, bias_init=fi.constant(0.2), rngs=rngs)

    def __call__(self, x):
        return jnp.tanh(self.fc(x))


class NNXStack(nnx.Module):
    def __init__(self, rngs):
        @nnx.split_rngs(splits=5)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return NNXBlock(rngs)

        self.blocks = make(rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def step(x, block):
            return block(x)

        return step(x, self.blocks)


def test_nnx_vmapped_stack_gets_a_scale_per_layer():
    model = NNXStack(nnx.Rngs(0))
    x = batch((64, 32))
    _, report = lsuv(model, None, x)
    assert [r.path for r in report] == [f"blocks/fc[{i}]" for i in range(5)]
    assert model.blocks.fc.kernel[...].shape == (5, 32, 32)
    _, inter = nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(x)
    flat = {path: v.get_value()[0] for path, v in nnx.to_flat_state(inter)}
    stacked = flat[("blocks", "fc", "__call__")]
    assert stacked.shape[0] == 5
    np.testing.assert_array_less(np.abs(variance_over_blob(stacked, stacked=True) - 1), TOL)


def test_nnx_attention():
    class Attn(nnx.Module):
        def __init__(self, rngs):
            self.attn = nnx.MultiHeadAttention(4, 32, 32, decode=False, rngs=rngs)

        def __call__(self, x):
            return self.attn(x)

    model = Attn(nnx.Rngs(0))
    x = batch((4, 6, 32), scale=1.0, shift=0.0)
    _, report = lsuv(model, None, x)
    assert {r.path for r in report} == {"attn/query", "attn/key", "attn/value", "attn/out"}
    assert report.converged
    for name, y in nnx_output_vars(model, x).items():
        if name.count("/") == 1:
            assert abs(variance_over_blob(y) - 1.0) < TOL, name
