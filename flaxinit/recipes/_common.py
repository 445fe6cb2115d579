"""What the recipes share: pattern arguments, argument checks, default layout names,
and :class:`LayerInit`, a re-draw whose initializer depends on the layer.

Per-layer leaves. A rule on a parameter that lives inside a repeated block (attention,
MLP) is wrapped in ``per_layer``: a leaf whose path names its layer (``blocks_3/...``,
``layers_3/...``, ``h_3/...``, ``blocks/3/...``) is one layer, and any other leaf such
a rule hits is a stack of layers along axis 0 (``nn.scan``, ``nnx.vmap``), processed
slice by slice with the key of the same layer in an unrolled model.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from flaxinit.initializers import Initializer
from flaxinit.rules import RuleContext, compile_pattern, per_layer, reinit
from flaxinit.rules.actions import Action

Patterns = str | Sequence[str] | None
Rules = list[tuple[str, Any]]

# Default layout names: the stock Flax modules (MultiHeadDotProductAttention /
# MultiHeadAttention, Embed, LayerNorm/BatchNorm/RMSNorm) and the zoo's MLP block.
QUERY = "query/kernel"
KEY = "key/kernel"
VALUE = "value/kernel"
ATTN_OUT = "out/kernel"
MLP_IN = "fc1/kernel"
MLP_OUT = "fc2/kernel"
EMBEDDING = "embedding"
HEAD = "head/kernel"
HEAD_BIAS = "head/bias"
KERNEL = "kernel"
BIAS = "bias"
# A norm module: a name containing "norm"/"Norm" (LayerNorm_0, BatchNorm_1, RMSNorm_0,
# encoder_norm, norm1) or starting with "ln"/"bn" (ln_f, ln1, bn2, bn_stem).
_NORM = r"(?:[^/]*[Nn]orm[^/]*|ln[^/]*|bn[^/]*)"
NORM_SCALE = rf"re:(?:.*/)?{_NORM}/scale"
NORM_BIAS = rf"re:(?:.*/)?{_NORM}/bias"


# --------------------------------------------------------------------------- checks


def pattern_list(value: Patterns, recipe: str, arg: str) -> list[str]:
    """``value`` as a list of validated patterns; ``None`` is the empty list."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    try:
        items = list(items)
    except TypeError:
        raise TypeError(
            f"{recipe}: {arg} must be a pattern, a sequence of patterns or None, got {value!r}"
        ) from None
    for p in items:
        if not isinstance(p, str):
            raise TypeError(f"{recipe}: {arg} must hold pattern strings, got {p!r}")
        try:
            compile_pattern(p)
        except ValueError as e:
            raise ValueError(f"{recipe}: {arg}: {e}") from None
    return items


def rules_for(value: Patterns, action: Any, recipe: str, arg: str) -> Rules:
    """One ``(pattern, action)`` rule per pattern of ``value``."""
    return [(p, action) for p in pattern_list(value, recipe, arg)]


def check_positive_int(value: Any, recipe: str, arg: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{recipe}: {arg} must be an int, got {arg}={value!r}")
    if value < minimum:
        raise ValueError(f"{recipe}: {arg} must be >= {minimum}, got {arg}={value}")
    return int(value)


def check_float(
    value: Any, recipe: str, arg: str, *, positive: bool = False, nonnegative: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{recipe}: {arg} must be a number, got {arg}={value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{recipe}: {arg} must be finite, got {arg}={value}")
    if positive and value <= 0:
        raise ValueError(f"{recipe}: {arg} must be > 0, got {arg}={value}")
    if nonnegative and value < 0:
        raise ValueError(f"{recipe}: {arg} must be >= 0, got {arg}={value}")
    return value


# --------------------------------------------------------------------------- layer init

# How a projection kernel's axes split into input and output, for one layer:
# "in" projections (query/key/value, fc1) read from axis 0 and write the rest
# ((d, heads, head_dim) or (d, d_ff)); "out" projections (attention out, fc2) read
# every axis but the last ((heads, head_dim, d) or (d_ff, d)); "flax" is compute_fans'
# default ((*window, in, out)).
KINDS = ("in", "out", "flax")


def projection_axes(kind: str, ndim: int) -> tuple[Any, Any]:
    """``(in_axis, out_axis)`` of one layer's kernel of rank ``ndim``."""
    if kind == "in":
        return 0, tuple(range(1, ndim))
    if kind == "out":
        return tuple(range(ndim - 1)), ndim - 1
    return -2, -1


def projection_fans(kind: str, shape: Sequence[int]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of one layer's kernel (see :func:`projection_axes`)."""
    if kind == "flax":
        from flaxinit.initializers import compute_fans

        return compute_fans(tuple(shape))
    ins, outs = projection_axes(kind, len(shape))
    ins = (ins,) if isinstance(ins, int) else ins
    outs = (outs,) if isinstance(outs, int) else outs
    return math.prod(shape[a] for a in ins), math.prod(shape[a] for a in outs)


@dataclasses.dataclass(frozen=True)
class Layer:
    """What a :class:`LayerInit` builder sees: the context and the layer's fans."""

    ctx: RuleContext
    fan_in: int
    fan_out: int

    @property
    def layer(self) -> int:
        """The layer index; raises if the leaf has none."""
        if self.ctx.layer is None:
            raise ValueError(
                f"the leaf at {self.ctx.path!r} has no layer index: a depth-indexed recipe "
                "needs blocks named like layers_3 / blocks_3 / h_3 / blocks/3, or stacked "
                "layers (nn.scan / nnx.vmap)"
            )
        return self.ctx.layer


@dataclasses.dataclass(frozen=True, repr=False)
class LayerInit(Action):
    """Re-draws one layer's kernel with ``build(Layer) -> initializer``.

    ``kind`` says how the kernel's axes split into inputs and outputs (the fans the
    builder and the initializer see); ``num_layers``, when given, is checked against
    the length of a stack, which catches blocks whose names carry no layer index.
    """

    build: Callable[[Layer], Initializer]
    kind: str = "flax"
    name: str = "layer_init"
    num_layers: int | None = None
    needs_key = True

    def __repr__(self) -> str:
        return self.name

    def __call__(self, key: Any, leaf: jax.Array, ctx: RuleContext) -> jax.Array:
        shape = tuple(leaf.shape)
        if len(shape) < 2:
            raise ValueError(
                f"{self.name}: the leaf at {ctx.path!r} has shape {shape} per layer; a "
                "kernel has at least 2 dims. If this path names no layer index "
                "(layers_3, blocks_3, h_3, blocks/3), the rule took the leaf for a stack "
                "of layers along axis 0: rename the blocks or override the pattern"
            )
        if ctx.stacked and self.num_layers is not None and ctx.num_layers != self.num_layers:
            raise ValueError(
                f"{self.name}: the leaf at {ctx.path!r} was taken for a stack of "
                f"{ctx.num_layers} layers along axis 0, but the recipe was built for "
                f"num_layers={self.num_layers}. If it is one layer, name its block with a "
                "layer index (layers_3, blocks_3, h_3, blocks/3)"
            )
        fan_in, fan_out = projection_fans(self.kind, shape)
        init = self.build(Layer(ctx, fan_in, fan_out))
        if self.kind == "flax" or len(shape) == 2:
            return init(key, shape, leaf.dtype)
        in_axis, out_axis = projection_axes(self.kind, len(shape))
        return reinit(init, in_axis=in_axis, out_axis=out_axis)(key, leaf, ctx)


def layer_init(
    build: Callable[[Layer], Initializer],
    kind: str = "flax",
    name: str = "layer_init",
    num_layers: int | None = None,
) -> Action:
    """``per_layer(LayerInit(...))``: the rule for a kernel inside repeated blocks."""
    if kind not in KINDS:
        raise ValueError(f"layer_init: kind must be one of {KINDS}, got {kind!r}")
    return per_layer(LayerInit(build, kind, name, num_layers))


def fmt(x: float) -> str:
    """A short number for action names in reports."""
    return f"{x:.4g}"


def as_float_array(values: Any, recipe: str, arg: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{recipe}: {arg} must be numbers, got {arg}={values!r}") from None
    if arr.ndim > 1:
        raise ValueError(
            f"{recipe}: {arg} must be a number or a 1-D sequence, got {arg}={values!r}"
        )
    return arr
