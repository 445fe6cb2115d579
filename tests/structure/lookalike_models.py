"""Small look-alike models, in the parameter layouts real Flax code uses.

These models are for the tests of the structure reader, which reads each parameter's role and
fan axes from a model's jaxpr. Each one copies the *layout* of a well-known kind of Flax code: its
module tree, its parameter names and shapes, and the op that consumes each parameter. It does not
copy that code's text. The code here was written from scratch for these tests. The sizes are tiny
(d_model 32, 2 layers, vocab 64, 8x8 images) so that tracing is fast.

Models (each ``make_<name>()`` returns a :class:`Case`):

- ``gemma_like`` (NNX) imitates Gemma as a decoder-only LM. An ``nnx.Embed`` subclass does the
  scaled lookup (``encode``) and the tied readout (``decode`` through ``attend``). The blocks sit
  in ``layers``. Attention projections are ``Einsum`` modules holding an ``nnx.Param`` named
  ``w``: ``q_einsum`` ``BTD,NDH->BTNH``, grouped-query ``kv_einsum`` ``BSD,CKDH->CBSKH`` and
  ``attn_vec_einsum`` ``BTNH,NHD->BTD``. It uses rotary positions and a causal softmax. The
  RMSNorm computes ``x * (1 + scale)``, with ``scale`` zero-initialised. The gated MLP keeps its
  weights directly as ``gating_einsum`` ``(2, D, F)`` and ``linear`` ``(F, D)``.
- ``lm1b_like`` / ``lm1b_untied_like`` (Linen) imitate the Flax lm1b example Transformer. They
  have an ``embed`` ``nn.Embed``, a learned ``posembed_output/pos_embedding`` of shape
  ``(1, max_len, D)``, and blocks ``encoderdecoderblock_<i>``. Each block holds
  ``LayerNorm_0``, ``MultiHeadDotProductAttention_0`` (DenseGeneral ``query/key/value/out``),
  ``LayerNorm_1`` and ``MlpBlock_0`` (``Dense_0``, ``Dense_1``). The final norm is
  ``encoderdecoder_norm``. The logits come from ``embed.attend`` (tied) or from a ``logitdense``
  Dense (untied).
- ``resnet_bn_like`` (Linen) imitates the Flax ImageNet ResNet. It has a ``conv_init`` and
  ``bn_init`` stem and ``ResNetBlock_<i>`` blocks. Each block is ``Conv_0, BatchNorm_0, relu,
  Conv_1, BatchNorm_1``, so the residual branch ends in a norm. The second block adds a
  projection shortcut ``conv_proj`` + ``norm_proj``. Global average pooling feeds a ``Dense_0``
  head.
- ``grouped_conv_like`` (Linen) imitates a ResNeXt bottleneck. It has 1x1 ``Conv_0``, a 3x3
  ``Conv_1`` with ``feature_group_count=4`` (kernel ``(3, 3, width/4, width)``), 1x1 ``Conv_2``,
  a BatchNorm after each conv, a projection shortcut, and a ``Dense_0`` head.
- ``moe_like`` (Linen) imitates a pre-LN transformer whose MLP is a mixture of experts. A
  ``router`` Dense gives top-2 softmax weights. The expert weights ``wi`` ``(E, D, F)`` and ``wo``
  ``(E, F, D)`` are applied with a dense dispatch, ``BTD,EDF->BTEF`` and ``BTEF,EFD->BTED``, and
  the result is summed over the experts with the router weights.
- ``scanned_linen_like`` (Linen) imitates a GPT whose blocks are stacked with ``nn.scan``
  (``params`` on axis 0, ``metadata_params={nn.PARTITION_NAME: "layers"}``) into ``blocks``.
  Each block has ``ln_1``, ``attn`` (Linen MHA), ``ln_2``, ``fc1`` and ``fc2``. The weights carry
  ``nn.with_partitioning`` names, so ``init`` returns ``Partitioned`` boxes whose names start
  with ``"layers"``.
- ``maxtext_like`` (Linen) imitates MaxText's decoder. It has ``token_embedder``, and
  ``decoder/layers`` is ``nn.scan(nn.remat(DecoderLayer))`` on axis 0. Each layer has
  ``pre_self_attention_norm`` (RMSNorm ``x * scale``, ones), ``self_attention`` with
  DenseGeneral ``query/key/value`` ``(D, N, H)`` and ``out`` ``(N, H, D)``,
  ``post_self_attention_layer_norm``, and ``mlp`` with ``wi_0``, ``wi_1`` and ``wo``. Then come
  ``decoder/decoder_norm`` and ``decoder/logits_dense``. The weights carry logical partitioning
  names (``LogicallyPartitioned`` boxes).
- ``scanned_nnx_like`` (NNX) builds its blocks stacked with ``nnx.split_rngs`` + ``nnx.vmap``
  into ``layers`` and runs them with ``nnx.scan`` (``in_axes=(nnx.Carry, 0, None)``). Each block
  has ``ln1``, ``attn`` (``nnx.MultiHeadAttention``), ``ln2``, ``fc1`` and ``fc2``.
- ``mha_mlp_nnx_like`` (NNX) has unrolled ``blocks`` in an ``nnx.List``. Each block has
  ``norm1``, ``attn`` (``nnx.MultiHeadAttention``), ``norm2`` and ``mlp`` (``linear1``,
  ``linear2``). The model also has an ``embed`` ``nnx.Embed``, a final ``norm`` and an untied
  ``head`` ``nnx.Linear``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

VOCAB = 64
D_MODEL = 32
HEADS = 4
HEAD_DIM = D_MODEL // HEADS
FF = 64
LAYERS = 2
BATCH = 2
SEQ = 8
IMAGE = 8
CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Case:
    """One look-alike model with example inputs.

    ``api`` is ``"linen"`` (``model.init(key, *args, **kwargs)``) or ``"nnx"``
    (``model(*args, **kwargs)``).
    """

    name: str
    api: str
    model: Any
    args: tuple
    kwargs: dict = dataclasses.field(default_factory=dict)


def _tokens() -> jax.Array:
    return (jnp.arange(BATCH * SEQ, dtype=jnp.int32).reshape(BATCH, SEQ) * 7) % VOCAB


def _images() -> jax.Array:
    # A fixed pattern rather than random numbers: no PRNG program to compile.
    n = BATCH * IMAGE * IMAGE * 3
    return jnp.sin(jnp.arange(n, dtype=jnp.float32) * 0.37).reshape(BATCH, IMAGE, IMAGE, 3)


# XLA's CPU backend at its default optimisation level takes seconds per model to compile the
# initializers, and eager construction compiles each initializer shape on its own. One jitted
# build at optimisation level 0 is several times faster. It draws the same random bits, but
# the values can differ from an eager build by about one float32 ulp (the normal transform
# compiles differently), so compare against an eager build with a tolerance.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _build_nnx(ctor):
    """``ctor()``, built in one jitted call (equal to an eager build up to float rounding)."""
    graphdef, _ = nnx.split(nnx.eval_shape(ctor))
    build = jax.jit(lambda: nnx.split(ctor())[1]).lower().compile(compiler_options=_FAST_COMPILE)
    return nnx.merge(graphdef, build())


def _causal(length: int) -> jax.Array:
    return jnp.tril(jnp.ones((length, length), dtype=bool))


# --------------------------------------------------------------------------------------------
# 1. Gemma-like (NNX)
# --------------------------------------------------------------------------------------------


class Embedder(nnx.Embed):
    """Token table with a scaled lookup and a tied readout."""

    def encode(self, tokens: jax.Array) -> jax.Array:
        x = self(tokens)
        return x * jnp.sqrt(jnp.asarray(self.features, x.dtype))

    def decode(self, x: jax.Array) -> jax.Array:
        return self.attend(x)


class Einsum(nnx.Module):
    """A weight ``w`` applied with a fixed einsum spec (input first, weight second)."""

    def __init__(self, spec: str, shape: tuple[int, ...], *, rngs: nnx.Rngs):
        self.spec = spec
        self.w = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), shape))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.einsum(self.spec, x, self.w[...])


class GemmaRMSNorm(nnx.Module):
    """``x * rsqrt(mean(x^2) + eps) * (1 + scale)``, ``scale`` starting at zero."""

    def __init__(self, dim: int, *, eps: float = 1e-6):
        self.scale = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        return x * jax.lax.rsqrt(var + self.eps) * (1.0 + self.scale[...])


def _rope(x: jax.Array, positions: jax.Array) -> jax.Array:
    """Rotary position embedding on ``x`` of shape ``(B, T, N, H)``."""
    half = x.shape[-1] // 2
    freq = 1.0 / (10_000.0 ** (jnp.arange(half, dtype=jnp.float32) / half))
    angle = positions[:, :, None, None].astype(jnp.float32) * freq
    sin, cos = jnp.sin(angle), jnp.cos(angle)
    first, second = x[..., :half], x[..., half:]
    return jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)


class GemmaAttention(nnx.Module):
    def __init__(self, d: int, heads: int, kv_heads: int, head_dim: int, *, rngs: nnx.Rngs):
        self.heads = heads
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        self.q_einsum = Einsum("BTD,NDH->BTNH", (heads, d, head_dim), rngs=rngs)
        self.kv_einsum = Einsum("BSD,CKDH->CBSKH", (2, kv_heads, d, head_dim), rngs=rngs)
        self.attn_vec_einsum = Einsum("BTNH,NHD->BTD", (heads, head_dim, d), rngs=rngs)

    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        q = _rope(self.q_einsum(x), positions) * self.head_dim**-0.5
        k, v = self.kv_einsum(x)
        k = _rope(k, positions)
        groups = self.heads // self.kv_heads
        k = jnp.repeat(k, groups, axis=2)
        v = jnp.repeat(v, groups, axis=2)
        logits = jnp.einsum("BTNH,BSNH->BNTS", q, k)
        logits = jnp.where(_causal(x.shape[1]), logits, jnp.finfo(logits.dtype).min)
        probs = jax.nn.softmax(logits, axis=-1)
        return self.attn_vec_einsum(jnp.einsum("BNTS,BSNH->BTNH", probs, v))


class GemmaFeedForward(nnx.Module):
    def __init__(self, d: int, ff: int, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        self.gating_einsum = nnx.Param(init(rngs.params(), (2, d, ff)))
        self.linear = nnx.Param(init(rngs.params(), (ff, d)))

    def __call__(self, x: jax.Array) -> jax.Array:
        gate_up = jnp.einsum("BTD,CDF->CBTF", x, self.gating_einsum[...])
        hidden = jax.nn.gelu(gate_up[0]) * gate_up[1]
        return jnp.einsum("BTF,FD->BTD", hidden, self.linear[...])


class GemmaBlock(nnx.Module):
    def __init__(self, d: int, heads: int, kv_heads: int, head_dim: int, ff: int, *, rngs):
        self.pre_attention_norm = GemmaRMSNorm(d)
        self.attn = GemmaAttention(d, heads, kv_heads, head_dim, rngs=rngs)
        self.pre_ffw_norm = GemmaRMSNorm(d)
        self.mlp = GemmaFeedForward(d, ff, rngs=rngs)

    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        x = x + self.attn(self.pre_attention_norm(x), positions)
        return x + self.mlp(self.pre_ffw_norm(x))


class GemmaLike(nnx.Module):
    def __init__(
        self,
        *,
        rngs: nnx.Rngs,
        kv_heads: int = 2,
        d: int = D_MODEL,
        head_dim: int = HEAD_DIM,
        ff: int = FF,
        layers: int = LAYERS,
    ):
        self.embedder = Embedder(VOCAB, d, embedding_init=nnx.initializers.normal(1.0), rngs=rngs)
        self.layers = nnx.List(
            [GemmaBlock(d, HEADS, kv_heads, head_dim, ff, rngs=rngs) for _ in range(layers)]
        )
        self.final_norm = GemmaRMSNorm(d)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        x = self.embedder.encode(tokens)
        for layer in self.layers:
            x = layer(x, positions)
        return self.embedder.decode(self.final_norm(x))


def make_gemma_like() -> Case:
    return Case(
        "gemma_like", "nnx", _build_nnx(lambda: GemmaLike(rngs=nnx.Rngs(0))), (_tokens(),), {}
    )


# --------------------------------------------------------------------------------------------
# 2. lm1b-like (Linen)
# --------------------------------------------------------------------------------------------


class AddPositionEmbs(nn.Module):
    max_len: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        table = self.param(
            "pos_embedding", nn.initializers.normal(0.02), (1, self.max_len, x.shape[-1])
        )
        return x + table[:, : x.shape[1], :]


class MlpBlock(nn.Module):
    mlp_dim: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        h = nn.relu(nn.Dense(self.mlp_dim)(x))
        h = nn.Dropout(0.1)(h, deterministic=not train)
        return nn.Dense(x.shape[-1])(h)


class EncoderDecoder1DBlock(nn.Module):
    heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
        h = nn.LayerNorm()(x)
        h = nn.MultiHeadDotProductAttention(
            num_heads=self.heads,
            qkv_features=x.shape[-1],
            use_bias=False,
            broadcast_dropout=False,
            dropout_rate=0.1,
            deterministic=not train,
        )(h, mask=mask)
        x = x + nn.Dropout(0.1)(h, deterministic=not train)
        h = nn.LayerNorm()(x)
        return x + MlpBlock(self.mlp_dim)(h, train=train)


class Lm1bLike(nn.Module):
    tied: bool = True
    vocab: int = VOCAB
    d: int = D_MODEL
    layers: int = LAYERS
    max_len: int = 16

    def setup(self):
        self.embed = nn.Embed(self.vocab, self.d, embedding_init=nn.initializers.normal(1.0))
        self.posembed_output = AddPositionEmbs(self.max_len)
        # A list attribute named `encoderdecoderblock` gives `encoderdecoderblock_<i>`.
        self.encoderdecoderblock = [EncoderDecoder1DBlock(HEADS, FF) for _ in range(self.layers)]
        self.encoderdecoder_norm = nn.LayerNorm()
        if not self.tied:
            self.logitdense = nn.Dense(self.vocab)

    def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
        shifted = jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1]
        mask = nn.make_causal_mask(tokens)
        x = self.posembed_output(self.embed(shifted))
        for block in self.encoderdecoderblock:
            x = block(x, mask, train=train)
        x = self.encoderdecoder_norm(x)
        if self.tied:
            return self.embed.attend(x) / jnp.sqrt(jnp.asarray(x.shape[-1], x.dtype))
        return self.logitdense(x)


def make_lm1b_like() -> Case:
    return Case("lm1b_like", "linen", Lm1bLike(tied=True), (_tokens(),), {"train": False})


def make_lm1b_untied_like() -> Case:
    return Case("lm1b_untied_like", "linen", Lm1bLike(tied=False), (_tokens(),), {"train": False})


# --------------------------------------------------------------------------------------------
# 3. ResNet with BatchNorm (Linen)
# --------------------------------------------------------------------------------------------


def _norm(train: bool, **kw) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train, axis_name=None, momentum=0.9, epsilon=1e-5, **kw
    )


class ResNetBlock(nn.Module):
    filters: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        residual = x
        y = nn.Conv(self.filters, (3, 3), (self.strides, self.strides), use_bias=False)(x)
        y = nn.relu(_norm(train)(y))
        y = nn.Conv(self.filters, (3, 3), use_bias=False)(y)
        y = _norm(train)(y)  # the branch ends in a norm ("zero-init last BN gamma" target)
        if residual.shape != y.shape:
            residual = nn.Conv(
                self.filters, (1, 1), (self.strides, self.strides), use_bias=False, name="conv_proj"
            )(residual)
            residual = _norm(train, name="norm_proj")(residual)
        return nn.relu(residual + y)


class ResNetBNLike(nn.Module):
    widths: tuple[int, ...] = (16, 32)
    classes: int = CLASSES

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(self.widths[0], (3, 3), use_bias=False, name="conv_init")(x)
        x = nn.relu(_norm(train, name="bn_init")(x))
        for i, width in enumerate(self.widths):
            x = ResNetBlock(width, strides=1 if i == 0 else 2)(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.classes)(x)


def make_resnet_bn_like() -> Case:
    return Case("resnet_bn_like", "linen", ResNetBNLike(), (_images(),), {"train": False})


# --------------------------------------------------------------------------------------------
# 4. Grouped convolution, ResNeXt-like (Linen)
# --------------------------------------------------------------------------------------------


class ResNeXtBlock(nn.Module):
    width: int
    out: int
    groups: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        residual = x
        y = nn.relu(_norm(train)(nn.Conv(self.width, (1, 1), use_bias=False)(x)))
        y = nn.Conv(self.width, (3, 3), feature_group_count=self.groups, use_bias=False)(y)
        y = nn.relu(_norm(train)(y))
        y = _norm(train)(nn.Conv(self.out, (1, 1), use_bias=False)(y))
        if residual.shape != y.shape:
            residual = nn.Conv(self.out, (1, 1), use_bias=False, name="conv_proj")(residual)
            residual = _norm(train, name="norm_proj")(residual)
        return nn.relu(residual + y)


class GroupedConvLike(nn.Module):
    classes: int = CLASSES

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(16, (3, 3), use_bias=False, name="conv_init")(x)
        x = nn.relu(_norm(train, name="bn_init")(x))
        x = ResNeXtBlock(width=16, out=32, groups=4)(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.classes)(x)


def make_grouped_conv_like() -> Case:
    return Case("grouped_conv_like", "linen", GroupedConvLike(), (_images(),), {"train": False})


# --------------------------------------------------------------------------------------------
# 5. Mixture of experts (Linen)
# --------------------------------------------------------------------------------------------


class MoeMlp(nn.Module):
    experts: int = 4
    ff: int = FF
    top_k: int = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        expert_init = nn.initializers.variance_scaling(
            1.0, "fan_in", "truncated_normal", in_axis=-2, out_axis=-1, batch_axis=(0,)
        )
        probs = jax.nn.softmax(nn.Dense(self.experts, use_bias=False, name="router")(x), axis=-1)
        kth = jax.lax.top_k(probs, self.top_k)[0][..., -1:]
        weights = jnp.where(probs >= kth, probs, 0.0)
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
        wi = self.param("wi", expert_init, (self.experts, d, self.ff))
        wo = self.param("wo", expert_init, (self.experts, self.ff, d))
        h = jax.nn.gelu(jnp.einsum("BTD,EDF->BTEF", x, wi))
        y = jnp.einsum("BTEF,EFD->BTED", h, wo)
        return jnp.einsum("BTED,BTE->BTD", y, weights)


class MoeBlock(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        h = nn.LayerNorm(name="ln_attn")(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=HEADS, name="attn")(h, mask=mask)
        return x + MoeMlp(name="moe")(nn.LayerNorm(name="ln_mlp")(x))


class MoeLike(nn.Module):
    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        mask = nn.make_causal_mask(tokens)
        x = nn.Embed(VOCAB, D_MODEL, name="embed")(tokens)
        for i in range(LAYERS):
            x = MoeBlock(name=f"block_{i}")(x, mask)
        x = nn.LayerNorm(name="ln_f")(x)
        return nn.Dense(VOCAB, name="head")(x)


def make_moe_like() -> Case:
    return Case("moe_like", "linen", MoeLike(), (_tokens(),), {})


# --------------------------------------------------------------------------------------------
# 6. Scanned Linen GPT, and a MaxText-like decoder (Linen)
# --------------------------------------------------------------------------------------------


def _part(*names: str | None) -> Any:
    return nn.with_partitioning(nn.initializers.lecun_normal(), names)


class ScanBlock(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array, _: Any) -> tuple[jax.Array, None]:
        mask = _causal(x.shape[1])[None, None]
        h = nn.LayerNorm(name="ln_1")(x)
        h = nn.MultiHeadDotProductAttention(
            num_heads=HEADS,
            # DenseGeneral reshapes the initializer's flat result but keeps the box, so
            # the names are given for the stored (3-D) kernel.
            kernel_init=_part("embed", "heads", "kv"),
            out_kernel_init=_part("heads", "kv", "embed"),
            name="attn",
        )(h, mask=mask)
        x = x + h
        h = nn.LayerNorm(name="ln_2")(x)
        h = nn.gelu(nn.Dense(FF, kernel_init=_part("embed", "mlp"), name="fc1")(h))
        x = x + nn.Dense(D_MODEL, kernel_init=_part("mlp", "embed"), name="fc2")(h)
        return x, None


class ScannedLinenLike(nn.Module):
    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = nn.Embed(VOCAB, D_MODEL, name="wte")(tokens)
        x = x + nn.Embed(SEQ, D_MODEL, name="wpe")(jnp.arange(tokens.shape[1]))[None]
        blocks = nn.scan(
            ScanBlock,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=LAYERS,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = blocks(name="blocks")(x, None)
        x = nn.LayerNorm(name="ln_f")(x)
        return nn.Dense(VOCAB, use_bias=False, name="lm_head")(x)


def make_scanned_linen_like() -> Case:
    return Case("scanned_linen_like", "linen", ScannedLinenLike(), (_tokens(),), {})


def _logical(*names: str) -> Any:
    return nn.with_logical_partitioning(
        nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"), names
    )


class MaxTextRMSNorm(nn.Module):
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (x.shape[-1],)
        )
        var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        return x * jax.lax.rsqrt(var + self.eps) * scale


class MaxTextAttention(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        proj = functools.partial(
            nn.DenseGeneral,
            features=(HEADS, HEAD_DIM),
            axis=-1,
            use_bias=False,
            kernel_init=_logical("embed", "heads", "kv"),
        )
        q = proj(name="query")(x) / jnp.sqrt(jnp.asarray(HEAD_DIM, x.dtype))
        k = proj(name="key")(x)
        v = proj(name="value")(x)
        logits = jnp.einsum("BTNH,BSNH->BNTS", q, k)
        logits = jnp.where(_causal(x.shape[1]), logits, jnp.finfo(logits.dtype).min)
        ctx = jnp.einsum("BNTS,BSNH->BTNH", jax.nn.softmax(logits, axis=-1), v)
        return nn.DenseGeneral(
            features=x.shape[-1],
            axis=(-2, -1),
            use_bias=False,
            kernel_init=_logical("heads", "kv", "embed"),
            name="out",
        )(ctx)


class MaxTextMlp(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        up = functools.partial(
            nn.DenseGeneral, features=FF, use_bias=False, kernel_init=_logical("embed", "mlp")
        )
        h = nn.silu(up(name="wi_0")(x)) * up(name="wi_1")(x)
        return nn.DenseGeneral(
            features=x.shape[-1], use_bias=False, kernel_init=_logical("mlp", "embed"), name="wo"
        )(h)


class DecoderLayer(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array, _: Any) -> tuple[jax.Array, None]:
        x = x + MaxTextAttention(name="self_attention")(
            MaxTextRMSNorm(name="pre_self_attention_norm")(x)
        )
        x = x + MaxTextMlp(name="mlp")(MaxTextRMSNorm(name="post_self_attention_layer_norm")(x))
        return x, None


class MaxTextDecoder(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        layers = nn.scan(
            nn.remat(DecoderLayer, prevent_cse=False),
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=LAYERS,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = layers(name="layers")(x, None)
        x = MaxTextRMSNorm(name="decoder_norm")(x)
        logits = nn.DenseGeneral(
            VOCAB, use_bias=False, kernel_init=_logical("embed", "vocab"), name="logits_dense"
        )
        return logits(x)


class MaxTextLike(nn.Module):
    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = nn.Embed(
            VOCAB,
            D_MODEL,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(1.0), ("vocab", "embed")
            ),
            name="token_embedder",
        )(tokens)
        return MaxTextDecoder(name="decoder")(x)


def make_maxtext_like() -> Case:
    return Case("maxtext_like", "linen", MaxTextLike(), (_tokens(),), {})


# --------------------------------------------------------------------------------------------
# 7. Scanned NNX (vmap-built, scan-run)
# --------------------------------------------------------------------------------------------


class NNXScanBlock(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(D_MODEL, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(HEADS, D_MODEL, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(D_MODEL, rngs=rngs)
        self.fc1 = nnx.Linear(D_MODEL, FF, rngs=rngs)
        self.fc2 = nnx.Linear(FF, D_MODEL, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln1(x), mask=mask)
        return x + self.fc2(nnx.gelu(self.fc1(self.ln2(x))))


class ScannedNNXLike(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(VOCAB, D_MODEL, rngs=rngs)

        @nnx.split_rngs(splits=LAYERS)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_layers(rngs: nnx.Rngs) -> NNXScanBlock:
            return NNXScanBlock(rngs=rngs)

        self.layers = make_layers(rngs)
        self.ln_f = nnx.LayerNorm(D_MODEL, rngs=rngs)
        self.head = nnx.Linear(D_MODEL, VOCAB, use_bias=False, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        mask = nnx.make_causal_mask(tokens)

        @nnx.scan(in_axes=(nnx.Carry, 0, None), out_axes=nnx.Carry)
        def run(x: jax.Array, block: NNXScanBlock, mask: jax.Array) -> jax.Array:
            return block(x, mask)

        x = run(self.embed(tokens), self.layers, mask)
        return self.head(self.ln_f(x))


def make_scanned_nnx_like() -> Case:
    return Case(
        "scanned_nnx_like",
        "nnx",
        _build_nnx(lambda: ScannedNNXLike(rngs=nnx.Rngs(0))),
        (_tokens(),),
        {},
    )


# --------------------------------------------------------------------------------------------
# 8. Unrolled NNX blocks with MHA + MLP
# --------------------------------------------------------------------------------------------


class NNXMlp(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.linear1 = nnx.Linear(D_MODEL, FF, rngs=rngs)
        self.linear2 = nnx.Linear(FF, D_MODEL, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear2(nnx.relu(self.linear1(x)))


class NNXBlock(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(D_MODEL, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(HEADS, D_MODEL, decode=False, rngs=rngs)
        self.norm2 = nnx.LayerNorm(D_MODEL, rngs=rngs)
        self.mlp = NNXMlp(rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x), mask=mask)
        return x + self.mlp(self.norm2(x))


class MhaMlpNNXLike(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(VOCAB, D_MODEL, rngs=rngs)
        self.blocks = nnx.List([NNXBlock(rngs=rngs) for _ in range(LAYERS)])
        self.norm = nnx.LayerNorm(D_MODEL, rngs=rngs)
        self.head = nnx.Linear(D_MODEL, VOCAB, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        mask = nnx.make_causal_mask(tokens)
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.norm(x))


def make_mha_mlp_nnx_like() -> Case:
    return Case(
        "mha_mlp_nnx_like",
        "nnx",
        _build_nnx(lambda: MhaMlpNNXLike(rngs=nnx.Rngs(0))),
        (_tokens(),),
        {},
    )


ALL_CASES = [
    make_gemma_like,
    make_lm1b_like,
    make_lm1b_untied_like,
    make_resnet_bn_like,
    make_grouped_conv_like,
    make_moe_like,
    make_scanned_linen_like,
    make_maxtext_like,
    make_scanned_nnx_like,
    make_mha_mlp_nnx_like,
]
