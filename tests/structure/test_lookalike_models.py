"""The look-alike models build and run: the forward pass gives finite logits of the
expected shape, and Linen ``init`` traces under ``jax.eval_shape``.

To stay fast on a CPU, the Linen forward pass runs on filled-in variables of the traced
shapes rather than on a real ``init`` (compiling every model's PRNG code costs seconds each),
and each forward pass is compiled at XLA optimisation level 0.
"""

from __future__ import annotations

import functools
import os
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

sys.path.insert(0, os.path.dirname(__file__))

import lookalike_models as lm

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
TOKEN_LOGITS = (lm.BATCH, lm.SEQ, lm.VOCAB)
IMAGE_LOGITS = (lm.BATCH, lm.CLASSES)
EXPECTED = {
    "gemma_like": TOKEN_LOGITS,
    "lm1b_like": TOKEN_LOGITS,
    "lm1b_untied_like": TOKEN_LOGITS,
    "resnet_bn_like": IMAGE_LOGITS,
    "grouped_conv_like": IMAGE_LOGITS,
    "moe_like": TOKEN_LOGITS,
    "scanned_linen_like": TOKEN_LOGITS,
    "maxtext_like": TOKEN_LOGITS,
    "scanned_nnx_like": TOKEN_LOGITS,
    "mha_mlp_nnx_like": TOKEN_LOGITS,
}


def _name(factory) -> str:
    return factory.__name__.removeprefix("make_")


def _fill(abstract):
    """Concrete variables of the given shapes: small deterministic values, and positive
    ones for the BatchNorm statistics (a variance must not be negative)."""

    def one(path, s):
        wave = jnp.sin(jnp.arange(s.size, dtype=jnp.float32) * 12.9898 + 1.0).reshape(s.shape)
        if path[0].key == "batch_stats":
            return (1.0 + 0.1 * wave).astype(s.dtype)
        return (0.2 * wave).astype(s.dtype)

    return jax.tree_util.tree_map_with_path(one, abstract)


def _run(fn, *args):
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)


def test_case_names_are_the_factory_names():
    assert sorted(_name(f) for f in lm.ALL_CASES) == sorted(EXPECTED)


@pytest.mark.parametrize("factory", lm.ALL_CASES, ids=_name)
def test_forward_gives_finite_logits(factory):
    case = factory()
    assert case.name == _name(factory)
    assert isinstance(case.args, tuple)
    assert isinstance(case.kwargs, dict)
    if case.api == "linen":
        # Python kwargs such as `train` have to stay static, hence the partial.
        init = functools.partial(case.model.init, **case.kwargs)
        abstract = jax.eval_shape(init, jax.random.key(0), *case.args)
        assert "params" in abstract

        def forward(*args):
            return case.model.apply(_fill(abstract), *args, **case.kwargs)

        out = _run(forward, *case.args)
    else:
        assert case.api == "nnx"
        assert isinstance(case.model, nnx.Module)
        graphdef, state = nnx.split(case.model)

        def forward(state, *args):
            return nnx.merge(graphdef, state)(*args, **case.kwargs)

        out = _run(forward, state, *case.args)
    assert out.shape == EXPECTED[case.name]
    assert bool(jnp.all(jnp.isfinite(out)))


def test_linen_init_runs_for_real():
    """One real ``model.init`` + ``apply`` (the cheapest Linen case), as the brief promises
    ``model.init(jax.random.key(0), *args, **kwargs)`` works."""
    case = lm.make_maxtext_like()
    key = jax.random.key(0)

    def forward(key, *args):
        variables = case.model.init(key, *args, **case.kwargs)
        return case.model.apply(variables, *args, **case.kwargs)

    out = _run(forward, key, *case.args)
    assert out.shape == EXPECTED[case.name]
    assert bool(jnp.all(jnp.isfinite(out)))
