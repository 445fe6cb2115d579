"""LSUV's program cache: a repeated call reuses the compiled programs, anything that
changes what they compute gives new ones, and a cached result equals a fresh one.

Counts are exact: traces of the fitting and pre-init programs (``cache_info``) and
XLA compilations (``jax.monitoring``), never times."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import flaxinit as fi
from flaxinit.lsuv import cache, cache_info, clear_cache, lsuv

GAIN = 1.0  # read by GlobalReader.__call__


class MLP(nn.Module):
    width: int = 16
    depth: int = 3
    act: object = nn.relu

    @nn.compact
    def __call__(self, x):
        for _ in range(self.depth):
            x = self.act(nn.Dense(self.width)(x))
        return nn.Dense(4)(x)


class GlobalReader(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(8)(x * GAIN)


class Opaque:
    """A config object compared by identity: it can change without its key changing."""

    def __init__(self, gain):
        self.gain = gain


class OpaqueConfig(nn.Module):
    config: object

    @nn.compact
    def __call__(self, x):
        return nn.Dense(8)(x * self.config.gain)


class NNXNet(nnx.Module):
    def __init__(self, width, rngs, act=nnx.relu):
        self.act = act
        self.a = nnx.Linear(8, width, rngs=rngs)
        self.b = nnx.Linear(width, 4, rngs=rngs)

    def __call__(self, x):
        return self.b(self.act(self.a(x)))


def data(shape=(32, 8), seed=1, dtype=jnp.float32):
    return (jax.random.normal(jax.random.key(seed), shape) * 2 + 0.5).astype(dtype)


def counts():
    info = cache_info()
    return info["fit_traces"], info["pre_init_traces"]


def fresh(model, variables, x, **kwargs):
    """The same call compiled from scratch (cache emptied first, and after)."""
    clear_cache()
    try:
        return lsuv(model, variables, x, **kwargs)
    finally:
        clear_cache()


@pytest.fixture(autouse=True)
def _empty_cache():
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def compiles():
    """Counts XLA compilations while the test runs."""
    from jax._src import monitoring

    seen = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            seen.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        monitoring.unregister_event_duration_listener(listener)


@pytest.mark.parametrize("pre_init", ["orthogonal", None])
def test_repeated_call_with_new_key_and_batch_reuses_programs(compiles, pre_init):
    model = MLP()
    x = data()
    variables = model.init(jax.random.key(0), x)
    lsuv(model, variables, x, key=jax.random.key(1), pre_init=pre_init)
    before = counts()
    hits = cache_info()["hits"]
    compiles.clear()
    x2 = data(seed=7)  # new values, same shape and dtype
    new, report = lsuv(model, variables, x2, key=jax.random.key(2), pre_init=pre_init)
    assert counts() == before  # nothing traced
    assert compiles == []  # nothing compiled, not even a fold or a slice
    assert cache_info()["hits"] == hits + 1
    # The key and the batch are arguments, not constants: the result is the new one.
    want_new, want_report = fresh(model, variables, x2, key=jax.random.key(2), pre_init=pre_init)
    chex.assert_trees_all_equal(new, want_new)
    assert [r.scale for r in report] == [r.scale for r in want_report]
    assert report.converged


def test_new_key_gives_new_pre_init_from_the_cached_program():
    model = MLP()
    x = data()
    variables = model.init(jax.random.key(0), x)
    a, _ = lsuv(model, variables, x, key=jax.random.key(1))
    traced = counts()
    b, _ = lsuv(model, variables, x, key=jax.random.key(2))
    assert counts() == traced
    kernel = lambda v: np.asarray(v["params"]["Dense_0"]["kernel"])
    assert not np.array_equal(kernel(a), kernel(b))


def test_with_and_without_pre_init_share_the_fitting_program():
    model = MLP()
    x = data()
    variables = model.init(jax.random.key(0), x)
    lsuv(model, variables, x, pre_init=None)
    fit, pre = counts()
    lsuv(model, variables, x)
    assert counts() == (fit, pre + 1)


def _variants(model, variables, x):
    """``(what changes, model, variables (None: init), batch, lsuv options, compare
    with a fresh compile)``: one of each kind (model config, shape, dtype, option)
    is compared bitwise with a fresh compile, the others checked for convergence."""
    half = jax.tree.map(lambda a: a.astype(jnp.bfloat16), variables)
    return [
        ("width", MLP(width=24), None, x, {}, True),
        ("activation field", MLP(act=jnp.tanh), variables, x, {}, False),
        ("batch shape", model, variables, data((48, 8)), {}, True),
        ("params dtype", model, half, x, {}, True),
        ("batch dtype", model, variables, data(dtype=jnp.bfloat16), {}, False),
        ("target_var", model, variables, x, {"target_var": 2.0}, True),
        ("solver", model, variables, x, {"solver": "iterate"}, False),
        ("tol", model, variables, x, {"tol": 0.5, "solver": "iterate"}, False),
        ("max_iters", model, variables, x, {"max_iters": 1, "solver": "iterate"}, False),
        ("center", model, variables, x, {"center": True}, False),
        ("layers", model, variables, x, {"layers": ["Dense_1"]}, False),
        ("measure", model, variables, x, {"measure": "activation", "activation": jnp.tanh}, False),
    ]


def test_any_change_gives_a_new_program_and_the_fresh_result():
    model, x = MLP(), data()
    variables = model.init(jax.random.key(0), x)
    key = jax.random.key(3)
    lsuv(model, variables, x, key=key)
    for name, other, other_vars, other_x, kwargs, compare in _variants(model, variables, x):
        if other_vars is None:
            other_vars = other.init(jax.random.key(0), other_x)
        before = counts()
        got, report = lsuv(other, other_vars, other_x, key=key, **kwargs)
        assert counts()[0] == before[0] + 1, name
        again, _ = lsuv(other, other_vars, other_x, key=key, **kwargs)
        assert counts()[0] == before[0] + 1, name  # and that one is reused
        chex.assert_trees_all_equal(got, again)
        assert all(r.status != "not converged" or kwargs.get("max_iters") for r in report), name
        if compare:
            want, want_report = fresh(other, other_vars, other_x, key=key, **kwargs)
            chex.assert_trees_all_equal(got, want)
            assert [r.var_after for r in report] == [r.var_after for r in want_report], name
            lsuv(model, variables, x, key=key)  # the baseline back in the cache


def test_a_new_pre_init_is_a_new_pre_init_program_on_the_same_fitting_pass():
    model, x = MLP(), data()
    variables = model.init(jax.random.key(0), x)
    lsuv(model, variables, x)
    before = counts()
    init = jax.nn.initializers.lecun_normal()
    got, _ = lsuv(model, variables, x, pre_init=init)
    assert counts() == (before[0], before[1] + 1)
    chex.assert_trees_all_equal(got, fresh(model, variables, x, pre_init=init)[0])


def test_a_changed_closure_value_is_a_new_program():
    model, x = MLP(), data()
    variables = model.init(jax.random.key(0), x)

    def activation(slope):
        return lambda y: jnp.where(y > 0, y, slope * y)

    kwargs = {"measure": "activation", "pre_init": None}
    lsuv(model, variables, x, activation=activation(0.1), **kwargs)
    traced = counts()
    lsuv(model, variables, x, activation=activation(0.1), **kwargs)  # a new, equal lambda
    assert counts() == traced
    got, _ = lsuv(model, variables, x, activation=activation(0.5), **kwargs)
    assert counts()[0] == traced[0] + 1
    chex.assert_trees_all_equal(
        got, fresh(model, variables, x, activation=activation(0.5), **kwargs)[0]
    )


def test_a_changed_global_read_by_the_model_is_a_new_program(monkeypatch):
    model, x = GlobalReader(), data()
    variables = model.init(jax.random.key(0), x)
    first, _ = lsuv(model, variables, x, pre_init=None)
    traced = counts()
    monkeypatch.setattr(f"{__name__}.GAIN", 3.0)
    second, _ = lsuv(model, variables, x, pre_init=None)
    assert counts()[0] == traced[0] + 1
    chex.assert_trees_all_equal(second, fresh(model, variables, x, pre_init=None)[0])
    assert not np.allclose(
        first["params"]["Dense_0"]["kernel"], second["params"]["Dense_0"]["kernel"]
    )


def test_a_config_compared_by_identity_is_never_cached():
    config = Opaque(1.0)
    model, x = OpaqueConfig(config), data()
    variables = model.init(jax.random.key(0), x)
    uncached = cache_info()["uncached"]
    first, _ = lsuv(model, variables, x, pre_init=None)
    config.gain = 4.0  # mutated in place: same object, same identity
    second, report = lsuv(model, variables, x, pre_init=None)
    assert cache_info()["uncached"] == uncached + 2
    assert cache_info()["entries"] == 0
    assert report.converged
    ratio = first["params"]["Dense_0"]["kernel"] / second["params"]["Dense_0"]["kernel"]
    np.testing.assert_allclose(ratio, 4.0, rtol=1e-4)  # fitted on the new gain


def test_a_failing_call_leaves_no_entry():
    model, x = MLP(), data()
    variables = model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="matched no"):
        lsuv(model, variables, x, layers=["nothing_*"])
    assert cache_info()["entries"] == 0


def test_the_cache_is_bounded_and_can_be_cleared(monkeypatch):
    monkeypatch.setattr(cache, "MAX_ENTRIES", 2)
    x = data()
    for width in (8, 12, 16):
        model = MLP(width=width, depth=1)
        lsuv(model, None, x, pre_init=None)
    assert cache_info()["entries"] == 2
    traced = counts()
    lsuv(MLP(width=8, depth=1), None, x, pre_init=None)  # evicted: traced again
    assert counts()[0] == traced[0] + 1
    fi.lsuv.clear_cache()
    assert cache_info()["entries"] == 0
    lsuv(MLP(width=8, depth=1), None, x, pre_init=None)
    assert counts()[0] == traced[0] + 2


def test_nnx_repeated_call_hits_and_a_new_config_misses(compiles):
    x = data()
    model = NNXNet(16, nnx.Rngs(0))
    lsuv(model, None, x, key=jax.random.key(1))
    traced = counts()
    compiles.clear()
    other = NNXNet(16, nnx.Rngs(5))  # another instance, the same definition
    _, report = lsuv(other, None, data(seed=3), key=jax.random.key(2))
    assert counts() == traced
    assert compiles == []
    assert report.converged
    assert "_flaxinit_lsuv" not in vars(other.a)
    want = NNXNet(16, nnx.Rngs(5))
    fresh(want, None, data(seed=3), key=jax.random.key(2))
    chex.assert_trees_all_equal(nnx.state(other), nnx.state(want))
    traced = counts()
    wider = NNXNet(24, nnx.Rngs(0))
    lsuv(wider, None, x, key=jax.random.key(1))
    assert counts()[0] == traced[0] + 1
    tanh = NNXNet(16, nnx.Rngs(0), act=jnp.tanh)  # a static attribute's value
    lsuv(tanh, None, x, key=jax.random.key(1))
    assert counts()[0] == traced[0] + 2


def test_signature_keys_functions_by_value():
    make = lambda c: lambda y: y * c
    assert cache.signature(make(2.0)) == cache.signature(make(2.0))
    assert cache.signature(make(2.0)) != cache.signature(make(3.0))
    assert cache.signature(MLP(width=8)) == cache.signature(MLP(width=8))
    assert cache.signature(MLP(width=8)) != cache.signature(MLP(width=9))
    assert cache.signature(Opaque(1.0)) is None
    assert cache.signature(jnp.ones(3)) is None  # an array is never baked in
