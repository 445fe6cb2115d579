"""From the dataflow facts to one :class:`LeafStructure` per leaf.

Each role is decided by what the computation does with the leaf, in this order:

============================  ==============================================================
role                          evidence
============================  ==============================================================
``embedding``                 rows gathered by data (``jnp.take``, ``Embed``), or a
                              parameter with 2+ dims added to the activations where no
                              linear layer's bias would fit (a learned position embedding)
``conv``                      the kernel of ``conv_general_dilated``
``attention_query``/``_key``  a linear layer whose output reaches the left/right side of
                              an activation-by-activation product that feeds a softmax
``attention_value``           a linear layer whose output is multiplied by softmax
                              probabilities
``attention_out``             a linear layer whose input is the attention context
``mlp_out``                   a linear layer whose output reaches a residual add with no
                              other linear layer in between, fed by another linear layer
``mlp_in``                    a linear layer feeding an ``mlp_out`` (gate and up both count)
``readout``                   a linear layer whose output reaches the model's output
``dense``                     any other linear layer (a router, a plain MLP's hidden layer)
``norm_scale``                multiplies a normalized activation (after ``rsqrt``/``sqrt``)
``norm_bias``                 added to a normalized activation
``bias``                      added right after a linear layer, in its output's shape
``other``                     none of the above; ``reason`` says what was seen
============================  ==============================================================

A fused projection whose output is indexed apart (Gemma's ``(2, kv_heads, d,
head_dim)`` key/value kernel, a ``(2, d, ff)`` gate/up kernel) has the indexed axis
as a batch axis and every role its parts play in ``roles``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from flaxinit.structure.dataflow import Facts, Use, axes_union

__all__ = ["ROLES", "LeafStructure", "classify"]

ROLES = (
    "embedding",
    "attention_query",
    "attention_key",
    "attention_value",
    "attention_out",
    "mlp_in",
    "mlp_out",
    "conv",
    "dense",
    "readout",
    "norm_scale",
    "norm_bias",
    "bias",
    "other",
)
_ATTENTION_ORDER = ("attention_query", "attention_key", "attention_value", "attention_out")
# Roles of leaves that act as a linear map of the activations (kernels).
LINEAR_ROLES = (*_ATTENTION_ORDER, "mlp_in", "mlp_out", "conv", "dense", "readout")


@dataclasses.dataclass(frozen=True)
class LeafStructure:
    """What the model's computation says about one leaf.

    Attributes:
      path: the leaf's path, as :func:`flaxinit.rules.tree_paths` writes it.
      shape: the leaf's shape.
      dtype: the leaf's dtype.
      role: one of :data:`ROLES`.
      roles: every role the leaf plays (a fused key/value kernel plays two).
      fan_in_axes: the leaf's axes contracted with the input (a conv's window and
        input features; an embedding's vocabulary axis).
      fan_out_axes: the axes carried to the output.
      batch_axes: axes of independent weights: a scanned stack's layer axis, an
        expert axis, the part axis of a fused projection.
      layer_axis: the axis of a scanned (``nn.scan``/``nnx.scan``) stack, or None.
      layer: the block's depth index (from the path or the order of residual
        branches), or None outside blocks and for a stacked leaf (one per slice).
      residual_output: the leaf's output reaches a residual add with no other
        linear layer in between.
      norm_offset: ``1.0`` where a norm computes ``x * (1 + scale)``, else ``0.0``.
      evidence: the consuming ops behind the role, one line each.
      reason: why the role is ``other`` (empty otherwise).
    """

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    role: str
    roles: tuple[str, ...]
    fan_in_axes: tuple[int, ...]
    fan_out_axes: tuple[int, ...]
    batch_axes: tuple[int, ...]
    layer_axis: int | None
    layer: int | None
    residual_output: bool
    norm_offset: float
    evidence: tuple[str, ...]
    reason: str = ""

    @property
    def fan_in(self) -> int | None:
        """The product of the fan-in axes' sizes (None for a leaf without any)."""
        if not self.fan_in_axes:
            return None
        return math.prod(self.shape[a] for a in self.fan_in_axes)

    @property
    def fan_out(self) -> int | None:
        """The product of the fan-out axes' sizes (None for a leaf without any)."""
        if not self.fan_out_axes:
            return None
        return math.prod(self.shape[a] for a in self.fan_out_axes)

    def signature(self) -> tuple[Any, ...]:
        """The hashable facts a rule can read (for program caches)."""
        return (
            self.role,
            self.roles,
            self.fan_in_axes,
            self.fan_out_axes,
            self.batch_axes,
            self.layer_axis,
            self.layer,
            self.residual_output,
            self.norm_offset,
        )


def _bias_fits(shape: tuple[int, ...], kernel: tuple[int, ...], fan_out: Sequence[int]) -> bool:
    """Whether a leaf of ``shape`` is shaped like the output features of a kernel."""
    want = [kernel[a] for a in sorted(fan_out)]
    have = [d for d in shape if d != 1]
    return have == [d for d in want if d != 1]


def _common_prefix(paths: Sequence[str]) -> tuple[str, ...]:
    split = [p.split("/") for p in paths]
    out: list[str] = []
    for segs in zip(*split, strict=False):
        if len(set(segs)) != 1:
            break
        out.append(segs[0])
    return tuple(out)


def classify(
    facts: Facts,
    paths: Sequence[str],
    shapes: Sequence[tuple[int, ...]],
    dtypes: Sequence[np.dtype],
    path_layers: Sequence[int | None],
    collections: Sequence[str | None],
) -> list[LeafStructure]:
    """One :class:`LeafStructure` per leaf (see the module docstring)."""
    n = facts.num_leaves
    uses = facts.uses
    linear = [any(u.kind in ("linear", "conv") for u in uses[i]) for i in range(n)]
    gathered = [any(u.kind == "gather" for u in uses[i]) for i in range(n)]

    # mlp_out first: residual linear layers fed by another linear layer.
    mlp_out = {
        i
        for i in range(n)
        if linear[i]
        and not gathered[i]
        and facts.residual[i]
        and not facts.attention[i]
        and not any(u.kind == "conv" for u in uses[i])
        and any(linear[f] and f != i for f in facts.feeders[i])
    }
    mlp_in = {f for i in mlp_out for f in facts.feeders[i] if linear[f] and f not in mlp_out}

    out: list[LeafStructure] = []
    for i in range(n):
        shape, leaf_uses = shapes[i], uses[i]
        evidence = tuple(dict.fromkeys(u.detail or u.op for u in leaf_uses))
        role, roles, reason = "other", (), ""
        fan_in: tuple[int, ...] = ()
        fan_out: tuple[int, ...] = ()
        batch: tuple[int, ...] = ()
        offset = 0.0
        kinds = {u.kind for u in leaf_uses}
        stacked = axes_union([u.stacked_axes for u in leaf_uses])

        def axes_of(selected: list[Use]) -> tuple[tuple[int, ...], ...]:
            first = selected[0]
            return first.fan_in_axes, first.fan_out_axes, first.batch_axes

        if gathered[i]:
            role = "embedding"
            fan_in, fan_out, batch = axes_of([u for u in leaf_uses if u.kind == "gather"])
            if linear[i]:
                evidence += ("also a readout (tied embedding)",)
        elif "conv" in kinds:
            role = "conv"
            fan_in, fan_out, batch = axes_of([u for u in leaf_uses if u.kind == "conv"])
        elif "linear" in kinds:
            lin = [u for u in leaf_uses if u.kind == "linear"]
            fan_in, fan_out, batch = axes_of(lin)
            split = tuple(sorted(facts.split_axes[i] - set(fan_in)))
            if split and not set(fan_out) - set(split):
                # Every output axis was indexed apart: a packed projection reshaped
                # then indexed (``(d, 3d)`` -> ``(..., 3, d)``); its fan-out is the
                # packed width.
                evidence += (
                    f"output indexed apart along a reshaped axis; fan-out {fan_out} "
                    "is the packed width of all parts",
                )
                split = ()
            if split:
                fan_out = tuple(a for a in fan_out if a not in split)
                batch = axes_union([batch, split])
                evidence += (f"output indexed apart along leaf axes {split}",)
            if facts.attention[i]:
                roles = tuple(r for r in _ATTENTION_ORDER if r in facts.attention[i])
                role = roles[0]
            elif i in mlp_out:
                role = "mlp_out"
            elif i in mlp_in:
                role = "mlp_in"
            elif i in facts.output_reach:
                role = "readout"
            else:
                role = "dense"
            if len({(u.fan_in_axes, u.fan_out_axes) for u in lin}) > 1:
                evidence += ("used with different fan axes; the first use is reported",)
        elif "concat" in kinds:
            role = "embedding"
        elif (
            "mul" in kinds
            and any(u.normalized for u in leaf_uses if u.kind == "mul")
            and math.prod(d for a, d in enumerate(shape) if a not in stacked) == 1
        ):
            reason = (
                "a scalar gain on a normalized activation (ReZero/SkipInit-style), "
                "not a norm's per-feature scale"
            )
        elif "mul" in kinds and any(u.normalized for u in leaf_uses if u.kind == "mul"):
            role = "norm_scale"
            offset = next(u.offset for u in leaf_uses if u.kind == "mul" and u.normalized)
        elif "add" in kinds and any(u.normalized for u in leaf_uses if u.kind == "add"):
            role = "norm_bias"
        elif "add" in kinds:
            add = next(u for u in leaf_uses if u.kind == "add")
            k = add.after_linear
            kernel = None
            if k is not None:
                kuse = next((u for u in uses[k] if u.kind in ("linear", "conv")), None)
                kernel = (shapes[k], kuse.fan_out_axes) if kuse is not None else None
            unstacked = tuple(d for a, d in enumerate(shape) if a not in stacked)
            if kernel is not None:
                kshape, kout = kernel
                kstacked = {a for u in uses[k] for a in u.stacked_axes}
                kout = [a for a in kout if a not in kstacked]
                kernel = (kshape, kout)
            if kernel is not None and _bias_fits(unstacked, *kernel):
                role = "bias"
            elif len([d for d in unstacked if d != 1]) >= 2:
                role = "embedding"
                evidence += ("added to the activations across positions",)
            else:
                role = "bias"
                evidence += ("added to activations that no linear layer produced directly",)
        elif "mul" in kinds:
            reason = (
                "multiplies activations elementwise with no normalization before it "
                "(a learned gain such as LayerScale or ReZero's alpha)"
            )
        elif kinds == {"statistic"}:
            reason = "a normalizer's statistic (running mean or variance)"
        elif not leaf_uses:
            reason = "not used by the forward pass on these inputs"
            if collections[i] not in (None, "params"):
                reason += f" (collection {collections[i]!r})"
        else:
            reason = "consumed by " + ", ".join(sorted({u.op for u in leaf_uses}))
        if role != "other" and not roles:
            roles = (role,)
        if role == "other":
            roles = ("other",)
        if role not in ("conv", *LINEAR_ROLES, "embedding"):
            fan_in, fan_out = (), ()
            batch = stacked
        layer_axis = min(stacked) if stacked else None
        out.append(
            LeafStructure(
                path=paths[i],
                shape=tuple(shape),
                dtype=np.dtype(dtypes[i]),
                role=role,
                roles=roles,
                fan_in_axes=tuple(sorted(fan_in)),
                fan_out_axes=tuple(sorted(fan_out)),
                batch_axes=tuple(sorted(batch)),
                layer_axis=layer_axis,
                layer=None,
                residual_output=bool(facts.residual[i]),
                norm_offset=float(offset),
                evidence=evidence,
                reason=reason,
            )
        )
    return _with_layers(out, facts, path_layers)


def _with_layers(
    leaves: list[LeafStructure], facts: Facts, path_layers: Sequence[int | None]
) -> list[LeafStructure]:
    """Fills ``layer``: the path's index, else the order of residual branches."""
    layers: list[int | None] = list(path_layers)
    if not any(v is not None for v in layers):
        # Blocks in computation order: a residual branch's leaves share a module
        # prefix; consecutive branches under one parent module are one block.
        block = -1
        parent: tuple[str, ...] | None = None
        prefixes: list[tuple[tuple[str, ...], int]] = []
        for reach in facts.residual_adds:
            members = sorted(reach | {f for r in reach for f in facts.feeders[r]})
            if not members or any(leaves[m].layer_axis is not None for m in members):
                continue
            key = _common_prefix([leaves[m].path for m in members])
            # The block is the module above the branch's own; a collection alone
            # (``params``) names no block.
            if len(key) < 2 or (len(key) == 2 and key[0] in ("params", "batch_stats")):
                continue
            if key[:-1] != parent:
                block += 1
                parent = key[:-1]
            prefixes.append((parent, block))
        if prefixes and len({b for _, b in prefixes}) > 1:
            for i, leaf in enumerate(leaves):
                segs = tuple(leaf.path.split("/"))
                for prefix, b in prefixes:
                    if prefix and segs[: len(prefix)] == prefix:
                        layers[i] = b
                        break
    return [
        dataclasses.replace(leaf, layer=None if leaf.layer_axis is not None else layers[i])
        for i, leaf in enumerate(leaves)
    ]
