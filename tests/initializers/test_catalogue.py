"""Properties every initializer in the catalogue shares: dtypes, keys, purity, jit,
empty shapes, jax parity, Flax drop-in, shardings."""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import CATALOGUE, RANDOM, fits
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import flaxinit as fi

KEY = jax.random.key(42)
IDS = [entry[0] for entry in CATALOGUE]
SHAPE_4D = (3, 3, 8, 16)
SHAPE_2D = (16, 16)


def shape_for(entry):
    return SHAPE_2D if entry[3] == 2 else SHAPE_4D


@pytest.mark.parametrize("entry", CATALOGUE, ids=IDS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16, jnp.complex64])
def test_dtypes(entry, dtype):
    _name, init, *_, real_only = entry
    if real_only and dtype == jnp.complex64:
        with pytest.raises(TypeError, match="complex"):
            init(KEY, shape_for(entry), dtype)
        return
    x = init(KEY, shape_for(entry), dtype)
    assert x.dtype == dtype
    assert x.shape == shape_for(entry)
    assert bool(jnp.isfinite(x).all())


@pytest.mark.parametrize("entry", [e for e in CATALOGUE if e[0] in RANDOM], ids=lambda e: e[0])
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.uint8])
def test_random_initializers_reject_non_float_dtypes(entry, dtype):
    with pytest.raises(TypeError, match="dtype"):
        entry[1](KEY, shape_for(entry), dtype)


@pytest.mark.parametrize("entry", CATALOGUE, ids=IDS)
def test_typed_and_legacy_keys_agree(entry):
    init = entry[1]
    typed = init(jax.random.key(5), shape_for(entry))
    legacy = init(jax.random.PRNGKey(5), shape_for(entry))
    np.testing.assert_array_equal(typed, legacy)


@pytest.mark.parametrize("entry", CATALOGUE, ids=IDS)
def test_pure_and_key_dependent(entry):
    name, init, *_ = entry
    a = init(KEY, shape_for(entry))
    np.testing.assert_array_equal(a, init(KEY, shape_for(entry)))
    if name in RANDOM:
        assert not np.array_equal(a, init(jax.random.key(43), shape_for(entry)))


def init_all(key, shapes, dtype=jnp.float32, specs=None):
    """Every catalogue entry at once: one compilation instead of one per entry."""
    return {
        name: init(key, shapes[name], dtype, None if specs is None else specs[name])
        for name, init, *_ in CATALOGUE
    }


def test_jit_matches_eager():
    shapes = {entry[0]: shape_for(entry) for entry in CATALOGUE}
    eager = init_all(KEY, shapes)
    jitted = jax.jit(lambda k: init_all(k, shapes))(KEY)
    for name in eager:
        # Fusion of the final multiply may move the last bit (jax's own initializers
        # differ by 1 ulp between jit and eager); tolerate exactly that.
        np.testing.assert_allclose(jitted[name], eager[name], rtol=2**-22, atol=0, err_msg=name)


@pytest.mark.parametrize("entry", CATALOGUE, ids=IDS)
@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (3, 3, 0, 4), (0, 0, 2)])
def test_empty_shapes(entry, shape):
    if not fits(entry, shape):
        return
    x = entry[1](KEY, shape)
    assert x.shape == shape
    assert x.size == 0


TWINS = [
    ("zeros", fi.zeros, jax.nn.initializers.zeros),
    ("ones", fi.ones, jax.nn.initializers.ones),
    ("constant", fi.constant(0.3), jax.nn.initializers.constant(0.3)),
    ("normal", fi.normal(0.05), jax.nn.initializers.normal(0.05)),
    ("uniform", fi.uniform(0.2), jax.nn.initializers.uniform(0.2)),
    (
        "truncated_normal",
        fi.truncated_normal(0.1, lower=-1.0, upper=3.0),
        jax.nn.initializers.truncated_normal(0.1, lower=-1.0, upper=3.0),
    ),
    ("glorot_uniform", fi.glorot_uniform(), jax.nn.initializers.glorot_uniform()),
    ("glorot_normal", fi.glorot_normal(), jax.nn.initializers.glorot_normal()),
    ("he_normal", fi.he_normal(), jax.nn.initializers.he_normal()),
    ("he_uniform", fi.he_uniform(), jax.nn.initializers.he_uniform()),
    ("lecun_normal", fi.lecun_normal(), jax.nn.initializers.lecun_normal()),
    ("lecun_uniform", fi.lecun_uniform(), jax.nn.initializers.lecun_uniform()),
    (
        "vs_geo",
        fi.variance_scaling(0.7, "fan_geo_avg", "normal", in_axis=0, out_axis=(1, 2)),
        jax.nn.initializers.variance_scaling(
            0.7, "fan_geo_avg", "normal", in_axis=0, out_axis=(1, 2)
        ),
    ),
    (
        "vs_batch",
        fi.variance_scaling(2.0, "fan_out", "uniform", batch_axis=0),
        jax.nn.initializers.variance_scaling(2.0, "fan_out", "uniform", batch_axis=0),
    ),
    (
        "orthogonal",
        fi.orthogonal(0.5, column_axis=0),
        jax.nn.initializers.orthogonal(0.5, column_axis=0),
    ),
    ("delta_orthogonal", fi.delta_orthogonal(), jax.nn.initializers.delta_orthogonal()),
]


@pytest.mark.parametrize("jit", [False, True])
def test_jax_twins_give_jax_values_in_float32(jit):
    shape = (4, 8, 16)

    def both(key):
        return {name: (ours(key, shape), theirs(key, shape)) for name, ours, theirs in TWINS}

    results = jax.jit(both)(KEY) if jit else both(KEY)
    for name, (ours, theirs) in results.items():
        np.testing.assert_array_equal(ours, theirs, err_msg=name)


def test_factory_dtype_is_the_default():
    assert fi.normal(0.1, jnp.bfloat16)(KEY, (4,)).dtype == jnp.bfloat16
    assert fi.he_normal(dtype=jnp.float16)(KEY, (4, 4)).dtype == jnp.float16
    assert fi.he_normal(dtype=jnp.float16)(KEY, (4, 4), jnp.float32).dtype == jnp.float32


@pytest.mark.parametrize("entry", [e for e in CATALOGUE if e[3] != 0], ids=lambda e: e[0])
def test_flax_linen_drop_in(entry):
    name, init, lo, hi, _ = entry
    x = jnp.ones((2, 6, 6, 8))
    if hi != 2 and name not in {"identity"}:
        conv = nn.Conv(16, (3, 3), kernel_init=init)
        params = conv.init(KEY, x)["params"]
        chex.assert_shape(params["kernel"], (3, 3, 8, 16))
        conv.apply({"params": params}, x)
    if lo <= 2 and name != "dirac":
        dense = nn.Dense(16, kernel_init=init)
        params = dense.init(KEY, x[:, 0, 0])["params"]
        chex.assert_shape(params["kernel"], (8, 16))


@pytest.mark.parametrize("entry", [e for e in CATALOGUE if e[3] != 0], ids=lambda e: e[0])
def test_flax_nnx_drop_in(entry):
    name, init, lo, hi, _ = entry
    if hi != 2:
        conv = nnx.Conv(8, 16, (3, 3), kernel_init=init, rngs=nnx.Rngs(0))
        chex.assert_shape(conv.kernel[...], (3, 3, 8, 16))
        conv(jnp.ones((2, 6, 6, 8)))
    if lo <= 2 and name != "dirac":
        linear = nnx.Linear(8, 16, kernel_init=init, rngs=nnx.Rngs(0))
        chex.assert_shape(linear.kernel[...], (8, 16))
        # NNX passes typed keys from its Rngs stream: same values as a direct call.
        expected = init(nnx.Rngs(0).params(), (8, 16), jnp.float32)
        np.testing.assert_array_equal(linear.kernel[...], expected)


def test_bias_init_in_linen():
    dense = nn.Dense(4, bias_init=fi.constant(0.1))
    params = dense.init(KEY, jnp.ones((1, 3)))["params"]
    np.testing.assert_allclose(params["bias"], 0.1)


MESHES = [(2, 4), (4, 2), (8, 1), (1, 8)]


def sharded_case(entry):
    """A shape the entry accepts with two trailing axes divisible by every mesh, and a spec."""
    shape = (16, 16) if entry[3] == 2 else (8, 8, 16)
    if not fits(entry, shape):
        shape = (3, 8, 16)
    return shape, P(*([None] * (len(shape) - 2)), "a", "b")


CASES = {entry[0]: sharded_case(entry) for entry in CATALOGUE}
SHAPES = {name: shape for name, (shape, _) in CASES.items()}
SPECS = {name: spec for name, (_, spec) in CASES.items()}


@pytest.mark.parametrize("mesh_shape", MESHES)
def test_jit_out_shardings_bitwise_equal(mesh_shape):
    mesh = jax.make_mesh(mesh_shape, ("a", "b"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    shardings = {name: NamedSharding(mesh, spec) for name, spec in SPECS.items()}
    unsharded = jax.jit(lambda k: init_all(k, SHAPES))(KEY)
    sharded = jax.jit(lambda k: init_all(k, SHAPES), out_shardings=shardings)(KEY)
    for name in SHAPES:
        assert sharded[name].sharding == shardings[name], name
        np.testing.assert_array_equal(
            np.asarray(sharded[name]), np.asarray(unsharded[name]), err_msg=name
        )


@pytest.mark.parametrize("mesh_shape", [(2, 4), (8, 1)])
def test_out_sharding_argument_under_explicit_mesh(mesh_shape):
    mesh = jax.make_mesh(mesh_shape, ("a", "b"), axis_types=(jax.sharding.AxisType.Explicit,) * 2)
    reference = jax.jit(lambda k: init_all(k, SHAPES))(KEY)
    with jax.set_mesh(mesh):
        out = jax.jit(lambda k: init_all(k, SHAPES, jnp.float32, SPECS))(KEY)
    for name in SHAPES:
        assert out[name].sharding.spec == SPECS[name], name
        np.testing.assert_array_equal(
            np.asarray(out[name]), np.asarray(reference[name]), err_msg=name
        )


def test_out_sharding_partition_spec_needs_a_mesh():
    with pytest.raises(ValueError, match="no mesh"):
        fi.orthogonal()(KEY, (8, 8), jnp.float32, P("a"))


@settings(max_examples=25)
@given(
    shape=st.lists(st.integers(0, 6), min_size=2, max_size=4).map(tuple),
    entry=st.sampled_from([e for e in CATALOGUE if e[0] not in {"layerwise", "blockwise"}]),
    dtype=st.sampled_from([jnp.float32, jnp.bfloat16]),
)
def test_property_shape_dtype_finite(shape, entry, dtype):
    if not fits(entry, shape):
        return
    name = entry[0]
    init = fi.sparse(sparsity=0.5) if name == "sparse" else entry[1]
    x = init(KEY, shape, dtype)
    assert x.shape == shape
    assert x.dtype == dtype
    assert bool(jnp.isfinite(x).all())


@settings(max_examples=25)
@given(
    shape=st.lists(st.integers(1, 7), min_size=2, max_size=4).map(tuple),
    mode=st.sampled_from(["fan_in", "fan_out", "fan_avg", "fan_geo_avg"]),
    distribution=st.sampled_from(["truncated_normal", "normal", "uniform"]),
    scale=st.floats(0.0, 4.0),
)
def test_property_variance_scaling_bounds(shape, mode, distribution, scale):
    x = np.asarray(fi.variance_scaling(scale, mode, distribution)(KEY, shape), dtype=np.float64)
    fan_in, fan_out = fi.compute_fans(shape)
    n = {
        "fan_in": fan_in,
        "fan_out": fan_out,
        "fan_avg": (fan_in + fan_out) / 2,
        "fan_geo_avg": math.sqrt(fan_in * fan_out),
    }[mode]
    std = math.sqrt(scale / n)
    assert np.isfinite(x).all()
    if distribution != "normal":
        bound = {"truncated_normal": 2 / 0.8796256610342398, "uniform": math.sqrt(3)}[distribution]
        assert np.all(np.abs(x) <= bound * std * (1 + 1e-6))


@settings(max_examples=25)
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_orthogonal(rows, cols, seed):
    q = np.asarray(fi.orthogonal()(jax.random.key(seed), (rows, cols)), dtype=np.float64)
    gram = q.T @ q if rows >= cols else q @ q.T
    np.testing.assert_allclose(gram, np.eye(min(rows, cols)), atol=1e-5)
