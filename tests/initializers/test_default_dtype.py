"""One default-dtype rule for every initializer and combinator, jax's: with no dtype
given, float32, or float64 under ``jax_enable_x64`` (``dtypes.default_float_dtype()``,
read when the initializer is called); a factory's ``dtype=`` is the default instead,
and combinators leave the default to the initializer they wrap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import CATALOGUE

import flaxinit as fi

IDS = [entry[0] for entry in CATALOGUE]


def shape_for(entry):
    return (4, 4) if entry[3] == 2 else (3, 4, 4)


@pytest.fixture(params=[False, True], ids=["x32", "x64"])
def x64(request):
    with jax.enable_x64(request.param):
        yield request.param


@pytest.mark.parametrize("entry", CATALOGUE, ids=IDS)
def test_default_dtype_follows_jax(entry, x64):
    init = entry[1]
    expected = np.dtype(jnp.float64 if x64 else jnp.float32)
    # jax's own rule, read from the installed jax.
    assert jax.nn.initializers.zeros(None, (1,)).dtype == expected
    assert init(jax.random.key(0), shape_for(entry)).dtype == expected
    assert init(jax.random.key(0), shape_for(entry), None).dtype == expected


@pytest.mark.parametrize("entry", CATALOGUE, ids=IDS)
def test_explicit_dtype_wins_under_x64(entry, x64):
    x = entry[1](jax.random.key(0), shape_for(entry), jnp.float32)
    assert x.dtype == jnp.float32


COMBINATORS = [
    ("scaled", lambda init: fi.scaled(init, 0.5)),
    ("stacked", lambda init: fi.stacked(init)),
    ("blockwise", lambda init: fi.blockwise(init, 2)),
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
    key, shape = jax.random.key(0), (2, 4, 4)
    float_ = np.dtype(jnp.float64 if x64 else jnp.float32)
    if inner == "he_normal":
        plain = wrap(make())
        custom = wrap(make(dtype=jnp.bfloat16))
    else:
        plain, custom = wrap(make(None)), wrap(make(jnp.bfloat16))
    assert plain(key, shape).dtype == float_
    assert custom(key, shape).dtype == jnp.bfloat16
    assert custom(key, shape, jnp.float16).dtype == jnp.float16


def test_x64_matches_the_explicit_float64_draw():
    with jax.enable_x64(True):
        default = fi.scaled(fi.he_normal(), 0.5)(jax.random.key(0), (8, 8))
        explicit = fi.scaled(fi.he_normal(), 0.5)(jax.random.key(0), (8, 8), jnp.float64)
    np.testing.assert_array_equal(default, explicit)


def test_flax_passes_its_param_dtype_unchanged():
    import flax.linen as nn

    with jax.enable_x64(True):
        params = nn.Dense(3, kernel_init=fi.scaled(fi.he_normal(), 0.5), bias_init=fi.zeros).init(
            jax.random.key(0), jnp.ones((1, 2))
        )
    # Flax's param_dtype default is float32 and it passes it explicitly.
    assert params["params"]["kernel"].dtype == jnp.float32
    assert params["params"]["bias"].dtype == jnp.float32
