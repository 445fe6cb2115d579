"""What LSUV needs to know about a selected layer, shared by the Linen and NNX drivers."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flaxinit.initializers import orthogonal
from flaxinit.initializers.orthogonal import _orthogonal_matrix
from flaxinit.rules.actions import vmap_matches_loop
from flaxinit.rules.engine import stable_hash
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


def orthonormal_kernels(key: jax.Array, infos: Sequence[LayerInfo], leaves) -> list[jax.Array]:
    """:func:`orthonormal_kernel` for every layer, with the same values.

    Layers whose matrices have the same shape share one decomposition (a loop over
    their matrices on the CPU, a batch elsewhere), so the program's size, and its
    compile time, does not grow with the number of layers: at 100 layers of 256^2,
    one QR compiled instead of 100.
    """
    plans, groups = [], {}
    layer_keys = _layer_keys(key, infos)
    batches = [_as_matrices(info, leaf)[2][0] for info, leaf in zip(infos, leaves, strict=True)]
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
    for n, (info, leaf) in enumerate(zip(infos, leaves, strict=True)):
        perm, moved, (_, rows, cols) = _as_matrices(info, leaf)
        groups.setdefault((rows, cols), []).append(n)
        plans.append((perm, moved, leaf.dtype))
    out: list = [None] * len(plans)
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
        q = jax.vmap(lambda k, shape=(rows, cols): _orthogonal_matrix(k, shape, 1, jnp.float32))(
            keys
        )
        start = 0
        for n in members:
            perm, moved, dtype = plans[n]
            matrices = q[start : start + batches[n]]
            start += batches[n]
            out[n] = jnp.transpose(matrices.reshape(moved), np.argsort(perm)).astype(dtype)
    return out


def pre_initialize_kernels(pre_init, key: jax.Array, infos: Sequence[LayerInfo], leaves):
    """New kernels for every selected layer: orthonormal ones grouped by shape, or
    ``pre_init(layer_key, info, leaf)`` layer by layer."""
    if pre_init is orthonormal_kernel:
        return orthonormal_kernels(key, infos, leaves)
    return [
        pre_init(layer_key(key, info), info, leaf) for info, leaf in zip(infos, leaves, strict=True)
    ]
