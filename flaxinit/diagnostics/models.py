"""Built-in models for the doctor: a deep MLP, a small CNN and a small GPT (Linen), and an NNX MLP.

Every nonlinearity is wrapped in :class:`~flaxinit.diagnostics.Activation` (or
:class:`~flaxinit.diagnostics.NNXActivation`), so the diagnostics see it. ``kernel_init``
goes to every Dense, Conv and attention projection. Biases start at zero and embeddings
at N(0, 0.02^2).
"""

from __future__ import annotations

import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from flaxinit import initializers as fi
from flaxinit.diagnostics.probe import Activation, NNXActivation, nonlinearity


class MLP(nn.Module):
    """``depth`` hidden layers ``Dense(width) -> activation``, then ``Dense(num_classes)``.

    Example:
      >>> from flaxinit.diagnostics import MLP
      >>> model = MLP(depth=3, width=16, kernel_init=he_normal())
      >>> variables = model.init(jax.random.key(0), jnp.ones((2, 64)))
      >>> model.apply(variables, jnp.ones((2, 64))).shape
      (2, 10)
    """

    depth: int = 30
    width: int = 256
    activation: str = "relu"
    num_classes: int = 10
    kernel_init: fi.Initializer = fi.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fn = nonlinearity(self.activation).fn
        x = x.reshape(x.shape[0], -1)
        for _ in range(self.depth):
            x = Activation(fn)(nn.Dense(self.width, kernel_init=self.kernel_init)(x))
        return nn.Dense(self.num_classes, kernel_init=self.kernel_init)(x)


class CNN(nn.Module):
    """``depth`` layers ``Conv(width, 3x3, SAME) -> activation``, flatten, ``Dense(num_classes)``.

    A ``(batch, pixels)`` input with a square number of pixels is reshaped to
    ``(batch, side, side, 1)``, so the digits' 64 pixels become 8x8 images.

    Example:
      >>> from flaxinit.diagnostics import CNN
      >>> model = CNN(depth=2, width=4)
      >>> variables = model.init(jax.random.key(0), jnp.ones((2, 64)))
      >>> model.apply(variables, jnp.ones((2, 64))).shape
      (2, 10)
    """

    depth: int = 6
    width: int = 32
    activation: str = "relu"
    num_classes: int = 10
    kernel_init: fi.Initializer = fi.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fn = nonlinearity(self.activation).fn
        if x.ndim == 2:
            side = math.isqrt(x.shape[1])
            x = x.reshape(x.shape[0], side, side, -1)
        for _ in range(self.depth):
            x = Activation(fn)(nn.Conv(self.width, (3, 3), kernel_init=self.kernel_init)(x))
        return nn.Dense(self.num_classes, kernel_init=self.kernel_init)(x.reshape(x.shape[0], -1))


class Block(nn.Module):
    """A pre-LayerNorm transformer block: causal self-attention, then an MLP, each residual."""

    width: int
    num_heads: int
    activation: str
    kernel_init: fi.Initializer

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.LayerNorm()(x)
        mask = nn.make_causal_mask(jnp.ones(x.shape[:2]))
        x = x + nn.MultiHeadDotProductAttention(self.num_heads, kernel_init=self.kernel_init)(
            h, h, mask=mask
        )
        h = nn.Dense(4 * self.width, kernel_init=self.kernel_init)(nn.LayerNorm()(x))
        h = Activation(nonlinearity(self.activation).fn)(h)
        return x + nn.Dense(self.width, kernel_init=self.kernel_init)(h)


class GPT(nn.Module):
    """A small decoder-only transformer over integer tokens, returning next-token logits.

    Token and position embeddings, ``depth`` :class:`Block` s, a final LayerNorm and a
    ``Dense(vocab_size)`` head.

    Example:
      >>> from flaxinit.diagnostics import GPT
      >>> model = GPT(vocab_size=17, depth=1, width=16, num_heads=2)
      >>> tokens = jnp.zeros((2, 8), jnp.int32)
      >>> model.apply(model.init(jax.random.key(0), tokens), tokens).shape
      (2, 8, 17)
    """

    vocab_size: int = 17
    depth: int = 2
    width: int = 64
    num_heads: int = 4
    max_len: int = 64
    activation: str = "gelu"
    kernel_init: fi.Initializer = fi.lecun_normal()

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        embed = fi.normal(0.02)
        x = nn.Embed(self.vocab_size, self.width, embedding_init=embed)(tokens)
        x = x + nn.Embed(self.max_len, self.width, embedding_init=embed)(
            jnp.arange(tokens.shape[1])
        )
        for _ in range(self.depth):
            x = Block(self.width, self.num_heads, self.activation, self.kernel_init)(x)
        return nn.Dense(self.vocab_size, kernel_init=self.kernel_init)(nn.LayerNorm()(x))


class NNXMLP(nnx.Module):
    """The NNX twin of :class:`MLP`: ``layers/i`` (Linear), ``acts/i`` (activations), ``head``.

    Example:
      >>> from flax import nnx
      >>> from flaxinit.diagnostics import NNXMLP
      >>> model = NNXMLP(64, depth=2, width=16, rngs=nnx.Rngs(0))
      >>> model(jnp.ones((2, 64))).shape
      (2, 10)
    """

    def __init__(
        self,
        in_features: int,
        depth: int = 30,
        width: int = 256,
        activation: str = "relu",
        num_classes: int = 10,
        kernel_init: fi.Initializer | None = None,
        *,
        rngs: nnx.Rngs,
    ):
        kernel_init = kernel_init or fi.lecun_normal()
        dims = [in_features] + [width] * depth
        pairs = itertools.pairwise(dims)
        self.layers = nnx.List(
            [nnx.Linear(a, b, kernel_init=kernel_init, rngs=rngs) for a, b in pairs]
        )
        fn = nonlinearity(activation).fn
        self.acts = nnx.List([NNXActivation(fn) for _ in range(depth)])
        self.head = nnx.Linear(dims[-1], num_classes, kernel_init=kernel_init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer, act in zip(self.layers, self.acts, strict=True):
            x = act(layer(x))
        return self.head(x)
