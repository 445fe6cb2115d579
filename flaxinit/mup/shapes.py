"""Which axes of each parameter grow with width: muP's base shapes, read from two trees.

microsoft/mup's ``set_base_shapes`` idea (Yang et al. 2022, arXiv:2203.03466, App. J):
build the same model at a *base* width and compare shapes. An axis whose size differs
is *infinite* (it grows with width); the others are finite (vocabulary, classes,
convolution windows, a fixed head count). From which of a leaf's fan axes are
infinite, each leaf is one kind (TP-V, Table 3):

* ``input``: only fan-out infinite (embeddings, the first layer);
* ``hidden``: fan-in and fan-out infinite;
* ``output``: only fan-in infinite (the readout);
* ``vector``: no fan-in axes but an infinite axis (biases, norm gains);
* ``finite``: nothing grows.

Fan axes come from the model's computation with ``structure=`` (so Einsum layouts
such as ``(heads, d_model, head_dim)`` are read right), else from Flax's kernel
convention: fan-in is axis ``-2``, fan-out axis ``-1``, other axes are a
convolution's window and must be finite.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

from flaxinit.rules.paths import LeafInfo, flatten_tree
from flaxinit.tables import format_table

__all__ = ["KINDS", "BaseShapes", "LeafShape", "base_shapes"]

KINDS = ("input", "hidden", "output", "vector", "finite")


@dataclasses.dataclass(frozen=True)
class LeafShape:
    """One leaf's shape against its base shape.

    Attributes:
      path: the leaf's path (as :func:`flaxinit.rules.tree_paths` writes it).
      shape: the leaf's shape in the tree being parametrized.
      base_shape: its shape in the base tree.
      kind: one of :data:`KINDS`.
      infinite_axes: axes whose size differs between base and delta (or target).
      fan_in_axes: the axes contracted with the layer's input.
      fan_out_axes: the axes carried to the layer's output.
      layer_axis: a scanned stack's layer axis (not a width), or None.
      layer: the block index read from the path or structure, or None.
      layer_group: the path prefix naming the blocks the index counts
        (``params/blocks``), or None.
      role: the role read by :func:`flaxinit.model_structure`, or None without one.
      roles: every role the structure read (a fused kernel plays several).
      residual_output: whether the leaf ends a residual branch (from the structure).
      norm_offset: ``1.0`` for the scale of a norm computing ``x * (1 + scale)``.
    """

    path: str
    shape: tuple[int, ...]
    base_shape: tuple[int, ...]
    kind: str
    infinite_axes: tuple[int, ...]
    fan_in_axes: tuple[int, ...]
    fan_out_axes: tuple[int, ...]
    layer_axis: int | None = None
    layer: int | None = None
    layer_group: str | None = None
    role: str | None = None
    roles: tuple[str, ...] = ()
    residual_output: bool = False
    norm_offset: float = 0.0

    def _mult(self, axes: Sequence[int]) -> float:
        axes = [a for a in axes if a in self.infinite_axes]
        if not axes:
            return 1.0
        return math.prod(self.shape[a] for a in axes) / math.prod(self.base_shape[a] for a in axes)

    @property
    def fan_in_mult(self) -> float:
        """The fan-in's growth over the base: ``fan_in / base_fan_in``."""
        return self._mult(self.fan_in_axes)

    @property
    def fan_out_mult(self) -> float:
        """The fan-out's growth over the base (for a vector, its infinite axes)."""
        if self.kind == "vector":
            return self._mult(self.infinite_axes)
        return self._mult(self.fan_out_axes)

    @property
    def width_mult(self) -> float:
        """microsoft/mup's ``width_mult``: fan-in growth for hidden and output leaves,
        fan-out growth for input and vector leaves, 1 for finite ones."""
        if self.kind in ("hidden", "output"):
            return self.fan_in_mult
        if self.kind in ("input", "vector"):
            return self.fan_out_mult
        return 1.0


class BaseShapes(collections.abc.Mapping):
    """A mapping path -> :class:`LeafShape` for every array leaf, in tree order.

    ``str(base_shapes)`` is a table: path, shape, base shape, kind, infinite axes,
    width multiplier.

    Attributes:
      num_layers: the depth of ``params`` (scanned stack length or number of block
        indices), or None.
      base_num_layers: the depth of ``base``, or None.
      group_layers: per group of indexed blocks (``params/blocks``), its number of
        blocks in ``params``; ``base_group_layers`` the same in ``base``.
    """

    def __init__(
        self,
        leaves: Sequence[LeafShape],
        num_layers: int | None = None,
        base_num_layers: int | None = None,
        group_layers: dict[str, int] | None = None,
        base_group_layers: dict[str, int] | None = None,
    ) -> None:
        self._leaves = {leaf.path: leaf for leaf in leaves}
        self.num_layers = num_layers
        self.base_num_layers = base_num_layers
        self.group_layers = dict(group_layers or {})
        self.base_group_layers = dict(base_group_layers or {})

    @property
    def any_width(self) -> bool:
        """Whether any axis grows with width (not only a stack's depth)."""
        return any(leaf.infinite_axes for leaf in self._leaves.values())

    def __getitem__(self, path: str) -> LeafShape:
        try:
            return self._leaves[path]
        except KeyError:
            raise KeyError(
                f"no leaf at {path!r}; paths look like {next(iter(self), '')!r}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._leaves)

    def __len__(self) -> int:
        return len(self._leaves)

    def __repr__(self) -> str:
        counts = collections.Counter(leaf.kind for leaf in self._leaves.values())
        return "BaseShapes(" + ", ".join(f"{k}={counts[k]}" for k in KINDS if counts[k]) + ")"

    def __str__(self) -> str:
        rows = [
            [
                leaf.path,
                str(leaf.shape),
                str(leaf.base_shape),
                leaf.kind,
                str(list(leaf.infinite_axes)) if leaf.infinite_axes else "-",
                f"{leaf.width_mult:g}",
            ]
            for leaf in self._leaves.values()
        ]
        return format_table(["path", "shape", "base", "kind", "infinite", "width_mult"], rows)


def flatten(tree: Any, what: str) -> list[tuple[LeafInfo, Any]]:
    """``(info, leaf)`` per array leaf of a params tree, NNX ``State`` or module."""
    try:
        flat = flatten_tree(tree)
    except Exception as e:  # pragma: no cover - flatten_tree handles every pytree
        raise TypeError(f"mup: {what} is not a parameter tree: {e}") from e
    if not flat.infos:
        raise ValueError(f"mup: {what} has no array leaves (got {type(tree).__name__})")
    return list(zip(flat.infos, flat.arrays, strict=True))


def _match(target: list, base: list, what: str, depth: bool) -> list[int]:
    """Per target leaf, the index of its base leaf: the same path, or with ``depth``
    the same path with the layer index removed (a deeper unrolled model)."""
    index = {b.path: i for i, (b, _) in enumerate(base)}
    canonical: dict[str, int] = {}
    for i, (b, _) in enumerate(base):
        canonical.setdefault(b.canonical, i)
    out, used = [], set()
    for t, _ in target:
        i = index.get(t.path)
        if i is None and depth:
            i = canonical.get(t.canonical)
        if i is None:
            hint = "" if depth else " (a deeper model? pass depth=)" if t.layer is not None else ""
            raise ValueError(
                f"mup: {what} has no leaf at {t.path!r}{hint}: it must be the same model's "
                "tree at another width (the same paths; shapes may differ)"
            )
        b = base[i][0]
        if len(t.shape) != len(b.shape):
            raise ValueError(
                f"mup: the leaf at {t.path!r} has shape {t.shape} but {b.shape} in {what}: "
                "a width changes sizes, not the number of axes"
            )
        out.append(i)
        used.add(i)
    extra = [b.path for i, (b, _) in enumerate(base) if i not in used]
    if extra and not depth:
        raise ValueError(
            f"mup: {what} has a leaf at {extra[0]!r} the parameters lack: it must be the "
            "same model's tree at another width"
        )
    return out


def _group_layers(infos: Sequence[LeafInfo]) -> dict[str, int]:
    """Per group of indexed blocks (``params/blocks``), its number of blocks."""
    out: dict[str, int] = {}
    for info in infos:
        if info.layer is not None and info.layer_group is not None:
            out[info.layer_group] = max(out.get(info.layer_group, 0), info.layer + 1)
    return out


def count_layers(infos: Sequence[LeafInfo], layer_axes: Sequence[int | None]) -> int | None:
    """A tree's depth: its scanned stack's length, else its number of block indices."""
    stacks = [info.shape[a] for info, a in zip(infos, layer_axes, strict=True) if a is not None]
    if stacks:
        return max(stacks)
    layers = {info.layer for info in infos if info.layer is not None}
    return max(layers) + 1 if layers else None


def _fan_axes(info: LeafInfo, structure_leaf: Any) -> tuple[tuple[int, ...], tuple[int, ...], Any]:
    """(fan_in_axes, fan_out_axes, layer_axis) of one leaf."""
    if structure_leaf is not None:
        return (
            tuple(structure_leaf.fan_in_axes),
            tuple(structure_leaf.fan_out_axes),
            structure_leaf.layer_axis,
        )
    ndim = len(info.shape)
    if ndim < 2:
        return (), tuple(range(ndim)), None
    return (ndim - 2,), (ndim - 1,), info.layer_axis


def _kind(ndim: int, inf: set[int], fan_in: Sequence[int], fan_out: Sequence[int]) -> str:
    fan_in_inf = bool(inf & set(fan_in))
    fan_out_inf = bool(inf & set(fan_out))
    if not fan_in:
        return "vector" if inf else "finite"
    if fan_in_inf and fan_out_inf:
        return "hidden"
    if fan_out_inf:
        return "input"
    if fan_in_inf:
        return "output"
    return "finite"


def base_shapes(
    params: Any, base: Any, *, structure: Any = None, delta: Any = None, depth: bool = False
) -> BaseShapes:
    """Reads which axes of each leaf grow with width, and each leaf's muP kind.

    Args:
      params: the parameters being parametrized (Linen variables or params, an NNX
        ``State`` or module, any pytree of arrays); arrays or ``jax.ShapeDtypeStruct``.
      base: the same model's tree at the base width (where the hyperparameters were
        tuned), e.g. ``jax.eval_shape(base_model.init, key, x)`` or
        ``nnx.state(nnx.eval_shape(lambda: Model(width=64, rngs=nnx.Rngs(0))))``.
      structure: a :func:`flaxinit.model_structure` of the model, for the true fan
        axes of Einsum and attention kernels and for roles. Without it, Flax's kernel
        convention applies: fan-in axis ``-2``, fan-out ``-1``.
      delta: the model at a third width, needed when ``params`` is at the base width:
        the infinite axes are then those where ``base`` and ``delta`` differ.
      depth: a scanned stack's layer axis may differ from the base (depth transfer).

    Returns:
      :class:`BaseShapes`, path -> :class:`LeafShape`.

    Raises:
      ValueError: ``base`` (or ``delta``) is another model's tree; no axis differs
        (and no ``delta``); an axis outside a leaf's fan axes grows (a convolution
        window, an expert count, or an Einsum layout without ``structure=``).

    Example:
      >>> import flax.linen as nn
      >>> mlp = lambda w: nn.Sequential([nn.Dense(w), nn.relu, nn.Dense(10)])
      >>> x = jnp.ones((1, 3))
      >>> shapes = lambda w: jax.eval_shape(mlp(w).init, jax.random.key(0), x)
      >>> s = base_shapes(shapes(256), shapes(64))
      >>> [(p, s[p].kind, s[p].width_mult) for p in s if p.endswith("kernel")]
      [('params/layers_0/kernel', 'input', 4.0), ('params/layers_2/kernel', 'output', 4.0)]
    """
    target = flatten(params, "params")
    base_all = flatten(base, "base")
    base_leaves = [base_all[i] for i in _match(target, base_all, "base", depth)]
    reference = base_leaves
    if delta is not None:
        delta_all = flatten(delta, "delta")
        reference = [delta_all[i] for i in _match(target, delta_all, "delta", depth)]
    structure_leaves: list[Any] = [None] * len(target)
    if structure is not None:
        structure_leaves = list(structure.check_tree([info for info, _ in target]))
    out = []
    any_infinite = False
    for (info, _), (binfo, _), (rinfo, _), sleaf in zip(
        target, base_leaves, reference, structure_leaves, strict=True
    ):
        shape, bshape = info.shape, binfo.shape
        other = rinfo.shape if delta is not None else shape
        inf = {a for a in range(len(shape)) if bshape[a] != other[a]}
        if delta is not None:
            # The target may sit between or beyond the two; a size it changes on a
            # finite axis is another model.
            for a in range(len(shape)):
                if a not in inf and shape[a] != bshape[a]:
                    raise ValueError(
                        f"mup: axis {a} of the leaf at {info.path!r} has size {shape[a]} but "
                        f"{bshape[a]} in base and delta alike: base and delta must differ in "
                        "every axis that grows with width"
                    )
        fan_in, fan_out, layer_axis = _fan_axes(info, sleaf)
        if layer_axis is not None and layer_axis in inf:
            if not depth:
                raise ValueError(
                    f"mup: the stacked leaf at {info.path!r} has {shape[layer_axis]} layers "
                    f"but {bshape[layer_axis]} in base: pass depth= to transfer across depth"
                )
            inf.discard(layer_axis)
        if sleaf is not None and sleaf.role == "other" and len(inf) >= 2:
            raise ValueError(
                f"mup: the leaf at {info.path!r} (shape {shape}, base {bshape}) grows in "
                f"{len(inf)} axes but the model structure gives it no fan axes (role "
                f"'other': {sleaf.reason or 'no evidence'}), so its muP kind is unknown; "
                "trace the structure on inputs that use it"
            )
        # A leaf with no fan-in (a bias, a norm gain, of any rank) is vector-like.
        outside = sorted(inf - set(fan_in) - set(fan_out)) if fan_in else []
        if outside:
            a = outside[0]
            hint = (
                " Pass structure=fi.model_structure(model, x) so the true fan axes of "
                "this layout are known."
                if structure is None and len(shape) > 2
                else ""
            )
            raise ValueError(
                f"mup: axis {a} of the leaf at {info.path!r} (shape {shape}, base {bshape}) "
                f"grows but is not one of its fan axes (in {list(fan_in)}, out "
                f"{list(fan_out)}): muP scales fan-in and fan-out only, not a window, "
                f"an expert count or a stack.{hint}"
            )
        any_infinite |= bool(inf)
        out.append(
            LeafShape(
                path=info.path,
                shape=shape,
                base_shape=bshape,
                kind=_kind(len(shape), inf, fan_in, fan_out),
                infinite_axes=tuple(sorted(inf)),
                fan_in_axes=fan_in,
                fan_out_axes=fan_out,
                layer_axis=layer_axis,
                layer=info.layer if sleaf is None or sleaf.layer is None else sleaf.layer,
                layer_group=info.layer_group,
                role=None if sleaf is None else sleaf.role,
                roles=() if sleaf is None else tuple(sleaf.roles),
                residual_output=bool(sleaf is not None and sleaf.residual_output),
                norm_offset=0.0 if sleaf is None else float(sleaf.norm_offset),
            )
        )
    if not any_infinite and not depth:
        raise ValueError(
            "mup: no axis differs between params and base, so no width grows: pass base at "
            "another width, or delta= (the model at a third width) when params is at the "
            "base width"
        )
    layer_axes = [leaf.layer_axis for leaf in out]
    num_layers = count_layers([info for info, _ in target], layer_axes)
    if structure is not None and structure.num_layers is not None:
        num_layers = structure.num_layers
    base_num_layers = count_layers([info for info, _ in base_all], [None] * len(base_all))
    stacked = [
        (b.shape[a]) for (b, _), a in zip(base_leaves, layer_axes, strict=True) if a is not None
    ]
    if stacked:
        base_num_layers = max(stacked)
    return BaseShapes(
        out,
        num_layers,
        base_num_layers,
        group_layers=_group_layers([info for info, _ in target]),
        base_group_layers=_group_layers([info for info, _ in base_all]),
    )
