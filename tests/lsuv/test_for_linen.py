"""LSUV on Linen models (``lsuv/for_linen.py``): deep MLPs, convs, ``nn.scan`` and ``nn.vmap``
stacks, attention and BatchNorm. Every layer's output variance is measured independently
(``capture_intermediates``), not read from the report."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _lsuv_helpers import (
    KEY,
    TOL,
    LinenMLP,
    batch,
    linen_output_vars,
    variance_over_blob,
)

import flaxinit as fi
from flaxinit.lsuv import lsuv


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_linen_deep_mlp(activation):
    model = LinenMLP(depth=30, activation=activation)
    x = batch((256, 64))
    variables, report = lsuv(model, None, x, key=KEY)
    assert len(report) == 31
    assert report.converged
    captured = linen_output_vars(model, variables, x)
    assert len(captured) == 31
    for name, y in captured.items():
        assert abs(variance_over_blob(y) - 1.0) < TOL, name
    # the report agrees with the independent measurement
    for record in report:
        assert abs(record.var_after - variance_over_blob(captured[record.path])) < 1e-3


class ConvNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(10)(x)


def test_linen_conv_net():
    model = ConvNet()
    x = batch((32, 12, 12, 3))
    variables, report = lsuv(model, None, x, key=KEY)
    assert [r.kind for r in report] == ["Conv", "Conv", "Conv", "Dense"]
    for name, y in linen_output_vars(model, variables, x).items():
        assert abs(variance_over_blob(y) - 1.0) < TOL, name


class Block(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        return nn.tanh(nn.Dense(32, name="fc", bias_init=fi.constant(0.2))(x)), None


class ScannedNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(32, name="inp")(x)
        stack = nn.scan(
            Block,
            variable_axes={"params": 0, "intermediates": 0},
            split_rngs={"params": True},
            length=6,
        )
        x, _ = stack(name="layers")(x, None)
        return nn.Dense(10, name="head")(x)


def test_linen_scanned_stack_gets_a_scale_per_layer():
    model = ScannedNet()
    x = batch((128, 16))
    variables, report = lsuv(model, None, x, key=KEY)
    names = [r.path for r in report]
    assert names == ["inp", *[f"layers/fc[{i}]" for i in range(6)], "head"]
    assert len({round(r.scale, 6) for r in report if r.path.startswith("layers")}) > 1
    _, state = model.apply(
        variables,
        x,
        capture_intermediates=lambda m, n: isinstance(m, nn.Dense),
        mutable=["intermediates"],
    )
    stacked = state["intermediates"]["layers"]["fc"]["__call__"][0]
    assert stacked.shape[0] == 6
    np.testing.assert_array_less(np.abs(variance_over_blob(stacked, stacked=True) - 1), TOL)
    assert abs(variance_over_blob(state["intermediates"]["head"]["__call__"][0]) - 1) < TOL


class ReluBlock(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        return nn.relu(nn.Dense(32, name="fc", bias_init=fi.constant(0.1))(x)), None


STACK = 5


class StockScan(nn.Module):
    """A stack as Flax's docs write it: ``variable_axes={'params': 0}`` only."""

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(32, name="inp")(x)
        stack = nn.scan(
            ReluBlock, variable_axes={"params": 0}, split_rngs={"params": True}, length=STACK
        )
        x, _ = stack(name="layers")(x, None)
        return nn.Dense(10, name="head")(x)


class Unrolled(nn.Module):
    """StockScan's layers one by one: ``layers_<i>/fc``."""

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(32, name="inp")(x)
        for i in range(STACK):
            x, _ = ReluBlock(name=f"layers_{i}")(x, None)
        return nn.Dense(10, name="head")(x)


def unroll(variables):
    """StockScan's variables in Unrolled's layout: slice i of the stack is layers_<i>."""
    params = dict(variables["params"])
    stacked = params.pop("layers")
    for i in range(STACK):
        params[f"layers_{i}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
    return {"params": params}


def test_linen_stock_scan_reaches_unit_variance_per_layer():
    # No 'intermediates' in variable_axes: LSUV must not need the model edited.
    x = batch((128, 16))
    variables, report = lsuv(StockScan(), None, x, key=KEY)
    assert [r.path for r in report] == ["inp", *[f"layers/fc[{i}]" for i in range(STACK)], "head"]
    assert report.converged
    captured = linen_output_vars(Unrolled(), unroll(variables), x)
    assert len(captured) == STACK + 2
    for name, y in captured.items():
        assert abs(variance_over_blob(y) - 1.0) < TOL, name


def test_linen_stock_scan_equals_the_unrolled_model():
    x = batch((128, 16))
    variables = StockScan().init(KEY, x)
    scanned, scanned_report = lsuv(StockScan(), variables, x, pre_init=None)
    unrolled, unrolled_report = lsuv(Unrolled(), unroll(variables), x, pre_init=None)
    chex.assert_trees_all_close(unroll(scanned), unrolled, rtol=1e-5, atol=1e-6)
    assert len({round(r.scale, 4) for r in scanned_report}) > 1  # a scale per layer
    for a, b in zip(scanned_report, unrolled_report, strict=True):
        assert a.scale == pytest.approx(b.scale, rel=1e-5), (a.path, b.path)
        assert a.var_after == pytest.approx(b.var_after, rel=1e-5), (a.path, b.path)


class Member(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(8, name="out")(nn.relu(nn.Dense(32, name="fc")(x)))


class Ensemble(nn.Module):
    """``nn.vmap`` over members, each with its own params and its own slice of the batch."""

    @nn.compact
    def __call__(self, x):
        members = nn.vmap(
            Member, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=0
        )
        return members(name="members")(x)


def test_linen_stock_vmap_fits_each_member_on_its_own_slice():
    members = 3
    # Each member sees inputs of another scale, so each gets its own scales.
    x = batch((members, 64, 16)) * jnp.array([0.5, 1.0, 4.0])[:, None, None]
    variables = Ensemble().init(KEY, x)
    result, report = lsuv(Ensemble(), variables, x, pre_init=None)
    assert [r.path for r in report] == [
        *[f"members/fc[{i}]" for i in range(members)],
        *[f"members/out[{i}]" for i in range(members)],
    ]
    assert report.converged
    for i in range(members):
        own = jax.tree.map(lambda a, i=i: a[i], variables["params"]["members"])
        alone, _ = lsuv(Member(), {"params": own}, x[i], pre_init=None)
        got = jax.tree.map(lambda a, i=i: a[i], result["params"]["members"])
        chex.assert_trees_all_close(got, alone["params"], rtol=1e-5, atol=1e-6)
        for name, y in linen_output_vars(Member(), alone, x[i]).items():
            assert abs(variance_over_blob(y) - 1.0) < TOL, (i, name)


def test_linen_scan_sharing_one_kernel_raises_clearly():
    class Shared(nn.Module):
        @nn.compact
        def __call__(self, x):
            stack = nn.scan(
                ReluBlock, variable_broadcast="params", split_rngs={"params": False}, length=3
            )
            return stack(name="layers")(x, None)[0]

    with pytest.raises(ValueError, match=r"'layers/fc'.*shares one kernel.*layers="):
        lsuv(Shared(), None, batch((16, 32)), key=KEY)


class TransformerBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=32, name="attn")(h)
        h = nn.LayerNorm()(x)
        h = nn.Dense(64, name="fc1")(h)
        return x + nn.Dense(32, name="fc2")(nn.gelu(h))


def test_linen_transformer_block():
    model = TransformerBlock()
    x = batch((8, 10, 32), scale=1.0, shift=0.0)
    variables, report = lsuv(model, None, x, key=KEY)
    assert {r.path for r in report} == {
        "attn/query",
        "attn/key",
        "attn/value",
        "attn/out",
        "fc1",
        "fc2",
    }
    assert report.converged
    for name, y in linen_output_vars(model, variables, x).items():
        assert abs(variance_over_blob(y) - 1.0) < TOL, name


class BatchNormNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Dense(32)(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        return nn.Dense(4)(nn.relu(x))


def test_batchnorm_passes_through():
    model = BatchNormNet()
    x = batch((64, 16))
    variables, report = lsuv(model, None, x, key=KEY, call_kwargs={"train": True})
    assert [r.path for r in report] == ["Dense_0", "Dense_1"]
    assert report.converged
    # running statistics are not touched
    fresh = model.init(jax.random.split(KEY)[0], x)
    chex.assert_trees_all_equal(variables["batch_stats"], fresh["batch_stats"])
