"""muP as per-leaf init scales and learning-rate multipliers, for an unmodified model.

The formulation is TP-V's Table 3 (Yang et al. 2022, arXiv:2203.03466), relative to
a base width where the hyperparameters were tuned, with ``m`` the growth of a
leaf's fan-in (``fan_in / base_fan_in``) and ``m_out`` of its fan-out:

==========  ===================  ===============  ============
kind        init std             Adam LR          SGD LR
==========  ===================  ===============  ============
input       base std             x 1              x m_out
hidden      base std / sqrt(m)   x 1/m            x m_out / m
output      base std / m, or 0   x 1/m            x 1/m
vector      kept                 x 1              x m_out
finite      kept                 x 1              x 1
==========  ===================  ===============  ============

"base std" is the root mean square of the leaf in the base model's own init, so the
model's initializers (Flax's lecun_normal, GPT-2's normal(0.02), an Embed's
1/sqrt(features)) set the constants at the base width, whatever their own width
rule.

Forward multipliers the model does not have are moved into init and learning rate
by the abc-symmetry (Tensor Programs IV/V): a layer computing ``(a w) x`` with
``w ~ N(0, s^2)`` trains exactly like one computing ``w' x`` with
``w' ~ N(0, (a s)^2)`` under Adam LR x a (SGD LR x a^2); exact for Adam without
epsilon and without weight decay coupled to the LR. Two such multipliers:

* attention logits ``q.k / d_head`` instead of ``/ sqrt(d_head)`` where the head
  dimension grows: a factor ``1/sqrt(m_head)`` on the query kernel (and bias);
* residual branches ``h + L^-alpha f(h)`` for depth (Depth-muP, alpha = 1/2,
  arXiv:2310.02244; CompleteP, alpha = 1, arXiv:2505.01618): ``m_L^-alpha`` on each
  branch's last layer (``m_L = L / base_L``), with every other in-block parameter's
  Adam LR x ``m_L^(alpha - 1)`` (CompleteP's rule; 1 for alpha = 1).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flaxinit.mup.shapes import BaseShapes, LeafShape, base_shapes, flatten
from flaxinit.rules import actions as _actions
from flaxinit.rules.paths import flatten_tree, layer_index
from flaxinit.tables import format_table

__all__ = [
    "OPTIMIZERS",
    "LeafParametrization",
    "Parametrization",
    "learning_rate_multipliers",
    "parametrize",
    "rules",
    "scale_updates",
    "update_labels",
]

OPTIMIZERS = ("adam", "sgd")
READOUTS = ("zero", "scaled")
# Residual-branch multiplier exponents alpha: h + L^-alpha f(h).
DEPTHS = {"depth_mup": 0.5, "completep": 1.0}
# Query kernels found by name where no structure says which leaves they are.
_ATTENTION_NAMES = re.compile(r"attn|attention")
_QUERY_NAMES = re.compile(r"(^|/)(query|q|q_proj|q_einsum|wq|to_q)(/|$)")


@dataclasses.dataclass(frozen=True)
class LeafParametrization:
    """muP for one leaf.

    Attributes:
      shape: the leaf's :class:`~flaxinit.mup.shapes.LeafShape` (kind, fans, width).
      init: ``"rms"`` (rescale the leaf to ``init_scale`` times the root mean square
        of its base init), ``"zero"``, ``"scale"`` (multiply by ``init_scale``, for
        biases under a moved multiplier) or ``"keep"``.
      init_scale: the factor over the base width's init (``"rms"`` and ``"scale"``).
      lr_multiplier: the factor on the optimizer's update for this leaf.
      why: the factors behind the numbers, one phrase each.
    """

    shape: LeafShape
    init: str
    init_scale: float
    lr_multiplier: float
    why: tuple[str, ...]

    @property
    def path(self) -> str:
        return self.shape.path


class Parametrization(NamedTuple):
    """Every leaf's muP, in tree order; see :func:`parametrize`."""

    leaves: tuple[LeafParametrization, ...]
    optimizer: str
    shapes: BaseShapes

    def __str__(self) -> str:
        rows = [
            [
                p.path,
                p.shape.kind,
                f"{p.shape.width_mult:g}",
                {
                    "rms": f"base x{p.init_scale:.4g}",
                    "zero": "0",
                    "scale": f"x{p.init_scale:.4g}",
                }.get(p.init, "kept"),
                f"x{p.lr_multiplier:.4g}",
                "; ".join(p.why),
            ]
            for p in self.leaves
        ]
        return format_table(
            ["path", "kind", "width_mult", "init", f"{self.optimizer} lr", "why"], rows
        )


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"mup: {name} must be one of {tuple(choices)}, got {name}={value!r}")


def _rms(x: Any) -> float:
    x = np.asarray(jax.device_get(x), np.float64)
    return float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0


def _base_rms(base: Any, shapes: BaseShapes) -> dict[str, float]:
    """The root mean square of each leaf's init in ``base``; for a leaf only a deeper
    model has (depth transfer, unrolled blocks), pooled over the base's layers."""
    flat = flatten(base, "base")
    abstract = [info.path for info, x in flat if isinstance(x, jax.ShapeDtypeStruct)]
    if abstract:
        raise ValueError(
            f"mup.rules: base has no values (the leaf at {abstract[0]!r} is a "
            "ShapeDtypeStruct): the init scales are read from the base model's own init. "
            "Pass base=base_model.init(key, x) (Linen) or nnx.state(base_model) (NNX); "
            "scale_updates and base_shapes take abstract trees"
        )
    squares = {info.path: _rms(x) ** 2 for info, x in flat}
    pooled: dict[str, list[float]] = {}
    for info, _ in flat:
        pooled.setdefault(info.canonical, []).append(squares[info.path])
    out = {}
    for path in shapes:
        if path in squares:
            out[path] = math.sqrt(squares[path])
        else:
            out[path] = math.sqrt(float(np.mean(pooled[layer_index(path)[2]])))
    return out


def _is_query(leaf: LeafShape, query: Any) -> bool:
    if query is not None:
        return any(re.fullmatch(p, leaf.path) for p in query)
    if leaf.role is not None:
        if "attention_query" in leaf.roles and len(leaf.roles) > 1:
            raise ValueError(
                f"mup: the kernel at {leaf.path!r} is a fused projection ({'+'.join(leaf.roles)}): "
                "muP's 1/d_head belongs to its query part only, which one leaf cannot carry; "
                "split the projection, or pass query=[] to leave the logit scale out"
            )
        return leaf.role == "attention_query"
    return bool(_QUERY_NAMES.search(leaf.path.lower()))


def _ends_branch(leaf: LeafShape, residual: Sequence[str] | None) -> bool:
    """A residual branch's last kernel, or the gain of a norm that ends the branch."""
    if residual is not None:
        return any(re.fullmatch(p, leaf.path) for p in residual)
    if not leaf.residual_output:
        return False
    if leaf.fan_in_axes:
        return True
    if leaf.role == "norm_scale":
        if leaf.norm_offset:
            raise ValueError(
                f"mup: the residual branch ending at the norm {leaf.path!r} computes "
                "x * (1 + scale): a depth multiplier cannot be moved into its scale; "
                "multiply the branch in the model"
            )
        return True
    return False


def _depth_multipliers(shapes: BaseShapes, ends: set[str]) -> dict[str, float]:
    """``L / base_L`` per leaf inside the blocks whose branches end at ``ends``: a scanned
    stack's length, or the number of indexed blocks of the group the ends sit in."""
    groups = {shapes[p].layer_group for p in ends if shapes[p].layer_axis is None}
    stacked = [shapes[p] for p in ends if shapes[p].layer_axis is not None]
    if not ends:
        raise ValueError(
            "mup: depth= found no residual branch end (no kernel or norm gain whose output "
            "reaches a residual add): pass structure=fi.model_structure(model, x) or "
            "residual=[regex, ...]"
        )
    if None in groups:
        where = next(p for p in ends if shapes[p].layer_axis is None and not shapes[p].layer_group)
        raise ValueError(
            f"mup: depth=: the branch end {where!r} is in no block indexed by its path "
            "(blocks_0, layers/0, h_0, ...) nor in a scanned stack, so its depth is unknown"
        )
    out: dict[str, float] = {}
    for group in groups:
        length, base_length = shapes.group_layers[group], shapes.base_group_layers.get(group)
        if not base_length:
            raise ValueError(f"mup: depth=: base has no blocks under {group!r}")
        have = {shapes[p].layer for p in ends if shapes[p].layer_group == group}
        missing = sorted(set(range(length)) - have)
        if missing:
            raise ValueError(
                f"mup: depth=: block {missing[0]} of {group!r} has no residual branch end "
                "that flaxinit found, so it would get no depth multiplier: pass "
                "residual=[regex, ...] naming every branch's last layer"
            )
        for leaf in shapes.values():
            if leaf.layer_group == group:
                out[leaf.path] = length / base_length
    if stacked:
        ratios = {
            leaf.shape[leaf.layer_axis] / leaf.base_shape[leaf.layer_axis] for leaf in stacked
        }
        if len(ratios) != 1:
            raise ValueError(f"mup: depth=: scanned stacks grow by different factors {ratios}")
        ratio = ratios.pop()
        for leaf in shapes.values():
            if leaf.layer_axis is not None:
                out[leaf.path] = ratio
    return out


def _head_dim_mult(leaf: LeafShape, given: float | None) -> float:
    """The growth of the attention head dimension at a query kernel."""
    if given is not None:
        return float(given)
    out = leaf.fan_out_axes
    if len(out) < 2 and out and out[0] in leaf.infinite_axes:
        raise ValueError(
            f"mup: the query kernel at {leaf.path!r} packs heads and head dimension in one "
            f"axis (shape {leaf.shape}, base {leaf.base_shape}), so whether d_head grows is "
            "unknown: pass head_dim_mult= (d_head / base d_head; 1 when only the head count "
            "grows)"
        )
    head = out[-1] if out else None
    if head is None or head not in leaf.infinite_axes:
        return 1.0
    return leaf.shape[head] / leaf.base_shape[head]


def _is_tied(structure: Any, path: str) -> bool:
    """An embedding the model also multiplies with activations: a tied readout."""
    leaf = structure.lookup(path)
    return (
        leaf is not None
        and leaf.role == "embedding"
        and any(e.startswith("dot_general") for e in leaf.evidence)
    )


def _siblings(path: str, paths: set[str]) -> list[str]:
    """The bias next to a kernel (same module)."""
    head, _, _ = path.rpartition("/")
    return [p for p in (f"{head}/bias", f"{head}/b") if p in paths]


def parametrize(
    params: Any,
    base: Any,
    *,
    structure: Any = None,
    delta: Any = None,
    optimizer: str = "adam",
    readout: str = "zero",
    depth: str | None = None,
    query: Sequence[str] | None = None,
    residual: Sequence[str] | None = None,
    tied_readout_scaled: bool = False,
    head_dim_mult: float | None = None,
) -> Parametrization:
    """Every leaf's muP init scale and learning-rate multiplier (the module docstring
    has the table); :func:`rules` and :func:`scale_updates` are built from this.

    Args:
      params: the model's parameters (or variables) at the target width.
      base: the same model's tree at the base width; see :func:`base_shapes`.
      structure: :func:`flaxinit.model_structure` of the model: true fan axes,
        attention queries and residual branch ends.
      delta: the model at a third width, when ``params`` is at the base width.
      optimizer: ``"adam"`` (also AdamW, Lion-style sign methods) or ``"sgd"``.
      readout: ``"zero"`` (output leaves start at 0, the usual muP choice) or
        ``"scaled"`` (base std / m).
      depth: ``None``, ``"depth_mup"`` (branches x L^-1/2) or ``"completep"``
        (x L^-1, Adam only).
      query: regular expressions selecting the attention query kernels, where no
        structure is given and their names are not ``query``/``q``/``q_proj``/...
      residual: regular expressions selecting residual branches' last kernels, for
        ``depth=`` without a structure.
      head_dim_mult: the growth of the attention head dimension (``d_head / base
        d_head``; 1 when only the number of heads grows), needed where a query kernel
        packs heads and head dimension in one axis (a 2-D ``q_proj``).
      tied_readout_scaled: the model multiplies its tied readout's logits by
        ``base_width / width`` itself; without it a tied embedding (found with
        ``structure=``) raises, since its readout multiplier cannot be moved into
        a weight it shares with the input.
    """
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    _check_choice("readout", readout, READOUTS)
    if depth is not None:
        _check_choice("depth", depth, tuple(DEPTHS))
        if depth == "completep" and optimizer != "adam":
            raise ValueError(
                "mup: depth='completep' is defined for Adam (Dey et al. 2025); with SGD use "
                "depth='depth_mup'"
            )
        if structure is None and residual is None:
            raise ValueError(
                "mup: depth= needs the residual branches' last layers: pass "
                "structure=fi.model_structure(model, x), or residual=[regex, ...]"
            )
    for name, value in (("query", query), ("residual", residual)):
        if value is not None and (
            isinstance(value, str) or not all(isinstance(p, str) for p in value)
        ):
            raise TypeError(f"mup: {name} must be a list of regular expressions, got {value!r}")
    shapes = base_shapes(params, base, structure=structure, delta=delta, depth=depth is not None)
    alpha = 0.0 if depth is None else DEPTHS[depth]
    sgd = optimizer == "sgd"
    ends = {
        leaf.path for leaf in shapes.values() if depth is not None and _ends_branch(leaf, residual)
    }
    depth_of = _depth_multipliers(shapes, ends) if depth is not None else {}
    paths = set(shapes)
    tied = {path for path in paths if structure is not None and _is_tied(structure, path)}
    out: dict[str, LeafParametrization] = {}
    # Biases that share their kernel's moved multiplier: path -> (factor, why).
    bias_factors: dict[str, tuple[float, list[str]]] = {}
    found_query = False
    for leaf in shapes.values():
        m, m_out = leaf.fan_in_mult, leaf.fan_out_mult
        why: list[str] = []
        init, init_scale = "keep", 1.0
        if leaf.kind == "input":
            init, lr = "rms", (m_out if sgd else 1.0)
        elif leaf.kind == "hidden":
            init, init_scale, lr = "rms", m**-0.5, ((m_out / m) if sgd else 1 / m)
        elif leaf.kind == "output":
            init = "zero" if readout == "zero" else "rms"
            init_scale, lr = 1 / m, 1 / m
        elif leaf.kind == "vector":
            lr = m_out if sgd else 1.0
        else:
            lr = 1.0
        if leaf.kind != "finite":
            why.append(f"{leaf.kind} (m={leaf.width_mult:g})")
        moved = 1.0
        if leaf.fan_in_axes and _is_query(leaf, query):
            found_query = True
            m_head = _head_dim_mult(leaf, head_dim_mult)
            if m_head != 1.0:
                moved *= m_head**-0.5
                why.append(f"attention 1/d_head: x{m_head**-0.5:.4g}")
        if leaf.kind == "input" and leaf.path in tied and not tied_readout_scaled:
            raise ValueError(
                f"mup: the embedding at {leaf.path!r} is also the readout (tied): muP needs "
                f"its logits multiplied by 1/width_mult = {1 / leaf.width_mult:.4g}, a "
                "multiplier a shared weight cannot carry in its init (microsoft/mup's "
                "MuSharedReadout puts it in the model). Multiply the tied logits by "
                "base_width / width in the model and pass tied_readout_scaled=True"
            )
        if leaf.path in depth_of:
            depth_mult = depth_of[leaf.path]
            if leaf.path in ends and depth_mult != 1.0:
                moved *= depth_mult**-alpha
                why.append(f"branch x L^-{alpha:g}: x{depth_mult**-alpha:.4g}")
            factor = 1.0 if sgd else depth_mult ** (alpha - 1)
            lr *= factor
            if factor != 1.0:
                why.append(f"in-block lr x{factor:.4g}")
        if moved != 1.0:
            if init == "keep":
                init = "scale"  # a finite kernel or a norm gain: its own init, times moved
            init_scale *= moved
            lr *= moved**2 if sgd else moved
            for bias in _siblings(leaf.path, paths):
                moved_why = [w for w in why if w.startswith(("attention", "branch"))]
                bias_factors[bias] = (moved, moved_why)
        out[leaf.path] = LeafParametrization(leaf, init, init_scale, lr, tuple(why))
    if structure is None and query is None and not found_query:
        attention = [p for p in out if _ATTENTION_NAMES.search(p.lower())]
        if attention:
            raise ValueError(
                f"mup: the leaf at {attention[0]!r} looks like attention, but no query kernel "
                "was found to carry muP's 1/d_head logit scale: pass "
                "structure=fi.model_structure(model, x), or query=[regex, ...] naming the "
                "query kernels (query=[] if the head dimension does not grow)"
            )
    readouts = [leaf for leaf in shapes.values() if leaf.kind == "output"]
    if structure is None and not tied_readout_scaled and shapes.any_width and not readouts:
        raise ValueError(
            "mup: no output leaf (a kernel whose fan-in grows and fan-out does not): "
            "a tied readout (embedding.attend) needs its logits multiplied by "
            "base_width / width in the model, which flaxinit cannot find without "
            "structure=fi.model_structure(model, x); pass structure=, or "
            "tied_readout_scaled=True once the model scales its tied logits"
        )
    for path, (factor, why) in bias_factors.items():
        p = out[path]
        out[path] = dataclasses.replace(
            p,
            init="scale",
            init_scale=p.init_scale * factor,
            lr_multiplier=p.lr_multiplier * (factor**2 if optimizer == "sgd" else factor),
            why=(*p.why, *why),
        )
    return Parametrization(tuple(out.values()), optimizer, shapes)


@dataclasses.dataclass(frozen=True, repr=False)
class RescaleRMS(_actions.Action):
    """Multiplies the leaf so its root mean square is ``rms``: over the whole leaf, or per
    layer where the rules engine hands it a stack layer by layer (a stack whose leaves
    carry ``'layers'`` partition metadata).

    The leaf keeps its distribution's shape (the model's own initializer) and gets the
    muP scale. A leaf that is all zeros stays zero.
    """

    rms: float

    def __repr__(self) -> str:
        return f"rescale_rms({self.rms:.4g})"

    def _rescale(self, leaf: jax.Array, axes: tuple[int, ...]) -> jax.Array:
        x = leaf.astype(jnp.float32)
        have = jnp.sqrt(jnp.mean(jnp.square(x), axis=axes, keepdims=True))
        factor = jnp.where(have > 0, self.rms / jnp.where(have > 0, have, 1.0), 1.0)
        return (x * factor).astype(leaf.dtype)

    def __call__(self, key: Any, leaf: jax.Array, ctx: Any) -> jax.Array:
        return self._rescale(leaf, tuple(range(leaf.ndim)))

    def call_stacked(self, keys: Any, leaf: jax.Array, ctxs: Sequence[Any]) -> jax.Array:
        return self._rescale(leaf, tuple(range(1, leaf.ndim)))


def _exact(path: str) -> str:
    return "re:" + re.escape(path)


def rules(
    variables: Any,
    base: Any,
    **options: Any,
) -> list[tuple[str, Any]]:
    """Rules for :func:`flaxinit.apply_rules` that give ``variables`` muP's init.

    Formulation (the module docstring has the table): TP-V Table 3 relative to the
    base width. Input leaves keep the base init's scale, hidden leaves get it divided
    by ``sqrt(m)``, the readout starts at zero (``readout="scaled"``: divided by
    ``m``); biases and norm gains are kept. "The base init's scale" is the root mean
    square of each leaf in ``base``, the model's own init at the base width, so
    ``base`` must hold values here (``base_model.init(key, x)``, ``nnx.state(...)``).
    Forward multipliers muP adds (attention ``1/d_head``, depth branch multipliers)
    are moved into the init and the learning rate by the abc-symmetry; pair these
    rules with :func:`scale_updates` built with the same arguments, or the model is
    not muP.

    Adam's epsilon breaks the symmetry when updates are as small as epsilon: use a
    small epsilon (1e-8 or below, or scale it with ``1/m``). Weight decay: to keep the
    per-step decay ``lr * wd`` the same for every leaf (microsoft/mup's ``MuAdam``
    multiplies AdamW's decay by ``m`` to that end), decay after the muP scaling and
    before the learning rate: ``optax.chain(optax.scale_by_adam(),
    fi.mup.scale_updates(...), optax.add_decayed_weights(wd),
    optax.scale_by_learning_rate(lr))``. ``optax.adamw`` followed by
    :func:`scale_updates` instead divides a hidden leaf's decay by ``m``.

    Args:
      variables: the model's variables (or params) at the target width.
      base: the same model's variables at the base width, with values.
      **options: :func:`parametrize`'s keywords (``structure``, ``delta``,
        ``optimizer``, ``readout``, ``depth``, ``query``, ``residual``,
        ``tied_readout_scaled``, ``head_dim_mult``).

    Returns:
      ``(pattern, action)`` pairs, one per changed leaf (exact-path patterns).

    Example:
      >>> import flax.linen as nn
      >>> import flaxinit as fi
      >>> mlp = lambda w: nn.Sequential([nn.Dense(w), nn.relu, nn.Dense(w), nn.relu, nn.Dense(3)])
      >>> x = jnp.ones((1, 8))
      >>> params = mlp(256).init(jax.random.key(0), x)
      >>> base = mlp(64).init(jax.random.key(1), x)
      >>> new = fi.apply_rules(params, fi.mup.rules(params, base), key=jax.random.key(2))
      >>> hidden = new["params"]["layers_2"]["kernel"]
      >>> base_rms = float(jnp.sqrt(jnp.mean(base["params"]["layers_2"]["kernel"] ** 2)))
      >>> round(float(jnp.sqrt(jnp.mean(hidden**2))) / base_rms, 4)  # 1 / sqrt(256 / 64)
      0.5
      >>> float(jnp.abs(new["params"]["layers_4"]["kernel"]).max())  # readout at zero
      0.0
    """
    plan = parametrize(variables, base, **options)
    needs = [p for p in plan.leaves if p.init == "rms"]
    base_rms = _base_rms(base, plan.shapes) if needs else {}
    out: list[tuple[str, Any]] = []
    for p in plan.leaves:
        if p.init == "zero":
            out.append((_exact(p.path), _actions.fill(0.0)))
        elif p.init == "scale" and p.init_scale != 1.0:
            out.append((_exact(p.path), _actions.scale(p.init_scale)))
        elif p.init == "rms":
            rms = base_rms[p.path] * p.init_scale
            if base_rms[p.path] > 0:  # a zero-initialized leaf stays zero
                out.append((_exact(p.path), RescaleRMS(rms)))
    return out


def learning_rate_multipliers(
    params: Any,
    base: Any,
    **options: Any,
) -> Any:
    """The tree of ``params`` with each leaf replaced by its muP learning-rate
    multiplier (a float); ``options`` are :func:`parametrize`'s keywords.

    Example:
      >>> import flax.linen as nn
      >>> mlp = lambda w: nn.Sequential([nn.Dense(w), nn.relu, nn.Dense(w), nn.relu, nn.Dense(3)])
      >>> x = jnp.ones((1, 8))
      >>> shapes = lambda w: jax.eval_shape(mlp(w).init, jax.random.key(0), x)
      >>> lr = learning_rate_multipliers(shapes(256), shapes(64))
      >>> {name: leaf["kernel"] for name, leaf in lr["params"].items()}
      {'layers_0': 1.0, 'layers_2': 0.25, 'layers_4': 0.25}
    """
    plan = parametrize(params, base, **options)
    return flatten_tree(params).rebuild([p.lr_multiplier for p in plan.leaves])


def update_labels(params: Any, base: Any, **options: Any) -> tuple[Any, dict[str, float]]:
    """Labels for ``optax.multi_transform``: a tree of strings naming each leaf's
    kind and multiplier (``"hidden x0.25"``), and ``{label: multiplier}``; ``options`` are
    :func:`parametrize`'s keywords.

    Example:
      >>> import flax.linen as nn
      >>> mlp = lambda w: nn.Sequential([nn.Dense(w), nn.relu, nn.Dense(w), nn.relu, nn.Dense(3)])
      >>> x = jnp.ones((1, 8))
      >>> shapes = lambda w: jax.eval_shape(mlp(w).init, jax.random.key(0), x)
      >>> labels, multipliers = update_labels(shapes(256)["params"], shapes(64)["params"])
      >>> for label, multiplier in sorted(multipliers.items()):
      ...     print(label, multiplier)
      finite x1 1.0
      hidden x0.25 0.25
      input x1 1.0
      output x0.25 0.25
      vector x1 1.0
      >>> tx = optax.multi_transform(
      ...     {k: optax.chain(optax.adam(1e-3), optax.scale(m)) for k, m in multipliers.items()},
      ...     labels)
    """
    plan = parametrize(params, base, **options)
    names = [f"{p.shape.kind} x{p.lr_multiplier:.6g}" for p in plan.leaves]
    return flatten_tree(params).rebuild(names), {
        n: p.lr_multiplier for n, p in zip(names, plan.leaves, strict=True)
    }


class ScaleUpdatesState(NamedTuple):
    """:func:`scale_updates` keeps no state."""


def scale_updates(
    params: Any,
    base: Any,
    **options: Any,
) -> optax.GradientTransformation:
    """An optax transform that multiplies each leaf's update by its muP learning-rate
    multiplier; chain it after the base optimizer.

    ``optax.chain(optax.adam(lr), fi.mup.scale_updates(params, base))`` is muAdam
    (TP-V Table 3: hidden and output leaves' LR divided by their fan-in's growth);
    ``optimizer="sgd"`` with ``optax.sgd`` is muSGD. ``params`` may be a params tree,
    Linen variables (their ``params`` collection is used, the one an optimizer updates),
    an NNX ``State`` (``nnx.state(model, nnx.Param)``) or abstract; the updates the
    transform receives must have the same paths and shapes, else ``ValueError``
    naming the first leaf that differs. ``options`` are :func:`parametrize`'s keywords;
    build it with the same ones as :func:`rules`. The multipliers are Python floats
    folded into the step: no extra memory, no extra state.

    Example:
      >>> import flax.linen as nn
      >>> mlp = lambda w: nn.Sequential([nn.Dense(w), nn.relu, nn.Dense(3)])
      >>> x = jnp.ones((1, 8))
      >>> shapes = lambda w: jax.eval_shape(mlp(w).init, jax.random.key(0), x)["params"]
      >>> tx = optax.chain(optax.sgd(1.0), scale_updates(shapes(128), shapes(64)))
      >>> params = mlp(128).init(jax.random.key(0), x)["params"]
      >>> grads = jax.tree.map(jnp.ones_like, params)
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> float(updates["layers_2"]["kernel"][0, 0])  # output: Adam/SGD LR x 1/m
      -0.5
    """
    # The optimizer updates the params collection alone: take it from Linen variables.
    if _has_params_collection(params) and _has_params_collection(base):
        params, base = params["params"], base["params"]
        if _has_params_collection(options.get("delta")):
            options["delta"] = options["delta"]["params"]
    plan = parametrize(params, base, **options)
    expected = [(p.path, p.shape.shape) for p in plan.leaves]
    multipliers = [p.lr_multiplier for p in plan.leaves]

    def init_fn(params):
        del params
        return ScaleUpdatesState()

    def update_fn(updates, state, params=None):
        del params
        flat = flatten_tree(updates)
        have = [(info.path, info.shape) for info in flat.infos]
        if have != expected:
            _raise_mismatch(have, expected)
        scaled = [
            u if m == 1.0 else u * jnp.asarray(m, u.dtype)
            for u, m in zip(flat.arrays, multipliers, strict=True)
        ]
        return flat.rebuild(scaled), state

    return optax.GradientTransformation(init_fn, update_fn)


def _has_params_collection(tree: Any) -> bool:
    return isinstance(tree, Mapping) and "params" in tree


def _raise_mismatch(have: list, expected: list) -> None:
    for (hp, hs), (ep, es) in zip(have, expected, strict=False):
        if hp != ep:
            raise ValueError(
                f"mup.scale_updates: the updates have a leaf at {hp!r} where the parameters "
                f"it was built for have {ep!r}: build it from the tree the optimizer updates"
            )
        if tuple(hs) != tuple(es):
            raise ValueError(
                f"mup.scale_updates: the update at {hp!r} has shape {tuple(hs)} but the "
                f"parameters it was built for have {tuple(es)} (another width?)"
            )
    raise ValueError(
        f"mup.scale_updates: the updates have {len(have)} leaves, the parameters it was "
        f"built for {len(expected)}: build it from the tree the optimizer updates"
    )
