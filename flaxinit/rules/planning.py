"""Plans: per leaf, the rules that hit it, the axis each runs along and its contexts.

A :class:`Plan` is everything ``apply_rules`` and ``explain_rules`` decide before any
array work: the flattened tree, the compiled rules, per leaf the rules that hit it (in
rule order), and :class:`LayerContexts`, which gives each leaf (or each layer's slice of
a stacked leaf) its :class:`~flaxinit.rules.RuleContext`.

Layers: ``ctx.layer`` is read from the path (``layers_3``, ``blocks/3``) or from
``layer_of``; a rule runs layer by layer along the axis its action's
:meth:`~flaxinit.rules.Action.layer_plan` names (a ``'layers'`` partition name, or
``per_layer``), slice ``i`` getting ``ctx.layer == i``. ``ctx.num_layers`` is
``num_layers`` when given; else the stack's length for a slice; else ``1 + max index``
of the leaf's own stack; else the structure's count; else the largest count in the tree.

Invariants: a plan depends on paths, shapes, dtypes, the rules and the options only,
never on array values; :func:`check_stacks` refuses to slice a leaf along an axis
nobody declared unless something says the leaf is a stack.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from flaxinit.rules.actions import Action, RuleContext
from flaxinit.rules.matching import (
    Rule,
    StructureView,
    UnmatchedRule,
    compile_rules,
    match_rules,
    unmatched,
    view_structure,
)
from flaxinit.rules.options import Options
from flaxinit.rules.paths import FlatTree, LeafInfo, flatten_tree

__all__ = ["LayerContexts", "Plan", "check_stacks", "layer_axis", "make_plan"]


def layer_axis(info: LeafInfo, action: Action) -> tuple[int | None, Action]:
    """The axis of ``info``'s leaf (non-negative) that ``action`` runs along layer by
    layer, or None for the whole leaf, and the action to run (see
    :meth:`~flaxinit.rules.Action.layer_plan`).

    Raises:
      ValueError: the axis is out of range for the leaf.

    Example:
      >>> import numpy as np
      >>> from flaxinit.rules import fill, per_layer
      >>> info = flatten_tree({"w": np.zeros((4, 3))}).infos[0]
      >>> layer_axis(info, per_layer(fill(0.0), axis=-1))
      (1, fill(0.0))
      >>> layer_axis(info, fill(0.0))
      (None, fill(0.0))
    """
    axis, action = action.layer_plan(info)
    if axis is not None:
        nd = len(info.shape)
        if not -nd <= axis < nd:
            raise ValueError(
                f"per_layer: axis {axis} is out of range for the leaf at {info.path!r} "
                f"of shape {info.shape}"
            )
        axis %= nd
    return axis, action


class LayerContexts:
    """Layer indices and layer counts for a plan, and the context of each leaf or
    slice (see ``RuleContext.num_layers`` and the module docstring).

    Attributes:
      layer_indices: per leaf, its layer index (from ``layer_of`` or the path), or None.
      groups: per stack of indexed layers (``params/layers``), its number of layers.
      tree_max: the largest layer count anywhere in the tree, or None.
      structure: the model structure lined up with the leaves, or None.
    """

    def __init__(
        self,
        infos: Sequence[LeafInfo],
        hits: Sequence[Sequence[Rule]],
        opts: Options,
        structure: StructureView | None = None,
    ) -> None:
        self.opts = opts
        self.structure = structure
        self.groups: dict[str, int] = {}
        counts: list[int] = []
        if opts.layer_of is not None:
            self.layer_indices = [opts.layer_of(i.path) for i in infos]
            counts += [v + 1 for v in self.layer_indices if v is not None]
        else:
            self.layer_indices = [i.layer for i in infos]
            for info in infos:
                if info.layer is not None:
                    g = info.layer_group
                    self.groups[g] = max(self.groups.get(g, 0), info.layer + 1)
            counts += list(self.groups.values())
        for info, leaf_rules in zip(infos, hits, strict=True):
            for r in leaf_rules:
                axis, _ = layer_axis(info, r.value)
                if axis is not None:
                    counts.append(info.shape[axis])
        self.tree_max = max(counts, default=None)

    def signature(self) -> tuple[Any, ...]:
        """What the contexts depend on besides the leaf (hashable if the context is)."""
        opts = self.opts
        return (
            tuple(sorted(self.groups.items())),
            self.tree_max,
            opts.num_layers,
            opts.layer_of,
            tuple(sorted(opts.extra.items())),
            None if self.structure is None else self.structure.num_layers,
        )

    def leaf_signature(self, n: int) -> Any:
        """The structure facts leaf ``n``'s contexts hold (None without a structure)."""
        return None if self.structure is None else self.structure.leaves[n].signature()

    def _structural(self, n: int, drop_axis: int | None = None) -> dict[str, Any]:
        """The context fields a structure gives leaf ``n`` (one slice's, with the
        stacked ``drop_axis`` removed and later axes renumbered)."""
        if self.structure is None:
            return {}
        leaf = self.structure.leaves[n]

        def axes(group: tuple[int, ...]) -> tuple[int, ...]:
            if drop_axis is None:
                return group
            return tuple(a - (a > drop_axis) for a in group if a != drop_axis)

        fields: dict[str, Any] = {
            "role": leaf.role,
            "residual_output": leaf.residual_output,
            "norm_offset": leaf.norm_offset,
        }
        if leaf.fan_in_axes or leaf.fan_out_axes:
            fields["fan_in_axes"] = axes(leaf.fan_in_axes)
            fields["fan_out_axes"] = axes(leaf.fan_out_axes)
            fields["batch_axes"] = axes(leaf.batch_axes)
        return fields

    def _num_layers(self, info: LeafInfo) -> int | None:
        opts = self.opts
        if opts.num_layers is not None:
            return opts.num_layers
        if opts.layer_of is None and info.layer_group in self.groups:
            return self.groups[info.layer_group]
        if self.structure is not None and self.structure.num_layers is not None:
            return self.structure.num_layers
        return self.tree_max

    def context(self, n: int, info: LeafInfo) -> RuleContext:
        """The context of the whole (unstacked) leaf ``n``."""
        layer = self.layer_indices[n]
        if layer is None and self.structure is not None:
            layer = self.structure.leaves[n].layer
        return RuleContext.make(
            path=info.path,
            shape=info.shape,
            dtype=info.dtype,
            layer=layer,
            num_layers=self._num_layers(info),
            is_layer_slice=False,
            extra=self.opts.extra,
            **self._structural(n),
        )

    def slices(self, n: int, info: LeafInfo, axis: int) -> list[RuleContext]:
        """One context per slice of a stacked leaf."""
        length = info.shape[axis]
        shape = info.shape[:axis] + info.shape[axis + 1 :]
        num = self.opts.num_layers if self.opts.num_layers is not None else length
        structural = self._structural(n, drop_axis=axis)
        return [
            RuleContext.make(
                path=info.path,
                shape=shape,
                dtype=info.dtype,
                layer=i,
                num_layers=num,
                is_layer_slice=True,
                extra=self.opts.extra,
                **structural,
            )
            for i in range(length)
        ]


@dataclasses.dataclass
class Plan:
    """The static result of matching: which rules hit which leaf.

    Attributes:
      flat: the flattened tree (``flat.infos[n]`` describes leaf ``n``).
      rules: the compiled rules, in order.
      hits: per leaf, the rules that hit it, in rule order.
      contexts: the layer indices and counts, and each leaf's contexts.
    """

    flat: FlatTree
    rules: list[Rule]
    hits: list[list[Rule]]
    contexts: LayerContexts

    def missing(self) -> list[UnmatchedRule]:
        """The rules that matched no leaf (see :func:`~flaxinit.rules.matching.unmatched`)."""
        return unmatched(self.rules, self.hits, self.flat.infos, self.contexts.structure)


def make_plan(
    tree: Any,
    rules: Iterable[Any],
    context: Mapping[str, Any] | None = None,
    structure: Any = None,
    *,
    num_layers: int | None = None,
    layer_of: Callable[[str], int | None] | None = None,
) -> Plan:
    """Flattens ``tree``, compiles ``rules`` and matches them (all in Python).

    The arguments are ``apply_rules``'s (see :func:`flaxinit.rules.apply_rules`).

    Example:
      >>> import numpy as np
      >>> from flaxinit.rules import fill
      >>> plan = make_plan({"a": np.zeros(2), "b": np.zeros(3)}, [("b", fill(1.0))])
      >>> [[r.index for r in hits] for hits in plan.hits]
      [[], [0]]
    """
    compiled = compile_rules(rules)
    opts = Options.make(context, num_layers, layer_of)
    flat = flatten_tree(tree)
    view = view_structure(structure, flat.infos)
    hits = match_rules(compiled, flat.infos, view)
    check_stacks(flat.infos, hits, view)
    return Plan(flat, compiled, hits, LayerContexts(flat.infos, hits, opts, view))


def check_stacks(
    infos: Sequence[LeafInfo], hits: Sequence[Sequence[Rule]], structure: StructureView | None
) -> None:
    """Raises where a ``per_layer`` without ``axis=`` would slice a leaf that nothing
    says is a stack of layers (see :func:`flaxinit.rules.per_layer`)."""
    modules: dict[str, list[LeafInfo]] = {}
    for info in infos:
        modules.setdefault(info.path.rpartition("/")[0], []).append(info)
    for n, (info, leaf_rules) in enumerate(zip(infos, hits, strict=True)):
        for rule in leaf_rules:
            action = rule.value
            if not action.assumes_layer_axis or info.layer is not None:
                continue
            what = (
                f"rule {rule.index} ({rule.pattern.source!r}, {action!r}) takes the leaf at "
                f"{info.path!r} of shape {info.shape} for a stack of layers along axis 0"
            )
            if structure is not None:
                layer_axis = structure.leaves[n].layer_axis
                if layer_axis == 0:
                    continue
                raise ValueError(
                    f"{what}, but the model's computation "
                    + (
                        "uses it whole (it is not scanned)"
                        if layer_axis is None
                        else f"stacks it along axis {layer_axis}"
                    )
                    + "; name the axis with per_layer(..., axis=) or narrow the pattern"
                )
            if info.layer_axis is not None or not info.shape:
                continue
            siblings = modules[info.path.rpartition("/")[0]]
            if all(s.shape and s.shape[0] == info.shape[0] for s in siblings):
                continue
            others = ", ".join(f"{s.path} {s.shape}" for s in siblings if s is not info)
            raise ValueError(
                f"{what}, but nothing says it is one: no 'layers' partition name, no layer "
                f"index in its path, and its module's other leaves ({others}) do not share "
                "that length. If it is a stack, say so with per_layer(..., axis=0) (or pass "
                "structure=fi.model_structure(...)); otherwise narrow the pattern"
            )
