"""Turning parameter trees into ``(path, leaf)`` records and back.

One traversal serves Linen variable dicts (with or without the ``params`` level,
boxed in ``nn.Partitioned``/``nn.LogicallyPartitioned`` or not), ``nnx.State``,
NNX modules (which are pytrees in Flax 0.12), and plain nested dicts, lists,
tuples, namedtuples and ``GetAttrKey`` pytrees (Equinox, Haiku).

The traversal stops at Flax boxes and NNX ``Variable``s, so their metadata stays
in the tree definition and is rebuilt unchanged around new values; the wrappers
are invisible in paths (no trailing ``value``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from flax.core import meta

from flaxinit._deprecation import module_getattr, warn_renamed

__all__ = ["FlatTree", "LeafInfo", "flatten_tree", "layer_index", "tree_paths"]

SEP = "/"
# The partition name nn.scan / nnx.vmap prepend to stacked leaves when the user
# sets metadata_params / transform_metadata={PARTITION_NAME: 'layers'}.
LAYER_AXIS_NAME = "layers"

_NAME_INDEX = re.compile(r"(.+?)_([0-9]+)")
_INDEX = re.compile(r"[0-9]+")
_LAYER_SUFFIXES = ("block", "blocks", "layer", "layers")


_WRAPPER_TYPES: dict[type, bool] = {}


def _is_wrapper(x: Any) -> bool:
    # isinstance against nnx.Variable goes through a slow metaclass hook; cache
    # the answer per type (not for tracers, which can stand for a Variable).
    t = type(x)
    known = _WRAPPER_TYPES.get(t)
    if known is None:
        known = isinstance(x, (meta.AxisMetadata, nnx.Variable))
        if not isinstance(x, jax.core.Tracer):
            _WRAPPER_TYPES[t] = known
    return known


def _is_array(x: Any) -> bool:
    # Arrays, tracers, numpy arrays and jax.ShapeDtypeStruct all qualify; Python
    # scalars, strings and None do not and are passed through untouched.
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _key_str(k: Any) -> str:
    if isinstance(k, jax.tree_util.DictKey):
        return str(k.key)
    if isinstance(k, jax.tree_util.SequenceKey):
        return str(k.idx)
    if isinstance(k, jax.tree_util.GetAttrKey):
        return k.name
    if isinstance(k, jax.tree_util.FlattenedIndexKey):
        return str(k.key)
    return str(k)


def path_str(keypath: Sequence[Any], *, drop_value: bool = False) -> str:
    """Joins a jax key path with ``/``: dict keys, attribute names, list indices.

    ``drop_value`` drops a trailing ``.value`` attribute (an NNX ``Variable`` or a Flax
    box flattened by ``jax.tree_util``), so such a leaf's path is its owner's.
    """
    last = keypath[-1] if keypath else None
    if drop_value and isinstance(last, jax.tree_util.GetAttrKey) and last.name == "value":
        keypath = keypath[:-1]
    return SEP.join(_key_str(k) for k in keypath)


def _is_layer_name(name: str) -> bool:
    low = name.lower()
    return low == "h" or low.endswith(_LAYER_SUFFIXES)


def layer_index(path: str) -> tuple[int, str, str] | None:
    """Reads a layer index from a path.

    Two forms count, and the outermost one wins:

    * a segment ``<name>_<int>`` whose ``<name>`` is ``h`` or ends in ``block``,
      ``blocks``, ``layer`` or ``layers`` (case-insensitive): ``layers_3``,
      ``h_3``, ``block_3``, ``Block_3``, ``encoderblock_3``, ``DecoderLayer_3``;
    * a numeric segment right after such a name: ``blocks/3``, ``layers/3``,
      ``h/3`` (NNX ``nnx.List`` items, Equinox lists).

    Linen auto-names of library layers (``Dense_0``, ``Conv_1``, ``BatchNorm_2``)
    and bare indices of other lists (``params/0``) are *not* depths.

    Returns:
      ``(layer, group, canonical)`` or ``None``: ``group`` is the path prefix that
      names the stack with the index removed (``params/layers``), used to count its
      layers; ``canonical`` is the whole path with the index removed
      (``params/layers/mlp/kernel``), the path the same leaf has in a stacked
      (``nn.scan``/``nnx.vmap``) model.

    Example:
      >>> layer_index("params/layers_3/mlp/kernel")
      (3, 'params/layers', 'params/layers/mlp/kernel')
      >>> layer_index("blocks/3/attn/out/kernel")
      (3, 'blocks', 'blocks/attn/out/kernel')
      >>> layer_index("params/Dense_0/kernel") is None
      True
    """
    segs = path.split(SEP)
    for i, seg in enumerate(segs):
        if i > 0 and _INDEX.fullmatch(seg) and _is_layer_name(segs[i - 1]):
            return int(seg), SEP.join(segs[:i]), SEP.join(segs[:i] + segs[i + 1 :])
        m = _NAME_INDEX.fullmatch(seg)
        if m and _is_layer_name(m[1]):
            head = [*segs[:i], m[1]]
            return int(m[2]), SEP.join(head), SEP.join(head + segs[i + 1 :])
    return None


def _partition_names(wrapper: Any) -> tuple[Any, ...] | None:
    if isinstance(wrapper, meta.AxisMetadata):
        names = getattr(wrapper, "names", None)
    elif isinstance(wrapper, nnx.Variable):
        md = wrapper.get_metadata()
        names = next(
            (md[k] for k in ("out_sharding", "sharding_names", "sharding") if md.get(k)), None
        )
    else:
        names = None
    if isinstance(names, jax.sharding.NamedSharding):
        names = names.spec
    if names is None or isinstance(names, str):
        return None
    try:
        return tuple(names)
    except TypeError:
        return None


@dataclasses.dataclass(frozen=True)
class LeafInfo:
    """What the engine knows about one array leaf, all static.

    Attributes:
      path: the leaf's keys joined by ``/``; wrappers are invisible.
      shape: the leaf's shape.
      dtype: the leaf's dtype.
      layer: the layer index read from the path (:func:`layer_index`), or None.
      layer_group: the stack the index belongs to (path prefix without index).
      canonical: the path with the layer index removed (equals ``path`` if none).
      layer_axis: the axis named ``'layers'`` in the leaf's partition metadata
        (``nn.scan``/``nnx.vmap`` with ``PARTITION_NAME='layers'``), or None
        (``stacked_axis`` before; the old name warns).
      wrapper: the wrapper's type name (``'LogicallyPartitioned'``, ``'Param'``) or
        None for a bare array.
    """

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    layer: int | None
    layer_group: str | None
    canonical: str
    layer_axis: int | None
    wrapper: str | None

    @property
    def stacked_axis(self) -> int | None:
        """Deprecated name of :attr:`layer_axis`."""
        warn_renamed("LeafInfo.stacked_axis", "LeafInfo.layer_axis")
        return self.layer_axis


@dataclasses.dataclass
class FlatTree:
    """A flattened tree: infos and arrays for every array leaf, and a way back.

    ``rebuild(arrays)`` puts new arrays in the old places, rebuilding every box
    and ``Variable`` from its own tree definition, so metadata is kept.
    """

    treedef: Any
    outer: list[Any]
    # Per outer leaf: None for a bare leaf, else (inner_treedef, inner_leaves).
    inner: list[tuple[Any, list[Any]] | None]
    # Per array leaf: (outer index, inner index or -1).
    slots: list[tuple[int, int]]
    infos: list[LeafInfo]
    arrays: list[Any]

    def rebuild(self, arrays: Sequence[Any]) -> Any:
        """Returns the tree with the array leaves replaced by ``arrays`` (in order)."""
        outer = list(self.outer)
        inner = [None if x is None else list(x[1]) for x in self.inner]
        for (o, i), a in zip(self.slots, arrays, strict=True):
            if i < 0:
                outer[o] = a
            else:
                inner[o][i] = a
        for o, x in enumerate(self.inner):
            if x is not None:
                outer[o] = x[0].unflatten(inner[o])
        return jax.tree_util.tree_unflatten(self.treedef, outer)

    def map_outer(self, fn: Any) -> Any:
        """Rebuilds the tree with ``fn(array_leaf_index)`` at each array leaf's
        *outer* position (wrappers replaced), other leaves kept: a prefix tree."""
        outer = list(self.outer)
        for n, (o, _) in enumerate(self.slots):
            outer[o] = fn(n)
        return jax.tree_util.tree_unflatten(self.treedef, outer)


def _info(path: str, x: Any, layer_axis: int | None, wrapper: str | None) -> LeafInfo:
    parsed = layer_index(path)
    layer, group, canonical = parsed if parsed else (None, None, path)
    return LeafInfo(
        path=path,
        shape=tuple(int(d) for d in x.shape),
        dtype=np.dtype(x.dtype),
        layer=layer,
        layer_group=group,
        canonical=canonical,
        layer_axis=layer_axis,
        wrapper=wrapper,
    )


def flatten_tree(tree: Any) -> FlatTree:
    """Flattens ``tree`` into :class:`LeafInfo` records and arrays.

    Non-array leaves (Python scalars, strings) are kept in place and get no record.
    A wrapper holding several arrays gives one record per array, its inner path
    appended (a leading ``value`` attribute dropped).

    Example:
      >>> flat = flatten_tree({"layers_2": {"w": np.zeros((3, 4))}, "step": 7})
      >>> [(i.path, i.shape, i.layer, i.canonical, i.layer_axis) for i in flat.infos]
      [('layers_2/w', (3, 4), 2, 'layers/w', None)]
      >>> flat.rebuild([np.ones((3, 4))])["step"]
      7
    """
    with_path, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_wrapper)
    outer: list[Any] = []
    inner: list[tuple[Any, list[Any]] | None] = []
    slots: list[tuple[int, int]] = []
    infos: list[LeafInfo] = []
    arrays: list[Any] = []
    for o, (kp, leaf) in enumerate(with_path):
        outer.append(leaf)
        base = path_str(kp)
        if not _is_wrapper(leaf):
            inner.append(None)
            if _is_array(leaf):
                slots.append((o, -1))
                infos.append(_info(base, leaf, None, None))
                arrays.append(leaf)
            continue
        sub, sub_def = jax.tree_util.tree_flatten_with_path(leaf)
        inner.append((sub_def, [x for _, x in sub]))
        names = _partition_names(leaf)
        wrapper = type(leaf).__name__
        for i, (skp, x) in enumerate(sub):
            if not _is_array(x):
                continue
            keys = list(skp)
            if keys and _key_str(keys[0]) == "value":
                keys = keys[1:]
            path = SEP.join(filter(None, (base, path_str(keys))))
            axis = None
            if names is not None and len(names) == len(x.shape) and LAYER_AXIS_NAME in names:
                axis = names.index(LAYER_AXIS_NAME)
            slots.append((o, i))
            infos.append(_info(path, x, axis, wrapper))
            arrays.append(x)
    return FlatTree(treedef, outer, inner, slots, infos, arrays)


def tree_paths(tree: Any) -> list[tuple[str, Any]]:
    """The ``(path, array)`` pairs of a tree, as the rules engine sees them.

    Boxes and NNX ``Variable``s are invisible (no trailing ``value``), dict keys
    and attribute names are kept, list indices are numbers.

    Example:
      >>> import jax.numpy as jnp
      >>> [p for p, _ in tree_paths({"params": {"dense": {"kernel": jnp.ones((2, 2))}}})]
      ['params/dense/kernel']
    """
    flat = flatten_tree(tree)
    return [(info.path, a) for info, a in zip(flat.infos, flat.arrays, strict=True)]


__getattr__ = module_getattr(
    __name__,
    {"STACKED_AXIS_NAME": ("flaxinit.rules.paths.LAYER_AXIS_NAME", lambda: LAYER_AXIS_NAME)},
)
