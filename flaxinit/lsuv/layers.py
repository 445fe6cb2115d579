"""What LSUV needs to know about a selected layer, shared by the Linen and NNX drivers."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flaxinit import inspection
from flaxinit.initializers import orthogonal
from flaxinit.initializers.orthogonal import orthogonal_matrix
from flaxinit.lsuv.cache import COUNTS, MAX_ENTRIES, PRE_INIT_PROGRAMS
from flaxinit.rules.actions import vmap_matches_loop
from flaxinit.rules.keys import stable_hash
from flaxinit.rules.patterns import compile_pattern


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """A selected layer, found by tracing the model once.

    Attributes:
      name: the module path joined by ``/``.
      kind: the module's class name.
      kernel_path: the keys of the kernel in the variable tree.
      bias_path: the keys of the bias, or ``None``.
      kernel_shape: the shape of one layer's kernel (without stacking axes).
      batch_axes: kernel axes of independent matrices (``DenseGeneral`` batch dims).
      out_axes: kernel axes of the outputs; every other axis is an input.
    """

    name: str
    kind: str
    kernel_path: tuple[Any, ...]
    bias_path: tuple[Any, ...] | None
    kernel_shape: tuple[int, ...]
    batch_axes: tuple[int, ...]
    out_axes: tuple[int, ...]


def default_types() -> tuple[type, ...]:
    """LSUV's default selection: :data:`flaxinit.inspection.LINEAR`, the one list of
    linear layers, less the ``Embed`` lookups, which have no kernel to rescale."""
    return tuple(t for t in inspection.LINEAR if not issubclass(t, inspection.EMBEDDINGS))


def make_selector(
    layers, default_types: tuple[type, ...]
) -> tuple[Callable[[Any, str], bool], list]:
    """Builds ``select(module, path) -> bool`` from ``layers``.

    ``layers`` is ``None`` (every module of ``default_types``) or a sequence of
    module types and path patterns in the rules' glob language, matched against the
    module's path (``Dense_3``, ``blocks/2/mlp/fc1``). Returns the selector and the
    compiled patterns, so that unused ones can be reported.
    """
    if layers is None:
        return (lambda module, path: isinstance(module, default_types)), []
    if isinstance(layers, (str, type)):
        layers = [layers]
    types, patterns = [], []
    for item in layers:
        if isinstance(item, type):
            types.append(item)
        elif isinstance(item, str):
            patterns.append(compile_pattern(item))
        else:
            raise TypeError(f"lsuv: layers must hold module types and path patterns, got {item!r}")
    types = tuple(types)

    def select(module, path):
        if types and isinstance(module, types):
            return True
        return any(p.matches(path) for p in patterns)

    return select, patterns


def check_patterns_used(patterns: Sequence, paths: Sequence[str]) -> None:
    for pattern in patterns:
        if not any(pattern.matches(p) for p in paths):
            raise ValueError(
                f"lsuv: layers pattern {pattern.source!r} matched no linear layer of the model; "
                f"selectable layers: {list(paths)[:10]}"
            )


def check_batch(batch: Any) -> None:
    """LSUV estimates a variance over the batch: refuse one it cannot use."""
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("lsuv: batch is empty")
    for leaf in leaves:
        shape = np.shape(leaf)
        if not shape or shape[0] < 2:
            raise ValueError(
                f"lsuv: the batch needs at least 2 examples to estimate a variance, "
                f"got an input of shape {shape}"
            )
        if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact) and not bool(
            jnp.isfinite(leaf).all()
        ):
            raise ValueError(f"lsuv: the batch holds NaN or Inf values (input of shape {shape})")


def layer_key(key: jax.Array, info: LayerInfo) -> jax.Array:
    """A per-layer key from the layer's path only (order-independent)."""
    return jax.random.fold_in(key, stable_hash(info.name))


def orthonormal_kernel(key: jax.Array, info: LayerInfo, leaf: jax.Array) -> jax.Array:
    """An orthonormal kernel of ``leaf``'s shape and dtype (paper's step 0).

    The kernel is seen as a matrix from its input axes (inputs and window taps) to
    its output axes; leading stacking axes (``nn.scan``/``nnx.vmap``) and
    ``batch_axes`` hold independent matrices, each orthonormal.
    """
    stack = leaf.ndim - len(info.kernel_shape)
    per = info.kernel_shape
    rows = [i for i in range(len(per)) if i not in info.batch_axes and i not in info.out_axes]
    order = [*info.batch_axes, *rows, *info.out_axes]
    perm = [*range(stack), *(stack + i for i in order)]
    moved = tuple(leaf.shape[p] for p in perm)
    batch = math.prod(leaf.shape[:stack]) * math.prod(per[i] for i in info.batch_axes)
    matrix = (batch, math.prod(per[i] for i in rows), math.prod(per[i] for i in info.out_axes))
    q = orthogonal(batch_axis=0)(key, matrix, jnp.float32)
    q = jnp.transpose(q.reshape(moved), np.argsort(perm))
    return q.astype(leaf.dtype)


def _as_matrices(info: LayerInfo, leaf: jax.Array):
    """``(permutation, permuted shape, (batch, rows, cols))`` of the kernel's matrix view."""
    stack = leaf.ndim - len(info.kernel_shape)
    per = info.kernel_shape
    rows = [i for i in range(len(per)) if i not in info.batch_axes and i not in info.out_axes]
    order = [*info.batch_axes, *rows, *info.out_axes]
    perm = [*range(stack), *(stack + i for i in order)]
    moved = tuple(leaf.shape[p] for p in perm)
    batch = math.prod(leaf.shape[:stack]) * math.prod(per[i] for i in info.batch_axes)
    return (
        perm,
        moved,
        (batch, math.prod(per[i] for i in rows), math.prod(per[i] for i in info.out_axes)),
    )


def _layer_keys(key: jax.Array, infos: Sequence[LayerInfo]) -> jax.Array:
    """``layer_key`` of every layer, stacked: one vectorized fold-in where that draws
    what a loop would (threefry), since each unrolled fold-in is compiled on its own."""
    if vmap_matches_loop(key):
        hashes = np.asarray([stable_hash(info.name) for info in infos], np.uint32)
        return jax.vmap(lambda h: jax.random.fold_in(key, h))(hashes)
    return jnp.stack([layer_key(key, info) for info in infos])


def _orthonormal_plan(infos: Sequence[LayerInfo], leaves):
    """Which layers share a decomposition: ``(groups, plans, batches)`` with
    ``groups`` mapping each ``(rows, cols)`` to its layers' indices, ``plans[n]`` layer
    ``n``'s ``(permutation, permuted shape, dtype)`` and ``batches[n]`` its count of
    matrices."""
    plans, groups = [], {}
    batches = [_as_matrices(info, leaf)[2][0] for info, leaf in zip(infos, leaves, strict=True)]
    for n, (info, leaf) in enumerate(zip(infos, leaves, strict=True)):
        perm, moved, (_, rows, cols) = _as_matrices(info, leaf)
        groups.setdefault((rows, cols), []).append(n)
        plans.append((tuple(perm), moved, jnp.dtype(leaf.dtype)))
    return groups, plans, batches


def orthonormal_groups(key: jax.Array, infos: Sequence[LayerInfo], leaves) -> list[jax.Array]:
    """The orthonormal matrices of every layer, one ``(count, rows, cols)`` float32
    stack per matrix shape, in the order of :func:`_orthonormal_plan`'s groups (each
    group's layers in order, a layer's matrices in its stacking order).

    Layers whose matrices have the same shape share one decomposition (a loop over
    their matrices on the CPU, a batch elsewhere), so the program's size, and its
    compile time, does not grow with the number of layers: at 100 layers of 256^2,
    one QR compiled instead of 100.
    """
    groups, _, batches = _orthonormal_plan(infos, leaves)
    layer_keys = _layer_keys(key, infos)
    ones = [n for n, batch in enumerate(batches) if batch == 1]
    # One split per layer, as orthogonal(batch_axis=0) splits its key; batched where
    # vmap draws what a loop draws (threefry) so that the program does not grow with
    # depth, and gathered per group in one step (per-layer slices of the keys were
    # each compiled on their own).
    firsts, row_of = None, {}
    if ones and vmap_matches_loop(key):
        sources = layer_keys if len(ones) == len(infos) else layer_keys[np.asarray(ones)]
        firsts = jax.vmap(lambda k: jax.random.split(k, 1))(sources)[:, 0]
        row_of = {n: i for i, n in enumerate(ones)}
    out = []
    for (rows, cols), members in groups.items():
        if all(n in row_of for n in members):
            index = np.asarray([row_of[n] for n in members])
            whole = len(index) == firsts.shape[0] and (index == np.arange(len(index))).all()
            keys = firsts if whole else firsts[index]
        else:
            keys = jnp.concatenate(
                [
                    firsts[row_of[n]][None]
                    if n in row_of
                    else jax.random.split(layer_keys[n], batches[n])
                    for n in members
                ]
            )
        out.append(
            jax.vmap(lambda k, shape=(rows, cols): orthogonal_matrix(k, shape, 1, jnp.float32))(
                keys
            )
        )
    return out


def _layer_kernel(q: jax.Array, start: int, count: int, plan) -> jax.Array:
    """Layer ``plan``'s kernel from its ``count`` matrices at ``start`` of ``q``."""
    perm, moved, dtype = plan
    if count == q.shape[0]:
        matrices = q
    elif count == 1:
        matrices = jax.lax.dynamic_index_in_dim(q, start, keepdims=False)
    else:
        matrices = jax.lax.dynamic_slice_in_dim(q, start, count)
    kernel = matrices.reshape(moved) if matrices.shape != moved else matrices
    if perm != tuple(range(len(perm))):
        kernel = jnp.transpose(kernel, np.argsort(perm))
    return kernel.astype(dtype) if kernel.dtype != dtype else kernel


def _split_groups(qs: Sequence[jax.Array], infos: Sequence[LayerInfo], leaves) -> list:
    """Each layer's kernel from :func:`orthonormal_groups`' stacks."""
    groups, plans, batches = _orthonormal_plan(infos, leaves)
    out: list = [None] * len(plans)
    for q, members in zip(qs, groups.values(), strict=True):
        start = 0
        for n in members:
            out[n] = _layer_kernel(q, start, batches[n], plans[n])
            start += batches[n]
    return out


def orthonormal_kernels(key: jax.Array, infos: Sequence[LayerInfo], leaves) -> list[jax.Array]:
    """:func:`orthonormal_kernel` for every layer, with the same values, from one
    decomposition per matrix shape (:func:`orthonormal_groups`)."""
    return _split_groups(orthonormal_groups(key, infos, leaves), infos, leaves)


def _pre_init_program(pre_init, infos: tuple[LayerInfo, ...], avals: tuple, signature):
    """The jitted draws of every layer's pre-init kernel, ``program(key)``, cached by
    ``signature`` (the pre-init, layers, kernel shapes and dtypes, key type) when
    given. The orthonormal pre-init returns one stack per matrix shape, which the
    caller splits into kernels outside the program (:func:`_split_groups`): slicing
    inside it compiled one kernel per layer, the bulk of its compile time."""
    if signature is not None and signature in PRE_INIT_PROGRAMS:
        PRE_INIT_PROGRAMS.move_to_end(signature)
        return PRE_INIT_PROGRAMS[signature]

    def draws(key):
        COUNTS["pre_init"] += 1
        if pre_init is orthonormal_kernel:
            return orthonormal_groups(key, infos, avals)
        return [
            pre_init(layer_key(key, info), info, leaf)
            for info, leaf in zip(infos, avals, strict=True)
        ]

    program = jax.jit(draws)
    if signature is not None:
        PRE_INIT_PROGRAMS[signature] = program
        while len(PRE_INIT_PROGRAMS) > MAX_ENTRIES:
            PRE_INIT_PROGRAMS.popitem(last=False)
    return program


def pre_initialize_kernels(
    pre_init, key: jax.Array, infos: Sequence[LayerInfo], leaves, signature=None
) -> list[jax.Array]:
    """New kernels for every selected layer: orthonormal ones (one decomposition per
    matrix shape), or ``pre_init(layer_key, info, leaf)`` layer by layer, drawn by one
    jitted program of their own (reused for the same ``signature``; see
    :func:`_pre_init_program`) that takes the key as its argument."""
    infos = tuple(infos)
    avals = tuple(jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)) for x in leaves)
    if signature is not None:
        signature = (signature, infos, tuple((a.shape, str(a.dtype)) for a in avals))
        signature = (*signature, str(jax.numpy.result_type(key)), _raw_key_impl(key))
    out = _pre_init_program(pre_init, infos, avals, signature)(key)
    if pre_init is orthonormal_kernel:
        return _split_groups(out, infos, avals)
    return list(out)


def _raw_key_impl(key) -> str | None:
    """The PRNG a raw ``uint32`` key draws with (the config's default)."""
    if jnp.issubdtype(jnp.result_type(key), jax.dtypes.prng_key):
        return None
    return str(jax.config.jax_default_prng_impl)
