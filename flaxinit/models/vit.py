"""A small Vision Transformer, Linen and NNX.

``patch_embed`` (a ``Conv`` with kernel and stride ``patch_size``), a class token
``cls`` ``(1, 1, d)`` and a learned ``pos_embedding`` ``(1, patches + 1, d)``, the
pre-norm blocks of :mod:`flaxinit.models.gpt` (``ln1``, ``attn``, ``ln2``,
``mlp/fc1``, ``mlp/fc2``; no causal mask), a final ``ln_f`` and a ``head`` on the class
token. ``scan=True`` stacks the blocks as in :class:`~flaxinit.models.GPT`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from flaxinit.models.gpt import NNXBlock, nnx_run_stack, nnx_stack, run_blocks

__all__ = ["NNXViT", "ViT"]


class ViT(nn.Module):
    """A Vision Transformer (Linen).

    Example:
      >>> from flaxinit.models import ViT
      >>> model = ViT(image_size=8, patch_size=4, d_model=16, num_layers=1)
      >>> shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 8, 8, 3)))
      >>> shapes["params"]["pos_embedding"].shape
      (1, 5, 16)
    """

    image_size: int = 8
    patch_size: int = 4
    d_model: int = 32
    num_layers: int = 2
    num_heads: int = 2
    mlp_ratio: int = 4
    num_classes: int = 10
    scan: bool = False

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        p, d = self.patch_size, self.d_model
        x = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", name="patch_embed")(images)
        x = x.reshape(x.shape[0], -1, d)
        cls = self.param("cls", nn.initializers.zeros, (1, 1, d))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, d)), x], axis=1)
        n = (self.image_size // p) ** 2 + 1
        x = x + self.param("pos_embedding", nn.initializers.normal(0.02), (1, n, d))
        x = run_blocks(x, None, self.num_layers, self.num_heads, self.mlp_ratio, self.scan)
        x = nn.LayerNorm(name="ln_f")(x)
        return nn.Dense(self.num_classes, name="head")(x[:, 0])


class NNXViT(nnx.Module):
    """The Vision Transformer of :class:`ViT`, in NNX.

    Example:
      >>> from flax import nnx
      >>> from flaxinit.models import NNXViT
      >>> make = lambda: NNXViT(image_size=8, patch_size=4, d_model=16, rngs=nnx.Rngs(0))
      >>> nnx.eval_shape(make).patch_embed.kernel.shape
      (4, 4, 3, 16)
    """

    def __init__(
        self,
        image_size: int = 8,
        patch_size: int = 4,
        in_channels: int = 3,
        d_model: int = 32,
        num_layers: int = 2,
        num_heads: int = 2,
        mlp_ratio: int = 4,
        num_classes: int = 10,
        scan: bool = False,
        *,
        rngs: nnx.Rngs,
    ):
        p = patch_size
        self.scan = scan
        self.patch_embed = nnx.Conv(
            in_channels, d_model, (p, p), strides=(p, p), padding="VALID", rngs=rngs
        )
        self.cls = nnx.Param(jnp.zeros((1, 1, d_model)))
        n = (image_size // p) ** 2 + 1
        self.pos_embedding = nnx.Param(
            nnx.initializers.normal(0.02)(rngs.params(), (1, n, d_model))
        )
        make = lambda r: NNXBlock(d_model, num_heads, mlp_ratio, rngs=r)
        if scan:
            self.blocks = nnx_stack(make, num_layers, rngs)
        else:
            self.blocks = nnx.List([make(rngs) for _ in range(num_layers)])
        self.ln_f = nnx.LayerNorm(d_model, rngs=rngs)
        self.head = nnx.Linear(d_model, num_classes, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        x = self.patch_embed(images)
        d = x.shape[-1]
        x = x.reshape(x.shape[0], -1, d)
        cls = jnp.broadcast_to(self.cls[...], (x.shape[0], 1, d))
        x = jnp.concatenate([cls, x], axis=1) + self.pos_embedding[...]
        if self.scan:
            x = nnx_run_stack(self.blocks, x, None)
        else:
            for block in self.blocks:
                x = block(x)
        return self.head(self.ln_f(x)[:, 0])
