"""flaxinit.initializers._core: the rules every factory and initializer share.

* Factory misuse: factories used as initializers, jax-style positional calls, and
  gain=0 each raise a TypeError/ValueError that names the factory and the fix, instead
  of blaming another argument or returning silently wrong weights.
* Default dtype: one rule for every initializer and combinator, jax's: with no dtype
  given, float32, or float64 under ``jax_enable_x64`` (``dtypes.default_float_dtype()``,
  read when the initializer is called); a factory's ``dtype=`` is the default instead,
  and combinators leave the default to the initializer they wrap.
"""

import inspect
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import CATALOGUE
from flax import nnx

import flaxinit as fi
import flaxinit.initializers as fii

KEY = jax.random.key(0)

# Everything the catalogue exports that is not itself an initializer or a helper.
NOT_FACTORIES = {
    "Initializer",
    "calculate_gain",
    "compute_fans",
    "truncated_normal_std",
    "zeros",
    "ones",
}
FACTORIES = sorted(set(fii.__all__) - NOT_FACTORIES)

KEYS = {
    "typed": jax.random.key(1),
    "legacy": jax.random.PRNGKey(1),
    "legacy_rbg": jax.random.key_data(jax.random.key(1, impl="rbg")),
    "typed_batch": jax.random.split(jax.random.key(1), 3),
}


def test_the_factory_list_is_the_catalogue():
    # A new factory added to the catalogue is covered here automatically; this
    # guards the split between factories and ready-made initializers.
    assert {"he_normal", "scaled", "constant"} <= set(FACTORIES)
    assert len(FACTORIES) == 25, FACTORIES
    for name in NOT_FACTORIES - {"Initializer"}:
        assert not hasattr(getattr(fii, name), "__wrapped__"), name


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("key_kind", sorted(KEYS))
def test_factory_called_with_a_key_says_call_it_first(name, key_kind):
    factory = getattr(fii, name)
    with pytest.raises(TypeError) as info:
        factory(KEYS[key_kind], (4, 4), jnp.float32)
    message = str(info.value)
    required = [
        p
        for p in inspect.signature(factory).parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    # The name as the user reaches it: the combinators are in fi.initializers only.
    where = "fi." if name in fi.__all__ else "fi.initializers."
    call = f"{where}{name}(...)" if required else f"{where}{name}()"
    assert f"did you mean {call}?" in message, message
    assert "PRNG key" in message


@pytest.mark.parametrize("name", FACTORIES)
def test_factory_called_like_a_rule_action_without_key(name):
    # The rules engine calls a plain callable as fn(key, leaf, ctx); without key= the
    # key is None, and the RuleContext gives the misuse away.
    params = {"kernel": jnp.zeros((4, 4))}
    where = r"fi\." if name in fi.__all__ else r"fi\.initializers\."
    with pytest.raises(TypeError, match=rf"did you mean {where}{name}\("):
        fi.apply_rules(params, [("kernel", getattr(fii, name))])


@pytest.mark.parametrize("key", [jax.random.key(0), jax.random.PRNGKey(0)])
def test_linen_kernel_init_uncalled(key):
    with pytest.raises(TypeError, match=r"did you mean fi\.he_normal\(\)\?"):
        nn.Dense(4, kernel_init=fi.he_normal).init(key, jnp.ones((1, 3)))


def test_linen_scan_kernel_init_uncalled():
    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            return nn.Dense(4, kernel_init=fi.orthogonal)(x), None

    stack = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=2)
    with pytest.raises(TypeError, match=r"did you mean fi\.orthogonal\(\)\?"):
        stack().init(KEY, jnp.ones((1, 4)), None)


def test_nnx_kernel_init_uncalled():
    with pytest.raises(TypeError, match=r"did you mean fi\.xavier_uniform\(\)\?"):
        nnx.Linear(3, 4, kernel_init=fi.xavier_uniform, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("jit", [False, True])
def test_rule_action_uncalled(jit):
    params = nn.Dense(4).init(KEY, jnp.ones((1, 3)))
    run = lambda k: fi.apply_rules(params, [("kernel", fi.he_normal)], key=k)
    with pytest.raises(TypeError, match=r"did you mean fi\.he_normal\(\)\?"):
        jax.jit(run)(KEY) if jit else run(KEY)


def test_reinit_of_an_uncalled_factory():
    params = {"kernel": jnp.zeros((4, 4))}
    with pytest.raises(TypeError, match=r"did you mean fi\.lecun_normal\(\)\?"):
        fi.apply_rules(params, [("kernel", fi.reinit(fi.lecun_normal))], key=KEY)


def test_zeros_and_ones_are_initializers_not_factories():
    assert fi.zeros(KEY, (2,)).shape == (2,)
    assert fi.ones(jax.random.PRNGKey(0), (2,)).shape == (2,)


def test_constant_keeps_uint32_pair_values():
    # A uint32 array of shape (2,) alone is a legitimate fill value, not a key.
    value = np.array([3, 4], np.uint32)
    out = fi.constant(value)(KEY, (3, 2), jnp.uint32)
    np.testing.assert_array_equal(out, np.broadcast_to(value, (3, 2)))
    with pytest.raises(TypeError, match=r"did you mean fi\.constant\(\.\.\.\)\?"):
        fi.constant(jax.random.PRNGKey(0), (3, 2), jnp.float32)


# --------------------------------------------------------------- positional arguments

# The names jax.nn.initializers shares with the catalogue whose jax signature takes
# (in_axis, out_axis, batch_axis, dtype) positionally while ours follows torch.nn.init.
TORCH_NAMED = ["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal"]


@pytest.mark.parametrize("name", TORCH_NAMED)
@pytest.mark.parametrize("args", [(0,), (0.5,), (-2, -1), (math.sqrt(5), "fan_in")])
def test_torch_named_factories_take_keywords_only(name, args):
    with pytest.raises(TypeError) as info:
        getattr(fi, name)(*args)
    message = str(info.value)
    assert f"{name}() takes keyword arguments only" in message, message
    assert f"jax.nn.initializers.{name} is" in message
    assert f"fi.{name}(in_axis=" in message


def test_xavier_uniform_zero_positional_is_no_longer_all_zeros():
    # The case: jax's xavier_uniform(0) means in_axis=0; here it meant gain=0.
    with pytest.raises(TypeError, match="keyword arguments only"):
        fi.xavier_uniform(0)
    w = fi.xavier_uniform(in_axis=0)(KEY, (16, 16))
    np.testing.assert_array_equal(w, jax.nn.initializers.xavier_uniform(0)(KEY, (16, 16)))


@pytest.mark.parametrize("name", ["xavier_uniform", "xavier_normal"])
@pytest.mark.parametrize("gain", [0, 0.0, -0.0, np.float32(0)])
def test_zero_gain_needs_allow_zero(name, gain):
    factory = getattr(fi, name)
    with pytest.raises(ValueError, match=rf"{name}: gain=0 .*allow_zero=True"):
        factory(gain=gain)
    w = factory(gain=gain, allow_zero=True)(KEY, (4, 4))
    assert not np.any(np.asarray(w))


def test_allow_zero_must_be_a_bool():
    with pytest.raises(TypeError, match="allow_zero must be a bool, got allow_zero='yes'"):
        fi.xavier_uniform(gain=0.0, allow_zero="yes")


def test_nonzero_gains_unchanged():
    a = fi.xavier_uniform(gain=2.0)(KEY, (8, 8))
    b = fi.xavier_uniform(gain=2.0, allow_zero=True)(KEY, (8, 8))
    np.testing.assert_array_equal(a, b)
    assert fi.xavier_uniform(gain=2.0).__name__ == "xavier_uniform(gain=2)"


# Every factory whose name jax.nn.initializers also has: jax's positional call means
# the same thing here (same values in float32), or raises a TypeError.
JAX_POSITIONAL = [
    ("constant", (0.25, jnp.float32)),
    ("normal", (0.3, jnp.float32)),
    ("uniform", (0.3, jnp.float32)),
    ("truncated_normal", (0.3, jnp.float32, -1.5, 1.0)),
    ("variance_scaling", (0.7, "fan_out", "uniform", 0, (1, 2), (), jnp.float32)),
    ("glorot_uniform", (0, (1, 2), (), jnp.float32)),
    ("glorot_normal", (0, (1, 2))),
    ("he_uniform", ((0, 1), 2)),
    ("he_normal", (0, (1, 2), (), jnp.float32)),
    ("lecun_uniform", (1, 2, 0)),
    ("lecun_normal", (0, (1, 2), (), jnp.float32)),
    ("orthogonal", (0.5, 0, jnp.float32)),
    ("delta_orthogonal", (0.5, -1, jnp.float32)),
]


@pytest.mark.parametrize(("name", "args"), JAX_POSITIONAL, ids=[n for n, _ in JAX_POSITIONAL])
def test_jax_positional_calls_mean_what_they_mean_in_jax(name, args):
    shape = (4, 4, 8) if name != "delta_orthogonal" else (3, 4, 8)
    ours = getattr(fi, name)(*args)(KEY, shape)
    theirs = getattr(jax.nn.initializers, name)(*args)(KEY, shape)
    assert ours.dtype == theirs.dtype
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=0)


def test_every_jax_twin_name_is_covered():
    shared = {n for n in FACTORIES if hasattr(jax.nn.initializers, n)}
    assert shared == {n for n, _ in JAX_POSITIONAL} | set(TORCH_NAMED)


def test_orthogonal_batch_axis_is_keyword_only():
    with pytest.raises(TypeError, match="takes 3 positional arguments"):
        fi.orthogonal(1.0, -1, 0, jnp.float32)
    q = fi.orthogonal(batch_axis=0)(KEY, (2, 4, 4))
    assert q.shape == (2, 4, 4)


# ----------------------------------------------------------------- default dtype

IDS = [entry[0] for entry in CATALOGUE]


def shape_for(entry):
    return (4, 4) if entry[3] == 2 else (3, 4, 4)


@pytest.fixture(params=[False, True], ids=["x32", "x64"])
def x64(request):
    with jax.enable_x64(request.param):
        yield request.param


def out_dtype(init, *args):
    """The dtype of ``init(key, *args)``, traced without compiling or running: the dtype
    is decided in Python at trace time, the same code path as an eager call."""
    return jax.eval_shape(lambda key: init(key, *args), jax.random.key(0)).dtype


@pytest.mark.parametrize("entry", CATALOGUE, ids=IDS)
def test_default_dtype_follows_jax(entry, x64):
    init = entry[1]
    expected = np.dtype(jnp.float64 if x64 else jnp.float32)
    # jax's own rule, read from the installed jax.
    assert jax.nn.initializers.zeros(None, (1,)).dtype == expected
    assert out_dtype(init, shape_for(entry)) == expected
    assert out_dtype(init, shape_for(entry), None) == expected


@pytest.mark.parametrize("entry", CATALOGUE, ids=IDS)
def test_explicit_dtype_wins_under_x64(entry, x64):
    assert out_dtype(entry[1], shape_for(entry), jnp.float32) == jnp.float32


COMBINATORS = [
    ("scaled", lambda init: fii.scaled(init, 0.5)),
    ("layerwise", lambda init: fii.layerwise(init)),
    ("blockwise", lambda init: fii.blockwise(init, 2)),
]
INNER = [
    ("he_normal", fi.he_normal),
    ("normal", lambda dtype: fi.normal(0.1, dtype)),
    ("orthogonal", lambda dtype: fi.orthogonal(dtype=dtype)),
    ("constant", lambda dtype: fi.constant(0.5, dtype)),
]


@pytest.mark.parametrize(("combinator", "wrap"), COMBINATORS, ids=[c for c, _ in COMBINATORS])
@pytest.mark.parametrize(("inner", "make"), INNER, ids=[n for n, _ in INNER])
def test_combinators_keep_the_wrapped_default(combinator, wrap, inner, make, x64):
    shape = (2, 4, 4)
    float_ = np.dtype(jnp.float64 if x64 else jnp.float32)
    if inner == "he_normal":
        plain = wrap(make())
        custom = wrap(make(dtype=jnp.bfloat16))
    else:
        plain, custom = wrap(make(None)), wrap(make(jnp.bfloat16))
    assert out_dtype(plain, shape) == float_
    assert out_dtype(custom, shape) == jnp.bfloat16
    assert out_dtype(custom, shape, jnp.float16) == jnp.float16


def test_x64_matches_the_explicit_float64_draw():
    with jax.enable_x64(True):
        default = fii.scaled(fi.he_normal(), 0.5)(jax.random.key(0), (8, 8))
        explicit = fii.scaled(fi.he_normal(), 0.5)(jax.random.key(0), (8, 8), jnp.float64)
    np.testing.assert_array_equal(default, explicit)


def test_flax_passes_its_param_dtype_unchanged():
    import flax.linen as nn

    with jax.enable_x64(True):
        params = nn.Dense(3, kernel_init=fii.scaled(fi.he_normal(), 0.5), bias_init=fi.zeros).init(
            jax.random.key(0), jnp.ones((1, 2))
        )
    # Flax's param_dtype default is float32 and it passes it explicitly.
    assert params["params"]["kernel"].dtype == jnp.float32
    assert params["params"]["bias"].dtype == jnp.float32
