"""Tests of flaxinit/inspection.py: one tap for Linen and NNX models."""

from __future__ import annotations

import threading

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxinit import inspection
from flaxinit.inspection import Activation, NNXActivation, tap

WRAPPER_CODE = inspection._wrap(lambda self: None).__code__


def patched_nnx_classes() -> list[str]:
    """Every nnx Module class whose ``__call__`` is, or wraps, a tap's wrapper."""
    seen, todo = set(), [nnx.Module]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
    patched = []
    for cls in seen:
        fn = cls.__dict__.get("__call__")
        while fn is not None:
            if getattr(fn, "__code__", None) is WRAPPER_CODE:
                patched.append(cls.__name__)
                break
            fn = getattr(fn, "__wrapped__", None)
    return sorted(patched)


def no_tap_left():
    assert patched_nnx_classes() == []
    assert inspection._HOOKS == {}
    assert inspection._ACTIVE.get() == ()


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(8, name="fc1")(x)
        h = Activation(jnp.tanh, name="act")(h)
        h = nn.LayerNorm(name="ln")(h)
        h = nn.Dense(8, name="fc2")(h)
        return nn.Dense(3, name="head")(jax.nn.relu(h))


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        # Attribute order differs from call order: sites must follow the calls.
        self.head = nnx.Linear(8, 3, rngs=rngs)
        self.fc2 = nnx.Linear(8, 8, rngs=rngs)
        self.act = NNXActivation(jnp.tanh)
        self.fc1 = nnx.Linear(5, 8, rngs=rngs)

    def __call__(self, x):
        return self.head(jax.nn.relu(self.fc2(self.act(self.fc1(x)))))


@pytest.fixture
def x():
    return jax.random.normal(jax.random.key(0), (4, 5))


@pytest.fixture
def linen(x):
    model = LinenNet()
    return model, model.init(jax.random.key(1), x)


@pytest.fixture
def nnx_model():
    return NNXNet(nnx.Rngs(0))


ORDER = ["fc1", "act", "fc2", "head"]


# --------------------------------------------------------------------------------------
# Sites, records, replacement
# --------------------------------------------------------------------------------------


def test_linen_sites_in_execution_order_with_outputs(linen, x):
    model, variables = linen
    t = tap(model, x, variables=variables)
    assert [s.path for s in t.sites] == ORDER
    kinds = [(s.module, s.kind) for s in t.sites][:2]
    assert kinds == [("Dense", "linear"), ("Activation", "activation")]
    assert not any(s.transformed for s in t.sites)
    fc1 = x @ variables["params"]["fc1"]["kernel"] + variables["params"]["fc1"]["bias"]
    np.testing.assert_allclose(t.records[0], fc1, rtol=1e-6)
    np.testing.assert_allclose(t.records[1], jnp.tanh(fc1), rtol=1e-6)
    np.testing.assert_allclose(t.output, model.apply(variables, x), rtol=1e-6)
    assert t.modules == ("", "fc1", "act", "ln", "fc2", "head")


def test_nnx_sites_in_execution_order_with_outputs(nnx_model, x):
    t = tap(nnx_model, x)
    assert [s.path for s in t.sites] == ORDER
    assert [s.kind for s in t.sites] == ["linear", "activation", "linear", "linear"]
    np.testing.assert_allclose(t.records[0], nnx_model.fc1(x), rtol=1e-6)
    np.testing.assert_allclose(t.output, nnx_model(x), rtol=1e-6)
    assert t.modules == ("", "fc1", "act", "fc2", "head")
    no_tap_left()
    assert not any(k.startswith("__flaxinit") or k == "__captures__" for k in vars(nnx_model.fc1))


def double_fc1(call):
    if call.site.path == "fc1":
        return 2 * call.output, None
    return call.output, call.output


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_a_replacement_output_flows_on(api, linen, nnx_model, x):
    if api == "linen":
        model, variables = linen
        kwargs = {"variables": variables}
        p = variables["params"]
        fc1 = lambda v: v @ p["fc1"]["kernel"] + p["fc1"]["bias"]
    else:
        model, kwargs, fc1 = nnx_model, {}, nnx_model.fc1
    t = tap(model, x, callback=double_fc1, **kwargs)
    # No record for fc1: no site. The activation sees the doubled output.
    assert [s.path for s in t.sites] == ORDER[1:]
    np.testing.assert_allclose(t.records[0], jnp.tanh(2 * fc1(x)), rtol=1e-6)


def test_inside_jit_and_layer_recall(linen, x):
    model, variables = linen

    def bias_of(call):  # the layer at a zero input: its bias, below the tap
        zero = call.layer(jnp.zeros_like(call.args[0]))
        return call.output, zero[0]

    @jax.jit
    def run(v, x):
        t = tap(model, x, variables=v, callback=bias_of, select=lambda m, p: p == "head")
        return t.records

    (bias,) = run(variables, x)
    np.testing.assert_allclose(bias, variables["params"]["head"]["bias"])


def test_linen_mutable_is_passed_through_and_cleaned(x):
    class BN(nn.Module):
        @nn.compact
        def __call__(self, x):
            self.sow("intermediates", "mine", x.sum())
            return nn.BatchNorm(use_running_average=False)(nn.Dense(4)(x))

    model = BN()
    variables = model.init(jax.random.key(0), x)
    t = tap(model, x, variables=variables, call_kwargs={"mutable": ["batch_stats"]})
    out, state = t.output
    assert set(state) == {"batch_stats"}
    ref_out, ref_state = model.apply(variables, x, mutable=["batch_stats"])
    np.testing.assert_allclose(out, ref_out, rtol=1e-6)
    jax.tree.map(np.testing.assert_allclose, state, ref_state)


def test_a_bad_callback_result_names_the_layer(nnx_model, x):
    with pytest.raises(TypeError, match=r"\(output, record\) for layer 'fc1'"):
        tap(nnx_model, x, callback=lambda call: call.output)
    no_tap_left()


def test_wrong_arguments():
    with pytest.raises(ValueError, match="variables="):
        tap(nn.Dense(2), jnp.ones((1, 2)))
    with pytest.raises(ValueError, match="no variables="):
        tap(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), jnp.ones((1, 2)), variables={})
    with pytest.raises(TypeError, match="Module"):
        tap(lambda v: v, 1)


# --------------------------------------------------------------------------------------
# Default selection
# --------------------------------------------------------------------------------------


def test_the_default_selection():
    rngs = nnx.Rngs(0)
    linear = [
        nn.Dense(2),
        nn.DenseGeneral(2),
        nn.Conv(2, (3,)),
        nn.ConvLocal(2, (3,)),
        nn.ConvTranspose(2, (3,)),
        nn.Einsum((2, 3), "ab,bc->ac"),
        nn.Embed(4, 2),
        nnx.Linear(2, 2, rngs=rngs),
        nnx.LinearGeneral(2, 2, rngs=rngs),
        nnx.Conv(2, 2, (3,), rngs=rngs),
        nnx.ConvTranspose(2, 2, (3,), rngs=rngs),
        nnx.Einsum("ab,bc->ac", (2, 3), rngs=rngs),
        nnx.Embed(4, 2, rngs=rngs),
    ]
    for module in linear:
        assert inspection.default_select(module, "p")
        assert inspection.kind_of(module) == "linear"
    for module in (Activation(), NNXActivation()):
        assert inspection.default_select(module, "p")
        assert inspection.kind_of(module) == "activation"
    others = [nn.LayerNorm(), nnx.BatchNorm(2, rngs=rngs), nnx.Dropout(0.1), nn.Sequential([])]
    assert not any(inspection.default_select(m, "p") for m in others)
    assert [inspection.kind_of(m) for m in others] == ["norm", "norm", "other", "other"]

    class MyDense(nn.Dense):  # subclasses included
        pass

    assert inspection.default_select(MyDense(2), "p")


def test_a_subclass_calling_super_gives_one_site(x):
    class Scaled(nnx.Linear):
        def __call__(self, x):
            return 2 * super().__call__(x)

    model = nnx.Sequential(Scaled(5, 3, rngs=nnx.Rngs(0)))
    t = tap(model, x)
    assert [(s.path, s.module) for s in t.sites] == [("layers/0", "Scaled")]
    np.testing.assert_allclose(t.records[0], model(x), rtol=1e-6)
    no_tap_left()


# --------------------------------------------------------------------------------------
# Nesting, threads, errors: nothing stays patched
# --------------------------------------------------------------------------------------


def test_nested_taps(nnx_model, linen, x):
    model, variables = linen
    other = nnx.Sequential(nnx.Linear(5, 2, rngs=nnx.Rngs(3)))
    inner: list = []

    def outer_callback(call):
        # A tap inside a callback: sees its own model only, and the outer one does
        # not see the inner model's layers.
        inner.append(tuple(s.path for s in tap(other, x).sites))
        inner.append(tuple(s.path for s in tap(model, x, variables=variables).sites))
        return call.output, call.output

    t = tap(nnx_model, x, callback=outer_callback)
    assert [s.path for s in t.sites] == ORDER
    assert inner[:2] == [("layers/0",), tuple(ORDER)]
    no_tap_left()


def test_two_taps_over_one_call_both_see_it(nnx_model, x):
    # A tap whose model itself runs a tap: both see the inner run's layers; as with
    # Linen interceptors, the first one entered sees the layer's own output.
    sub = nnx.Sequential(nnx.Linear(5, 2, rngs=nnx.Rngs(3)))

    class Wrapper(nnx.Module):
        def __init__(self):
            self.sub = sub

        def __call__(self, x):
            return tap(self.sub, x, callback=lambda c: (c.output + 1, c.output)).output

    t = tap(Wrapper(), x)
    assert [s.path for s in t.sites] == ["sub/layers/0"]
    np.testing.assert_allclose(t.records[0], sub(x), rtol=1e-6)
    np.testing.assert_allclose(t.output, sub(x) + 1, rtol=1e-6)
    no_tap_left()


def test_two_threads_tap_nnx_models_concurrently(x):
    models = [NNXNet(nnx.Rngs(i)) for i in range(2)]
    results: dict[int, list] = {}
    errors: list = []
    barrier = threading.Barrier(2)

    def slow(call):
        barrier.wait(timeout=10)  # both taps are active at once, in lockstep
        return call.output, call.output

    def work(i):
        try:
            for _ in range(3):
                t = tap(models[i], x, callback=slow)
                results.setdefault(i, []).append(([s.path for s in t.sites], t.records))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, model in enumerate(models):
        for paths, records in results[i]:
            assert paths == ORDER
            np.testing.assert_allclose(records[0], model.fc1(x), rtol=1e-6)
    no_tap_left()


def test_an_untapped_thread_is_not_seen(x):
    model = NNXNet(nnx.Rngs(0))
    seen_in_other = []
    entered, done = threading.Event(), threading.Event()

    def callback(call):
        if not entered.is_set():
            entered.set()
            done.wait(timeout=10)
        return call.output, call.output

    def other():
        entered.wait(timeout=10)
        seen_in_other.append(model(x))  # the class is wrapped now, but not for this thread
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    t = tap(model, x, callback=callback)
    thread.join()
    assert len(t.sites) == 4
    assert len(seen_in_other) == 1
    no_tap_left()


def test_an_nnx_model_closed_over_by_jit(nnx_model, x):
    # The model belongs to another trace: it cannot be marked, but it can be read.
    records = jax.jit(lambda x: tap(nnx_model, x).records)(x)
    np.testing.assert_allclose(records[0], nnx_model.fc1(x), rtol=1e-6)
    no_tap_left()


def test_a_callback_that_raises_leaves_nothing_behind(nnx_model, x):
    def boom(call):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        tap(nnx_model, x, callback=boom)
    no_tap_left()
    assert not any(k.startswith("__flaxinit") or k == "__captures__" for k in vars(nnx_model.fc1))
    # A later tap works as before.
    assert [s.path for s in tap(nnx_model, x).sites] == ORDER


def test_an_outer_nnx_capture_keeps_its_own_values(x):
    class Sows(nnx.Module):
        def __init__(self):
            self.fc = nnx.Linear(5, 2, rngs=nnx.Rngs(0))

        def __call__(self, x):
            y = self.fc(x)
            self.sow(nnx.Intermediate, "y", y)
            return y

    model = Sows()

    def run(m, x):
        return tap(m, x).records

    records, captured = nnx.capture(run, nnx.Intermediate)(model, x)
    np.testing.assert_allclose(captured["y"][0], records[0])
    no_tap_left()


# --------------------------------------------------------------------------------------
# Lifted transforms: stacks
# --------------------------------------------------------------------------------------


class Step(nn.Module):
    @nn.compact
    def __call__(self, h, _):
        return Activation(jax.nn.relu)(nn.Dense(8)(h)), None


class LinenStack(nn.Module):
    axes: dict = None

    @nn.compact
    def __call__(self, x):
        axes = self.axes or {"params": 0}
        h = nn.Dense(8, name="embed")(x)
        h, _ = nn.scan(Step, variable_axes=axes, split_rngs={"params": True}, length=3)(
            name="stack"
        )(h, None)
        return nn.Dense(2, name="head")(h)


@pytest.mark.parametrize("axes", [None, {"params": 0, "intermediates": 0}])
def test_linen_scan_stack(x, axes):
    model = LinenStack(axes)
    variables = model.init(jax.random.key(0), x)

    def halve_in_stack(call):
        out = call.output / 2 if call.site.transformed else call.output
        return out, call.output

    t = jax.jit(lambda v, x: tap(model, x, variables=v, callback=halve_in_stack))(variables, x)
    assert [(s.path, s.transformed) for s in t.sites] == [
        ("embed", False),
        ("stack/Dense_0", True),
        ("stack/Activation_0", True),
        ("head", False),
    ]
    # Stacked (L, batch, features): one slice per step. The halved outputs flowed on.
    assert t.records[1].shape == (3, 4, 8)
    assert t.records[2].shape == (3, 4, 8)
    p = variables["params"]
    h = t.records[0]
    for i in range(3):
        pre = h @ p["stack"]["Dense_0"]["kernel"][i] + p["stack"]["Dense_0"]["bias"][i]
        np.testing.assert_allclose(t.records[1][i], pre, rtol=1e-5, atol=1e-6)
        h = jax.nn.relu(pre / 2) / 2
    # Nothing of the tap is left in the returned state.
    t2 = tap(model, x, variables=variables, call_kwargs={"mutable": True})
    assert t2.output[1].keys() == {"params"}
    assert jax.tree.structure(t2.output[1]) == jax.tree.structure(dict(variables))


def test_linen_scan_with_broadcast_params_names_the_layers(x):
    class Shared(nn.Module):
        @nn.compact
        def __call__(self, x):
            h, _ = nn.scan(
                Step, variable_broadcast="params", split_rngs={"params": False}, length=2
            )()(nn.Dense(8)(x), None)
            return h

    model = Shared()
    variables = model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"ScanStep_0/Dense_0.*broadcasts 'params'"):
        tap(model, x, variables=variables)
    # Nothing selected inside: fine.
    t = tap(model, x, variables=variables, select=lambda m, p: p == "Dense_0")
    assert [s.path for s in t.sites] == ["Dense_0"]


class NNXBlock(nnx.Module):
    def __init__(self, rngs):
        self.fc = nnx.Linear(8, 8, rngs=rngs)
        self.act = NNXActivation(jax.nn.relu)

    def __call__(self, x):
        return self.act(self.fc(x))


class NNXStack(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Linear(5, 8, rngs=rngs)

        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(r):
            return NNXBlock(r)

        self.blocks = make(rngs)
        self.head = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def step(h, block):
            return block(h)

        return self.head(step(self.embed(x), self.blocks))


def test_nnx_scan_stack(x):
    model = NNXStack(nnx.Rngs(0))

    @nnx.jit
    def run(model, x):  # Tapped is a pytree: sites and modules are static
        return tap(model, x, callback=lambda c: (c.output, c.output.std(axis=-1)))

    t = run(model, x)
    sites, records = t.sites, t.records
    assert [(s.path, s.module, s.transformed) for s in sites] == [
        ("embed", "Linear", False),
        ("blocks/fc", "Linear", True),
        ("blocks/act", "NNXActivation", True),
        ("head", "Linear", False),
    ]
    assert records[1].shape == (3, 4)  # (L, batch)
    h = model.embed(x)
    kernel, bias = model.blocks.fc.kernel[...], model.blocks.fc.bias[...]
    for i in range(3):
        pre = h @ kernel[i] + bias[i]
        np.testing.assert_allclose(records[1][i], pre.std(axis=-1), rtol=1e-5)
        h = jax.nn.relu(pre)
    no_tap_left()
    assert "__captures__" not in vars(model.blocks.fc)


def test_nnx_scan_over_sequential_blocks(x):
    # nnx.Sequential keeps its layers in an nnx.List, whose graph keys are ints: the tap
    # must not give it a str attribute (the scan would fail to sort the keys).
    class SeqStack(nnx.Module):
        def __init__(self, rngs):
            @nnx.split_rngs(splits=2)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def make(r):
                return nnx.Sequential(nnx.Linear(5, 5, rngs=r), nnx.LayerNorm(5, rngs=r))

            self.blocks = make(rngs)

        def __call__(self, x):
            @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
            def step(h, block):
                return block(h)

            return step(x, self.blocks)

    t = tap(SeqStack(nnx.Rngs(0)), x)
    assert [(s.path, s.transformed) for s in t.sites] == [("blocks/layers/0", True)]
    assert t.records[0].shape[0] == 2  # one slice per scan step
    no_tap_left()


def test_nnx_vmap_over_a_broadcast_module_names_the_layer(x):
    class Mapped(nnx.Module):
        def __init__(self):
            self.fc = nnx.Linear(5, 2, rngs=nnx.Rngs(0))

        def __call__(self, x):
            return nnx.vmap(lambda m, xi: m(xi), in_axes=(None, 0))(self.fc, x)

    model = Mapped()
    with pytest.raises(ValueError, match=r"layer\(s\) \['fc'\].*did not come back"):
        tap(model, x)
    no_tap_left()
