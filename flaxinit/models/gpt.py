"""A GPT-style decoder (and the pre-norm transformer block the ViT shares), Linen and NNX.

Stock modules only, named the way the transformer recipes expect by default:

* token and position embeddings ``wte``/``wpe`` (``nn.Embed``/``nnx.Embed``, leaf
  ``embedding``);
* per block ``ln1`` (``LayerNorm``), ``attn`` (``nn.MultiHeadDotProductAttention``/
  ``nnx.MultiHeadAttention``: ``query``/``key``/``value`` kernels ``(d, heads, head_dim)``,
  ``out`` kernel ``(heads, head_dim, d)``), ``ln2``, ``mlp`` with ``fc1`` ``(d, 4d)`` and
  ``fc2`` ``(4d, d)`` (``Dense``/``Linear``, a bare nonlinearity between, GELU by
  default);
* a final ``ln_f`` and an untied ``head`` ``(d, vocab)``.

Blocks are ``blocks_0 ... blocks_{L-1}`` in Linen and ``blocks/0 ...`` (an ``nnx.List``)
in NNX; with ``scan=True`` they are one stacked module ``blocks`` whose leaves have a
leading layer axis (``nn.scan`` in Linen; ``nnx.vmap`` to build and ``nnx.scan`` to run
in NNX). The stacked path is the unrolled one with the index removed, so rules wrapped in
``per_layer`` (and the recipes' depth-indexed rules) give stacked slice ``i`` exactly
the values of unrolled layer ``i``.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from flaxinit import activations
from flaxinit.models.mlp import LINEN_KERNEL_INIT, NNX_KERNEL_INIT

# The attention layers' own default kernel initializers, kept when kernel_init is None.
_LINEN_ATTENTION_INIT = nn.linear.default_kernel_init
_NNX_ATTENTION_INIT = nnx.nn.linear.default_kernel_init

Activation = str | Callable[[jax.Array], jax.Array]

__all__ = ["GPT", "NNXGPT", "Block", "NNXBlock"]


def _causal_mask(length: int) -> jax.Array:
    return nn.make_causal_mask(jnp.ones((1, length), jnp.int32))


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``.

    Called as ``block(x, mask)`` and returns ``(x, None)``, the ``nn.scan`` body contract.
    ``kernel_init`` (``None``: each layer's Flax default) goes to the attention
    projections and the MLP.
    """

    num_heads: int = 2
    mlp_ratio: int = 4
    activation: Activation = "gelu"
    kernel_init: Callable | None = None

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, None]:
        d = x.shape[-1]
        h = nn.LayerNorm(name="ln1")(x)
        attention = nn.MultiHeadDotProductAttention(
            self.num_heads, kernel_init=self.kernel_init or _LINEN_ATTENTION_INIT, name="attn"
        )
        x = x + attention(h, h, mask=mask)
        h = nn.LayerNorm(name="ln2")(x)
        h = MlpBlock(self.mlp_ratio * d, self.activation, self.kernel_init, name="mlp")(h)
        return x + h, None


class MlpBlock(nn.Module):
    """``fc2(activation(fc1(x)))``, GELU by default."""

    hidden: int
    activation: Activation = "gelu"
    kernel_init: Callable | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = self.kernel_init or LINEN_KERNEL_INIT
        h = nn.Dense(self.hidden, kernel_init=init, name="fc1")(x)
        h = activations.function(self.activation)(h)
        return nn.Dense(x.shape[-1], kernel_init=init, name="fc2")(h)


def run_blocks(
    x,
    mask,
    num_layers: int,
    num_heads: int,
    mlp_ratio: int,
    scan: bool,
    activation: Activation = "gelu",
    kernel_init: Callable | None = None,
):
    r"""``num_layers`` Linen :class:`Block`\ s, stacked by ``nn.scan`` as ``blocks`` or
    unrolled as ``blocks_0 ...``; call from a compact method (the blocks are its
    submodules)."""
    args = (num_heads, mlp_ratio, activation, kernel_init)
    if scan:
        stack = nn.scan(
            Block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=nn.broadcast,
            length=num_layers,
        )
        x, _ = stack(*args, name="blocks")(x, mask)
        return x
    for i in range(num_layers):
        x, _ = Block(*args, name=f"blocks_{i}")(x, mask)
    return x


class GPT(nn.Module):
    """A GPT-style decoder-only language model (Linen).

    Attributes:
      vocab_size: tokens.
      max_len: positions (``wpe`` rows).
      d_model: width.
      num_layers: blocks.
      num_heads: attention heads.
      scan: stack the blocks with ``nn.scan`` (one ``blocks`` module with a leading
        layer axis) instead of ``blocks_0 ... blocks_{L-1}``.
      activation: the MLPs' nonlinearity, a function or a name of
        :mod:`flaxinit.activations`, called as a bare function.
      kernel_init: the kernel initializer of every attention projection, MLP layer and
        the head; ``None``: each layer's Flax default. Embeddings keep theirs.

    Example:
      >>> from flaxinit.models import GPT
      >>> model = GPT(vocab_size=32, d_model=16, num_layers=2, scan=True)
      >>> shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
      >>> shapes["params"]["blocks"]["attn"]["out"]["kernel"].shape
      (2, 2, 8, 16)
    """

    vocab_size: int = 64
    max_len: int = 16
    d_model: int = 32
    num_layers: int = 2
    num_heads: int = 2
    mlp_ratio: int = 4
    scan: bool = False
    activation: Activation = "gelu"
    kernel_init: Callable | None = None

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        length = tokens.shape[-1]
        x = nn.Embed(self.vocab_size, self.d_model, name="wte")(tokens)
        x = x + nn.Embed(self.max_len, self.d_model, name="wpe")(jnp.arange(length))
        mask = _causal_mask(length)
        x = run_blocks(
            x,
            mask,
            self.num_layers,
            self.num_heads,
            self.mlp_ratio,
            self.scan,
            self.activation,
            self.kernel_init,
        )
        x = nn.LayerNorm(name="ln_f")(x)
        init = self.kernel_init or LINEN_KERNEL_INIT
        return nn.Dense(self.vocab_size, kernel_init=init, name="head")(x)


class NNXMlpBlock(nnx.Module):
    """``fc2(activation(fc1(x)))`` (NNX), GELU by default."""

    def __init__(
        self,
        d_model: int,
        hidden: int,
        activation: Activation = "gelu",
        kernel_init: Callable | None = None,
        *,
        rngs: nnx.Rngs,
    ):
        init = kernel_init or NNX_KERNEL_INIT
        self.fc1 = nnx.Linear(d_model, hidden, kernel_init=init, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, d_model, kernel_init=init, rngs=rngs)
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(activations.function(self.activation)(self.fc1(x)))


class NNXBlock(nnx.Module):
    """The pre-norm transformer block of :class:`Block`, in NNX."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        mlp_ratio: int = 4,
        activation: Activation = "gelu",
        kernel_init: Callable | None = None,
        *,
        rngs: nnx.Rngs,
    ):
        self.ln1 = nnx.LayerNorm(d_model, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads,
            d_model,
            kernel_init=kernel_init or _NNX_ATTENTION_INIT,
            decode=False,
            rngs=rngs,
        )
        self.ln2 = nnx.LayerNorm(d_model, rngs=rngs)
        self.mlp = NNXMlpBlock(d_model, mlp_ratio * d_model, activation, kernel_init, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        h = self.ln1(x)
        x = x + self.attn(h, h, mask=mask)
        return x + self.mlp(self.ln2(x))


def nnx_stack(make, num_layers: int, rngs: nnx.Rngs):
    """``num_layers`` modules from ``make(rngs)`` stacked by ``nnx.vmap``: one module
    whose Variables have a leading layer axis (each layer its own draws)."""

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def build(rngs: nnx.Rngs):
        return make(rngs)

    return build(rngs)


def nnx_run_stack(stack, x: jax.Array, *args) -> jax.Array:
    """Runs a stacked module from :func:`nnx_stack` over its layer axis (``nnx.scan``)."""

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def body(x, layer):
        return layer(x, *args)

    return body(x, stack)


class NNXGPT(nnx.Module):
    """The GPT-style decoder of :class:`GPT`, in NNX.

    With ``scan=True`` the blocks are one module ``blocks`` built by ``nnx.vmap`` (leaves
    ``(L, ...)``) and run with ``nnx.scan``; else an ``nnx.List`` (``blocks/0/...``).

    Example:
      >>> from flax import nnx
      >>> from flaxinit.models import NNXGPT
      >>> model = nnx.eval_shape(lambda: NNXGPT(d_model=16, num_layers=2, rngs=nnx.Rngs(0)))
      >>> model.blocks[1].attn.query.kernel.shape
      (16, 2, 8)
    """

    def __init__(
        self,
        vocab_size: int = 64,
        max_len: int = 16,
        d_model: int = 32,
        num_layers: int = 2,
        num_heads: int = 2,
        mlp_ratio: int = 4,
        scan: bool = False,
        activation: Activation = "gelu",
        kernel_init: Callable | None = None,
        *,
        rngs: nnx.Rngs,
    ):
        self.scan = scan
        self.wte = nnx.Embed(vocab_size, d_model, rngs=rngs)
        self.wpe = nnx.Embed(max_len, d_model, rngs=rngs)
        make = lambda r: NNXBlock(d_model, num_heads, mlp_ratio, activation, kernel_init, rngs=r)
        if scan:
            self.blocks = nnx_stack(make, num_layers, rngs)
        else:
            self.blocks = nnx.List([make(rngs) for _ in range(num_layers)])
        self.ln_f = nnx.LayerNorm(d_model, rngs=rngs)
        self.head = nnx.Linear(
            d_model, vocab_size, kernel_init=kernel_init or NNX_KERNEL_INIT, rngs=rngs
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        length = tokens.shape[-1]
        x = self.wte(tokens) + self.wpe(jnp.arange(length))
        mask = _causal_mask(length)
        if self.scan:
            x = nnx_run_stack(self.blocks, x, mask)
        else:
            for block in self.blocks:
                x = block(x, mask)
        return self.head(self.ln_f(x))
