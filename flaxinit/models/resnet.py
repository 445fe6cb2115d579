"""A small ResNet-style CNN, Linen and NNX: with or without BatchNorm, ReZero or Fixup.

``conv_stem`` (3x3) [+ ``bn_stem``], ReLU, then ``num_blocks`` basic residual blocks
of constant width, global average pooling and a ``head``. Each block is

* ``norm=True`` (default): ``relu(x + bn2(conv2(relu(bn1(conv1(x))))))``, convs
  without bias (the torchvision/Flax-examples BasicBlock);
* ``norm=False``: the same without the BatchNorms, convs with biases;
* ``gate="rezero"``: the branch times a scalar ``alpha`` (init 0; Bachlechner et al.
  2021): ``relu(x + alpha * branch(x))``;
* ``gate="fixup"``: the Fixup block (Zhang et al. 2019): no norms, scalar biases
  ``bias1a, bias1b, bias2a, bias2b`` (init 0) and a scalar multiplier ``scale``
  (init 1): ``relu(x + scale * conv2(relu(conv1(x + bias1a) + bias1b) + bias2a) + bias2b)``.

Blocks are ``blocks_0 ...`` (Linen) or ``blocks/0 ...`` (NNX ``nnx.List``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["GATES", "NNXResNet", "ResNet"]

GATES = ("none", "rezero", "fixup")


def _check(norm: bool, gate: str) -> None:
    if gate not in GATES:
        raise ValueError(f"ResNet: gate must be one of {GATES}, got gate={gate!r}")
    if gate == "fixup" and norm:
        raise ValueError("ResNet: a Fixup network has no normalization; pass norm=False")


class ResBlock(nn.Module):
    """One basic residual block of :class:`ResNet` (Linen)."""

    width: int
    norm: bool = True
    gate: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv = lambda name: nn.Conv(self.width, (3, 3), use_bias=not self.norm, name=name)
        if self.gate == "fixup":
            conv = lambda name: nn.Conv(self.width, (3, 3), use_bias=False, name=name)
            scalar = lambda name, init: self.param(name, init, ())
            b1a, b1b = (
                scalar("bias1a", nn.initializers.zeros),
                scalar("bias1b", nn.initializers.zeros),
            )
            b2a, b2b = (
                scalar("bias2a", nn.initializers.zeros),
                scalar("bias2b", nn.initializers.zeros),
            )
            gain = scalar("scale", nn.initializers.ones)
            h = nn.relu(conv("conv1")(x + b1a) + b1b)
            h = conv("conv2")(h + b2a) * gain + b2b
            return nn.relu(x + h)
        bn = lambda name: nn.BatchNorm(use_running_average=not train, name=name)
        h = conv("conv1")(x)
        h = nn.relu(bn("bn1")(h) if self.norm else h)
        h = conv("conv2")(h)
        h = bn("bn2")(h) if self.norm else h
        if self.gate == "rezero":
            h = self.param("alpha", nn.initializers.zeros, ()) * h
        return nn.relu(x + h)


class ResNet(nn.Module):
    """A small ResNet-style CNN (Linen); see the module docstring for the variants.

    Example:
      >>> from flaxinit.models import ResNet
      >>> model = ResNet(num_blocks=2, width=8)
      >>> shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 8, 8, 3)))
      >>> sorted(shapes["params"]["blocks_0"])
      ['bn1', 'bn2', 'conv1', 'conv2']
    """

    num_blocks: int = 2
    width: int = 16
    num_classes: int = 10
    norm: bool = True
    gate: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        _check(self.norm, self.gate)
        x = nn.Conv(self.width, (3, 3), use_bias=not self.norm, name="conv_stem")(x)
        if self.norm:
            x = nn.BatchNorm(use_running_average=not train, name="bn_stem")(x)
        x = nn.relu(x)
        for i in range(self.num_blocks):
            x = ResBlock(self.width, self.norm, self.gate, name=f"blocks_{i}")(x, train)
        return nn.Dense(self.num_classes, name="head")(x.mean(axis=(1, 2)))


class NNXResBlock(nnx.Module):
    """One basic residual block of :class:`NNXResNet`."""

    def __init__(self, width: int, norm: bool = True, gate: str = "none", *, rngs: nnx.Rngs):
        self.norm, self.gate = norm, gate
        use_bias = not norm and gate != "fixup"
        self.conv1 = nnx.Conv(width, width, (3, 3), use_bias=use_bias, rngs=rngs)
        self.conv2 = nnx.Conv(width, width, (3, 3), use_bias=use_bias, rngs=rngs)
        self.bn1 = nnx.BatchNorm(width, rngs=rngs) if norm else None
        self.bn2 = nnx.BatchNorm(width, rngs=rngs) if norm else None
        if gate == "rezero":
            self.alpha = nnx.Param(jnp.zeros(()))
        if gate == "fixup":
            self.bias1a, self.bias1b = nnx.Param(jnp.zeros(())), nnx.Param(jnp.zeros(()))
            self.bias2a, self.bias2b = nnx.Param(jnp.zeros(())), nnx.Param(jnp.zeros(()))
            self.scale = nnx.Param(jnp.ones(()))

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.gate == "fixup":
            h = nnx.relu(self.conv1(x + self.bias1a[...]) + self.bias1b[...])
            h = self.conv2(h + self.bias2a[...]) * self.scale[...] + self.bias2b[...]
            return nnx.relu(x + h)
        h = self.conv1(x)
        h = nnx.relu(self.bn1(h, use_running_average=not train) if self.norm else h)
        h = self.conv2(h)
        h = self.bn2(h, use_running_average=not train) if self.norm else h
        if self.gate == "rezero":
            h = self.alpha[...] * h
        return nnx.relu(x + h)


class NNXResNet(nnx.Module):
    """The ResNet-style CNN of :class:`ResNet`, in NNX.

    Example:
      >>> from flax import nnx
      >>> from flaxinit.models import NNXResNet
      >>> make = lambda: NNXResNet(3, num_blocks=1, width=8, gate="rezero", rngs=nnx.Rngs(0))
      >>> nnx.eval_shape(make).blocks[0].alpha.shape
      ()
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_blocks: int = 2,
        width: int = 16,
        num_classes: int = 10,
        norm: bool = True,
        gate: str = "none",
        *,
        rngs: nnx.Rngs,
    ):
        _check(norm, gate)
        self.norm = norm
        self.conv_stem = nnx.Conv(in_channels, width, (3, 3), use_bias=not norm, rngs=rngs)
        self.bn_stem = nnx.BatchNorm(width, rngs=rngs) if norm else None
        self.blocks = nnx.List(
            [NNXResBlock(width, norm, gate, rngs=rngs) for _ in range(num_blocks)]
        )
        self.head = nnx.Linear(width, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = self.conv_stem(x)
        if self.norm:
            x = self.bn_stem(x, use_running_average=not train)
        x = nnx.relu(x)
        for block in self.blocks:
            x = block(x, train)
        return self.head(x.mean(axis=(1, 2)))
