"""Orthogonal initializers: (semi-)orthogonal matrices and delta-orthogonal conv kernels."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from flaxinit._checks import check_axes, check_int, check_number, check_shape, normalize_axes
from flaxinit.initializers._core import (
    AxisSpec,
    DTypeLike,
    Initializer,
    check_dtype,
    empty,
    named_factory,
    sampling_dtype,
    with_out_sharding,
)


def _haar_matrix(key, shape, column_axis, dtype):
    """jax.nn.initializers.orthogonal's procedure, without the scale."""
    n_rows, n_cols = math.prod(shape) // shape[column_axis], shape[column_axis]
    q = jax.random.orthogonal(key, n_rows, (), dtype, n_cols)
    q = jnp.reshape(q, (*tuple(np.delete(shape, column_axis)), n_cols))
    return jnp.moveaxis(q, -1, column_axis)


def orthogonal_matrix(key, shape, column_axis, dtype):
    """One Haar matrix per key, also when vmapped (stacked layers, gate blocks); shared
    with LSUV's orthonormal pre-init.

    Under ``vmap`` the QR decompositions run one at a time on the CPU (``lax.map``)
    and batched elsewhere: jaxlib's batched CPU QR runs the matrices on a thread pool
    that can deadlock when several simulated devices execute it at once. Each matrix
    is the same either way (the same draw, the same LAPACK factorization).
    """

    @jax.custom_batching.custom_vmap
    def draw(key):
        return _haar_matrix(key, shape, column_axis, dtype)

    @draw.def_vmap
    def _batched(axis_size, in_batched, keys):
        del axis_size
        if not in_batched[0]:
            return draw(keys), False
        one_by_one = lambda keys: jax.lax.map(draw, keys)
        together = jax.vmap(lambda k: _haar_matrix(k, shape, column_axis, dtype))
        return jax.lax.platform_dependent(keys, cpu=one_by_one, default=together), True

    return draw(key)


@named_factory
def orthogonal(
    scale: float = 1.0,
    column_axis: int = -1,
    dtype: DTypeLike = None,
    *,
    batch_axis: AxisSpec = (),
) -> Initializer:
    """A Haar-distributed (semi-)orthogonal matrix times ``scale``.

    The weight is viewed as a matrix with ``shape[column_axis]`` columns and every
    other axis flattened into rows; for a conv kernel ``(*window, in, out)`` that is
    ``(prod(window) * in, out)``. The smaller side gets orthonormal vectors: the
    columns when rows >= columns (``W^T W = scale^2 I``), else the rows. The matrix
    is the Q of a QR decomposition of a Gaussian matrix with the sign fix
    ``Q diag(sign(diag(R)))``, which makes it Haar-distributed (Mezzadri 2007); for
    complex dtypes it is Haar on the unitary group.

    ``batch_axis`` names axes of independent matrices (stacked layers from
    ``nn.scan``/``nnx.vmap``, or fused gate blocks reshaped to their own axis): each
    slice is its own orthogonal matrix, drawn with ``jax.random.split(key, n)[i]``.
    Without it, a stacked ``(L, n, n)`` weight is one tall matrix whose slices are
    *not* orthogonal, as in jax.

    The QR runs in float32 for bfloat16/float16 (QR has no 16-bit kernels) and the
    result is cast once. With ``out_sharding`` the result is laid out as asked; the
    QR itself needs the whole matrix on each device that computes it, so its memory
    is that of one full float32 copy. In float32 and without ``batch_axis`` the
    values equal ``jax.nn.initializers.orthogonal``'s. Saxe et al. 2013
    (arXiv:1312.6120).

    The positional arguments are jax's, ``(scale, column_axis, dtype)``;
    ``batch_axis`` is keyword-only.

    Args:
      scale: the multiplier, >= 0 (use a gain, e.g. ``calculate_gain("relu")``).
      column_axis: the axis whose entries are the matrix's columns.
      dtype: the default dtype when the caller passes none.
      batch_axis: axes of independent matrices (keyword-only).

    Example:
      >>> w = orthogonal()(jax.random.key(0), (256, 128))
      >>> bool(jnp.allclose(w.T @ w, jnp.eye(128), atol=1e-5))
      True
      >>> layers = orthogonal(batch_axis=0)(jax.random.key(0), (12, 64, 64))
      >>> bool(jnp.allclose(layers[5] @ layers[5].T, jnp.eye(64), atol=1e-5))
      True
    """
    name = "orthogonal"
    scale = check_number(scale, name, "scale", at_least=0)
    column_axis = check_int(column_axis, name, "column_axis")
    batch_axis = check_axes(batch_axis, name, "batch_axis")
    default = None if dtype is None else check_dtype(dtype, name)

    def init(key, shape, dtype=default, out_sharding=None):
        shape = check_shape(shape, name)
        dtype = check_dtype(dtype, name)
        if len(shape) < 2:
            raise ValueError(f"{name}: needs a shape with at least 2 dimensions, got shape={shape}")
        (column,) = normalize_axes(column_axis, len(shape), name, "column_axis")
        batch = tuple(sorted(normalize_axes(batch_axis, len(shape), name, "batch_axis")))
        if column in batch:
            raise ValueError(
                f"{name}: column_axis={column_axis} is also a batch_axis for shape={shape}"
            )
        if len(shape) - len(batch) < 2:
            raise ValueError(
                f"{name}: each slice must have at least 2 dimensions; shape={shape} with "
                f"batch_axis={batch_axis} leaves {len(shape) - len(batch)}"
            )
        if math.prod(shape) == 0:
            return empty(shape, dtype, out_sharding)
        draw = sampling_dtype(dtype)

        def compute():
            if not batch:
                q = orthogonal_matrix(key, shape, column, draw)
            else:
                slice_shape = tuple(d for i, d in enumerate(shape) if i not in batch)
                slice_column = column - sum(b < column for b in batch)
                batch_shape = tuple(shape[b] for b in batch)
                keys = jax.random.split(key, math.prod(batch_shape))
                q = jax.vmap(lambda k: orthogonal_matrix(k, slice_shape, slice_column, draw))(keys)
                q = q.reshape(batch_shape + slice_shape)
                q = jnp.moveaxis(q, tuple(range(len(batch))), batch)
            return (jnp.array(scale, draw) * q).astype(dtype)

        return with_out_sharding(compute, out_sharding)

    return init


@named_factory
def delta_orthogonal(
    scale: float = 1.0, column_axis: int = -1, dtype: DTypeLike = None
) -> Initializer:
    """Delta-orthogonal conv kernel: an orthogonal centre tap, zeros elsewhere.

    For a kernel ``(*window, in, out)`` with 1 to 3 spatial dims, the tap at
    ``(k - 1) // 2`` in each spatial dim holds ``orthogonal(scale)`` of shape
    ``(in, out)`` and every other tap is 0, so the conv starts as an orthogonal
    channel map that preserves the norm of its input (with ``padding='SAME'``). Needs
    ``in <= out``. Xiao et al. 2018, "Dynamical Isometry and a Mean Field Theory of
    CNNs" (arXiv:1806.05393). For an even window the centre is the lower middle, as
    in jax (PyTorch's ``dirac_`` takes ``k // 2``). In float32 the values equal
    ``jax.nn.initializers.delta_orthogonal``'s.

    Args:
      scale: the multiplier of the orthogonal tap, >= 0.
      column_axis: as in :func:`orthogonal`, for the ``(in, out)`` tap.
      dtype: the default dtype when the caller passes none.

    Example:
      >>> w = delta_orthogonal()(jax.random.key(0), (3, 3, 64, 64))
      >>> centre = w[1, 1]
      >>> bool(jnp.allclose(centre.T @ centre, jnp.eye(64), atol=1e-5)), float(abs(w[0]).max())
      (True, 0.0)
    """
    name = "delta_orthogonal"
    scale = check_number(scale, name, "scale", at_least=0)
    tap_init = orthogonal(scale, column_axis)
    default = None if dtype is None else check_dtype(dtype, name)

    def init(key, shape, dtype=default, out_sharding=None):
        shape = check_shape(shape, name)
        dtype = check_dtype(dtype, name)
        if len(shape) not in (3, 4, 5):
            raise ValueError(
                f"{name}: needs a conv kernel with 1 to 3 spatial dims (a 3-D, 4-D or 5-D "
                f"shape), got shape={shape}"
            )
        if shape[-1] < shape[-2]:
            raise ValueError(
                f"{name}: needs in_channels <= out_channels, got shape={shape} "
                f"(in={shape[-2]}, out={shape[-1]})"
            )
        if math.prod(shape) == 0:
            return empty(shape, dtype, out_sharding)

        def compute():
            tap = tap_init(key, shape[-2:], dtype)
            centre = tuple((k - 1) // 2 for k in shape[:-2])
            return jnp.zeros(shape, dtype).at[centre].set(tap)

        return with_out_sharding(compute, out_sharding)

    return init
