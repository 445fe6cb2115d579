"""Structured initializers: identity matrices, Dirac conv kernels, sparse weights."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from flaxinit._checks import check_int, check_number, check_shape
from flaxinit.initializers._core import (
    DTypeLike,
    Initializer,
    check_dtype,
    empty,
    named_factory,
    sampling_dtype,
    with_out_sharding,
)


@named_factory
def identity(scale: float = 1.0, dtype: DTypeLike = None) -> Initializer:
    """``scale`` times the identity matrix, for a 2-D ``(in, out)`` kernel.

    For a non-square kernel the ones sit on the main diagonal (``eye(in, out)``):
    a Dense layer with it copies the first ``min(in, out)`` features and zeros the
    rest. PyTorch's ``eye_``; Haiku's and Keras's ``Identity``. IRNNs (Le et al. 2015,
    arXiv:1504.00941) use it for the recurrent kernel. Conv kernels take
    :func:`dirac`.

    Args:
      scale: the diagonal value.
      dtype: the default dtype when the caller passes none.

    Example:
      >>> identity()(jax.random.key(0), (2, 3))
      Array([[1., 0., 0.],
             [0., 1., 0.]], dtype=float32)
    """
    name = "identity"
    scale = check_number(scale, name, "scale")
    default = None if dtype is None else check_dtype(dtype, name)

    def init(key, shape, dtype=default, out_sharding=None):
        del key
        shape = check_shape(shape, name)
        dtype = check_dtype(dtype, name)
        if len(shape) != 2:
            raise ValueError(
                f"{name}: needs a 2-D (in, out) shape, got shape={shape}; for conv kernels "
                "use dirac(), for stacked layers apply it per layer"
            )
        return with_out_sharding(lambda: scale * jnp.eye(*shape, dtype=dtype), out_sharding)

    return init


@named_factory
def dirac(groups: int = 1, scale: float = 1.0, dtype: DTypeLike = None) -> Initializer:
    """A conv kernel that passes its input through, channel for channel.

    For a Flax kernel ``(*window, in_per_group, out)`` of any spatial rank, output
    channel ``g * out_per_group + d`` copies input channel ``g * in_per_group + d``
    for ``d < min(in_per_group, out_per_group)`` in each of ``groups`` groups
    (``feature_group_count`` in Flax); extra output channels are 0. The one sits at
    the window's centre ``(k - 1) // 2``, which with ``padding='SAME'`` makes the conv
    the identity (PyTorch's ``dirac_`` uses ``k // 2``, the same for odd windows).
    Used for identity-initialized residual and ConvNets (e.g. "Dirac nets",
    Zagoruyko & Komodakis 2017).

    Args:
      groups: the conv's feature group count; ``out`` must divide by it.
      scale: the value of the ones.
      dtype: the default dtype when the caller passes none.

    Example:
      >>> w = dirac()(jax.random.key(0), (3, 3, 16, 16))  # nn.Conv(16, (3, 3)) identity
      >>> bool((w[1, 1] == jnp.eye(16)).all()), float(w.sum())
      (True, 16.0)
    """
    name = "dirac"
    groups = check_int(groups, name, "groups", at_least=1)
    scale = check_number(scale, name, "scale")
    default = None if dtype is None else check_dtype(dtype, name)

    def init(key, shape, dtype=default, out_sharding=None):
        del key
        shape = check_shape(shape, name)
        dtype = check_dtype(dtype, name)
        if len(shape) < 3:
            raise ValueError(
                f"{name}: needs a conv kernel (*window, in, out) with at least 1 spatial dim, "
                f"got shape={shape}"
            )
        in_per_group, out = shape[-2], shape[-1]
        if out % groups:
            raise ValueError(
                f"{name}: out channels {out} of shape={shape} do not divide into groups={groups}"
            )
        if math.prod(shape) == 0:
            return empty(shape, dtype, out_sharding)
        out_per_group = out // groups
        diag = min(in_per_group, out_per_group)

        def compute():
            d = jnp.arange(diag)
            cols = (jnp.arange(groups)[:, None] * out_per_group + d[None, :]).reshape(-1)
            rows = jnp.tile(d, groups)
            centre = tuple((k - 1) // 2 for k in shape[:-2])
            return jnp.zeros(shape, dtype).at[(*centre, rows, cols)].set(scale)

        return with_out_sharding(compute, out_sharding)

    return init


@named_factory
def sparse(
    sparsity: float | None = None,
    nonzero: int | None = None,
    stddev: float = 0.01,
    dtype: DTypeLike = None,
) -> Initializer:
    """Sparse init: each output unit gets a fixed number of non-zero incoming weights.

    Martens 2010, "Deep learning via Hessian-free optimization": every unit receives
    exactly ``nonzero`` non-zero incoming weights (Martens used 15), drawn
    N(0, stddev^2), and the rest are 0, so the unit's input scale does not depend on
    the layer's width. Give either ``nonzero`` or ``sparsity``, the fraction of
    zeros per unit as in PyTorch's ``sparse_`` (``ceil(sparsity * fan_in)`` zeros).

    The kernel is ``(*window, in, out)``: each of the ``out`` units has
    ``fan_in = prod(shape[:-1])`` incoming weights. Which of them are non-zero comes
    from the key (same key, same mask; PyTorch's mask ignores its generator).

    Args:
      sparsity: the fraction of zeros per unit, in [0, 1).
      nonzero: the number of non-zeros per unit, >= 1.
      stddev: the std of the non-zero weights, >= 0.
      dtype: the default dtype when the caller passes none.

    Example:
      >>> w = sparse(nonzero=15, stddev=1.0)(jax.random.key(0), (784, 256))
      >>> bool(((w != 0).sum(axis=0) == 15).all())
      True
    """
    name = "sparse"
    if (sparsity is None) == (nonzero is None):
        raise ValueError(
            f"{name}: give exactly one of sparsity= (fraction of zeros per unit, as "
            "torch.nn.init.sparse_) or nonzero= (non-zeros per unit; Martens 2010 used 15), "
            f"got sparsity={sparsity!r}, nonzero={nonzero!r}"
        )
    if sparsity is not None:
        sparsity = check_number(sparsity, name, "sparsity", at_least=0, below=1)
    else:
        nonzero = check_int(nonzero, name, "nonzero", at_least=1)
    stddev = check_number(stddev, name, "stddev", at_least=0)
    default = None if dtype is None else check_dtype(dtype, name)

    def init(key, shape, dtype=default, out_sharding=None):
        shape = check_shape(shape, name)
        dtype = check_dtype(dtype, name, allow_complex=False)
        if len(shape) < 2:
            raise ValueError(f"{name}: needs a shape with at least 2 dimensions, got shape={shape}")
        if math.prod(shape) == 0:
            return empty(shape, dtype, out_sharding)
        fan_in, units = math.prod(shape[:-1]), shape[-1]
        count = fan_in - math.ceil(sparsity * fan_in) if sparsity is not None else int(nonzero)
        if count > fan_in:
            raise ValueError(
                f"{name}: nonzero={count} exceeds the {fan_in} incoming weights per unit of "
                f"shape={shape}"
            )
        draw = sampling_dtype(dtype)

        def compute():
            mask_key, value_key = jax.random.split(key)
            # top_k of i.i.d. uniforms picks a uniformly random subset of exactly
            # `count` inputs per unit, ties or not.
            scores = jax.random.uniform(mask_key, (units, fan_in))
            _, chosen = jax.lax.top_k(scores, count)
            mask = jnp.zeros((units, fan_in), bool).at[jnp.arange(units)[:, None], chosen].set(True)
            values = jax.random.normal(value_key, (fan_in, units), draw) * jnp.array(stddev, draw)
            return jnp.where(mask.T, values, 0).reshape(shape).astype(dtype)

        return with_out_sharding(compute, out_sharding)

    return init
