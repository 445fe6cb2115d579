"""Compact GPT-2-style models for the sharding tests, in Linen and NNX.

Same parameter tree in both (up to Linen's leading ``params``): token and position
embeddings, ``h_<i>`` blocks (Linen) or ``h/<i>`` blocks (NNX) of pre-LN attention
(fused ``c_attn`` q/k/v and ``c_proj``) and MLP (``c_fc``, ``c_proj``), a final
LayerNorm, and an untied ``lm_head``. ``annotate`` adds partitioning metadata with
logical axis names; without it the model carries none.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P


@dataclasses.dataclass(frozen=True)
class Config:
    vocab: int = 256
    ctx: int = 32
    d: int = 64
    layers: int = 2
    heads: int = 4

    @property
    def mlp(self) -> int:
        return 4 * self.d


# Logical names of each kind of weight, and the two mesh layouts used by the tests.
NAMES = {
    "wte": ("vocab", "embed"),
    "wpe": (None, "embed"),
    "c_attn": ("embed", "qkv"),
    "c_attn_bias": ("qkv",),
    "attn_proj": ("qkv", "embed"),
    "c_fc": ("embed", "mlp"),
    "c_fc_bias": ("mlp",),
    "mlp_proj": ("mlp", "embed"),
    "lm_head": ("embed", "vocab"),
}


def logical_rules(mesh: jax.sharding.Mesh) -> tuple[tuple[str, str | None], ...]:
    """Logical -> mesh axes: every big matrix sharded over all 8 devices."""
    data = "data" if "data" in mesh.axis_names else None
    return (
        ("vocab", "model"),
        ("qkv", "model"),
        ("mlp", "model"),
        ("embed", data),
    )


def partition_rules(mesh: jax.sharding.Mesh) -> list[tuple[str, P]]:
    """The same layout as path rules, for the models without metadata."""
    data = "data" if "data" in mesh.axis_names else None
    return [
        ("wte/embedding", P("model", data)),
        ("wpe/embedding", P(None, data)),
        ("attn/c_attn/kernel", P(data, "model")),
        ("attn/c_attn/bias", P("model")),
        ("attn/c_proj/kernel", P("model", data)),
        ("mlp/c_fc/kernel", P(data, "model")),
        ("mlp/c_fc/bias", P("model")),
        ("mlp/c_proj/kernel", P("model", data)),
        ("lm_head/kernel", P(data, "model")),
    ]


def _linen_init(init, name, annotate):
    return nn.with_logical_partitioning(init, NAMES[name]) if annotate else init


class _Attn(nn.Module):
    cfg: Config
    annotate: bool = False

    @nn.compact
    def __call__(self, x):
        cfg, a = self.cfg, self.annotate
        k, z = nn.initializers.lecun_normal(), nn.initializers.zeros_init()
        qkv = nn.Dense(
            3 * cfg.d,
            kernel_init=_linen_init(k, "c_attn", a),
            bias_init=_linen_init(z, "c_attn_bias", a),
            name="c_attn",
        )(x)
        q, kk, v = jnp.split(qkv, 3, axis=-1)
        split = lambda t: t.reshape(*t.shape[:-1], cfg.heads, cfg.d // cfg.heads)
        out = nn.dot_product_attention(split(q), split(kk), split(v), deterministic=True)
        out = out.reshape(*out.shape[:-2], cfg.d)
        return nn.Dense(cfg.d, kernel_init=_linen_init(k, "attn_proj", a), name="c_proj")(out)


class _Mlp(nn.Module):
    cfg: Config
    annotate: bool = False

    @nn.compact
    def __call__(self, x):
        cfg, a = self.cfg, self.annotate
        k, z = nn.initializers.lecun_normal(), nn.initializers.zeros_init()
        h = nn.Dense(
            cfg.mlp,
            kernel_init=_linen_init(k, "c_fc", a),
            bias_init=_linen_init(z, "c_fc_bias", a),
            name="c_fc",
        )(x)
        return nn.Dense(cfg.d, kernel_init=_linen_init(k, "mlp_proj", a), name="c_proj")(nn.gelu(h))


class _Block(nn.Module):
    cfg: Config
    annotate: bool = False

    @nn.compact
    def __call__(self, x):
        x = x + _Attn(self.cfg, self.annotate, name="attn")(nn.LayerNorm(name="ln_1")(x))
        return x + _Mlp(self.cfg, self.annotate, name="mlp")(nn.LayerNorm(name="ln_2")(x))


class LinenGPT(nn.Module):
    """GPT-2 layout in Linen: ``params/h_<i>/attn/c_attn/kernel`` etc."""

    cfg: Config = Config()
    annotate: bool = False

    @nn.compact
    def __call__(self, tokens):
        cfg, a = self.cfg, self.annotate
        emb = nn.initializers.normal(0.02)
        wte = nn.Embed(cfg.vocab, cfg.d, embedding_init=_linen_init(emb, "wte", a), name="wte")
        wpe = nn.Embed(cfg.ctx, cfg.d, embedding_init=_linen_init(emb, "wpe", a), name="wpe")
        x = wte(tokens) + wpe(jnp.arange(tokens.shape[-1]))
        for i in range(cfg.layers):
            x = _Block(cfg, a, name=f"h_{i}")(x)
        x = nn.LayerNorm(name="ln_f")(x)
        head = nn.Dense(
            cfg.vocab,
            use_bias=False,
            kernel_init=_linen_init(nn.initializers.lecun_normal(), "lm_head", a),
            name="lm_head",
        )
        return head(x)


def _nnx_md(name, annotate):
    return {"out_sharding": NAMES[name]} if annotate else {}


class NnxBlock(nnx.Module):
    def __init__(self, cfg: Config, annotate: bool, rngs: nnx.Rngs):
        d = cfg.d
        self.cfg = cfg
        self.ln_1 = nnx.LayerNorm(d, rngs=rngs)
        self.attn = nnx.Dict(
            c_attn=nnx.Linear(
                d,
                3 * d,
                kernel_metadata=_nnx_md("c_attn", annotate),
                bias_metadata=_nnx_md("c_attn_bias", annotate),
                rngs=rngs,
            ),
            c_proj=nnx.Linear(d, d, kernel_metadata=_nnx_md("attn_proj", annotate), rngs=rngs),
        )
        self.ln_2 = nnx.LayerNorm(d, rngs=rngs)
        self.mlp = nnx.Dict(
            c_fc=nnx.Linear(
                d,
                cfg.mlp,
                kernel_metadata=_nnx_md("c_fc", annotate),
                bias_metadata=_nnx_md("c_fc_bias", annotate),
                rngs=rngs,
            ),
            c_proj=nnx.Linear(cfg.mlp, d, kernel_metadata=_nnx_md("mlp_proj", annotate), rngs=rngs),
        )

    def __call__(self, x):
        cfg = self.cfg
        q, k, v = jnp.split(self.attn["c_attn"](self.ln_1(x)), 3, axis=-1)
        split = lambda t: t.reshape(*t.shape[:-1], cfg.heads, cfg.d // cfg.heads)
        out = nnx.dot_product_attention(split(q), split(k), split(v))
        x = x + self.attn["c_proj"](out.reshape(*out.shape[:-2], cfg.d))
        return x + self.mlp["c_proj"](nnx.gelu(self.mlp["c_fc"](self.ln_2(x))))


class NnxGPT(nnx.Module):
    """GPT-2 layout in NNX: ``h/<i>/attn/c_attn/kernel`` etc."""

    def __init__(self, cfg: Config = Config(), *, annotate: bool = False, rngs: nnx.Rngs):
        emb = nnx.initializers.normal(0.02)
        self.wte = nnx.Embed(
            cfg.vocab,
            cfg.d,
            embedding_init=emb,
            embedding_metadata=_nnx_md("wte", annotate),
            rngs=rngs,
        )
        self.wpe = nnx.Embed(
            cfg.ctx,
            cfg.d,
            embedding_init=emb,
            embedding_metadata=_nnx_md("wpe", annotate),
            rngs=rngs,
        )
        self.h = nnx.List([NnxBlock(cfg, annotate, rngs) for _ in range(cfg.layers)])
        self.ln_f = nnx.LayerNorm(cfg.d, rngs=rngs)
        self.lm_head = nnx.Linear(
            cfg.d,
            cfg.vocab,
            use_bias=False,
            kernel_metadata=_nnx_md("lm_head", annotate),
            rngs=rngs,
        )

    def __call__(self, tokens):
        x = self.wte(tokens) + self.wpe(jnp.arange(tokens.shape[-1]))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))
