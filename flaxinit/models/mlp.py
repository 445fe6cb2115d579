"""A multilayer perceptron, Linen and NNX.

Hidden layers ``hidden_0 ... hidden_{n-1}`` (``Dense``/``Linear`` then a bare
nonlinearity, ReLU by default) and a ``head``; optionally a per-output ``variance``
parameter (a Gaussian likelihood's variance, for the ``unit_variance`` recipe). Linen
names hidden layers ``hidden_i``, NNX keeps them in an ``nnx.List`` named ``hidden``
(``hidden/0/kernel``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from flaxinit import activations

# The layers' own defaults, named so that kernel_init=None keeps them (and their values).
LINEN_KERNEL_INIT = nn.linear.default_kernel_init
NNX_KERNEL_INIT = nnx.nn.linear.default_kernel_init

__all__ = ["MLP", "NNXMLP"]


class MLP(nn.Module):
    """``Dense -> activation`` per entry of ``features``, then ``Dense(num_classes)`` (Linen).

    Attributes:
      features: the hidden widths.
      num_classes: outputs of ``head``.
      variance: add a ``variance`` parameter of shape ``(num_classes,)``, ones, returned
        beside the output as ``(mean, variance)``.
      activation: the nonlinearity, a function or a name of :mod:`flaxinit.activations`
        (``"relu"``, ``"tanh"``, ...), called as a bare function.
      kernel_init: every ``Dense``'s kernel initializer; ``None``: Flax's default
        (``lecun_normal``).

    Example:
      >>> from flaxinit.models import MLP
      >>> shapes = jax.eval_shape(MLP((8,), 3).init, jax.random.key(0), jnp.ones((1, 4)))
      >>> sorted(shapes["params"])
      ['head', 'hidden_0']
    """

    features: Sequence[int] = (32, 32)
    num_classes: int = 10
    variance: bool = False
    activation: str | Callable[[jax.Array], jax.Array] = "relu"
    kernel_init: Callable | None = None

    @nn.compact
    def __call__(self, x: jax.Array):
        act = activations.function(self.activation)
        init = self.kernel_init or LINEN_KERNEL_INIT
        x = x.reshape(x.shape[0], -1)
        for i, width in enumerate(self.features):
            x = act(nn.Dense(width, kernel_init=init, name=f"hidden_{i}")(x))
        out = nn.Dense(self.num_classes, kernel_init=init, name="head")(x)
        if self.variance:
            return out, self.param("variance", nn.initializers.ones, (self.num_classes,))
        return out


class NNXMLP(nnx.Module):
    """The MLP of :class:`MLP`, in NNX.

    Example:
      >>> from flax import nnx
      >>> from flaxinit.models import NNXMLP
      >>> model = nnx.eval_shape(lambda: NNXMLP(4, (8,), num_classes=3, rngs=nnx.Rngs(0)))
      >>> model.hidden[0].kernel.shape, model.head.kernel.shape
      ((4, 8), (8, 3))
    """

    def __init__(
        self,
        in_features: int,
        features: Sequence[int] = (32, 32),
        num_classes: int = 10,
        variance: bool = False,
        activation: str | Callable[[jax.Array], jax.Array] = "relu",
        kernel_init: Callable | None = None,
        *,
        rngs: nnx.Rngs,
    ):
        init = kernel_init or NNX_KERNEL_INIT
        widths = [in_features, *features]
        self.hidden = nnx.List(
            [nnx.Linear(a, b, kernel_init=init, rngs=rngs) for a, b in itertools.pairwise(widths)]
        )
        self.head = nnx.Linear(widths[-1], num_classes, kernel_init=init, rngs=rngs)
        self.activation = activation
        self.variance = nnx.Param(jnp.ones((num_classes,))) if variance else None

    def __call__(self, x: jax.Array):
        x = x.reshape(x.shape[0], -1)
        act = activations.function(self.activation)
        for layer in self.hidden:
            x = act(layer(x))
        out = self.head(x)
        if self.variance is not None:
            return out, self.variance[...]
        return out
