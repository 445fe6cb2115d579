"""Per weight matrix: scale, numerical rank, and duplicated rows/columns (unbroken symmetry)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxinit._deprecation import warn_renamed
from flaxinit.diagnostics import probe, records
from flaxinit.diagnostics.activations import l2_norm
from flaxinit.rules.patterns import compile_pattern

DEFAULT_DUPLICATE_TOL = 1e-6


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class WeightRecord:
    """Statistics of one weight leaf, viewed as a matrix ``W`` of shape ``(rows, cols)``.

    The view follows Flax's layout, where the last axis holds the output features. Every
    other axis is folded into the rows: ``(in, out)`` for Dense, ``(kh * kw * in, out)``
    for Conv, ``(vocab, dim)`` for Embed. For a DenseGeneral q/k/v kernel
    ``(in, heads, head_dim)`` this gives ``(in * heads, head_dim)``. A column is then one
    output unit's incoming weights, and ``x @ W`` maps a ``rows``-dim input.

    Attributes:
      path: the leaf's path, e.g. ``"Dense_3/kernel"``.
      index: position in the returned tuple.
      shape: the leaf's shape.
      rows, cols: the matrix view.
      mean, std: of all entries.
      gain: ``std * sqrt(rows)``, the scale relative to ``1/sqrt(fan_in)``. It is 1 for
        LeCun, sqrt(2) for He, and about 1 for Xavier on square layers.
      sv_max, sv_min: the largest and smallest of the ``min(rows, cols)`` singular values.
        They come from ``jnp.linalg.svd(W, compute_uv=False)`` in float32.
      sv_ratio: ``sv_min / sv_max``, the inverse condition number (``nan`` for ``W = 0``).
      rank: the numerical rank, ``#{s > tol}`` with ``tol = sv_max * max(rows, cols) * eps``
        and ``eps`` the float32 machine epsilon. This is ``numpy.linalg.matrix_rank``'s
        default. Below ``min(rows, cols)``, the input subspace of dimension
        ``rows - rank`` is mapped to zero.
      duplicate_rows, duplicate_cols: how many rows (columns) equal another one, not
        counting the first of each group. Two rows are equal when
        ``max|a - b| <= duplicate_tol * max|W|``; at tolerance 0 this is bitwise equality.
        Rows are compared with their neighbour after sorting by a fixed random projection
        ``W @ r``. That finds every exact duplicate. A near-duplicate is missed only if
        another row's projection falls between the two.
    """

    path: str = dataclasses.field(metadata={"static": True})
    index: int = dataclasses.field(metadata={"static": True})
    shape: tuple[int, ...] = dataclasses.field(metadata={"static": True})
    rows: int = dataclasses.field(metadata={"static": True})
    cols: int = dataclasses.field(metadata={"static": True})
    mean: Any
    std: Any
    gain: Any
    sv_max: Any
    sv_min: Any
    sv_ratio: Any
    rank: Any
    duplicate_rows: Any
    duplicate_cols: Any

    INT_FIELDS: ClassVar[tuple[str, ...]] = ("rank", "duplicate_rows", "duplicate_cols")

    @property
    def full_rank(self) -> int:
        """``min(rows, cols)``, the largest rank the matrix can have."""
        return min(self.rows, self.cols)


def _duplicates(w: jax.Array, tol: jax.Array) -> jax.Array:
    """Rows of ``w`` that repeat another row within ``tol``, beyond the first of each group."""
    if w.shape[0] < 2:
        return jnp.zeros((), jnp.int32)
    r = jnp.asarray(np.random.default_rng(0).standard_normal(w.shape[1]), jnp.float32)
    order = jnp.argsort(jnp.matmul(w, r, precision=jax.lax.Precision.HIGHEST))
    s = w[order]
    gaps = jnp.max(jnp.abs(s[1:] - s[:-1]), axis=1)
    return jnp.sum(gaps <= tol).astype(jnp.int32)


def singular_values(w: jax.Array) -> jax.Array:
    """``jnp.linalg.svd(w, full_matrices=False, compute_uv=False)``, in decreasing order."""
    return jnp.linalg.svd(w, full_matrices=False, compute_uv=False)


def matrix_stats(
    w: jax.Array, duplicate_tol: float, s: jax.Array | None = None
) -> dict[str, jax.Array]:
    """The numbers of a :class:`WeightRecord` for one float32 matrix ``w``.

    ``s`` are its singular values, computed here when not given.

    Example:
      >>> from flaxinit.diagnostics.weights import matrix_stats
      >>> s = matrix_stats(jnp.ones((3, 2)), 1e-6)
      >>> int(s["rank"]), int(s["duplicate_rows"]), int(s["duplicate_cols"])
      (1, 2, 1)
    """
    m, n = w.shape
    s = singular_values(w) if s is None else s
    tol = s[0] * max(m, n) * jnp.finfo(jnp.float32).eps
    std = l2_norm(w - jnp.mean(w)) / math.sqrt(m * n)
    dup_tol = duplicate_tol * jnp.max(jnp.abs(w))
    return {
        "mean": jnp.mean(w),
        "std": std,
        "gain": std * math.sqrt(m),
        "sv_max": s[0],
        "sv_min": s[-1],
        "sv_ratio": s[-1] / s[0],
        "rank": jnp.sum(s > tol).astype(jnp.int32),
        "duplicate_rows": _duplicates(w, dup_tol),
        "duplicate_cols": _duplicates(w.T, dup_tol),
    }


# Leaf names that are never weight matrices, whatever their rank: attention biases are
# (heads, head_dim), and norm scales and statistics can be multi-axis too.
NOT_WEIGHTS = frozenset({"bias", "scale", "mean", "var", "running_mean", "running_var"})


def is_weight(path: str, leaf: Any) -> bool:
    """A floating leaf with 2 or more axes whose name is not in :data:`NOT_WEIGHTS`."""
    return (
        leaf.ndim >= 2
        and jnp.issubdtype(leaf.dtype, jnp.floating)
        and path.rpartition("/")[2] not in NOT_WEIGHTS
    )


Layouts = tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...]


def structure_layouts(structure: Any) -> Layouts:
    """``(path, fan_in_axes, fan_out_axes, batch_axes)`` of every kernel a model
    structure knows (the linear roles; embeddings and other leaves are not weight
    matrices of depth), hashable for a jit's static argument."""
    if structure is None:
        return ()
    from flaxinit.structure import LINEAR_ROLES, ModelStructure

    if not isinstance(structure, ModelStructure):
        raise TypeError(
            "structure must be a ModelStructure from fi.model_structure(model, *inputs), "
            f"got {type(structure).__name__}"
        )
    return tuple(
        (leaf.path, leaf.fan_in_axes, leaf.fan_out_axes, leaf.batch_axes)
        for leaf in structure.values()
        if leaf.role in LINEAR_ROLES and leaf.fan_in_axes and leaf.fan_out_axes
    )


def _structural_matrices(path: str, p: Any, layout: Any) -> list[tuple[str, Any]]:
    """The leaf as ``(fan_in, fan_out)`` matrices, one per index of its batch axes."""
    _, ins, outs, batch = layout
    moved = jnp.transpose(p, (*batch, *ins, *outs))
    rows = math.prod(p.shape[a] for a in ins)
    cols = math.prod(p.shape[a] for a in outs)
    count = math.prod(p.shape[a] for a in batch)
    stack = moved.reshape(count, rows, cols)
    if not batch:
        return [(path, stack[0])]
    return [(f"{path}[{i}]", stack[i]) for i in range(count)]


def weight_records(
    params: Any,
    duplicate_tol: float,
    modules: Sequence[str] = (),
    layer_stacks: Sequence[str] = (),
    layouts: Layouts = (),
) -> records.Packed:
    """The records of every weight (see :func:`is_weight`), packed; call inside a trace.

    Leaves are ordered by their module's position in ``modules`` (first-call order),
    then by path, with numbers compared as numbers. A weight whose path matches one of
    the ``layer_stacks`` patterns (the rules' glob language) holds a stack of layers on its
    leading axis: each layer gets its own record, ``path[i]``. Matrices of one shape are
    stacked and share one SVD loop and one batched sort: a deep stack of equal layers
    compiles a few ops instead of a few per layer.
    """
    patterns = [compile_pattern(pattern) for pattern in layer_stacks]
    used = [False] * len(patterns)
    leaves = []
    by_path = {layout[0]: layout for layout in layouts}
    for kp, p in jax.tree_util.tree_flatten_with_path(params)[0]:
        path = probe.path_str(kp)
        if layouts:
            # The model's computation says which leaves are kernels and on which axes.
            layout = by_path.get(path) or by_path.get("params/" + path)
            if layout is not None and jnp.issubdtype(p.dtype, jnp.floating):
                leaves += _structural_matrices(path, p, layout)
            continue
        if not is_weight(path, p):
            continue
        hit = [n for n, pattern in enumerate(patterns) if pattern.matches(path)]
        if not hit:
            leaves.append((path, p))
            continue
        for n in hit:
            used[n] = True
        if p.ndim < 3:
            raise ValueError(
                f"weight_stats: {path!r} matches layer_stacks={layer_stacks[hit[0]]!r} but has "
                f"shape {tuple(p.shape)}: a stack of weight matrices has 3 or more axes, the layer "
                "axis first"
            )
        leaves += [(f"{path}[{i}]", p[i]) for i in range(p.shape[0])]
    unused = [layer_stacks[n] for n, u in enumerate(used) if not u]
    if unused:
        raise ValueError(
            f"weight_stats: layer_stacks pattern(s) {unused} matched no weight; weights: "
            f"{[path for path, _ in leaves][:10]}"
        )
    leaves.sort(key=lambda t: (probe.module_rank(t[0], modules), probe.natural_key(t[0])))
    views = [p.reshape(-1, p.shape[-1]).astype(jnp.float32) for _, p in leaves]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, v in enumerate(views):
        groups.setdefault(v.shape, []).append(i)
    names = records.numeric_fields(WeightRecord)
    blocks, order = [], []
    for idx in groups.values():
        same_shape = jnp.stack([views[i] for i in idx])
        # One SVD at a time in a loop, not one batched SVD: a batched SVD inside the full
        # report could hang on CPU (benchmarks/README.md, "Diagnostics").
        svals = jax.lax.map(singular_values, same_shape)
        batched = jax.vmap(lambda w, s: matrix_stats(w, duplicate_tol, s))(same_shape, svals)
        blocks.append(jnp.stack([batched[n].astype(jnp.float32) for n in names], axis=1))
        order += idx
    values = jnp.zeros((0, len(names)), jnp.float32)
    if blocks:  # back from group order to leaf order
        values = jnp.concatenate(blocks)[np.argsort(order)]
    statics = tuple(
        (
            ("path", path),
            ("index", i),
            ("shape", p.shape),
            ("rows", v.shape[0]),
            ("cols", v.shape[1]),
        )
        for i, ((path, p), v) in enumerate(zip(leaves, views, strict=True))
    )
    present = tuple((True,) * len(names) for _ in leaves)
    return records.Packed(WeightRecord, statics, present, values)


@jax.jit(static_argnums=(1, 2, 3))
def _weight_pass(params, duplicate_tol, layer_stacks, layouts):
    return weight_records(params, duplicate_tol, layer_stacks=layer_stacks, layouts=layouts)


_UNSET = object()


def weight_stats(
    tree: Any,
    *,
    duplicate_tol: float = DEFAULT_DUPLICATE_TOL,
    layer_stacks: str | Sequence[str] | None = None,
    structure: Any = None,
    stacked: Any = _UNSET,
) -> tuple[WeightRecord, ...]:
    """Per weight matrix: mean, std, ``std * sqrt(fan_in)``, singular values, rank, duplicates.

    One ``jax.jit``-compiled pass. Every floating leaf with two or more axes counts as a
    weight, except leaves named ``bias``, ``scale``, ``mean`` or ``var`` (attention biases
    are 2-D). See :class:`WeightRecord` for the matrix
    view, the rank tolerance and the duplicate test.

    Args:
      tree: Linen variables (the ``"params"`` collection is used) or params, an NNX
        module (its ``nnx.Param`` state), an ``nnx.State``, or any pytree of arrays.
      duplicate_tol: rows or columns within ``duplicate_tol * max|W|`` of each other
        (max-norm) count as duplicates.
      layer_stacks: glob pattern(s) (the rules' language) of weights that hold a stack of
        layers on their leading axis (``nn.scan`` / ``nnx.vmap`` stacks, e.g.
        ``"**/blocks/**"``): each layer gets its own record, ``path[i]``, instead of one
        record for the stack folded into a single matrix. A pattern that matches no
        weight, or matches one with fewer than 3 axes, raises ``ValueError``.
      structure: a :class:`~flaxinit.structure.ModelStructure` of the model. The
        weights are then its kernels (the linear roles), each viewed as the matrix
        ``(fan_in, fan_out)`` of the axes the model contracts and carries, one record
        per index of its batch axes (layers of a scanned stack, experts, the parts of a
        fused projection): a Gemma-style ``(heads, d, head_dim)`` query kernel is a
        ``(d, heads * head_dim)`` matrix, so ``gain`` is ``std * sqrt(d)``.
      stacked: the old name of ``layer_stacks``, deprecated (a ``DeprecationWarning``);
        it keeps working for one release.

    Returns:
      A tuple of :class:`WeightRecord`, ordered by path with numbers compared as numbers.

    Example:
      >>> from flaxinit.diagnostics import weight_stats
      >>> (r,) = weight_stats({"kernel": jnp.zeros((4, 3))})
      >>> r.rank, r.full_rank, r.duplicate_cols
      (0, 3, 2)
    """
    if isinstance(tree, nnx.Module):
        tree = nnx.state(tree, nnx.Param)
    elif isinstance(tree, dict) and "params" in tree:
        tree = tree["params"]
    if stacked is not _UNSET:
        warn_renamed("weight_stats(stacked=...)", "weight_stats(layer_stacks=...)")
        if layer_stacks is not None:
            raise TypeError("weight_stats: pass layer_stacks= only (stacked= is its old name)")
        layer_stacks = stacked
    if layer_stacks is None:
        layer_stacks = ()
    elif isinstance(layer_stacks, str):
        layer_stacks = (layer_stacks,)
    else:
        layer_stacks = tuple(layer_stacks)
    for pattern in layer_stacks:
        if not isinstance(pattern, str):
            raise TypeError(
                f"weight_stats: layer_stacks patterns must be strings, got {type(pattern).__name__}"
            )
        compile_pattern(pattern)  # a malformed pattern fails here, not inside the trace
    layouts = structure_layouts(structure)
    if layouts and layer_stacks:
        raise ValueError("weight_stats: pass layer_stacks= or structure=, not both")
    with probe.blas_single_threaded():
        return records.unpack(_weight_pass(tree, float(duplicate_tol), layer_stacks, layouts))
