"""Every catalogue initializer inside a model's sharded init, Linen and NNX, Auto and
Explicit axes: bitwise the single-device values. And orthogonal's memory cost."""

import _helpers
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import flaxinit as fi
from flaxinit.sharding import init_sharded, memory_stats, nnx_init_sharded

# layerwise(...) and blockwise(...) of orthogonal run a *batched* QR. jaxlib 0.10.2's
# CPU LAPACK kernels fan a batch out on XLA:CPU's intra-op thread pool and block
# waiting for it, which deadlocks when 8 simulated devices run the QR at once
# (gdb: BlockingCounter::Wait under jax::ParallelBatchMap; fixed in jaxlib 0.11).
# They are sharded-equality tested by tests/initializers on small shapes.
BATCHED_QR = {"layerwise", "blockwise"}
ENTRIES = [e for e in _helpers.CATALOGUE if e[0] not in BATCHED_QR]


def case(entry):
    shape = (16, 16) if entry[3] == 2 else (8, 8, 16)
    if not _helpers.fits(entry, shape):
        shape = (3, 8, 16)
    return shape


SHAPES = {e[0]: case(e) for e in ENTRIES}
INITS = {e[0]: e[1] for e in ENTRIES}
KEY = jax.random.key(5)


class Catalogue(nn.Module):
    @nn.compact
    def __call__(self, x):
        for name, shape in SHAPES.items():
            self.param(name, INITS[name], shape)
        return x


class NnxCatalogue(nnx.Module):
    def __init__(self, rngs):
        for name, shape in SHAPES.items():
            setattr(self, name, nnx.Param(INITS[name](rngs.params(), shape, jnp.float32)))


def partition_rules():
    return [(name, P(*([None] * (len(s) - 2)), "data", "model")) for name, s in SHAPES.items()]


# Explicit axes only: under Auto the same programs are what tests/initializers checks
# with jit out_shardings, and the GPT tests cover Auto for both frameworks.
@pytest.mark.parametrize("axis_type", [AxisType.Explicit])
def test_catalogue_in_linen_init(axis_type):
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis_type,) * 2)
    x = jnp.ones((1,))
    ref = jax.jit(Catalogue().init)(KEY, x)["params"]
    got = init_sharded(Catalogue(), KEY, x, mesh=mesh, partition_rules=partition_rules())["params"]
    for name in SHAPES:
        assert tuple(got[name].sharding.spec)[-2:] == ("data", "model"), name
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(ref[name]), err_msg=name)


@pytest.mark.parametrize("axis_type", [AxisType.Explicit])
def test_catalogue_in_nnx_init(axis_type):
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(axis_type,) * 2)
    ref = jax.jit(lambda: nnx.state(NnxCatalogue(nnx.Rngs(0))))()
    got = nnx.state(
        nnx_init_sharded(
            lambda: NnxCatalogue(nnx.Rngs(0)), mesh=mesh, partition_rules=partition_rules()
        )
    )
    for name in SHAPES:
        np.testing.assert_array_equal(
            np.asarray(got[name][...]), np.asarray(ref[name][...]), err_msg=name
        )
        assert got[name][...].sharding.mesh == mesh


def test_orthogonal_memory_cost_is_one_full_matrix():
    """The QR needs the whole matrix: each device draws and factors all of it in
    float32 and keeps its shard, so per-device memory is that of the unsharded
    draw, not 1/8 (values: test_catalogue_in_*_init). Compiled, not run."""
    n = 512
    mesh = jax.make_mesh((8,), ("model",), axis_types=(AxisType.Auto,))
    sharding = NamedSharding(mesh, P(None, "model"))
    draw = lambda init: jax.jit(lambda k: init(k, (n, n)), out_shardings=sharding)
    ortho = memory_stats(draw(fi.orthogonal()).lower(KEY).compile())
    normal = memory_stats(draw(fi.normal()).lower(KEY).compile())
    full = memory_stats(jax.jit(lambda k: fi.orthogonal()(k, (n, n))).lower(KEY).compile())
    matrix = n * n * 4
    assert normal.total < matrix  # a plain draw: shard by shard (1/2 of a matrix)
    assert ortho.total >= matrix  # the QR holds at least one full matrix per device
    assert ortho.total <= full.total * 1.25  # ... and not more than one device's worth
