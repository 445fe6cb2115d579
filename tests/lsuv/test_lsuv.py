"""LSUV: every selected layer's output variance is checked independently (Linen's
capture_intermediates, NNX's nnx.capture), not read from the report."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import flaxinit as fi
from flaxinit.lsuv import lsuv

KEY = jax.random.key(0)
TOL = 0.1


def batch(shape, key=1, scale=3.0, shift=1.0):
    return jax.random.normal(jax.random.key(key), shape) * scale + shift


def linen_output_vars(model, variables, x, types=(nn.Dense, nn.DenseGeneral, nn.Conv), **kwargs):
    """Variance of every selected layer's output, measured with capture_intermediates."""
    _, state = model.apply(
        variables,
        x,
        capture_intermediates=lambda m, name: isinstance(m, types) and name == "__call__",
        mutable=["intermediates"],
        **kwargs,
    )
    out = {}
    for path, value in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]:
        keys = [getattr(k, "key", getattr(k, "idx", None)) for k in path]
        name = "/".join(
            str(k)
            for k in keys
            if k not in ("__call__", 0) or (isinstance(k, str) and k != "__call__")
        )
        out[name] = np.asarray(value)
    return out


def variance_over_blob(y, stacked=False):
    y = np.asarray(y, dtype=np.float64)
    if stacked:
        return y.reshape(y.shape[0], -1).var(axis=1)
    return y.var()


class LinenMLP(nn.Module):
    depth: int
    width: int = 64
    activation: str = "relu"

    @nn.compact
    def __call__(self, x):
        act = {"relu": nn.relu, "tanh": jnp.tanh}[self.activation]
        for _ in range(self.depth):
            x = act(nn.Dense(self.width, bias_init=fi.constant(0.1))(x))
        return nn.Dense(10)(x)


class NNXMLP(nnx.Module):
    def __init__(self, depth, width=64, activation="relu", rngs=None):
        self.act = {"relu": nnx.relu, "tanh": jnp.tanh}[activation]
        self.layers = nnx.List(
            [nnx.Linear(width, width, bias_init=fi.constant(0.1), rngs=rngs) for _ in range(depth)]
        )
        self.head = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x):
        for layer in self.layers:
            x = self.act(layer(x))
        return self.head(x)


def nnx_output_vars(model, x, **kwargs):
    _, inter = nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(x, **kwargs)
    return {
        "/".join(map(str, path[:-1])): v.get_value()[0]
        for path, v in nnx.to_flat_state(inter)
        if len(path) > 1
    }


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


def test_idempotent_and_deterministic():
    model = LinenMLP(depth=10)
    x = batch((128, 64))
    v1, _ = lsuv(model, None, x, key=KEY)
    v1_again, _ = lsuv(model, None, x, key=KEY)
    chex.assert_trees_all_equal(v1, v1_again)
    v2, report = lsuv(model, v1, x, pre_init=None)
    assert all(r.rounds == 0 for r in report)
    chex.assert_trees_all_close(v1, v2, rtol=0, atol=0)


def test_different_keys_give_different_pre_init():
    model = LinenMLP(depth=2)
    x = batch((64, 64))
    v1, _ = lsuv(model, None, x, key=jax.random.key(1))
    v2, _ = lsuv(model, None, x, key=jax.random.key(2))
    assert not np.array_equal(v1["params"]["Dense_0"]["kernel"], v2["params"]["Dense_0"]["kernel"])


def test_orthonormal_pre_init():
    model = LinenMLP(depth=3)
    x = batch((64, 64), scale=1.0, shift=0.0)
    variables = model.init(KEY, x)
    new, report = lsuv(model, variables, x, key=KEY)
    kernel = np.asarray(new["params"]["Dense_1"]["kernel"], dtype=np.float64)
    scale = report[1].scale
    np.testing.assert_allclose(kernel.T @ kernel, scale**2 * np.eye(64), atol=1e-4 * scale**2)


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


def test_layer_selection_by_pattern_and_type():
    model = LinenMLP(depth=4)
    x = batch((64, 64))
    _, report = lsuv(model, None, x, key=KEY, layers=["Dense_[02]"])
    assert [r.path for r in report] == ["Dense_0", "Dense_2"]
    _, report = lsuv(model, None, x, key=KEY, layers=[nn.Dense])
    assert len(report) == 5
    with pytest.raises(ValueError, match="matched no linear layer"):
        lsuv(model, None, x, key=KEY, layers=["attn/*"])


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


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (jnp.ones((1, 8)), "at least 2 examples"),
        (jnp.ones((4, 8)).at[0, 0].set(jnp.nan), "NaN or Inf"),
        (jnp.ones((4, 8)).at[1, 2].set(jnp.inf), "NaN or Inf"),
    ],
)
def test_bad_batches(x, match):
    with pytest.raises(ValueError, match=match):
        lsuv(LinenMLP(depth=1, width=8), None, x, key=KEY)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tol": 0.0}, ValueError, "tol"),
        ({"target_var": -1.0}, ValueError, "target_var"),
        ({"max_iters": 0}, ValueError, "max_iters"),
        ({"measure": "input"}, ValueError, "measure"),
        ({"measure": "activation"}, ValueError, "activation="),
        ({"pre_init": "svd"}, ValueError, "pre_init"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        lsuv(LinenMLP(depth=1, width=8), None, jnp.ones((4, 8)), key=KEY, **kwargs)


def test_sharded_batch_equals_unsharded():
    model = LinenMLP(depth=8)
    x = batch((64, 64))
    variables = model.init(KEY, x)
    reference, ref_report = lsuv(model, variables, x, key=KEY)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded_x = jax.device_put(x, NamedSharding(mesh, P("data")))
    result, report = lsuv(model, variables, sharded_x, key=KEY)
    chex.assert_trees_all_close(result, reference, rtol=1e-5, atol=1e-6)
    for a, b in zip(report, ref_report, strict=True):
        assert a.rounds == b.rounds
        assert a.var_after == pytest.approx(b.var_after, rel=1e-5)


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


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg", "unsafe_rbg"])
def test_grouped_pre_init_equals_layer_by_layer(impl):
    # Same-shape layers share one decomposition and the layer keys come from one
    # vectorized fold-in; every kernel must still be the one its own draw gives.
    from flaxinit.lsuv.layers import LayerInfo, layer_key, orthonormal_kernel, orthonormal_kernels

    shapes = [(32, 16), (32, 16), (3, 3, 4, 8), (32, 16)]
    infos = [
        LayerInfo(
            f"layer_{i}", "Dense", ("params", f"layer_{i}", "kernel"), None, s, (), (len(s) - 1,)
        )
        for i, s in enumerate(shapes)
    ]
    leaves = [jnp.zeros(s) for s in shapes]
    leaves[1] = jnp.zeros((5, 32, 16))  # a stacked (scanned) layer
    key = jax.random.key(3, impl=impl)
    grouped = jax.jit(lambda k: orthonormal_kernels(k, infos, leaves))(key)
    for info, leaf, got in zip(infos, leaves, grouped, strict=True):
        want = jax.jit(lambda k, i=info, x=leaf: orthonormal_kernel(layer_key(k, i), i, x))(key)
        np.testing.assert_array_equal(got, want)
