"""Combinators: build an initializer from another one.

With no dtype given, a combinator passes none on: the wrapped initializer's own
default applies (its factory's ``dtype=``, else jax's default float), so
``scaled(he_normal(), 0.5)`` has ``he_normal()``'s dtype in every configuration.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from flaxinit._checks import check_callable, check_int, check_number, check_shape, normalize_axes
from flaxinit.initializers._core import Initializer, named_factory, with_out_sharding


@named_factory
def scaled(init: Initializer, factor: float) -> Initializer:
    """``init``'s draw multiplied by ``factor``.

    The multiplication happens in the output dtype after ``init``'s own cast.

    Args:
      init: any initializer.
      factor: a finite number.

    Example:
      >>> import math
      >>> from flaxinit.initializers import normal
      >>> depth_scaled = scaled(normal(0.02), 1 / math.sqrt(2 * 12))  # GPT-2 residual proj.
      >>> key = jax.random.key(0)
      >>> bool(jnp.allclose(depth_scaled(key, (4, 4)), normal(0.02)(key, (4, 4)) / math.sqrt(24)))
      True
    """
    _check_initializer(init, "scaled")
    factor = check_number(factor, "scaled", "factor")

    def apply(key, shape, dtype=None, out_sharding=None):
        x = call(init, key, shape, dtype, out_sharding)
        return x * jnp.array(factor, x.dtype)

    return apply


@named_factory
def layerwise(init: Initializer, axis: int = 0) -> Initializer:
    """Draws each slice along ``axis`` independently, with ``init`` and the slice's shape.

    For a stack of layers (``nn.scan``/``nnx.vmap`` parameters with a layer axis):
    slice ``i`` is ``init(jax.random.split(key, n)[i], slice_shape)``, so its fans are
    those of one layer, not of the stack (``he_normal()`` on a ``(12, 256, 256)``
    stack would otherwise count the 12 layers as receptive field). :func:`blockwise`
    is its counterpart for blocks fused along an axis. Formerly ``stacked``
    (deprecated alias for one release).

    Args:
      init: any initializer.
      axis: the layer axis.

    Example:
      >>> from flaxinit.initializers import he_normal
      >>> key = jax.random.key(0)
      >>> w = layerwise(he_normal())(key, (12, 256, 256))
      >>> bool((w[3] == he_normal()(jax.random.split(key, 12)[3], (256, 256))).all())
      True
    """
    _check_initializer(init, "layerwise")
    axis = check_int(axis, "layerwise", "axis")

    def apply(key, shape, dtype=None, out_sharding=None):
        shape = check_shape(shape, "layerwise")
        if not shape:
            raise ValueError("layerwise: needs a shape with at least 1 dimension, got shape=()")
        (ax,) = normalize_axes(axis, len(shape), "layerwise", "axis")
        slice_shape = shape[:ax] + shape[ax + 1 :]

        def compute():
            keys = jax.random.split(key, shape[ax])
            slices = jax.vmap(lambda k: call(init, k, slice_shape, dtype))(keys)
            return jnp.moveaxis(slices, 0, ax)

        return with_out_sharding(compute, out_sharding)

    return apply


@named_factory
def blockwise(init: Initializer, num_blocks: int, axis: int = -1) -> Initializer:
    """Splits ``axis`` into ``num_blocks`` equal blocks, each drawn on its own.

    For fused weights: an LSTM's ``(H, 4H)`` recurrent kernel with
    ``blockwise(orthogonal(), 4)`` gets one orthogonal ``H x H`` block per gate
    (``orthogonal()`` on the whole ``(H, 4H)`` leaves the gate blocks non-orthogonal),
    and a packed QKV ``(E, 3E)`` kernel with ``blockwise(xavier_uniform(), 3)`` gets
    the fans of one projection (PyTorch's packed MHA halves the variance,
    pytorch#166378). Block ``i`` is ``init(jax.random.split(key, num_blocks)[i],
    block_shape)``.

    Args:
      init: any initializer.
      num_blocks: how many equal blocks ``axis`` holds.
      axis: the fused axis.

    Example:
      >>> from flaxinit.initializers import orthogonal
      >>> w = blockwise(orthogonal(), 4)(jax.random.key(0), (128, 512))
      >>> gate = w[:, 128:256]  # the second gate's block: orthogonal on its own
      >>> bool(jnp.allclose(gate.T @ gate, jnp.eye(128), atol=1e-5))
      True
    """
    _check_initializer(init, "blockwise")
    num_blocks = check_int(num_blocks, "blockwise", "num_blocks", at_least=1)
    axis = check_int(axis, "blockwise", "axis")

    def apply(key, shape, dtype=None, out_sharding=None):
        shape = check_shape(shape, "blockwise")
        if not shape:
            raise ValueError("blockwise: needs a shape with at least 1 dimension, got shape=()")
        (ax,) = normalize_axes(axis, len(shape), "blockwise", "axis")
        if shape[ax] % num_blocks:
            raise ValueError(
                f"blockwise: axis {axis} of shape={shape} (size {shape[ax]}) does not divide "
                f"into num_blocks={num_blocks}"
            )
        block_shape = (*shape[:ax], shape[ax] // num_blocks, *shape[ax + 1 :])

        def compute():
            keys = jax.random.split(key, num_blocks)
            blocks = jax.vmap(lambda k: call(init, k, block_shape, dtype))(keys)
            return jnp.moveaxis(blocks, 0, ax).reshape(shape)

        if math.prod(shape) == 0:
            return call(init, key, shape, dtype, out_sharding)
        return with_out_sharding(compute, out_sharding)

    return apply


def call(init, key, shape, dtype=None, out_sharding=None):
    """``init(key, shape, dtype, out_sharding)``, leaving out what the caller left out, so
    that ``init`` applies its own default dtype (its factory's ``dtype=``, else float32,
    or float64 under ``jax_enable_x64``) and works without an ``out_sharding`` parameter
    (Flax's and Optax's initializers, user functions)."""
    args = (key, shape) if dtype is None else (key, shape, dtype)
    if out_sharding is None:
        return init(*args)
    return init(*args, out_sharding=out_sharding)


def _check_initializer(init, name):
    check_callable(init, name, "init", "an initializer (a callable)")
