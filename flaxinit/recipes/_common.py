"""What the recipes share: pattern arguments, default layout names,
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
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from flaxinit._checks import fail
from flaxinit.initializers import Initializer
from flaxinit.rules import RuleContext, compile_pattern, fill, per_layer, reinit
from flaxinit.rules.actions import Action
from flaxinit.rules.patterns import Pattern, role_pattern

Patterns = str | Pattern | Sequence[str | Pattern] | None
Rules = list[tuple[str, Any]]

# Default patterns. Each selects by role when ``apply_rules(..., structure=)`` is
# given (see :mod:`flaxinit.structure`), else by the stock Flax names; with a
# structure, biases, norms and an untied head may be absent (optional):
# MultiHeadDotProductAttention / MultiHeadAttention, Embed, LayerNorm/BatchNorm/
# RMSNorm and the zoo's MLP block.
# A norm module: a name containing "norm"/"Norm" (LayerNorm_0, BatchNorm_1, RMSNorm_0,
# encoder_norm, norm1) or starting with "ln"/"bn" (ln_f, ln1, bn2, bn_stem).
_NORM = r"(?:[^/]*[Nn]orm[^/]*|ln[^/]*|bn[^/]*)"
QUERY = role_pattern("attention_query", "query/kernel")
KEY = role_pattern("attention_key", "key/kernel")
VALUE = role_pattern("attention_value", "value/kernel")
ATTN_OUT = role_pattern("attention_out", "out/kernel")
MLP_IN = role_pattern("mlp_in", "fc1/kernel")
MLP_OUT = role_pattern("mlp_out", "fc2/kernel")
EMBEDDING = role_pattern("embedding", "embedding")
HEAD = role_pattern("readout", "head/kernel", optional=True)
HEAD_BIAS = "head/bias"
KERNEL = role_pattern("kernel", "kernel")
BIAS = role_pattern("bias", "bias", optional=True)
NORM_SCALE = role_pattern("norm_scale", rf"re:(?:.*/)?{_NORM}/scale", optional=True)
NORM_BIAS = role_pattern("norm_bias", rf"re:(?:.*/)?{_NORM}/bias", optional=True)


class NormGain:
    """A norm scale's value for an effective gain ``g``: ``g - ctx.norm_offset``.

    A norm computing ``x * (1 + scale)`` (Gemma's RMSNorm) has gain 1 at scale 0;
    without a structure the offset is 0 and this is ``g``.
    """

    def __init__(self, gain: float) -> None:
        self.gain = float(gain)

    def __call__(self, ctx: RuleContext) -> float:
        return self.gain - ctx.norm_offset

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NormGain) and other.gain == self.gain

    def __hash__(self) -> int:
        return hash((NormGain, self.gain))

    def __repr__(self) -> str:
        return f"{self.gain:g} - norm_offset"


def norm_gain(gain: float) -> Action:
    """``fill`` a norm scale so that its effective gain is ``gain``."""
    return fill(NormGain(gain))


# --------------------------------------------------------------------------- checks


def pattern_list(value: Patterns, recipe: str, arg: str) -> list[Pattern]:
    """``value`` as a list of compiled patterns, each naming the recipe keyword that
    set it (for errors); ``None`` is the empty list."""
    if value is None:
        return []
    items = [value] if isinstance(value, (str, Pattern)) else value
    try:
        items = list(items)
    except TypeError:
        raise TypeError(
            f"{recipe}: {arg} must be a pattern, a sequence of patterns or None, got {value!r}"
        ) from None
    out = []
    for p in items:
        if not isinstance(p, (str, Pattern)):
            raise TypeError(f"{recipe}: {arg} must hold pattern strings, got {p!r}")
        try:
            compiled = compile_pattern(p)
        except ValueError as e:
            raise ValueError(f"{recipe}: {arg}: {e}") from None
        out.append(dataclasses.replace(compiled, origin=f"{recipe}({arg}=...)"))
    return out


def rules_for(value: Patterns, action: Any, recipe: str, arg: str) -> Rules:
    """One ``(pattern, action)`` rule per pattern of ``value``."""
    return [(p, action) for p in pattern_list(value, recipe, arg)]


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
    overwrites = True

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
        if ctx.is_layer_slice and self.num_layers is not None and ctx.num_layers != self.num_layers:
            raise ValueError(
                f"{self.name}: the leaf at {ctx.path!r} was taken for a stack of "
                f"{ctx.num_layers} layers along axis 0, but the recipe was built for "
                f"num_layers={self.num_layers}. If it is one layer, name its block with a "
                "layer index (layers_3, blocks_3, h_3, blocks/3)"
            )
        if (
            self.num_layers is not None
            and ctx.layer is not None
            and ctx.num_layers is not None
            and ctx.num_layers != self.num_layers
        ):
            raise ValueError(
                f"{self.name}: the recipe was built for num_layers={self.num_layers}, but "
                f"the model has {ctx.num_layers} layers (read at {ctx.path!r}, layer "
                f"{ctx.layer}); build the recipe with num_layers={ctx.num_layers}"
            )
        axes = ctx.structural_axes
        if ctx.fan_in_axes is not None and ctx.fan_in and ctx.fan_out:
            # The model's computation says which axes are contracted (Einsum layouts).
            fan_in, fan_out = ctx.fan_in, ctx.fan_out
        else:
            fan_in, fan_out = projection_fans(self.kind, shape)
            axes = None
            if self.kind != "flax" and len(shape) > 2:
                in_axis, out_axis = projection_axes(self.kind, len(shape))
                axes = (in_axis, out_axis, ())
        init = self.build(Layer(ctx, fan_in, fan_out))
        if axes is None:
            return init(key, shape, leaf.dtype)
        in_axis, out_axis, batch = axes
        return reinit(init, in_axis=in_axis, out_axis=out_axis, batch_axis=batch or None)(
            key, leaf, ctx
        )


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
        fail(TypeError, recipe, arg, "numbers", values)
    if arr.ndim > 1:
        fail(ValueError, recipe, arg, "a number or a 1-D sequence", values)
    return arr
