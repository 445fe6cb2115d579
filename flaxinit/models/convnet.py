"""A plain convolutional stack, Linen and NNX: ``Conv 3x3 SAME -> activation`` per entry of
``features``, flatten, ``Dense``/``Linear`` head.

Conv layers ``conv_0 ... conv_{n-1}`` (Linen) or ``conv/0 ...`` (an ``nnx.List``) and a
``head``. A ``(batch, pixels)`` input with a square number of pixels is read as
``(batch, side, side, 1)`` images, so the 64 pixels of the digits are 8x8 images.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
from flax import nnx

from flaxinit import activations
from flaxinit.models.mlp import LINEN_KERNEL_INIT, NNX_KERNEL_INIT

__all__ = ["ConvNet", "NNXConvNet"]


def images(x: jax.Array) -> jax.Array:
    """``(batch, side, side, 1)`` from ``(batch, side**2)``; other inputs as they are.

    Example:
      >>> images(jnp.zeros((2, 64))).shape
      (2, 8, 8, 1)
    """
    if x.ndim != 2:
        return x
    side = math.isqrt(x.shape[1])
    if side * side != x.shape[1]:
        raise ValueError(
            f"ConvNet: a (batch, pixels) input needs a square number of pixels, got shape "
            f"{tuple(x.shape)}"
        )
    return x.reshape(x.shape[0], side, side, 1)


class ConvNet(nn.Module):
    """``Conv(width, 3x3, SAME) -> activation`` per entry of ``features``, flatten,
    ``Dense(num_classes)`` (Linen).

    Attributes:
      features: the conv layers' channels.
      num_classes: outputs of ``head``.
      activation: the nonlinearity, a function or a name of :mod:`flaxinit.activations`,
        called as a bare function.
      kernel_init: every layer's kernel initializer; ``None``: Flax's default
        (``lecun_normal``).

    Example:
      >>> from flaxinit.models import ConvNet
      >>> model = ConvNet((4, 4), num_classes=3)
      >>> variables = model.init(jax.random.key(0), jnp.ones((2, 64)))
      >>> sorted(variables["params"]), model.apply(variables, jnp.ones((2, 64))).shape
      (['conv_0', 'conv_1', 'head'], (2, 3))
    """

    features: Sequence[int] = (16, 16)
    num_classes: int = 10
    activation: str | Callable[[jax.Array], jax.Array] = "relu"
    kernel_init: Callable | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = activations.function(self.activation)
        init = self.kernel_init or LINEN_KERNEL_INIT
        x = images(x)
        for i, width in enumerate(self.features):
            x = act(nn.Conv(width, (3, 3), kernel_init=init, name=f"conv_{i}")(x))
        return nn.Dense(self.num_classes, kernel_init=init, name="head")(x.reshape(x.shape[0], -1))


class NNXConvNet(nnx.Module):
    """The conv stack of :class:`ConvNet`, in NNX, for ``side x side`` images with
    ``in_channels`` channels (or ``(batch, side**2)`` inputs, one channel).

    Example:
      >>> from flax import nnx
      >>> from flaxinit.models import NNXConvNet
      >>> model = NNXConvNet(8, (4,), num_classes=3, rngs=nnx.Rngs(0))
      >>> model.conv[0].kernel.shape, model.head.kernel.shape, model(jnp.ones((2, 64))).shape
      ((3, 3, 1, 4), (256, 3), (2, 3))
    """

    def __init__(
        self,
        side: int,
        features: Sequence[int] = (16, 16),
        num_classes: int = 10,
        activation: str | Callable[[jax.Array], jax.Array] = "relu",
        kernel_init: Callable | None = None,
        in_channels: int = 1,
        *,
        rngs: nnx.Rngs,
    ):
        init = kernel_init or NNX_KERNEL_INIT
        channels = [in_channels, *features]
        self.conv = nnx.List(
            [
                nnx.Conv(a, b, (3, 3), kernel_init=init, rngs=rngs)
                for a, b in itertools.pairwise(channels)
            ]
        )
        self.head = nnx.Linear(side * side * channels[-1], num_classes, kernel_init=init, rngs=rngs)
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        act = activations.function(self.activation)
        x = images(x)
        for layer in self.conv:
            x = act(layer(x))
        return self.head(x.reshape(x.shape[0], -1))
