"""A DCGAN generator and discriminator (Radford et al. 2015), small, Linen and NNX.

Generator: ``fc`` (``Dense``, latent -> 4x4x2w) + ``bn0``, ReLU, ``deconv1``
(``ConvTranspose`` 4x4 stride 2) + ``bn1``, ReLU, ``deconv2`` (to ``channels``), tanh:
a 16x16 image. Discriminator: ``conv1`` (4x4 stride 2), LeakyReLU(0.2), ``conv2`` +
``bn2``, LeakyReLU(0.2), flatten, ``head`` (one logit). Convolutions followed by a
BatchNorm have no bias, as in the paper's reference code.
"""

from __future__ import annotations

import flax.linen as nn
import jax
from flax import nnx

__all__ = ["Discriminator", "Generator", "NNXDiscriminator", "NNXGenerator"]


class Generator(nn.Module):
    """The DCGAN generator (Linen): ``z (B, latent) -> images (B, 16, 16, channels)``.

    Example:
      >>> from flaxinit.models import Generator
      >>> g = Generator(latent=4, width=4)
      >>> shapes = jax.eval_shape(g.init, jax.random.key(0), jnp.ones((1, 4)))
      >>> jax.eval_shape(g.apply, shapes, jnp.ones((1, 4))).shape
      (1, 16, 16, 1)
    """

    latent: int = 16
    width: int = 16
    channels: int = 1

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
        bn = lambda name: nn.BatchNorm(use_running_average=not train, name=name)
        x = nn.Dense(4 * 4 * 2 * self.width, use_bias=False, name="fc")(z)
        x = nn.relu(bn("bn0")(x.reshape(z.shape[0], 4, 4, 2 * self.width)))
        x = nn.ConvTranspose(self.width, (4, 4), (2, 2), use_bias=False, name="deconv1")(x)
        x = nn.relu(bn("bn1")(x))
        x = nn.ConvTranspose(self.channels, (4, 4), (2, 2), name="deconv2")(x)
        return nn.tanh(x)


class Discriminator(nn.Module):
    """The DCGAN discriminator (Linen): ``images (B, 16, 16, C) -> logits (B, 1)``.

    Example:
      >>> from flaxinit.models import Discriminator
      >>> d = Discriminator(width=4)
      >>> shapes = jax.eval_shape(d.init, jax.random.key(0), jnp.ones((1, 16, 16, 1)))
      >>> sorted(shapes["params"])
      ['bn2', 'conv1', 'conv2', 'head']
    """

    width: int = 16

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.leaky_relu(nn.Conv(self.width, (4, 4), (2, 2), name="conv1")(x), 0.2)
        x = nn.Conv(2 * self.width, (4, 4), (2, 2), use_bias=False, name="conv2")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn2")(x)
        x = nn.leaky_relu(x, 0.2)
        return nn.Dense(1, name="head")(x.reshape(x.shape[0], -1))


class NNXGenerator(nnx.Module):
    """The DCGAN generator of :class:`Generator`, in NNX.

    Example:
      >>> from flax import nnx
      >>> from flaxinit.models import NNXGenerator
      >>> nnx.eval_shape(lambda: NNXGenerator(latent=4, width=4, rngs=nnx.Rngs(0))).fc.kernel.shape
      (4, 128)
    """

    def __init__(self, latent: int = 16, width: int = 16, channels: int = 1, *, rngs: nnx.Rngs):
        self.width = width
        self.fc = nnx.Linear(latent, 4 * 4 * 2 * width, use_bias=False, rngs=rngs)
        self.bn0 = nnx.BatchNorm(2 * width, rngs=rngs)
        self.deconv1 = nnx.ConvTranspose(
            2 * width, width, (4, 4), (2, 2), use_bias=False, rngs=rngs
        )
        self.bn1 = nnx.BatchNorm(width, rngs=rngs)
        self.deconv2 = nnx.ConvTranspose(width, channels, (4, 4), (2, 2), rngs=rngs)

    def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
        x = self.fc(z).reshape(z.shape[0], 4, 4, 2 * self.width)
        x = nnx.relu(self.bn0(x, use_running_average=not train))
        x = nnx.relu(self.bn1(self.deconv1(x), use_running_average=not train))
        return nnx.tanh(self.deconv2(x))


class NNXDiscriminator(nnx.Module):
    """The DCGAN discriminator of :class:`Discriminator`, in NNX (16x16 inputs).

    Example:
      >>> from flax import nnx
      >>> from flaxinit.models import NNXDiscriminator
      >>> nnx.eval_shape(lambda: NNXDiscriminator(1, width=4, rngs=nnx.Rngs(0))).head.kernel.shape
      (128, 1)
    """

    def __init__(self, channels: int = 1, width: int = 16, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(channels, width, (4, 4), (2, 2), rngs=rngs)
        self.conv2 = nnx.Conv(width, 2 * width, (4, 4), (2, 2), use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(2 * width, rngs=rngs)
        self.head = nnx.Linear(4 * 4 * 2 * width, 1, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nnx.leaky_relu(self.conv1(x), 0.2)
        x = nnx.leaky_relu(self.bn2(self.conv2(x), use_running_average=not train), 0.2)
        return self.head(x.reshape(x.shape[0], -1))
