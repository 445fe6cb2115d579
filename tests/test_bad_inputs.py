"""The catalogue of bad inputs (issue 15, "No silent wrong result"): each case is a
mistake a user can make, and the clear error it must raise instead of a silently wrong
result or an error that blames something else.

To add a case, append a ``Case(description, call, error, fragment)`` to ``CASES``:
``call`` takes no arguments and makes the mistake; ``error`` is the exception type
expected (``ValueError``/``TypeError``); ``fragment`` is a plain substring (not a regex)
the message must contain, naming the argument, path, shape or dtype and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import flaxinit as fi
from flaxinit.models import NNXLSTMClassifier
from flaxinit.recipes import lstm
from flaxinit.rules import merge_pretrained
from flaxinit.sharding import init_sharded, nnx_init_sharded, partition_specs


class Case(NamedTuple):
    description: str
    call: Callable[[], object]
    error: type[Exception]
    fragment: str


KEY = jax.random.key(0)
X = jnp.ones((1, 4))


def _mesh():
    return jax.make_mesh((2, 4), ("data", "model"))


def _logical_mlp():
    init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
    return nn.Dense(8, kernel_init=init)


def _nnx_logical():
    return nnx.Linear(4, 8, kernel_metadata={"out_sharding": ("embed", "mlp")}, rngs=nnx.Rngs(0))


def _width_mismatch():
    def tree(width):
        return {"params": {f"block_{i:02d}": {"kernel": jnp.zeros((width, 4))} for i in range(30)}}

    return merge_pretrained(tree(8), tree(16))


def _nnx_fused_lstm():
    return NNXLSTMClassifier(3, hidden=4, cell="optimized", rngs=nnx.Rngs(0))


class _LogitsAndHidden(nn.Module):
    """Returns ``(logits, hidden)``: both fit integer labels of shape (batch,)."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(8)(x))
        return nn.Dense(3)(h), h


def _report_on_tuple_output(labels):
    model = _LogitsAndHidden()
    return fi.health_report(model, X, labels, variables=model.init(KEY, X))


class _NNXScanBatchNorm(nnx.Module):
    """An nnx.scan stack of Linear -> BatchNorm blocks (vmapped construction)."""

    def __init__(self, rngs):
        @nnx.split_rngs(splits=2)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(r):
            return nnx.Sequential(nnx.Linear(4, 4, rngs=r), nnx.BatchNorm(4, rngs=r))

        self.blocks = make(rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def step(x, block):
            return block(x)

        return step(x, self.blocks)


CASES = [
    # Item 5: logical partitioning names that map to no mesh axis.
    Case(
        "init_sharded: Linen logical names without logical_axis_rules",
        lambda: init_sharded(_logical_mlp(), KEY, X, mesh=_mesh()),
        ValueError,
        "logical_axis_rules=[('embed', 'data'), ('mlp', 'model')]",
    ),
    Case(
        "init_sharded: a Linen logical name the rules leave out",
        lambda: init_sharded(
            _logical_mlp(), KEY, X, mesh=_mesh(), logical_axis_rules=[("embed", "data")]
        ),
        ValueError,
        "logical axis name 'mlp' maps to no mesh axis",
    ),
    Case(
        "partition_specs: Linen logical names without rules",
        lambda: partition_specs(jax.eval_shape(_logical_mlp().init, KEY, X), mesh=_mesh()),
        ValueError,
        "'params/kernel' (4, 8)",
    ),
    Case(
        "nnx_init_sharded: NNX out_sharding names that are neither mapped nor mesh axes",
        lambda: nnx_init_sharded(_nnx_logical, mesh=_mesh()),
        ValueError,
        "logical axis names 'embed', 'mlp' map to no mesh axis",
    ),
    # Item 6: a factory handed over uncalled.
    Case(
        "Linen kernel_init=fi.he_normal (not called)",
        lambda: nn.Dense(4, kernel_init=fi.he_normal).init(KEY, X),
        TypeError,
        "did you mean fi.he_normal()?",
    ),
    Case(
        "Linen kernel_init=fi.orthogonal with a legacy PRNGKey",
        lambda: nn.Dense(4, kernel_init=fi.orthogonal).init(jax.random.PRNGKey(0), X),
        TypeError,
        "did you mean fi.orthogonal()?",
    ),
    Case(
        "NNX kernel_init=fi.kaiming_uniform (not called)",
        lambda: nnx.Linear(4, 4, kernel_init=fi.kaiming_uniform, rngs=nnx.Rngs(0)),
        TypeError,
        "did you mean fi.kaiming_uniform()?",
    ),
    Case(
        "rule action ('kernel', fi.he_normal) (not called)",
        lambda: fi.apply_rules({"kernel": jnp.zeros((4, 4))}, [("kernel", fi.he_normal)], key=KEY),
        TypeError,
        "did you mean fi.he_normal()?",
    ),
    Case(
        "rule action ('kernel', fi.variance_scaling) without key=",
        lambda: fi.apply_rules({"kernel": jnp.zeros((4, 4))}, [("kernel", fi.variance_scaling)]),
        TypeError,
        "did you mean fi.variance_scaling(...)?",
    ),
    Case(
        "bias_init=fi.constant (not called)",
        lambda: nn.Dense(4, bias_init=fi.constant).init(KEY, X),
        TypeError,
        "did you mean fi.constant(...)?",
    ),
    # Item 7: jax-style positional calls of the PyTorch-named factories, and gain=0.
    Case(
        "fi.xavier_uniform(0): jax's in_axis=0, here it would be gain=0",
        lambda: fi.xavier_uniform(0),
        TypeError,
        "xavier_uniform() takes keyword arguments only",
    ),
    Case(
        "fi.xavier_normal(1.0) positional",
        lambda: fi.xavier_normal(1.0),
        TypeError,
        "fi.xavier_normal(in_axis=...)",
    ),
    Case(
        "fi.kaiming_uniform(math.sqrt(5)) positional",
        lambda: fi.kaiming_uniform(math.sqrt(5)),
        TypeError,
        "fi.kaiming_uniform(a=...)",
    ),
    Case(
        "fi.kaiming_normal(0, 1): jax's in_axis=0, out_axis=1",
        lambda: fi.kaiming_normal(0, 1),
        TypeError,
        "jax.nn.initializers.kaiming_normal is he_normal",
    ),
    Case(
        "fi.xavier_uniform(gain=0): every weight zero",
        lambda: fi.xavier_uniform(gain=0),
        ValueError,
        "allow_zero=True",
    ),
    Case(
        "fi.xavier_normal(gain=0.0): every weight zero",
        lambda: fi.xavier_normal(gain=0.0),
        ValueError,
        "xavier_normal: gain=0",
    ),
    Case(
        "fi.orthogonal(1.0, -1, 0, jnp.float32): batch_axis is keyword-only",
        lambda: fi.orthogonal(1.0, -1, 0, jnp.float32),
        TypeError,
        "pass the others by keyword (batch_axis)",
    ),
    # Item 13: a width mismatch in merge_pretrained names a few paths and counts the rest.
    Case(
        "merge_pretrained: width mismatch at 30 leaves",
        _width_mismatch,
        ValueError,
        "'params/block_04/kernel': fresh (8, 4) vs pretrained (16, 4); and 25 more",
    ),
    # Item 14: the per-gate LSTM recipe on NNX's fused OptimizedLSTMCell.
    Case(
        "recipes.lstm() on an NNX OptimizedLSTMCell without fused=True",
        lambda: fi.apply_rules(_nnx_fused_lstm(), lstm(), key=KEY),
        ValueError,
        "Use lstm(fused=True)",
    ),
    Case(
        "recipes.lstm() on an NNX OptimizedLSTMCell, strict=False",
        lambda: fi.apply_rules(_nnx_fused_lstm(), lstm(), key=KEY, strict=False),
        ValueError,
        "lstm(fused=True)",
    ),
    # Item 11: the default loss on a model returning several arrays.
    Case(
        "health_report: (logits, hidden) both fit the labels",
        lambda: _report_on_tuple_output(jnp.zeros((1,), jnp.int32)),
        ValueError,
        "2 outputs fit the labels (1,) int32",
    ),
    Case(
        "health_report: no output of (logits, hidden) fits the labels",
        lambda: _report_on_tuple_output(jnp.zeros((1, 2), jnp.int32)),
        ValueError,
        "e.g. loss_fn=lambda outputs, labels: flaxinit.diagnostics.default_loss(outputs[0]",
    ),
    Case(
        "gradient_stats: float labels of another shape than the output",
        lambda: fi.diagnostics.gradient_stats(
            nn.Dense(3), X, jnp.zeros((1,)), variables=nn.Dense(3).init(KEY, X)
        ),
        ValueError,
        "does not fit the labels (1,) float32",
    ),
    # Item 12: an nnx.scan stack with BatchNorm, with labels (the backward pass).
    Case(
        "health_report: NNX nnx.scan stack with BatchNorm and labels",
        lambda: fi.health_report(
            _NNXScanBatchNorm(nnx.Rngs(0)), jnp.ones((2, 4)), jnp.zeros((2, 4))
        ),
        ValueError,
        "runs inside a JAX transform of the model",
    ),
]


def _zoo_gpt_tree(num_layers: int):
    from flaxinit.models import GPT

    tokens = jnp.zeros((1, 4), jnp.int32)
    shapes = jax.eval_shape(GPT(num_layers=num_layers).init, KEY, tokens)
    return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)


_HEAD = {"head": {"kernel": jnp.ones((64, 10)), "bias": jnp.zeros((10,))}}
_BIAS = {"b": jnp.zeros((64,))}

CASES += [
    # Item 1: at[] out of range or partial.
    Case(
        "at[..., 64:128] on a (64,) bias",
        lambda: fi.apply_rules(_BIAS, [("b", fi.at[..., 64:128](fi.fill(1.0)))]),
        ValueError,
        "'b' of shape (64,): axis 0 has size 64",
    ),
    Case(
        "at[200] on a (64,) bias",
        lambda: fi.apply_rules(_BIAS, [("b", fi.at[200](fi.fill(1.0)))]),
        ValueError,
        "index 200 is outside [-64, 64)",
    ),
    Case(
        "at[32:96] on a (64,) bias sets only 32 entries",
        lambda: fi.apply_rules(_BIAS, [("b", fi.at[32:96](fi.fill(1.0)))]),
        ValueError,
        "slice 32:96 reaches outside [0, 64]",
    ),
    # Item 2: per_layer on a leaf nothing says is a stack.
    Case(
        "per_layer on a (64, 10) head",
        lambda: fi.apply_rules(_HEAD, [("head/kernel", fi.per_layer(fi.scale(0.5)))]),
        ValueError,
        "say so with per_layer(..., axis=0)",
    ),
    # Item 3: a recipe's num_layers against the tree's depth.
    Case(
        "gpt2(12) on a 2-layer tree",
        lambda: fi.apply_rules(_zoo_gpt_tree(2), fi.recipes.gpt2(12), key=KEY),
        ValueError,
        "built for num_layers=12, but the model has 2 layers",
    ),
    # Item 4: a recipe on the wrong model names its keyword, not strict=False.
    Case(
        "gpt2 on a tree without its residual names",
        lambda: fi.apply_rules(
            {"params": {"Conv_0": {"kernel": jnp.zeros((3, 3, 3, 8))}}},
            fi.recipes.gpt2(2),
            key=KEY,
        ),
        ValueError,
        "pass gpt2(residual=<this model's pattern>) or None",
    ),
    # Item 10: a fan-based re-draw reaching a 1-D leaf names the rule and the leaf.
    Case(
        "('*', he_normal()) reaching a bias",
        lambda: fi.apply_rules(
            {"dense": {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros((3,))}},
            [("*", fi.he_normal())],
            key=KEY,
        ),
        ValueError,
        "failed on the leaf at 'dense/bias' of shape (3,)",
    ),
    # Issue 14: role selectors and structures.
    Case(
        "a role selector without structure=",
        lambda: fi.apply_rules(_BIAS, [("@mlp_out", fi.scale(0.5))]),
        ValueError,
        "pass structure=fi.model_structure(model, *inputs)",
    ),
    Case(
        "an unknown role",
        lambda: fi.apply_rules(_BIAS, [("@mlp_output", fi.scale(0.5))]),
        ValueError,
        "unknown role '@mlp_output'; roles: @embedding",
    ),
    Case(
        "a structure of another model",
        lambda: fi.apply_rules(
            _zoo_gpt_tree(2),
            [("bias", fi.fill(0.0))],
            structure=fi.model_structure(nn.Dense(3), X),
        ),
        ValueError,
        "structure= does not describe this tree",
    ),
]


def _mlp_shapes(width: int):
    model = nn.Sequential([nn.Dense(width), nn.relu, nn.Dense(width), nn.relu, nn.Dense(3)])
    return jax.eval_shape(model.init, KEY, X)


# Issue 17: muP.
CASES += [
    Case(
        "mup: base of another model",
        lambda: fi.mup.rules(_mlp_shapes(16), {"params": {"layers_0": {"kernel": X}}}),
        ValueError,
        "base has no leaf at 'params/layers_0/bias'",
    ),
    Case(
        "mup: no width differs and no delta",
        lambda: fi.mup.scale_updates(_mlp_shapes(16), _mlp_shapes(16)),
        ValueError,
        "pass base at another width, or delta=",
    ),
    Case(
        "mup: a growing axis outside the fan axes",
        lambda: fi.mup.base_shapes({"w": jnp.zeros((8, 4, 4))}, {"w": jnp.zeros((4, 4, 4))}),
        ValueError,
        "axis 0 of the leaf at 'w' (shape (8, 4, 4), base (4, 4, 4)) grows",
    ),
    Case(
        "mup: an unsupported optimizer",
        lambda: fi.mup.scale_updates(_mlp_shapes(16), _mlp_shapes(8), optimizer="lion"),
        ValueError,
        "optimizer must be one of ('adam', 'sgd'), got optimizer='lion'",
    ),
    Case(
        "mup: init rules from an abstract base",
        lambda: fi.mup.rules(_mlp_shapes(16), _mlp_shapes(8)),
        ValueError,
        "Pass base=base_model.init(key, x)",
    ),
    Case(
        "mup: scale_updates on a tree it was not built for",
        lambda: fi.mup.scale_updates(_mlp_shapes(16)["params"], _mlp_shapes(8)["params"]).update(
            _mlp_shapes(32)["params"], None
        ),
        ValueError,
        "the update at 'layers_0/bias' has shape (32,) but the parameters it was built for",
    ),
]


# Issue 18: one argument check (flaxinit._checks), one message naming caller, argument
# and value, whether the caller is an initializer, a combinator, a recipe or LSUV.
CASES += [
    Case(
        "fi.normal(0.1, 0.0): a mean passed where the dtype goes",
        lambda: fi.normal(0.1, 0.0),
        TypeError,
        "normal: dtype must be a dtype, got dtype=0.0",
    ),
    Case(
        "fi.variance_scaling with an unknown mode",
        lambda: fi.variance_scaling(1.0, "fan_sum", "normal"),
        ValueError,
        "variance_scaling: mode must be one of 'fan_in', 'fan_out', 'fan_avg', 'fan_geo_avg', "
        "got mode='fan_sum'",
    ),
    Case(
        "blockwise with 0 blocks",
        lambda: fi.initializers.blockwise(fi.orthogonal(), 0),
        ValueError,
        "blockwise: num_blocks must be an int >= 1, got num_blocks=0",
    ),
    Case(
        "gpt2(2.0): a float layer count",
        lambda: fi.recipes.gpt2(2.0),
        TypeError,
        "gpt2: num_layers must be an int, got num_layers=2.0",
    ),
    Case(
        "lstm(fused=1): an int for a flag",
        lambda: lstm(fused=1),
        TypeError,
        "lstm: fused must be a bool, got fused=1",
    ),
    Case(
        "lsuv(tol=0)",
        lambda: fi.lsuv(nn.Dense(3), None, jnp.ones((4, 4)), key=KEY, tol=0),
        ValueError,
        "lsuv: tol must be > 0, got tol=0.0",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.description for c in CASES])
def test_bad_input_raises_clearly(case):
    with pytest.raises(case.error) as info:
        case.call()
    assert case.fragment in str(info.value), str(info.value)


def test_cases_are_well_formed():
    descriptions = [c.description for c in CASES]
    assert len(descriptions) == len(set(descriptions)), "descriptions must be unique"
    for case in CASES:
        assert issubclass(case.error, Exception)
        assert case.fragment, case.description
