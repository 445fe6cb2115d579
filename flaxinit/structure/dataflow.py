"""Following parameters through a jaxpr: which ops consume each leaf, on which axes.

One forward pass over the model's jaxpr (recursing into ``jit``, ``custom_jvp``/
``custom_vjp``, remat, ``cond``, ``while`` and ``scan`` bodies) keeps, per value:

* *views*: the parameter leaves the value still *is* (after reshape, transpose,
  convert, broadcast, slicing, adding or multiplying a constant), with a map from
  the value's axes to the leaf's axes;
* *output views*: the linear layers whose output the value is, per axis (to see an
  output axis split apart or used as a batch axis by the next layer);
* *flags*: whether the value depends on the model's inputs, is normalized
  (downstream of ``rsqrt``/``sqrt`` through linear elementwise ops), is a softmax
  probability, an attention context (probabilities times values);
* *reach*: the leaves whose output reaches the value through shape and linear
  elementwise ops only (no other linear layer), for residual outputs and attention
  roles; *feeders*: the linear layers reaching it through any elementwise op (an
  MLP's hidden layer); *depth*: the number of linear layers on the longest path.

What a leaf meets is recorded as :class:`Use` facts; :mod:`flaxinit.structure.roles`
turns them into roles. Nothing here evaluates an array: the pass reads shapes and
equations only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from jax.extend import core as jcore

__all__ = ["Facts", "Use", "analyze"]

# Ops that only move or index data: views are carried with an axis map.
_SHAPE_OPS = {
    "reshape",
    "transpose",
    "broadcast_in_dim",
    "squeeze",
    "expand_dims",
    "slice",
    "dynamic_slice",
    "rev",
    "convert_element_type",
    "copy",
    "copy_p",
    "reduce_precision",
    "optimization_barrier",
    "sharding_constraint",
    "mesh_cast",
    "reshard",
    "pvary",
}
_NORMALIZERS = {"rsqrt", "sqrt"}
_REDUCTIONS = {
    "reduce_sum",
    "reduce_max",
    "reduce_min",
    "reduce_prod",
    "argmax",
    "argmin",
    "reduce_and",
    "reduce_or",
    "cumsum",
    "cumlogsumexp",
    "cummax",
    "cummin",
    "cumprod",
}
_SUB_JAXPR_KEYS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


@dataclasses.dataclass(frozen=True)
class View:
    """A leaf carried by a value.

    ``axes[i]`` are the leaf axes behind value axis ``i`` (``()`` for a broadcast
    axis); ``indexed`` are leaf axes indexed away (a scanned stack's layer axis);
    ``offset`` is a constant added to the leaf (``1 + scale``).
    """

    leaf: int
    axes: tuple[tuple[int, ...], ...]
    indexed: frozenset[int] = frozenset()
    offset: float = 0.0


@dataclasses.dataclass(frozen=True)
class Use:
    """One op that consumes a leaf.

    kind: ``linear`` (dot_general with an activation), ``conv``, ``gather``
      (rows looked up by data), ``mul``/``add`` (elementwise with an activation),
      ``statistic`` (in a normalizer's denominator or subtracted mean),
      ``param_product`` (with another parameter), ``other``.
    op: the primitive's name.
    fan_in_axes, fan_out_axes, batch_axes: leaf axes contracted, carried, batched.
    detail: a readable line for ``explain``.
    """

    kind: str
    op: str
    fan_in_axes: tuple[int, ...] = ()
    fan_out_axes: tuple[int, ...] = ()
    batch_axes: tuple[int, ...] = ()
    stacked_axes: tuple[int, ...] = ()
    normalized: bool = False
    after_linear: int | None = None
    attention_context: bool = False
    embedded: bool = False
    offset: float = 0.0
    detail: str = ""


@dataclasses.dataclass
class Facts:
    """What the pass found, per leaf and for the model."""

    num_leaves: int
    uses: list[list[Use]]
    attention: list[set[str]]
    residual: list[bool]
    residual_adds: list[frozenset[int]]
    feeders: list[set[int]]
    split_axes: list[set[int]]
    output_reach: set[int]
    order: list[int]

    def note_order(self, leaf: int) -> None:
        if leaf not in self._seen:
            self._seen.add(leaf)
            self.order.append(leaf)

    def __post_init__(self) -> None:
        self._seen: set[int] = set()


@dataclasses.dataclass(frozen=True)
class Info:
    """What the pass knows about one value (see the module docstring)."""

    views: tuple[View, ...] = ()
    outputs: tuple[View, ...] = ()
    act: bool = False
    const: bool = False
    value: float | None = None
    norm: bool = False
    probs: bool = False
    context: bool = False
    embedded: bool = False
    reach: frozenset[int] = frozenset()
    feeders: frozenset[int] = frozenset()
    linear: int | None = None
    depth: int = 0


_NOTHING = Info()
_CONST = Info(const=True)


def _shape(v: Any) -> tuple[int, ...]:
    aval = getattr(v, "aval", None)
    shape = getattr(aval, "shape", ())
    if all(type(d) is int for d in shape):
        return shape
    return tuple(int(d) if isinstance(d, (int, np.integer)) else -1 for d in shape)


def axes_union(groups: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    out: list[int] = []
    for g in groups:
        for a in g:
            if a not in out:
                out.append(a)
    return tuple(out)


# --------------------------------------------------------------------------- axis maps


def _reshape_map(src: Sequence[int], dst: Sequence[int]) -> list[list[int]] | None:
    """Per output axis, the input axes it comes from (a reshape's grouping)."""
    out: list[list[int]] = [[] for _ in dst]
    i = j = 0
    src_nz = [(k, s) for k, s in enumerate(src) if s != 1]
    dst_nz = [(k, s) for k, s in enumerate(dst) if s != 1]
    while i < len(src_nz) and j < len(dst_nz):
        gi, gj = [src_nz[i]], [dst_nz[j]]
        pi, pj = src_nz[i][1], dst_nz[j][1]
        i += 1
        j += 1
        while pi != pj:
            if pi < pj:
                if i >= len(src_nz):
                    return None
                gi.append(src_nz[i])
                pi *= src_nz[i][1]
                i += 1
            else:
                if j >= len(dst_nz):
                    return None
                gj.append(dst_nz[j])
                pj *= dst_nz[j][1]
                j += 1
        for k, _ in gj:
            out[k] = [a for a, _ in gi]
    if i != len(src_nz) or j != len(dst_nz):
        return None
    return out


def _axis_map(eqn: Any, in_shape: tuple[int, ...]) -> tuple[list[list[int]], set[int]] | None:
    """For a shape op: per output axis the input axes behind it, and the input axes
    indexed down to one element (removed by a later squeeze or reshape)."""
    name = eqn.primitive.name
    p = eqn.params
    out_shape = _shape(eqn.outvars[0])
    nd = len(in_shape)
    if name in ("transpose",):
        return [[a] for a in p["permutation"]], set()
    if name == "reshape":
        m = _reshape_map(in_shape, out_shape)
        return (m, set()) if m is not None else None
    if name == "broadcast_in_dim":
        out: list[list[int]] = [[] for _ in out_shape]
        for i, d in enumerate(p["broadcast_dimensions"]):
            if in_shape[i] == out_shape[d]:
                out[d] = [i]
        return out, set()
    if name == "squeeze":
        dims = {d % nd for d in p["dimensions"]}
        return [[a] for a in range(nd) if a not in dims], set()
    if name == "expand_dims":
        dims = {d % len(out_shape) for d in p["dimensions"]}
        it = iter(range(nd))
        return [[] if k in dims else [next(it)] for k in range(len(out_shape))], set()
    if name in ("slice", "dynamic_slice"):
        indexed = {a for a in range(nd) if out_shape[a] == 1 and in_shape[a] > 1}
        return [[a] for a in range(nd)], indexed
    if len(out_shape) == nd:  # convert, copy, rev, sharding constraints
        return [[a] for a in range(nd)], set()
    return None


def _map_view(view: View, amap: list[list[int]], indexed: set[int]) -> View:
    """``view`` after a shape op; leaf axes on ``indexed`` axes become indexed away."""
    newly = {la for a in indexed for la in view.axes[a]}
    axes = tuple(axes_union([view.axes[a] for a in src if a not in indexed]) for src in amap)
    return dataclasses.replace(view, axes=axes, indexed=view.indexed | newly)


# --------------------------------------------------------------------------- the pass


class _Pass:
    def __init__(self, num_leaves: int) -> None:
        self.facts = Facts(
            num_leaves=num_leaves,
            uses=[[] for _ in range(num_leaves)],
            attention=[set() for _ in range(num_leaves)],
            residual=[False] * num_leaves,
            residual_adds=[],
            feeders=[set() for _ in range(num_leaves)],
            split_axes=[set() for _ in range(num_leaves)],
            output_reach=set(),
            order=[],
        )
        self.linear_leaves: set[int] = set()

    # -- reading and writing values

    @staticmethod
    def read(env: dict[Any, Info], v: Any) -> Info:
        if isinstance(v, jcore.Literal):
            val = v.val
            try:
                scalar = float(np.asarray(val)) if np.ndim(val) == 0 else None
            except (TypeError, ValueError):
                scalar = None
            return Info(const=True, value=scalar)
        return env.get(v, _NOTHING)

    def use(self, leaf: int, use: Use) -> None:
        self.facts.uses[leaf].append(use)
        self.facts.note_order(leaf)

    # -- jaxprs

    def run(self, jaxpr: Any, ins: Sequence[Info], consts: Sequence[Info] = ()) -> list[Info]:
        env: dict[Any, Info] = {}
        for v, info in zip(jaxpr.constvars, consts, strict=False):
            env[v] = info
        for v in jaxpr.constvars[len(consts) :]:
            env[v] = _CONST
        for v, info in zip(jaxpr.invars, ins, strict=True):
            env[v] = info
        for eqn in jaxpr.eqns:
            infos = [self.read(env, v) for v in eqn.invars]
            outs = self.eqn(eqn, infos)
            for v, info in zip(eqn.outvars, outs, strict=True):
                if not isinstance(v, jcore.DropVar):
                    env[v] = info
        return [self.read(env, v) for v in jaxpr.outvars]

    def sub(self, closed: Any, ins: Sequence[Info]) -> list[Info]:
        if hasattr(closed, "jaxpr") and hasattr(closed, "consts"):
            return self.run(closed.jaxpr, ins, [_CONST] * len(closed.consts))
        return self.run(closed, ins)

    # -- one equation

    def eqn(self, eqn: Any, ins: list[Info]) -> list[Info]:
        name = eqn.primitive.name
        n_out = len(eqn.outvars)
        if name == "scan":
            return self.scan(eqn, ins)
        if name == "while":
            return self.while_loop(eqn, ins)
        if name == "cond":
            return self.cond(eqn, ins)
        for k in _SUB_JAXPR_KEYS:
            sub = eqn.params.get(k)
            if sub is not None and (hasattr(sub, "eqns") or hasattr(sub, "jaxpr")):
                inner = sub.jaxpr if hasattr(sub, "jaxpr") and not hasattr(sub, "eqns") else sub
                if len(inner.invars) == len(ins):
                    return self.sub(sub, ins)
        if name == "dot_general":
            return [self.dot_general(eqn, ins)]
        if name == "conv_general_dilated":
            return [self.conv(eqn, ins)]
        if name == "gather":
            return [self.gather(eqn, ins)]
        if name == "split":
            return self.split(eqn, ins)
        if name == "optimization_barrier":
            return list(ins)
        if name in _SHAPE_OPS and len(ins) >= 1 and n_out == 1:
            return [self.shape_op(eqn, ins)]
        if name in ("add", "sub", "add_any"):
            return [self.add(eqn, ins)]
        if name in ("mul", "div"):
            return [self.mul(eqn, ins)]
        if name == "concatenate":
            return [self.concatenate(eqn, ins)]
        if name == "select_n":
            return [self.select(eqn, ins)]
        return [self.generic(eqn, ins)] * n_out if n_out else []

    # -- helpers

    def consume_all(self, eqn: Any, ins: Sequence[Info], kind: str = "other") -> None:
        others_norm = any(i.norm for i in ins)
        for info in ins:
            for view in info.views:
                statistic = eqn.primitive.name in _NORMALIZERS or (
                    eqn.primitive.name in ("sub",) and others_norm
                )
                self.use(
                    view.leaf,
                    Use(
                        "statistic" if statistic else kind,
                        eqn.primitive.name,
                        detail=f"{eqn.primitive.name} (not a linear map of the activations)",
                    ),
                )

    @staticmethod
    def merged(ins: Sequence[Info], **changes: Any) -> Info:
        act = any(i.act for i in ins)
        fields: dict[str, Any] = {
            "act": act,
            "const": all(i.const for i in ins) and not act,
            "embedded": any(i.embedded for i in ins),
            "feeders": frozenset().union(*(i.feeders for i in ins)),
            "depth": max((i.depth for i in ins), default=0),
        }
        fields.update(changes)
        return Info(**fields)

    def generic(self, eqn: Any, ins: list[Info]) -> Info:
        """A nonlinear or unknown op: views end, data flags mostly end."""
        name = eqn.primitive.name
        self.consume_all(eqn, ins)
        out_shape = _shape(eqn.outvars[0]) if eqn.outvars else ()
        if name in _REDUCTIONS:
            return self.merged(ins, probs=any(i.probs for i in ins))
        elementwise = all(_shape(v) in (out_shape, ()) for v in eqn.invars)
        outputs = _fit([o for i in ins for o in i.outputs], len(out_shape)) if elementwise else ()
        flags: dict[str, Any] = {"outputs": outputs if name not in _REDUCTIONS else ()}
        if name in _NORMALIZERS:
            flags["norm"] = True
        if name == "exp":
            flags["probs"] = True
        if name in ("logistic",):
            flags["probs"] = any(i.probs for i in ins)
        return self.merged(ins, **flags)

    def shape_op(self, eqn: Any, ins: list[Info]) -> Info:
        x = ins[0]
        rank = len(_shape(eqn.invars[0]))
        x = dataclasses.replace(x, outputs=_fit(x.outputs, rank), views=_fit(x.views, rank))
        if len(ins) > 1 and any(i.views for i in ins[1:]):
            self.consume_all(eqn, ins[1:])
        mapped = _axis_map(eqn, _shape(eqn.invars[0]))
        if mapped is None:
            self.consume_all(eqn, [x])
            return dataclasses.replace(x, views=(), outputs=())
        amap, indexed = mapped
        outputs = []
        for o in x.outputs:
            newly = {la for a in indexed for la in o.axes[a]}
            if newly:
                self.facts.split_axes[o.leaf] |= newly
            outputs.append(_map_view(o, amap, indexed))
        return dataclasses.replace(
            x,
            views=tuple(_map_view(v, amap, indexed) for v in x.views),
            outputs=tuple(outputs),
        )

    def split(self, eqn: Any, ins: list[Info]) -> list[Info]:
        x = ins[0]
        nd = len(_shape(eqn.invars[0]))
        amap = [[a] for a in range(nd)]
        indexed = {eqn.params["axis"] % nd} if all(s == 1 for s in eqn.params["sizes"]) else set()
        outputs = tuple(_map_view(o, amap, indexed) for o in x.outputs)
        for o in x.outputs:
            self.facts.split_axes[o.leaf] |= {la for a in indexed for la in o.axes[a]}
        out = dataclasses.replace(
            x, views=tuple(_map_view(v, amap, indexed) for v in x.views), outputs=outputs
        )
        return [out] * len(eqn.outvars)

    def concatenate(self, eqn: Any, ins: list[Info]) -> Info:
        rank = len(_shape(eqn.outvars[0]))
        if all(i.views and not i.act for i in ins):
            # Parameters fused into one (an LSTM's gate kernels side by side): each
            # keeps its axes; the concatenated axis carries each one's own.
            return Info(views=_fit([v for i in ins for v in i.views], rank))
        if any(i.act for i in ins):
            for info in ins:
                for view in info.views:
                    self.use(
                        view.leaf,
                        Use(
                            "concat",
                            "concatenate",
                            stacked_axes=tuple(sorted(view.indexed)),
                            detail="concatenated to the activations along axis "
                            f"{eqn.params['dimension']} (a learned token)",
                        ),
                    )
        else:
            self.consume_all(eqn, [i for i in ins if i.views])
        reach = frozenset().union(*(i.reach for i in ins))
        return self.merged(
            ins,
            reach=reach,
            norm=all(i.norm for i in ins if i.act) and any(i.act for i in ins),
            context=any(i.context for i in ins),
        )

    def select(self, eqn: Any, ins: list[Info]) -> Info:
        """``where(pred, a, b)``: a mask keeps the cases' flags (dropout, causal masks)."""
        self.consume_all(eqn, ins)
        cases = ins[1:]
        acts = [i for i in cases if i.act] or cases
        return self.merged(
            ins,
            reach=frozenset().union(*(i.reach for i in cases)),
            norm=all(i.norm for i in acts),
            probs=any(i.probs for i in cases),
            context=any(i.context for i in cases),
            outputs=_fit([o for i in cases for o in i.outputs], len(_shape(eqn.outvars[0]))),
        )

    # -- elementwise with parameters

    def _param_use(self, kind: str, eqn: Any, view: View, other: Info) -> None:
        self.use(
            view.leaf,
            Use(
                kind,
                eqn.primitive.name,
                normalized=other.norm,
                after_linear=other.linear,
                embedded=other.embedded,
                offset=view.offset,
                fan_out_axes=axes_union(view.axes),
                batch_axes=tuple(sorted(view.indexed)),
                stacked_axes=tuple(sorted(view.indexed)),
                detail=(
                    f"{eqn.primitive.name} with "
                    + ("a normalized activation" if other.norm else "an activation")
                    + (f" (offset {view.offset:g})" if view.offset else "")
                ),
            ),
        )

    def add(self, eqn: Any, ins: list[Info]) -> Info:
        a, b = ins
        sign = -1.0 if eqn.primitive.name == "sub" else 1.0
        # A parameter plus a constant is still that parameter (``1 + scale``).
        if a.views and b.const and not b.views:
            off = (b.value or 0.0) * sign
            return dataclasses.replace(
                a, views=tuple(dataclasses.replace(v, offset=v.offset + off) for v in a.views)
            )
        if b.views and a.const and not a.views and sign > 0:
            off = a.value or 0.0
            return dataclasses.replace(
                b, views=tuple(dataclasses.replace(v, offset=v.offset + off) for v in b.views)
            )
        for x, other in ((a, b), (b, a)):
            for view in x.views:
                kind = "add" if (other.act or other.norm) else "param_product"
                if eqn.primitive.name == "sub" and other.act and x is b:
                    kind = "statistic"  # x - mean
                self._param_use(kind, eqn, view, other)
        # A subtracted parameter is a mean, not a branch's output.
        keep = [a] if eqn.primitive.name == "sub" else ins
        params = frozenset(v.leaf for i in keep for v in i.views)
        acts = [i for i in ins if i.act]
        if len(acts) == 2 and _shape(eqn.invars[0]) == _shape(eqn.invars[1]):
            residual = self.residual_add(a, b)
            if residual is not None:
                return residual
        reach = frozenset().union(*(i.reach for i in ins)) | params
        linear = next((i.linear for i in ins if i.linear is not None), None)
        return self.merged(
            ins,
            reach=reach,
            linear=linear if len(acts) <= 1 else None,
            norm=(all(i.norm for i in acts) if acts else any(i.norm for i in ins)),
            probs=any(i.probs for i in ins),
            context=any(i.context for i in ins) and len(acts) <= 1,
            outputs=_fit([o for i in ins for o in i.outputs], len(_shape(eqn.outvars[0]))),
        )

    def residual_add(self, a: Info, b: Info) -> Info | None:
        """``x + f(x)``: the operand with more linear layers behind it is the branch."""
        if a.probs or b.probs or a.depth == b.depth:
            return None
        if a.linear is not None and b.linear is not None and not (a.norm or b.norm):
            # Two linear layers' outputs summed (an LSTM gate's ``x W + h U``): one
            # linear map of two inputs, not a skip connection.
            return None
        branch = a if a.depth > b.depth else b
        if not branch.reach:
            return None
        for leaf in branch.reach:
            self.facts.residual[leaf] = True
        self.facts.residual_adds.append(branch.reach)
        return Info(
            act=True,
            embedded=a.embedded or b.embedded,
            depth=max(a.depth, b.depth),
            norm=a.norm and b.norm,
        )

    def mul(self, eqn: Any, ins: list[Info]) -> Info:
        a, b = ins
        is_div = eqn.primitive.name == "div"
        if a.views and b.const and not b.views:
            return a
        if b.views and a.const and not a.views and not is_div:
            return b
        for x, other in ((a, b), (b, a)):
            if is_div and x is b:
                for view in x.views:
                    self.use(view.leaf, Use("statistic", "div", detail="in a denominator"))
                continue
            for view in x.views:
                kind = "mul" if (other.act or other.norm) else "param_product"
                self._param_use(kind, eqn, view, other)
        params = frozenset(v.leaf for i in ins for v in i.views)
        acts = [i for i in ins if i.act]
        linear = next((i.linear for i in ins if i.linear is not None), None)
        return self.merged(
            ins,
            reach=frozenset().union(*(i.reach for i in ins)) | params,
            linear=linear if len(acts) <= 1 else None,
            norm=any(i.norm for i in ins),
            probs=any(i.probs for i in ins),
            context=any(i.context for i in ins),
            outputs=_fit([o for i in ins for o in i.outputs], len(_shape(eqn.outvars[0]))),
        )

    # -- linear ops

    def _linear_out(
        self,
        leaves: Sequence[int],
        x: Info,
        out_axes: dict[int, tuple[int, ...]],
        leaf: int,
        rank: int,
    ) -> Info:
        depth = x.depth + 1
        outputs = ()
        if out_axes:
            outputs = (View(leaf, tuple(out_axes.get(k, ()) for k in range(rank))),)
        return Info(
            act=True,
            embedded=x.embedded,
            reach=frozenset(leaves),
            feeders=frozenset(leaves),
            linear=leaf,
            depth=depth,
            outputs=outputs,
        )

    def dot_general(self, eqn: Any, ins: list[Info]) -> Info:
        lhs, rhs = ins
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        ls, rs = _shape(eqn.invars[0]), _shape(eqn.invars[1])
        lfree = [a for a in range(len(ls)) if a not in lc and a not in lb]
        rfree = [a for a in range(len(rs)) if a not in rc and a not in rb]
        # Output axes: batch, lhs free, rhs free.
        out_pos_l = {a: len(lb) + k for k, a in enumerate(lfree)}
        out_pos_r = {a: len(lb) + len(lfree) + k for k, a in enumerate(rfree)}
        batch_pos = {k: k for k in range(len(lb))}
        lparam, rparam = bool(lhs.views), bool(rhs.views)
        if (lparam and not lhs.act) ^ (rparam and not rhs.act):
            # A parameter times an activation: a linear layer.
            if lparam and not lhs.act:
                p, x, pc, pb, pfree, pos, xb = lhs, rhs, lc, lb, lfree, out_pos_l, rb
            else:
                p, x, pc, pb, pfree, pos, xb = rhs, lhs, rc, rb, rfree, out_pos_r, lb
            # The next layer batching an axis of this one's output (an MoE's expert
            # axis) makes that axis independent weights of the earlier layer.
            for o in x.outputs:
                for a in xb:
                    if a < len(o.axes) and o.axes[a]:
                        self.facts.split_axes[o.leaf] |= set(o.axes[a])
            leaves = []
            out_axes: dict[int, tuple[int, ...]] = {}
            for view in p.views:
                fan_in = axes_union([view.axes[a] for a in pc])
                fan_out = axes_union([view.axes[a] for a in pfree])
                batch = axes_union([view.axes[a] for a in pb]) + tuple(sorted(view.indexed))
                self.linear_leaves.add(view.leaf)
                self.use(
                    view.leaf,
                    Use(
                        "linear",
                        "dot_general",
                        fan_in_axes=fan_in,
                        fan_out_axes=fan_out,
                        batch_axes=batch,
                        stacked_axes=tuple(sorted(view.indexed)),
                        attention_context=x.context,
                        offset=view.offset,
                        detail=f"dot_general contracting leaf axes {fan_in} with an activation"
                        + (", batched over " + str(batch) if batch else "")
                        + (" (attention context)" if x.context else ""),
                    ),
                )
                self.facts.feeders[view.leaf] |= set(x.feeders)
                if x.context:
                    self.facts.attention[view.leaf].add("attention_out")
                leaves.append(view.leaf)
                if not out_axes:
                    for k, a in enumerate(pb):
                        out_axes[batch_pos[k]] = view.axes[a]
                    for a in pfree:
                        out_axes[pos[a]] = view.axes[a]
            return self._linear_out(leaves, x, out_axes, leaves[0], len(_shape(eqn.outvars[0])))
        if lparam or rparam:
            for info in ins:
                for view in info.views:
                    self.use(
                        view.leaf,
                        Use("param_product", "dot_general", detail="dot with another parameter"),
                    )
            return self.merged(ins)
        # Two activations: attention logits (q . k) or the context (probs . v).
        if lhs.probs or rhs.probs:
            values, vc = (rhs, rc) if lhs.probs else (lhs, lc)
            mixed = {la for o in values.outputs for a in vc if a < len(o.axes) for la in o.axes[a]}
            if mixed:
                # Weights summing outputs over a kernel's own axis (an MoE's experts):
                # a weighted sum of that layer's outputs, not attention.
                for o in values.outputs:
                    self.facts.split_axes[o.leaf] |= {la for a in vc for la in o.axes[a]}
                return self.merged(
                    ins, reach=values.reach, depth=max(lhs.depth, rhs.depth), outputs=()
                )
            for leaf in values.reach & self.linear_leaves:
                self.facts.attention[leaf].add("attention_value")
            return self.merged(ins, context=True, depth=max(lhs.depth, rhs.depth))
        if lhs.act and rhs.act and (lhs.reach or rhs.reach):
            for leaf in lhs.reach & self.linear_leaves:
                self.facts.attention[leaf].add("attention_query")
            for leaf in rhs.reach & self.linear_leaves:
                self.facts.attention[leaf].add("attention_key")
        return self.merged(ins)

    def conv(self, eqn: Any, ins: list[Info]) -> Info:
        lhs, rhs = ins
        dn = eqn.params["dimension_numbers"]
        rhs_spec = dn.rhs_spec  # (out feature, in feature, *spatial)
        if not rhs.views or rhs.act:
            self.consume_all(eqn, ins)
            return self.merged(ins)
        leaves = []
        for view in rhs.views:
            fan_out = axes_union([view.axes[rhs_spec[0]]])
            fan_in = axes_union([view.axes[a] for a in (*rhs_spec[2:], rhs_spec[1])])
            batch = tuple(sorted(view.indexed))
            groups = eqn.params.get("feature_group_count", 1)
            self.linear_leaves.add(view.leaf)
            self.use(
                view.leaf,
                Use(
                    "conv",
                    "conv_general_dilated",
                    fan_in_axes=fan_in,
                    fan_out_axes=fan_out,
                    batch_axes=batch,
                    stacked_axes=batch,
                    detail=f"conv_general_dilated: window and input-feature axes {fan_in}"
                    + (f", {groups} groups" if groups != 1 else ""),
                ),
            )
            self.facts.feeders[view.leaf] |= set(lhs.feeders)
            leaves.append(view.leaf)
        out_shape = _shape(eqn.outvars[0])
        out_feature = dn.out_spec[1]
        out_axes = {out_feature: axes_union([rhs.views[0].axes[rhs_spec[0]]])}
        return self._linear_out(leaves, lhs, out_axes, leaves[0], len(out_shape))

    def gather(self, eqn: Any, ins: list[Info]) -> Info:
        operand, indices = ins[0], ins[1]
        dn = eqn.params["dimension_numbers"]
        out_shape = _shape(eqn.outvars[0])
        rows = math.prod(d for k, d in enumerate(out_shape) if k not in dn.offset_dims)
        if operand.views and (indices.act or rows > 1):
            for view in operand.views:
                fan_in = axes_union([view.axes[a] for a in dn.collapsed_slice_dims])
                rest = [
                    a
                    for a in range(len(view.axes))
                    if a not in dn.collapsed_slice_dims and a not in dn.operand_batching_dims
                ]
                fan_out = axes_union([view.axes[a] for a in rest])
                self.use(
                    view.leaf,
                    Use(
                        "gather",
                        "gather",
                        fan_in_axes=fan_in,
                        fan_out_axes=fan_out,
                        batch_axes=tuple(sorted(view.indexed)),
                        stacked_axes=tuple(sorted(view.indexed)),
                        detail=f"gather: rows of leaf axes {fan_in} looked up by "
                        + ("data" if indices.act else "positions (constant indices)"),
                    ),
                )
            return Info(act=True, embedded=True, depth=indices.depth)
        if operand.views and not indices.act:
            # Indexing by constants (``w[3]``): the collapsed axes are indexed away.
            out_views = []
            for view in operand.views:
                rest = [a for a in range(len(view.axes)) if a not in dn.collapsed_slice_dims]
                collapsed = {la for a in dn.collapsed_slice_dims for la in view.axes[a]}
                out_shape = _shape(eqn.outvars[0])
                if len(rest) == len(out_shape) and dn.offset_dims == tuple(range(len(rest))):
                    out_views.append(
                        View(
                            view.leaf,
                            tuple(view.axes[a] for a in rest),
                            view.indexed | collapsed,
                            view.offset,
                        )
                    )
                else:
                    self.use(view.leaf, Use("other", "gather", detail="gathered by constants"))
            return dataclasses.replace(operand, views=tuple(out_views), outputs=())
        self.consume_all(eqn, ins[1:])
        return self.merged(ins, outputs=())

    # -- control flow

    def scan(self, eqn: Any, ins: list[Info]) -> list[Info]:
        p = eqn.params
        nc, ncarry = p["num_consts"], p["num_carry"]
        body = p["jaxpr"]
        consts, carry, xs = ins[:nc], ins[nc : nc + ncarry], ins[nc + ncarry :]
        sliced = []
        for v, info in zip(eqn.invars[nc + ncarry :], xs, strict=True):
            nd = len(_shape(v))
            amap = [[a] for a in range(1, nd)]
            sliced.append(
                dataclasses.replace(
                    info,
                    views=tuple(_map_view(w, amap, {0}) for w in info.views),
                    outputs=tuple(_map_view(o, amap, {0}) for o in info.outputs),
                )
            )
        outs = self.sub(body, [*consts, *carry, *sliced])
        # A second pass with the carry's flags after one step (a residual stream
        # through layers); the facts it adds are the same kinds, so sets stay right.
        carry_out = outs[:ncarry]
        merged = [_join(a, b) for a, b in zip(carry, carry_out, strict=True)]
        if any(_differs(m, c) for m, c in zip(merged, carry, strict=True)):
            outs = self.sub(body, [*consts, *merged, *sliced])
        ys = []
        for info in outs[ncarry:]:
            ys.append(dataclasses.replace(info, views=(), outputs=()))
        return [*outs[:ncarry], *ys]

    def while_loop(self, eqn: Any, ins: list[Info]) -> list[Info]:
        p = eqn.params
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        bconsts, carry = ins[cn : cn + bn], ins[cn + bn :]
        outs = self.sub(p["body_jaxpr"], [*bconsts, *carry])
        merged = [_join(a, b) for a, b in zip(carry, outs, strict=True)]
        if any(_differs(m, c) for m, c in zip(merged, carry, strict=True)):
            outs = self.sub(p["body_jaxpr"], [*bconsts, *merged])
        return [_join(a, b) for a, b in zip(carry, outs, strict=True)]

    def cond(self, eqn: Any, ins: list[Info]) -> list[Info]:
        results = [self.sub(br, ins[1:]) for br in eqn.params["branches"]]
        return [_join_all(group) for group in zip(*results, strict=True)]


def _differs(merged: Info, carry: Info) -> bool:
    """Whether a loop's carry gained a flag in one step; a deeper carry alone does not
    count (depths are compared within a step, where every carried value is as deep)."""
    return merged != carry and dataclasses.replace(merged, depth=carry.depth) != carry


def _fit(views: Sequence[View], rank: int) -> tuple[View, ...]:
    """The views whose axis map fits a value of ``rank`` (broadcast operands' don't)."""
    return tuple(dict.fromkeys(v for v in views if len(v.axes) == rank))


def _join(a: Info, b: Info) -> Info:
    """The flags of a value that is ``a`` on one path and ``b`` on another."""
    if a == b:
        return a
    return Info(
        views=tuple(dict.fromkeys(a.views + b.views)),
        outputs=tuple(dict.fromkeys(a.outputs + b.outputs)),
        act=a.act or b.act,
        const=a.const and b.const,
        norm=a.norm and b.norm,
        probs=a.probs or b.probs,
        context=a.context or b.context,
        embedded=a.embedded or b.embedded,
        reach=a.reach | b.reach,
        feeders=a.feeders | b.feeders,
        linear=a.linear if a.linear == b.linear else None,
        depth=max(a.depth, b.depth),
    )


def _join_all(infos: Sequence[Info]) -> Info:
    out = infos[0]
    for i in infos[1:]:
        out = _join(out, i)
    return out


def analyze(closed_jaxpr: Any, num_leaves: int, num_inputs: int) -> Facts:
    """Runs the pass over ``closed_jaxpr`` whose first ``num_leaves`` inputs are the
    parameter leaves (in order) and the next ``num_inputs`` the model's inputs."""
    jaxpr = closed_jaxpr.jaxpr
    ins: list[Info] = []
    for n, v in enumerate(jaxpr.invars):
        if n < num_leaves:
            nd = len(_shape(v))
            ins.append(Info(views=(View(n, tuple((a,) for a in range(nd))),)))
        elif n < num_leaves + num_inputs:
            ins.append(Info(act=True))
        else:
            ins.append(_NOTHING)
    run = _Pass(num_leaves)
    outs = run.run(jaxpr, ins, [_CONST] * len(closed_jaxpr.consts))
    for info in outs:
        run.facts.output_reach |= set(info.reach)
        for view in info.views:
            run.use(view.leaf, Use("other", "output", detail="returned as is"))
    return run.facts
