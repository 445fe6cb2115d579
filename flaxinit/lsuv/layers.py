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
