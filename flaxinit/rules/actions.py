"""Rule actions: what a rule does to the leaves its pattern matches.

An action is an :class:`Action`: called as ``action(key, leaf, ctx) -> new_leaf`` with
the leaf's per-rule key, the unboxed array and a :class:`RuleContext`. The built-in
actions are small frozen dataclasses with readable ``repr``s (shown by
``explain_rules``):

* ``reinit(init, in_axis=..., out_axis=..., batch_axis=...)``: re-draw the leaf;
* ``scale(factor)``: multiply by a number or by ``factor(ctx)``;
* ``fill(value)``: set every element to ``value`` (or ``value(ctx)``);
* ``at[index](action)`` / ``at(index, action)``: act on a slice of the leaf;
* ``per_layer(action, axis=0)``: run the action per slice of a stacked leaf;
* ``action(fn)``: your own function ``fn(key, leaf, ctx) -> leaf``.

What a rule's value may be (:func:`to_action`), recognised by type, never by the names
of a function's parameters: an :class:`Action` instance is used as is; any other
callable is an initializer ``(key, shape, dtype) -> array`` (``jax.nn.initializers``,
``flaxinit.initializers``, ``functools.partial(jax.random.normal)``, ``lambda k, s, d:
...``) and means ``reinit(init)``. Its signature must take three positional arguments;
one that cannot is a ``TypeError`` when the rule is built.

Stacking is the action's own property (:meth:`Action.layer_plan`): by default an action
runs layer by layer along a leaf's ``'layers'`` axis; ``per_layer`` names the axis.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flaxinit._checks import check_axes
from flaxinit._deprecation import warn_renamed
from flaxinit.initializers import compute_fans
from flaxinit.initializers._core import check_not_factory
from flaxinit.rules.options import warn_from_caller
from flaxinit.rules.paths import LeafInfo

__all__ = [
    "Action",
    "RuleContext",
    "action",
    "at",
    "fill",
    "per_layer",
    "reinit",
    "scale",
    "to_action",
]


# --------------------------------------------------------------------------- context


def leaf_fans(shape: Sequence[int]) -> tuple[int | None, int | None]:
    """``compute_fans`` with Flax's default axes; ``(None, None)`` below 2 dims."""
    if len(shape) < 2:
        return None, None
    return compute_fans(tuple(shape))


@dataclasses.dataclass(frozen=True)
class RuleContext:
    """What a callable action or a ``scale``/``fill`` function knows about its leaf.

    Every entry of ``apply_rules(..., context={...})`` is also readable as an
    attribute (``ctx.d_model``) or by subscript (``ctx["d_model"]``).

    Attributes:
      path: the leaf's path, keys joined by ``/`` (``params/h_3/attn/c_proj/kernel``).
      shape: the shape the action sees: one layer's slice for a stacked leaf, the
        sub-array inside ``at``.
      dtype: the leaf's dtype.
      fan_in: ``compute_fans(shape)[0]`` with Flax's default axes, or None below 2-D.
      fan_out: ``compute_fans(shape)[1]``, or None below 2-D.
      layer: the layer index: the slice index of a stacked leaf, else the index read
        from the path (``layers_3``, ``h_3``, ``blocks/3``), else None.
      num_layers: ``context['num_layers']`` when given; else the stack's length for
        a stacked leaf; else ``1 + max index`` of the leaf's own stack
        (``params/layers_*``); else the largest such count in the tree; else None.
      is_layer_slice: whether the action runs on one layer's slice of a stacked leaf
        (``stacked`` before; the old name warns).
      extra: the user's ``context`` entries.
      role: with ``structure=``, the leaf's role (see :mod:`flaxinit.structure`),
        else None.
      fan_in_axes, fan_out_axes, batch_axes: with ``structure=``, the axes (of
        ``shape``) the model contracts, carries and batches, for a leaf that has
        fan axes; else None. ``fan_in``/``fan_out`` are then their sizes' products,
        and re-draws use them.
      residual_output: with ``structure=``, whether the leaf's output reaches a
        residual add directly; else None.
      norm_offset: with ``structure=``, 1.0 for a norm computing ``x * (1 + scale)``;
        else 0.0.
    """

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fan_in: int | None
    fan_out: int | None
    layer: int | None
    num_layers: int | None
    is_layer_slice: bool = False
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    role: str | None = None
    fan_in_axes: tuple[int, ...] | None = None
    fan_out_axes: tuple[int, ...] | None = None
    batch_axes: tuple[int, ...] | None = None
    residual_output: bool | None = None
    norm_offset: float = 0.0

    @classmethod
    def make(cls, *, shape: tuple[int, ...], **fields: Any) -> RuleContext:
        """A context whose fans come from its fan axes, else Flax's convention."""
        return cls(
            shape=shape,
            **fields,
            **_fans(shape, fields.get("fan_in_axes"), fields.get("fan_out_axes")),
        )

    @property
    def stacked(self) -> bool:
        """Deprecated name of :attr:`is_layer_slice`."""
        warn_renamed("RuleContext.stacked", "RuleContext.is_layer_slice")
        return self.is_layer_slice

    @classmethod
    def reserved_names(cls) -> frozenset[str]:
        """The names a ``context`` entry may not take: the fields, methods and
        properties of the context, which an entry of that name would be hidden by.

        Example:
          >>> {"layer", "replace", "stacked"} <= RuleContext.reserved_names()
          True
        """
        names = {f.name for f in dataclasses.fields(cls)}
        names |= {n for n in dir(cls) if not n.startswith("_")}
        return frozenset(names)

    @property
    def structural_axes(self) -> tuple[Any, Any, Any] | None:
        """``(in, out, batch)`` axes to re-draw on, when a structure gives axes that
        differ from the initializers' own reading of the shape; else None.

        The initializers read ``(*window, in, out)``, where a window multiplies both
        fans (PyTorch's receptive field): right for a conv, wrong for an attention
        output ``(heads, head_dim, d)`` that contracts its leading axes.
        """
        if self.fan_in_axes is None or self.fan_out_axes is None:
            return None
        nd = len(self.shape)
        batch = self.batch_axes or ()
        if (
            not batch
            and (nd == 2 or self.role == "conv")
            and self.fan_out_axes == (nd - 1,)
            and self.fan_in_axes == tuple(range(nd - 1))
        ):
            return None  # a dense kernel's or a conv's own layout
        if not self.fan_in_axes or not self.fan_out_axes:
            return None
        return self.fan_in_axes, self.fan_out_axes, batch

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not fields: look in the user's context.
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            extra = object.__getattribute__(self, "extra")
        except AttributeError:
            raise AttributeError(name) from None
        if name in extra:
            return extra[name]
        raise AttributeError(
            f"RuleContext has no attribute {name!r}; context entries: {sorted(extra)}"
        )

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)

    def replace(self, **changes: Any) -> RuleContext:
        """A copy with ``changes``; a new ``shape`` also recomputes the fans (and
        drops structural axes if the rank changes)."""
        if "shape" in changes and "fan_in" not in changes:
            shape = tuple(changes["shape"])
            if len(shape) != len(self.shape):
                changes.update(fan_in_axes=None, fan_out_axes=None, batch_axes=None)
            ins = changes.get("fan_in_axes", self.fan_in_axes)
            outs = changes.get("fan_out_axes", self.fan_out_axes)
            changes.update(_fans(shape, ins, outs))
        return dataclasses.replace(self, **changes)


def _fans(
    shape: Sequence[int], ins: Sequence[int] | None, outs: Sequence[int] | None
) -> dict[str, int | None]:
    if ins is None or outs is None or not (ins or outs):
        fan_in, fan_out = leaf_fans(shape)
    else:
        fan_in = math.prod(shape[a] for a in ins) if ins else None
        fan_out = math.prod(shape[a] for a in outs) if outs else None
    return {"fan_in": fan_in, "fan_out": fan_out}


# --------------------------------------------------------------------------- helpers


_GENERIC_NAMES = {"init", "apply", "initializer", "_init", "fn"}


def describe(fn: Any) -> str:
    """A short readable name for an initializer or a callable."""
    if isinstance(fn, Action):
        return repr(fn)
    if isinstance(fn, functools.partial):
        return f"partial({describe(fn.func)})"
    is_fn = isinstance(fn, (types.FunctionType, types.BuiltinFunctionType, types.MethodType))
    if not is_fn and type(fn).__repr__ is not object.__repr__:
        return repr(fn)
    name = getattr(fn, "__name__", None)
    qualname = getattr(fn, "__qualname__", None) or ""
    if not name:
        return repr(fn)
    # A factory's generic closure (`normal.<locals>.init`) is named after the factory.
    if name in _GENERIC_NAMES and ".<locals>." in qualname:
        return qualname.split(".<locals>.")[-2].split(".")[-1]
    return name


def _format_index(index: Any) -> str:
    items = index if isinstance(index, tuple) else (index,)
    out = []
    for it in items:
        if it is Ellipsis:
            out.append("...")
        elif isinstance(it, slice):
            parts = ["" if v is None else str(v) for v in (it.start, it.stop, it.step)]
            out.append(":".join(parts[:2]) + (f":{parts[2]}" if it.step is not None else ""))
        elif callable(it):
            out.append(describe(it))
        else:
            out.append(repr(it))
    return ", ".join(out)


def check_result(path: str, what: str, old: Any, new: Any) -> jax.Array:
    """Returns ``new`` as an array, or raises if it changed ``old``'s shape or dtype."""
    new = jnp.asarray(new)
    if tuple(new.shape) != tuple(old.shape) or new.dtype != old.dtype:
        raise ValueError(
            f"{what} changed the leaf at {path!r}: shape {tuple(old.shape)} -> "
            f"{tuple(new.shape)}, dtype {np.dtype(old.dtype)} -> {np.dtype(new.dtype)} "
            "(actions must keep the shape and dtype of the leaf)"
        )
    return new


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_finite_factor(value: Any, where: str) -> None:
    if not _is_concrete(value):
        return
    arr = np.asarray(value)
    if np.issubdtype(arr.dtype, np.number) and not np.all(np.isfinite(arr)):
        raise ValueError(f"scale: the factor must be finite, got {value!r} ({where})")


def vmap_matches_loop(keys: Any) -> bool:
    """Whether ``vmap`` over ``keys`` draws what a loop over them draws.

    True for threefry (jax's default); rbg draws differently under vmap, so stacked
    re-draws fall back to a Python loop there to keep per-layer values exact.
    """
    if keys is None:
        return True
    if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        impl = str(jax.random.key_impl(keys))
    else:
        impl = str(jax.config.jax_default_prng_impl)
    return impl.startswith("threefry")


# --------------------------------------------------------------------------- actions


class Action:
    """The protocol of a rule's action; every action is an instance of a subclass.

    * ``__call__(key, leaf, ctx)`` acts on one (unstacked) leaf and returns an array
      of the leaf's shape and dtype.
    * ``call_stacked(keys, leaf, ctxs)`` acts on a stacked leaf whose layer axis is 0,
      with one key and one context per layer; the default loops over slices at trace
      time (so callables get concrete ``ctx.layer`` ints) and stacks the results, and
      subclasses vectorize where the result does not depend on the layer.
    * :meth:`layer_plan` says along which axis of a leaf the action runs layer by
      layer (through ``call_stacked``), and which action runs there.
    * ``needs_key``: the action draws random values (it gets a key).
    * ``overwrites``: the action replaces the whole leaf (a re-draw, a fill): an
      earlier rule's scale on the same leaf is then lost, which ``explain_rules`` flags.
    * ``assumes_layer_axis``: the action slices leaves along an axis nobody declared
      (``per_layer`` without ``axis=``), so the engine first checks that the leaf is a
      stack of layers.
    """

    needs_key: bool = False
    overwrites: bool = False
    assumes_layer_axis: bool = False

    def layer_plan(self, info: LeafInfo) -> tuple[int | None, Action]:
        """The axis of ``info``'s leaf to run along layer by layer (None: the whole
        leaf at once), and the action to run. By default the leaf's own ``'layers'``
        axis (:attr:`LeafInfo.layer_axis`) and this action."""
        return info.layer_axis, self

    def __call__(self, key: Any, leaf: jax.Array, ctx: RuleContext) -> jax.Array:
        raise NotImplementedError

    def call_stacked(self, keys: Any, leaf: jax.Array, ctxs: Sequence[RuleContext]) -> jax.Array:
        outs = []
        for i, ctx in enumerate(ctxs):
            k = None if keys is None else keys[i]
            outs.append(
                check_result(ctx.path, f"{self!r} on layer {i}", leaf[i], self(k, leaf[i], ctx))
            )
        return jnp.stack(outs)


@dataclasses.dataclass(frozen=True, repr=False)
class Reinit(Action):
    """Re-draws the leaf with an initializer; see :func:`reinit`."""

    init: Callable[..., jax.Array]
    in_axis: int | tuple[int, ...] | None = None
    out_axis: int | tuple[int, ...] | None = None
    batch_axis: int | tuple[int, ...] | None = None
    name: str | None = None
    needs_key = True
    overwrites = True

    def __repr__(self) -> str:
        args = [self.name or describe(self.init)]
        for field in ("in_axis", "out_axis", "batch_axis"):
            value = getattr(self, field)
            if value is not None:
                args.append(f"{field}={value!r}")
        return f"reinit({', '.join(args)})"

    @property
    def _has_axes(self) -> bool:
        return any(a is not None for a in (self.in_axis, self.out_axis, self.batch_axis))

    def _draw(self, key: Any, shape: tuple[int, ...], dtype: Any) -> jax.Array:
        try:
            return self._draw_shaped(key, shape, dtype)
        except (TypeError, ValueError, AttributeError) as error:
            # A plain callable is an initializer (key, shape, dtype); one written as an
            # action (key, leaf, ctx) fails here, far from the rule: say how to mark it.
            # flaxinit's, jax's and flax's initializers are not such functions.
            module = getattr(self.init, "__module__", None) or ""
            if module.split(".")[0] in ("flaxinit", "jax", "flax"):
                raise
            error.add_note(
                f"flaxinit: the rule calls {describe(self.init)} as an initializer "
                "(key, shape, dtype); if it is a (key, leaf, ctx) function, wrap it in "
                "flaxinit.rules.action(...)"
            )
            raise

    def _draw_shaped(self, key: Any, shape: tuple[int, ...], dtype: Any) -> jax.Array:
        if not self._has_axes:
            return self.init(key, shape, dtype)
        ins = -2 if self.in_axis is None else self.in_axis
        outs = -1 if self.out_axis is None else self.out_axis
        batch = () if self.batch_axis is None else self.batch_axis
        compute_fans(shape, ins, outs, batch)  # validates the axes for this shape
        nd = len(shape)
        norm = lambda a: tuple(x % nd for x in ((a,) if isinstance(a, int) else a))
        ins, outs, batch = norm(ins), norm(outs), norm(batch)
        receptive = tuple(a for a in range(nd) if a not in (*ins, *outs, *batch))
        perm = (*batch, *receptive, *ins, *outs)
        # Draw the leaf as the matrix-like (*receptive, prod(in), prod(out)) shape that
        # Flax's DenseGeneral hands its kernel_init, then put the axes back: fans and
        # orthogonality then refer to the declared in/out axes.
        draw_shape = (
            *(shape[a] for a in receptive),
            math.prod(shape[a] for a in ins),
            math.prod(shape[a] for a in outs),
        )
        n_batch = math.prod(shape[a] for a in batch)
        if batch:
            keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(
                jnp.arange(n_batch, dtype=jnp.uint32)
            )
            drawn = jax.vmap(lambda k: self.init(k, draw_shape, dtype))(keys)
        else:
            drawn = self.init(key, draw_shape, dtype)
        drawn = jnp.reshape(drawn, tuple(shape[a] for a in perm))
        return jnp.transpose(drawn, np.argsort(perm))

    def with_structure(self, ctx: RuleContext) -> Reinit:
        """This re-draw on the leaf's structural fan axes when it declares none."""
        axes = ctx.structural_axes
        if self._has_axes or axes is None:
            return self
        ins, outs, batch = axes
        return dataclasses.replace(self, in_axis=ins, out_axis=outs, batch_axis=batch or None)

    def __call__(self, key: Any, leaf: jax.Array, ctx: RuleContext) -> jax.Array:
        if key is None:
            raise ValueError(f"{self!r} at {ctx.path!r} draws random values: pass key=")
        return self.with_structure(ctx)._draw(key, tuple(leaf.shape), leaf.dtype)

    def call_stacked(self, keys: Any, leaf: jax.Array, ctxs: Sequence[RuleContext]) -> jax.Array:
        if keys is None:
            raise ValueError(f"{self!r} at {ctxs[0].path!r} draws random values: pass key=")
        if not vmap_matches_loop(keys):
            return super().call_stacked(keys, leaf, ctxs)
        shape = tuple(leaf.shape[1:])
        action = self.with_structure(ctxs[0])
        return jax.vmap(lambda k: action._draw(k, shape, leaf.dtype))(keys)


def reinit(
    init: Callable[..., jax.Array],
    *,
    in_axis: int | Sequence[int] | None = None,
    out_axis: int | Sequence[int] | None = None,
    batch_axis: int | Sequence[int] | None = None,
    name: str | None = None,
) -> Action:
    """Re-draws the leaf with ``init(key, shape, dtype)``, keeping shape and dtype.

    Without axes the initializer sees the leaf's shape and computes its own fans
    (Flax's ``(..., in, out)`` layout). With ``in_axis``/``out_axis``/``batch_axis``
    (for attention kernels ``(in, heads, head_dim)`` and ``(heads, head_dim, out)``)
    the leaf is drawn as the shape ``(*receptive, prod(in), prod(out))`` -- what
    Flax's ``DenseGeneral`` gives its ``kernel_init`` -- once per ``batch_axis``
    index, and reshaped back; so fans, orthogonality and the values all refer to the
    declared axes, for any initializer.

    Args:
      init: an initializer ``(key, shape, dtype) -> array``.
      in_axis: the input axis or axes (default ``-2`` when other axes are given).
      out_axis: the output axis or axes (default ``-1``).
      batch_axis: axes of independent weights (one draw each).
      name: a name for reports (default: the initializer's).

    Example:
      >>> from flaxinit.initializers import he_normal, lecun_normal
      >>> rules = [("Conv_*/kernel", reinit(he_normal())),
      ...          ("attn/query/kernel", reinit(lecun_normal(), in_axis=0, out_axis=(1, 2)))]
      >>> rules[1][1]
      reinit(lecun_normal(), in_axis=0, out_axis=(1, 2))
    """
    if not callable(init):
        raise TypeError(f"reinit: init must be an initializer (a callable), got {init!r}")
    check_not_factory(init, "reinit")

    def norm(value: Any, arg: str) -> int | tuple[int, ...] | None:
        return None if value is None else check_axes(value, "reinit", arg)

    return Reinit(
        init,
        norm(in_axis, "in_axis"),
        norm(out_axis, "out_axis"),
        norm(batch_axis, "batch_axis"),
        name,
    )


@dataclasses.dataclass(frozen=True, repr=False)
class Scale(Action):
    """Multiplies the leaf by a factor; see :func:`scale`."""

    factor: float | Callable[[RuleContext], Any]

    def __repr__(self) -> str:
        if callable(self.factor):
            return f"scale({describe(self.factor)})"
        return f"scale({self.factor!r})"

    def _factor(self, ctx: RuleContext) -> Any:
        if not callable(self.factor):
            return self.factor
        value = self.factor(ctx)
        _check_finite_factor(value, f"{describe(self.factor)}(ctx) at {ctx.path!r}")
        return value

    @staticmethod
    def _check_dtype(leaf: jax.Array, ctx: RuleContext) -> None:
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise TypeError(
                f"scale: the leaf at {ctx.path!r} has dtype {np.dtype(leaf.dtype)}; "
                "scaling needs a floating or complex leaf"
            )

    def __call__(self, key: Any, leaf: jax.Array, ctx: RuleContext) -> jax.Array:
        self._check_dtype(leaf, ctx)
        # The factor is cast to the leaf's dtype first, so the product is one
        # rounding in that dtype, the same for a whole stack or one layer.
        return leaf * jnp.asarray(self._factor(ctx), leaf.dtype)

    def call_stacked(self, keys: Any, leaf: jax.Array, ctxs: Sequence[RuleContext]) -> jax.Array:
        self._check_dtype(leaf, ctxs[0])
        if not callable(self.factor):
            return self(None, leaf, ctxs[0])
        factors = jnp.stack([jnp.asarray(self._factor(c), leaf.dtype) for c in ctxs])
        if factors.ndim != 1:
            return super().call_stacked(keys, leaf, ctxs)
        return leaf * factors.reshape((-1,) + (1,) * (leaf.ndim - 1))


def scale(factor: float | Callable[[RuleContext], Any]) -> Action:
    """Multiplies the leaf by ``factor``: a finite number, or ``factor(ctx)``.

    A NaN or infinite number raises when the rule is built; a function's result
    is checked at trace time when it is concrete. The product is computed in the
    leaf's dtype.

    Example:
      >>> import math
      >>> rules = [("*/attn/out/kernel",
      ...           scale(lambda ctx: 1 / math.sqrt(2 * ctx.num_layers)))]
      >>> from flaxinit.rules import apply_rules
      >>> apply_rules({"w": jax.numpy.ones(2)}, [("w", scale(0.5))])["w"].tolist()
      [0.5, 0.5]
    """
    if callable(factor):
        return Scale(factor)
    if isinstance(factor, bool) or not isinstance(
        factor, (numbers.Number, np.generic, np.ndarray, jax.Array)
    ):
        raise TypeError(f"scale: factor must be a number or a function of ctx, got {factor!r}")
    if np.ndim(factor) != 0:
        raise TypeError(f"scale: factor must be a scalar, got shape {np.shape(factor)}")
    _check_finite_factor(factor, "when building the rule")
    if not _is_concrete(factor):
        return Scale(factor)
    return Scale(np.asarray(factor).item())


@dataclasses.dataclass(frozen=True, repr=False)
class Fill(Action):
    """Sets the leaf to a constant; see :func:`fill`."""

    value: Any
    overwrites = True

    def __repr__(self) -> str:
        if callable(self.value):
            return f"fill({describe(self.value)})"
        if isinstance(self.value, (numbers.Number, np.generic)):
            return f"fill({self.value!r})"
        return f"fill(<array {np.shape(self.value)}>)"

    def _fill(self, value: Any, leaf: jax.Array, ctx: RuleContext) -> jax.Array:
        value = jnp.asarray(value, leaf.dtype)
        try:
            return jnp.broadcast_to(value, leaf.shape)
        except ValueError:
            raise ValueError(
                f"{self!r}: a value of shape {value.shape} does not broadcast to the leaf "
                f"at {ctx.path!r} of shape {tuple(leaf.shape)}"
            ) from None

    def __call__(self, key: Any, leaf: jax.Array, ctx: RuleContext) -> jax.Array:
        value = self.value(ctx) if callable(self.value) else self.value
        return self._fill(value, leaf, ctx)

    def call_stacked(self, keys: Any, leaf: jax.Array, ctxs: Sequence[RuleContext]) -> jax.Array:
        if callable(self.value):
            return super().call_stacked(keys, leaf, ctxs)
        return self._fill(self.value, leaf, ctxs[0])


def fill(value: Any) -> Action:
    """Sets every element of the leaf to ``value`` (a number, an array broadcastable
    to the leaf, or ``value(ctx)``), in the leaf's dtype.

    Example:
      >>> rules = [("*/hf/bias", fill(1.0)), ("block_*/norm2/scale", fill(0.0))]
      >>> from flaxinit.rules import apply_rules
      >>> apply_rules({"b": jax.numpy.zeros(3)}, [("b", fill([1.0, 2.0, 3.0]))])["b"].tolist()
      [1.0, 2.0, 3.0]
    """
    if not callable(value):
        try:
            np.asarray(value)
        except Exception as e:
            raise TypeError(f"fill: value must be a number or an array, got {value!r}") from e
    return Fill(value)


@dataclasses.dataclass(frozen=True, repr=False)
class At(Action):
    """Applies an action to ``leaf[index]``; see :data:`at`."""

    index: Any
    action: Action

    @property
    def needs_key(self) -> bool:  # type: ignore[override]
        return self.action.needs_key

    def __repr__(self) -> str:
        return f"at[{_format_index(self.index)}]({self.action!r})"

    def _index(self, ctx: RuleContext) -> Any:
        index = self.index(ctx) if callable(self.index) else self.index
        check_index(index, ctx.shape, f"{self!r} on the leaf at {ctx.path!r}")
        return index

    def __call__(self, key: Any, leaf: jax.Array, ctx: RuleContext) -> jax.Array:
        index = self._index(ctx)
        sub = leaf[index]
        new = self.action(key, sub, ctx.replace(shape=tuple(sub.shape)))
        new = check_result(ctx.path, f"{self!r} at index [{_format_index(index)}]", sub, new)
        return leaf.at[index].set(new)

    def call_stacked(self, keys: Any, leaf: jax.Array, ctxs: Sequence[RuleContext]) -> jax.Array:
        if callable(self.index):
            return super().call_stacked(keys, leaf, ctxs)
        check_index(self.index, ctxs[0].shape, f"{self!r} on the leaf at {ctxs[0].path!r}")
        index = self.index if isinstance(self.index, tuple) else (self.index,)
        full = (slice(None), *index)  # the index addresses one layer's slice
        sub = leaf[full]
        sub_ctxs = [c.replace(shape=tuple(sub.shape[1:])) for c in ctxs]
        new = self.action.call_stacked(keys, sub, sub_ctxs)
        new = check_result(ctxs[0].path, f"{self!r}", sub, new)
        return leaf.at[full].set(new)


def check_index(index: Any, shape: Sequence[int], where: str) -> None:
    """Raises ``ValueError`` if ``index`` reaches outside ``shape`` or selects nothing.

    numpy and jax clip slices and jax clamps integers, so ``at[..., 64:128]`` on a
    ``(64,)`` bias would set nothing and ``at[32:96]`` only 32 entries, silently.
    """
    items = index if isinstance(index, tuple) else (index,)
    if any(it is None for it in items):
        return  # a new axis: leave the bookkeeping to numpy
    explicit = [it for it in items if it is not Ellipsis]
    if sum(it is Ellipsis for it in items) > 1 or len(explicit) > len(shape):
        raise ValueError(
            f"{where}: index [{_format_index(index)}] does not fit shape {tuple(shape)}"
        )
    axes: list[int] = []
    axis = 0
    for it in items:
        if it is Ellipsis:
            axis += len(shape) - len(explicit)
            continue
        axes.append(axis)
        axis += 1
    for it, ax in zip(explicit, axes, strict=True):
        n = shape[ax]
        bad = None
        if isinstance(it, (numbers.Integral, np.integer)) and not isinstance(it, bool):
            if not -n <= int(it) < n:
                bad = f"index {int(it)} is outside [-{n}, {n})"
        elif isinstance(it, slice):
            for bound in (it.start, it.stop):
                if isinstance(bound, (numbers.Integral, np.integer)) and not -n <= int(bound) <= n:
                    bad = f"slice {_format_index(it)} reaches outside [0, {n}]"
            if bad is None and len(range(*it.indices(n))) == 0:
                bad = f"slice {_format_index(it)} selects nothing"
        elif isinstance(it, (list, np.ndarray)) and np.asarray(it).dtype.kind in "iu":
            arr = np.asarray(it)
            if arr.size and (arr.min() < -n or arr.max() >= n):
                bad = f"indices {arr.tolist()} reach outside [-{n}, {n})"
        if bad is not None:
            raise ValueError(
                f"{where} of shape {tuple(shape)}: axis {ax} has size {n}, and the {bad} "
                f"(index [{_format_index(index)}])"
            )


class _AtFactory:
    """``at(index, action)`` or ``at[index](action)``: act on ``leaf[index]``.

    ``index`` is any numpy-style index of one layer's leaf (``(..., slice(8, 16))``),
    or a function of ``ctx`` returning one, for sizes read from the shape. The
    action sees the sub-array's shape (and its fans) in ``ctx.shape``.

    Example:
      >>> # The forget gate of NNX's fused OptimizedLSTMCell bias (gates i, f, g, o).
      >>> forget = lambda ctx: (..., slice(ctx.shape[-1] // 4, ctx.shape[-1] // 2))
      >>> rules = [("*/dense_h/bias", at(forget, fill(1.0))),
      ...          ("*/dense_h/bias", at[..., 8:16](fill(1.0)))]
      >>> from flaxinit.rules import apply_rules
      >>> lstm = {"cell": {"dense_h": {"bias": jax.numpy.zeros(8)}}}
      >>> apply_rules(lstm, rules[:1])["cell"]["dense_h"]["bias"].tolist()
      [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    """

    def __call__(self, index: Any, action: Any) -> Action:
        return At(index, to_action(action))

    def __getitem__(self, index: Any) -> Callable[[Any], Action]:
        return lambda action: At(index, to_action(action))

    def __repr__(self) -> str:
        return "at"


at = _AtFactory()


@dataclasses.dataclass(frozen=True, repr=False)
class PerLayer(Action):
    """Marks an action as per-layer on a stacked leaf; see :func:`per_layer`."""

    action: Action
    axis: int | None = 0
    explicit: bool = False

    @property
    def needs_key(self) -> bool:  # type: ignore[override]
        return self.action.needs_key

    @property
    def overwrites(self) -> bool:  # type: ignore[override]
        return self.action.overwrites

    def __repr__(self) -> str:
        if self.axis is None:
            return f"per_layer({self.action!r}, axis=None)"
        suffix = "" if self.axis == 0 else f", axis={self.axis}"
        return f"per_layer({self.action!r}{suffix})"

    @property
    def assumes_layer_axis(self) -> bool:  # type: ignore[override]
        return not self.explicit

    def layer_plan(self, info: LeafInfo) -> tuple[int | None, Action]:
        # A leaf whose path names its layer (`layers_3/...`) is one layer already,
        # so one rule list serves the stacked and the unrolled layout.
        return (None if info.layer is not None else self.axis), self.action

    def __call__(self, key: Any, leaf: jax.Array, ctx: RuleContext) -> jax.Array:
        return self.action(key, leaf, ctx)


_DEFAULT_AXIS: Any = object()


def per_layer(action: Any, axis: int | None = _DEFAULT_AXIS) -> Action:
    """Runs ``action`` once per slice of ``axis``, a stacked-layer axis (default 0).

    Leaves whose partition names contain ``'layers'`` (``nn.scan`` with
    ``metadata_params={nn.PARTITION_NAME: 'layers'}``, ``nnx.vmap`` with
    ``transform_metadata={nnx.PARTITION_NAME: 'layers'}``) are stacked already;
    ``per_layer`` declares it for unannotated stacks, and ``axis=None`` turns it off.
    Without ``axis=``, a leaf is only taken for a stack when something says so: its
    partition names, ``structure=`` (the stack axis read from the computation), or
    its module's leaves all having the same length on axis 0 (a scanned block's
    kernel and bias); otherwise ``apply_rules`` raises naming the leaf, rather than
    treat a ``(64, 10)`` head's rows as 64 layers. ``axis=0`` says it outright.
    A leaf whose path carries a layer index (``layers_3/...``, ``blocks/3/...``) is
    one layer already and gets ``action`` as is, so the same rules serve a stacked
    and an unrolled model.
    Slice ``i`` gets ``ctx.layer == i``, its own shape for fans, and the key the
    same layer gets in an unrolled model, so it gets the same values.

    Example:
      >>> from flaxinit.initializers import normal
      >>> rules = [("/params/layers/**/kernel", per_layer(reinit(normal(0.02))))]
      >>> from flaxinit.rules import apply_rules
      >>> stack = {"blocks": {"b": jax.numpy.zeros((3, 2))}}  # 3 layers
      >>> layer = per_layer(fill(lambda ctx: ctx.layer), axis=0)
      >>> apply_rules(stack, [("b", layer)])["blocks"]["b"].tolist()
      [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]
    """
    explicit = axis is not _DEFAULT_AXIS
    if not explicit:
        axis = 0
    if axis is not None and (isinstance(axis, bool) or not isinstance(axis, numbers.Integral)):
        raise TypeError(f"per_layer: axis must be an int or None, got {axis!r}")
    return PerLayer(to_action(action), None if axis is None else int(axis), explicit)


@dataclasses.dataclass(frozen=True, repr=False)
class Call(Action):
    """A user function ``(key, leaf, ctx) -> leaf`` as an action; see :func:`action`."""

    fn: Callable[[Any, jax.Array, RuleContext], Any]
    needs_key = True

    def __repr__(self) -> str:
        return describe(self.fn)

    def __call__(self, key: Any, leaf: jax.Array, ctx: RuleContext) -> jax.Array:
        return self.fn(key, leaf, ctx)


def _check_signature(fn: Any, args: tuple[Any, ...], what: str) -> None:
    """Raises ``TypeError`` if ``fn`` cannot be called with ``len(args)`` positional
    arguments; a signature Python cannot read (some builtins) is taken on trust."""
    try:
        signature = inspect.signature(fn, follow_wrapped=False)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*args)
    except TypeError as e:
        raise TypeError(f"{describe(fn)}{signature} cannot be called as {what}: {e}") from None


def action(fn: Callable[[Any, jax.Array, RuleContext], Any]) -> Action:
    """Your own action: ``fn(key, leaf, ctx) -> new_leaf``, with the rule's key (None
    without ``key=``), the unboxed leaf and its :class:`RuleContext`. The result must
    have the leaf's shape and dtype. Usable as a decorator.

    Raises:
      TypeError: ``fn`` is not callable or cannot take three positional arguments.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flaxinit.rules import apply_rules
      >>> @action
      ... def halve(key, leaf, ctx):
      ...     return leaf / 2
      >>> apply_rules({"w": jnp.ones(2)}, [("w", halve)])["w"].tolist()
      [0.5, 0.5]
    """
    if isinstance(fn, Action):
        return fn
    if not callable(fn):
        raise TypeError(f"action: fn must be a function (key, leaf, ctx) -> leaf, got {fn!r}")
    _check_signature(fn, (None, None, None), "an action (key, leaf, ctx)")
    return Call(fn)


def _reads_as_action(fn: Any) -> bool:
    """Whether ``fn``'s parameters are spelled as the documented action ``(key, leaf,
    ctx)`` (its second named ``leaf`` or its third ``ctx``): such a plain function was
    run as an action before :func:`action` existed, and still is, with a warning."""
    try:
        parameters = list(inspect.signature(fn, follow_wrapped=False).parameters.values())
    except (TypeError, ValueError):
        return False
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in parameters if p.kind in kinds]
    return len(names) >= 3 and (names[1] == "leaf" or names[2] == "ctx")


def to_action(obj: Any) -> Action:
    """Turns a rule's value into an :class:`Action`.

    An :class:`Action` is kept. Any other callable is an initializer ``(key, shape,
    dtype) -> array`` and becomes ``reinit(obj)``; it must accept three positional
    arguments. Wrap your own ``(key, leaf, ctx)`` function in :func:`action`. For one
    release a plain function whose parameters read ``(key, leaf, ctx)`` (the second
    named ``leaf`` or the third ``ctx``) is still taken as an action, with a
    ``DeprecationWarning``.

    Raises:
      TypeError: ``obj`` is not callable, or cannot take ``(key, shape, dtype)``.

    Example:
      >>> to_action(lambda k, s, d: jax.numpy.zeros(s, d))
      reinit(<lambda>)
      >>> to_action(fill(0.0))
      fill(0.0)
      >>> to_action(lambda key, shape: 0)
      Traceback (most recent call last):
      ...
      TypeError: <lambda>(key, shape) cannot be called as an initializer (key, shape, dtype): too many positional arguments
    """  # noqa: E501
    if isinstance(obj, Action):
        return obj
    if not callable(obj):
        raise TypeError(
            "an action must be a flaxinit.rules action (reinit/scale/fill/at/per_layer/"
            f"action(fn)) or an initializer (key, shape, dtype), got {obj!r}"
        )
    if _reads_as_action(obj):
        warn_from_caller(
            f"a plain function {describe(obj)}(key, leaf, ctx) as a rule's action",
            f"flaxinit.rules.action({describe(obj)})",
        )
        return Call(obj)
    check_not_factory(obj, "a rule")
    _check_signature(obj, (None, None, None), "an initializer (key, shape, dtype)")
    return Reinit(obj)
