"""Partition specs for parameter trees: from path rules or partitioning metadata.

Everything here is Python on static information (paths, shapes, metadata, the
mesh's axis sizes), so it runs on abstract trees (``jax.eval_shape`` output) and
fails before anything is traced or compiled.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from typing import Any

import jax
from flax import nnx
from flax.core import meta
from flax.core import spmd as core_spmd
from flax.linen import spmd as linen_spmd
from flax.nnx import spmd as nnx_spmd
from jax.sharding import PartitionSpec as P

from flaxinit.rules.matching import compile_rules, match_rules
from flaxinit.rules.paths import FlatTree, flatten_tree
from flaxinit.rules.suggest import closest_paths

__all__ = ["check_spec", "partition_specs", "resolve_specs"]


def to_spec(value: Any) -> P:
    """A rule's right-hand side as a ``PartitionSpec``: a spec, a tuple, or None."""
    if isinstance(value, P):
        return value
    if value is None:
        return P()
    if isinstance(value, (tuple, list)):
        return P(*value)
    raise TypeError(
        "a partition rule's value must be a PartitionSpec, a tuple of mesh axis names "
        f"or None (replicated), got {value!r}"
    )


def _mesh_sizes(mesh: Any) -> dict[str, int]:
    if not hasattr(mesh, "axis_names") or not hasattr(mesh, "shape"):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    return dict(mesh.shape)


def check_spec(
    path: str, shape: Sequence[int], spec: P, mesh: Any, *, strict: bool = True, source: str = ""
) -> P:
    """Validates ``spec`` for a leaf of ``shape`` on ``mesh``; returns it.

    Raises ``ValueError`` naming the path, shape, spec and mesh axis sizes when the
    spec has more entries than the leaf has dimensions, names an axis the mesh
    lacks, uses an axis twice, or splits a dimension into parts that do not divide
    it. With ``strict=False`` a dimension that does not divide is replicated instead
    (its entry becomes None).

    Example:
      >>> from jax.sharding import PartitionSpec as P
      >>> mesh = jax.make_mesh((8,), ("model",))
      >>> check_spec("params/wte/embedding", (1024, 64), P("model"), mesh) == P("model")
      True
      >>> check_spec("params/wte/embedding", (1002, 64), P("model"), mesh, strict=False) == P(None)
      True
    """
    sizes = _mesh_sizes(mesh)
    where = f"{source}: " if source else ""
    mesh_text = ", ".join(f"{n}={s}" for n, s in sizes.items())
    if len(spec) > len(shape):
        raise ValueError(
            f"{where}spec {spec} for {path!r} has {len(spec)} entries but the leaf has "
            f"shape {tuple(shape)} ({len(shape)} dims)"
        )
    used: list[str] = []
    out = []
    for dim, entry in enumerate(spec):
        if entry is None:
            out.append(None)
            continue
        if entry is P.UNCONSTRAINED:
            raise ValueError(f"{where}spec {spec} for {path!r}: UNCONSTRAINED cannot place a leaf")
        names = (entry,) if isinstance(entry, str) else tuple(entry)
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"{where}spec {spec} for {path!r}: {name!r} is not an axis name")
            if name not in sizes:
                hint = (
                    " (logical axis names need logical_axis_rules mapping them to mesh axes)"
                    if source == "metadata"
                    else ""
                )
                raise ValueError(
                    f"{where}spec {spec} for {path!r} names axis {name!r}, which the mesh "
                    f"({mesh_text}) does not have{hint}"
                )
            if name in used:
                raise ValueError(f"{where}spec {spec} for {path!r} uses mesh axis {name!r} twice")
            used.append(name)
        parts = math.prod(sizes[n] for n in names)
        if shape[dim] % parts:
            if strict:
                raise ValueError(
                    f"{where}spec {spec} for {path!r} of shape {tuple(shape)}: dim {dim} "
                    f"(size {shape[dim]}) does not divide into {parts} parts over mesh axes "
                    f"{names} (mesh {mesh_text})"
                )
            out.append(None)
            continue
        out.append(entry)
    return P(*out) if len(out) == len(spec) and tuple(out) != tuple(spec) else spec


def rule_specs(
    flat: FlatTree, partition_rules: Iterable[Any], *, strict: bool = True
) -> list[P | None]:
    """Per array leaf, the spec of the first rule matching its path, else None.

    Raises ``ValueError`` (``strict``) for a rule that places no leaf: it matches
    nothing, or only leaves an earlier rule already placed.
    """
    rules = compile_rules(partition_rules, convert=to_spec, what="PartitionSpec")
    hits = match_rules(rules, flat.infos)
    specs: list[P | None] = []
    used: set[int] = set()
    for leaf_rules in hits:
        if leaf_rules:
            used.add(leaf_rules[0].index)
            specs.append(leaf_rules[0].value)
        else:
            specs.append(None)
    if strict:
        paths = [i.path for i in flat.infos]
        lines = []
        for r in rules:
            if r.index in used:
                continue
            matched = [p for p, leaf in zip(paths, hits, strict=True) if r in leaf]
            if matched:
                lines.append(
                    f"partition rule {r.index} pattern {r.pattern.source!r} places no leaf: "
                    f"every leaf it matches (e.g. {matched[0]!r}) is placed by an earlier rule "
                    "(the first matching rule wins)"
                )
            else:
                closest = (
                    ", ".join(repr(p) for p in closest_paths(r.pattern, paths)) or "(no leaves)"
                )
                lines.append(
                    f"partition rule {r.index} pattern {r.pattern.source!r} matched no leaf; "
                    f"closest paths: {closest}"
                )
        if lines:
            raise ValueError(
                "\n".join(lines) + "\n(pass strict=False to allow rules that place nothing)"
            )
    return specs


def _metadata_spec(wrapper: Any, logical_axis_rules: Any) -> P | None:
    """The mesh spec a Flax box or NNX Variable declares, or None."""
    if isinstance(wrapper, linen_spmd.LogicallyPartitioned):
        rules = wrapper.rules if wrapper.rules is not None else logical_axis_rules
        return linen_spmd.logical_to_mesh_axes(wrapper.names, rules)
    if isinstance(wrapper, meta.Partitioned):
        return P(*wrapper.names)
    if isinstance(wrapper, nnx.Variable):
        if not wrapper.get_metadata().get("out_sharding"):
            return None
        if logical_axis_rules is None:
            return nnx_spmd.get_var_pspec(wrapper)
        with nnx.logical_axis_rules(logical_axis_rules):
            return nnx_spmd.get_var_pspec(wrapper)
    return None


def _rule_names(rules: Any) -> set[Any]:
    try:
        return {rule[0] for rule in rules or ()}
    except (TypeError, IndexError):
        return set()  # malformed rules: Flax's own error says so later


def _entry_names(entry: Any) -> tuple[str, ...]:
    if isinstance(entry, str):
        return (entry,)
    if isinstance(entry, (tuple, list)):
        return tuple(e for e in entry if isinstance(e, str))
    return ()


def _unmapped_names(wrapper: Any, logical_axis_rules: Any, mesh_axes: set[str]) -> list[str]:
    """The logical names of a Flax box or NNX Variable that map to no mesh axis.

    Linen maps a ``LogicallyPartitioned`` box's names only through the rules (its
    own, else ``logical_axis_rules``, else the active context): a name no rule
    mentions is replicated, even one spelled like a mesh axis. NNX uses a name no
    rule mentions as a mesh axis name as it is: it is unmapped if the mesh lacks it.
    A rule mapping a name to None counts as mapped (replicated on purpose).
    """
    if isinstance(wrapper, linen_spmd.LogicallyPartitioned):
        rules = wrapper.rules if wrapper.rules is not None else logical_axis_rules
        if rules is None:
            rules = linen_spmd.get_logical_axis_rules()
        mapped = _rule_names(rules)
        names = [n for entry in wrapper.names or () for n in _entry_names(entry)]
        return [n for n in names if n not in mapped]
    if isinstance(wrapper, nnx.Variable):
        metadata = wrapper.get_metadata()
        sharding = metadata.get("out_sharding")
        if not sharding or not isinstance(sharding, (tuple, list)):
            return []
        rules = logical_axis_rules
        if rules is None:
            rules = core_spmd.get_logical_axis_rules()
        mapped = _rule_names(rules) | _rule_names(metadata.get("sharding_rules"))
        names = [n for entry in sharding for n in _entry_names(entry)]
        return [n for n in names if n not in mapped and n not in mesh_axes]
    return []


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _raise_unmapped(
    unmapped: dict[str, list[tuple[str, tuple[int, ...]]]], mesh: Any, logical_axis_rules: Any
) -> None:
    """One ``ValueError`` for every logical name that maps to no mesh axis."""
    names = list(unmapped)
    sizes = _mesh_sizes(mesh)
    rules = logical_axis_rules
    if rules is None:
        rules = core_spmd.get_logical_axis_rules()
    used = set()
    for rule in rules or ():
        with contextlib.suppress(TypeError, IndexError):
            used.update(_entry_names(rule[1]))
    # The example maps the names to the axes the given rules leave free, then None.
    free = [a for a in sizes if a not in used]
    example = ", ".join(
        f"({n!r}, {free[i]!r})" if i < len(free) else f"({n!r}, None)" for i, n in enumerate(names)
    )
    where = "; ".join(
        f"{n!r} in "
        + ", ".join(f"{path!r} {shape}" for path, shape in leaves[:3])
        + (f" and {len(leaves) - 3} more" if len(leaves) > 3 else "")
        for n, leaves in unmapped.items()
    )
    many = len(names) > 1
    raise ValueError(
        f"logical axis name{'s' if many else ''} {_quoted(names)} map{'' if many else 's'} "
        f"to no mesh axis: no logical_axis_rules entry names {'them' if many else 'it'}, so "
        f"the dimensions {'they label' if many else 'it labels'} would be replicated "
        f"({where}). Map each to an axis of the mesh "
        f"({', '.join(f'{a}={n}' for a, n in sizes.items())}), or to None to replicate it "
        f"on purpose, e.g. logical_axis_rules=[{example}] (or an active "
        "nn.logical_axis_rules context)"
    )


def resolve_specs(
    flat: FlatTree,
    mesh: Any,
    *,
    partition_rules: Iterable[Any] | None = None,
    logical_axis_rules: Any = None,
    strict: bool = True,
) -> list[P]:
    """Per array leaf, its checked spec: a partition rule's, else the metadata's,
    else replicated.

    With ``strict``, logical names in the metadata of leaves no partition rule
    places must map to mesh axes (see :func:`_unmapped_names`); every such name is
    listed in one ``ValueError``.
    """
    from_rules = (
        rule_specs(flat, partition_rules, strict=strict)
        if partition_rules is not None
        else [None] * len(flat.infos)
    )
    if strict:
        mesh_axes = set(_mesh_sizes(mesh))
        unmapped: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
        for (o, _), info, spec in zip(flat.slots, flat.infos, from_rules, strict=True):
            if spec is None:
                for name in _unmapped_names(flat.outer[o], logical_axis_rules, mesh_axes):
                    unmapped.setdefault(name, []).append((info.path, tuple(info.shape)))
        if unmapped:
            _raise_unmapped(unmapped, mesh, logical_axis_rules)
    specs = []
    for (o, _), info, spec in zip(flat.slots, flat.infos, from_rules, strict=True):
        source = "partition rule"
        if spec is None:
            spec = _metadata_spec(flat.outer[o], logical_axis_rules)
            source = "metadata"
        if spec is None:
            spec, source = P(), "default"
        specs.append(check_spec(info.path, info.shape, spec, mesh, strict=strict, source=source))
    return specs


def outer_tree(flat: FlatTree, per_leaf: Sequence[Any]) -> Any:
    """The tree with ``per_leaf[n]`` in place of array leaf ``n``'s box/Variable (or
    the array), and None in place of other leaves: a prefix of the original tree,
    as ``out_shardings`` takes."""
    outer: list[Any] = [None] * len(flat.outer)
    for n, (o, _) in enumerate(flat.slots):
        if outer[o] is None:
            outer[o] = per_leaf[n]
    return jax.tree_util.tree_unflatten(flat.treedef, outer)


def partition_specs(
    tree: Any,
    partition_rules: Sequence[tuple[Any, Any]] | None = None,
    *,
    mesh: Any,
    logical_axis_rules: Any = None,
    strict: bool = True,
) -> Any:
    """The ``PartitionSpec`` of every leaf of ``tree`` on ``mesh``, checked.

    A leaf's spec is that of the first rule whose pattern matches its path (the
    glob language of :mod:`flaxinit.rules`: ``"**/mlp/c_fc/kernel"``,
    ``"/params/wte/*"``, ``"re:..."``); a leaf no rule matches gets the spec its
    partitioning metadata declares (Linen ``nn.with_partitioning`` /
    ``nn.with_logical_partitioning`` boxes, NNX ``out_sharding`` Variable metadata,
    logical names mapped by ``logical_axis_rules`` or the active
    ``nn.logical_axis_rules`` context), else ``P()`` (replicated).

    Args:
      tree: a Linen variable dict, an ``nnx.State`` or any pytree, concrete or
        abstract (``jax.eval_shape`` / ``nnx.eval_shape`` output).
      partition_rules: ``(pattern, spec)`` pairs, ``spec`` a ``PartitionSpec``, a
        tuple of axis names or None (replicated); first match wins.
      mesh: the mesh the specs are for (its axis names and sizes).
      logical_axis_rules: ``(logical_name, mesh_axes)`` pairs for logical metadata.
      strict: raise ``ValueError`` for a rule that places no leaf, for a spec
        whose mesh axes do not divide the leaf's dimension, and for logical names
        that map to no mesh axis; with ``strict=False`` such a dimension is
        replicated instead.

    Returns:
      A tree with the structure of ``tree`` with a ``PartitionSpec`` in place of
      each array leaf (of each box or Variable), None for other leaves: a valid
      ``out_shardings`` prefix once mapped to ``NamedSharding``.

    Raises:
      ValueError: a rule placed nothing, or a spec names an axis the mesh lacks,
        uses one twice, has more entries than the leaf has dims, or does not divide
        the shape; each message names the path, shape, spec and mesh axis sizes.
        Logical names that no ``logical_axis_rules`` entry maps (Linen: any such
        name; NNX: one that is not a mesh axis either) are listed together, with
        the leaves they label and a mapping to start from.
      TypeError: a rule is not a ``(pattern, spec)`` pair.

    Example:
      >>> import flax.linen as nn
      >>> from jax.sharding import PartitionSpec as P
      >>> from flaxinit.sharding import partition_specs
      >>> mesh = jax.make_mesh((2, 4), ("data", "model"))
      >>> abstract = jax.eval_shape(nn.Dense(64).init, jax.random.key(0), jnp.ones((1, 32)))
      >>> specs = partition_specs(abstract, [("kernel", P("data", "model"))], mesh=mesh)
      >>> specs["params"]["kernel"] == P("data", "model"), specs["params"]["bias"] == P()
      (True, True)
    """
    flat = flatten_tree(tree)
    specs = resolve_specs(
        flat,
        mesh,
        partition_rules=partition_rules,
        logical_axis_rules=logical_axis_rules,
        strict=strict,
    )
    return outer_tree(flat, specs)
