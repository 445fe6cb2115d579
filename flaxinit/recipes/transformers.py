"""Transformer recipes: the initializations of well-known language and vision models.

Every recipe returns a list of ``(pattern, action)`` rules for
:func:`flaxinit.rules.apply_rules`; every pattern is a keyword argument (a pattern, a
sequence of patterns, or ``None`` to drop that rule) whose default names the stock
Flax modules: ``nn.MultiHeadDotProductAttention``/``nnx.MultiHeadAttention`` kernels
``query``/``key``/``value`` ``(d, heads, head_dim)`` and ``out`` ``(heads, head_dim, d)``,
``nn.Embed``'s ``embedding``, norm ``scale``/``bias``, and an MLP block with ``fc1``
``(d, d_ff)`` and ``fc2`` ``(d_ff, d)`` (the zoo's :class:`~flaxinit.models.GPT`).

Fans. Attention kernels are multi-axis, so fans are read per projection: an input
projection (query/key/value, ``fc1``) reads axis 0 and writes the rest, an output
projection (attention ``out``, ``fc2``) reads every axis but the last; ``d`` in the
formulas below is read the same way from each leaf (the input width of an input
projection, the output width of an output projection, the feature axis of an embedding).

Layers. Depth-indexed rules (the residual projections' 1/sqrt(2L), llama's and
OLMo's per-layer stds) run per layer: a leaf whose path names its layer
(``blocks_3``, ``layers_3``, ``h_3``, ``blocks/3``) is one layer; any other leaf
those rules hit is a stack along axis 0 (``nn.scan``, ``nnx.vmap``), and slice ``i``
gets exactly the values of unrolled layer ``i``. Depth-indexed recipes use that index
``l`` (0-based). Rules that give every kernel the same distribution (``gpt2``'s
``N(0, 0.02)`` on all kernels, ``transformer``'s Xavier on q/k/v) draw a stacked leaf
whole: the same distribution as an unrolled model, not the same values; wrap such a
rule in ``per_layer`` where identical values matter.

Std conventions. ``N(0, s)`` is a plain normal with std ``s``. ``trunc_normal(s, ±a)``
is PyTorch's ``trunc_normal_`` with *absolute* bounds (std ``s`` before truncation;
``trunc_normal(0.02, ±2)`` has std 0.02). ``truncated_normal(s)`` is jax/TF's, cut at
``±2s`` (std ``0.8796 s``).
"""

from __future__ import annotations

import dataclasses
import math

from flaxinit._checks import check_int, check_number
from flaxinit.initializers import (
    lecun_normal,
    normal,
    truncated_normal,
    truncated_normal_between,
    xavier_normal,
    xavier_uniform,
)
from flaxinit.recipes._common import (
    ATTN_OUT,
    BIAS,
    EMBEDDING,
    HEAD,
    HEAD_BIAS,
    KERNEL,
    KEY,
    MLP_IN,
    MLP_OUT,
    NORM_SCALE,
    QUERY,
    VALUE,
    LayerInit,
    Patterns,
    Rules,
    fmt,
    layer_init,
    norm_gain,
    pattern_list,
    rules_for,
)
from flaxinit.rules import fill

__all__ = [
    "DeepNormConstants",
    "bert",
    "deepnet",
    "deepnorm_constants",
    "gpt2",
    "llama_depth_init",
    "megatron",
    "olmo_mitchell",
    "small_init",
    "t5",
    "transformer",
    "vit",
    "wang_init",
]

_IN = (QUERY, KEY, VALUE, MLP_IN)


def _normal_layer(std: float, num_layers: int | None = None):
    """A per-layer re-draw from N(0, std) (the stack's slices get unrolled values)."""
    return layer_init(lambda _: normal(std), "flax", f"normal({fmt(std)})", num_layers)


def _single(build, name: str) -> LayerInit:
    """A :class:`LayerInit` for a kernel outside the blocks (a head): never sliced."""
    return LayerInit(build, "flax", name)


def _norms_and_biases(recipe: str, norm_scales: Patterns, biases: Patterns) -> Rules:
    return [
        *rules_for(biases, fill(0.0), recipe, "biases"),
        *rules_for(norm_scales, norm_gain(1.0), recipe, "norm_scales"),
    ]


def transformer(
    num_layers: int,
    *,
    embedding_std: float = 0.02,
    query: Patterns = QUERY,
    key: Patterns = KEY,
    value: Patterns = VALUE,
    attn_out: Patterns = ATTN_OUT,
    mlp_in: Patterns = MLP_IN,
    mlp_out: Patterns = MLP_OUT,
    embeddings: Patterns = EMBEDDING,
    biases: Patterns = BIAS,
    norm_scales: Patterns = NORM_SCALE,
) -> Rules:
    """The common transformer init: Xavier projections, depth-scaled residual outputs.

    * query/key/value and ``fc1`` kernels: Xavier uniform, U(-a, a) with
      ``a = sqrt(6 / (fan_in + fan_out))`` (per projection, e.g. ``fan_out = heads *
      head_dim``);
    * attention ``out`` and ``fc2`` kernels: Xavier uniform times ``1 / sqrt(2L)``;
    * embeddings N(0, 0.02); biases 0; norm scale 1.

    Sources: Vaswani et al. 2017 with PyTorch ``nn.Transformer``'s
    ``xavier_uniform_`` (``torch/nn/modules/transformer.py`` ``_reset_parameters``);
    the ``1/sqrt(2L)`` residual-output scaling of GPT-2 (Radford et al. 2019, HF
    ``modeling_gpt2.py``); embeddings N(0, 0.02) as in BERT/GPT-2.

    Args:
      num_layers: ``L``, the number of blocks (two residual branches each).
      embedding_std: the embeddings' std.
      query, key, value, attn_out, mlp_in, mlp_out, embeddings, biases, norm_scales:
        the patterns (``None`` drops a rule).

    Example:
      >>> from flax import nnx
      >>> from flaxinit.models import NNXGPT
      >>> from flaxinit.recipes import transformer
      >>> model = nnx.eval_shape(lambda: NNXGPT(num_layers=2, rngs=nnx.Rngs(0)))
      >>> report = explain_rules(model, transformer(num_layers=2)).by_path()
      >>> report["blocks/1/attn/out/kernel"].actions
      ('xavier_uniform(gain=0.5)',)

      ``apply_rules(model, transformer(2), key=key)`` then re-draws (a new model).
    """
    r = "transformer"
    L = check_int(num_layers, r, "num_layers", at_least=1)
    embedding_std = check_number(embedding_std, r, "embedding_std", at_least=0)
    gain = 1 / math.sqrt(2 * L)
    xin = layer_init(lambda _: xavier_uniform(), "in", "xavier_uniform", L)
    xout = layer_init(
        lambda _: xavier_uniform(gain=gain), "out", f"xavier_uniform(gain={fmt(gain)})", L
    )
    return [
        *rules_for(query, xin, r, "query"),
        *rules_for(key, xin, r, "key"),
        *rules_for(value, xin, r, "value"),
        *rules_for(mlp_in, xin, r, "mlp_in"),
        *rules_for(attn_out, xout, r, "attn_out"),
        *rules_for(mlp_out, xout, r, "mlp_out"),
        *rules_for(embeddings, normal(embedding_std), r, "embeddings"),
        *_norms_and_biases(r, norm_scales, biases),
    ]


def _gpt_family(
    r: str,
    std: float,
    out_std: float,
    embedding_std: float,
    L: int,
    kernels: Patterns,
    embeddings: Patterns,
    residual: Patterns,
    biases: Patterns,
    norm_scales: Patterns,
) -> Rules:
    return [
        *rules_for(kernels, normal(std), r, "kernels"),
        *rules_for(embeddings, normal(embedding_std), r, "embeddings"),
        *rules_for(residual, _normal_layer(out_std, L), r, "residual"),
        *_norms_and_biases(r, norm_scales, biases),
    ]


def gpt2(
    num_layers: int,
    *,
    std: float = 0.02,
    kernels: Patterns = KERNEL,
    embeddings: Patterns = EMBEDDING,
    residual: Patterns = (ATTN_OUT, MLP_OUT),
    biases: Patterns = BIAS,
    norm_scales: Patterns = NORM_SCALE,
) -> Rules:
    """GPT-2 / nanoGPT: every kernel and embedding N(0, 0.02), residual outputs
    N(0, 0.02 / sqrt(2L)), biases 0, norm scale 1.

    The residual outputs are the attention output projection and the MLP's second
    layer (GPT-2's ``attn.c_proj`` and ``mlp.c_proj``): 0.00408 for L = 12, 0.00289
    for 24, 0.00204 for 48. HF's Flax port (``modeling_flax_gpt2.py``) drops this
    scaling; the PyTorch model applies it.

    Sources: Radford et al. 2019; HF transformers ``models/gpt2/modeling_gpt2.py``
    ``GPT2PreTrainedModel._init_weights``; karpathy/nanoGPT ``model.py``.

    Args:
      num_layers: ``L``, the number of blocks.
      std: the base std (``initializer_range``).
      kernels, embeddings, residual, biases, norm_scales: the patterns.

    Example:
      >>> from flaxinit.models import GPT
      >>> from flaxinit.recipes import gpt2
      >>> tokens = jnp.zeros((1, 4), jnp.int32)
      >>> shapes = jax.eval_shape(GPT(num_layers=2).init, jax.random.key(0), tokens)
      >>> report = explain_rules(shapes, gpt2(num_layers=2)).by_path()
      >>> report["params/blocks_1/mlp/fc2/kernel"].actions  # 0.02 / sqrt(2 * 2)
      ('reinit(normal(stddev=0.02))', 'normal(0.01)')
    """
    r = "gpt2"
    L = check_int(num_layers, r, "num_layers", at_least=1)
    std = check_number(std, r, "std", at_least=0)
    out = std / math.sqrt(2 * L)
    return _gpt_family(r, std, out, std, L, kernels, embeddings, residual, biases, norm_scales)


def megatron(
    sigma: float,
    num_layers: int,
    *,
    hybrid: bool = False,
    embedding_std: float | None = None,
    kernels: Patterns = KERNEL,
    embeddings: Patterns = EMBEDDING,
    residual: Patterns = (ATTN_OUT, MLP_OUT),
    biases: Patterns = BIAS,
    norm_scales: Patterns = NORM_SCALE,
) -> Rules:
    """Megatron-LM: kernels N(0, σ), output layers N(0, σ / sqrt(2L)) (σ / sqrt(L) for
    hybrid models), embeddings N(0, σ_emb = σ), biases 0, norm scale 1.

    The output layers are the attention ``linear_proj`` and the MLP ``linear_fc2``
    (``scaled_init_method_normal(σ, L, multiplier)``, multiplier 2, or 1 when
    ``is_hybrid_model``). σ = ``init_method_std``, 0.02 by default in Megatron.

    Sources: Shoeybi et al. 2019; NVIDIA/Megatron-LM ``megatron/core/utils.py``,
    ``megatron/core/transformer/transformer_config.py``.

    Args:
      sigma: σ, the base std.
      num_layers: ``L``.
      hybrid: use ``σ / sqrt(L)`` for output layers.
      embedding_std: ``embedding_init_method_std`` (default σ).
      kernels, embeddings, residual, biases, norm_scales: the patterns.

    Example:
      >>> from flaxinit.recipes import megatron
      >>> from flaxinit.models import GPT
      >>> tokens = jnp.zeros((1, 4), jnp.int32)
      >>> shapes = jax.eval_shape(GPT(num_layers=2).init, jax.random.key(0), tokens)
      >>> report = explain_rules(shapes, megatron(0.02, num_layers=2)).by_path()
      >>> report["params/blocks_1/mlp/fc2/kernel"].actions  # 0.02 / sqrt(2 * 2)
      ('reinit(normal(stddev=0.02))', 'normal(0.01)')
    """
    r = "megatron"
    sigma = check_number(sigma, r, "sigma", at_least=0)
    L = check_int(num_layers, r, "num_layers", at_least=1)
    emb = sigma if embedding_std is None else check_number(embedding_std, r, "embedding_std")
    out = sigma / math.sqrt((1.0 if hybrid else 2.0) * L)
    return _gpt_family(r, sigma, out, emb, L, kernels, embeddings, residual, biases, norm_scales)


def bert(
    *,
    std: float = 0.02,
    tf_truncated: bool = False,
    kernels: Patterns = KERNEL,
    embeddings: Patterns = EMBEDDING,
    biases: Patterns = BIAS,
    norm_scales: Patterns = NORM_SCALE,
) -> Rules:
    """BERT: kernels and embeddings N(0, 0.02), biases 0, LayerNorm (1, 0).

    With ``tf_truncated=True`` the draws are the original TF code's
    ``truncated_normal_initializer(0.02)``: cut at ±2σ and not rescaled, so the std is
    0.8796 × 0.02 = 0.0176 (``flaxinit.initializers.truncated_normal``).

    Sources: Devlin et al. 2019; HF ``models/bert/modeling_bert.py``
    ``BertPreTrainedModel._init_weights``; google-research/bert ``modeling.py``
    ``create_initializer``.

    Example:
      >>> from flaxinit.recipes import bert
      >>> from flaxinit.models import GPT
      >>> tokens = jnp.zeros((1, 4), jnp.int32)
      >>> shapes = jax.eval_shape(GPT(num_layers=2).init, jax.random.key(0), tokens)
      >>> report = explain_rules(shapes, bert(tf_truncated=True)).by_path()
      >>> report["params/blocks_1/mlp/fc2/kernel"].actions
      ('reinit(truncated_normal(stddev=0.02))',)
    """
    r = "bert"
    std = check_number(std, r, "std", at_least=0)
    init = truncated_normal(std) if tf_truncated else normal(std)
    return [
        *rules_for(kernels, init, r, "kernels"),
        *rules_for(embeddings, init, r, "embeddings"),
        *_norms_and_biases(r, norm_scales, biases),
    ]


def llama_depth_init(
    *,
    num_layers: int | None = None,
    std: float = 0.02,
    embedding_std: float = 1.0,
    in_projections: Patterns = _IN,
    depth_scaled: Patterns = (ATTN_OUT, MLP_OUT),
    embeddings: Patterns = EMBEDDING,
    head: Patterns = HEAD,
    biases: Patterns = None,
    norm_scales: Patterns = NORM_SCALE,
) -> Rules:
    """torchtitan's Llama-3 init with ``depth_init``: output projections of layer ``l``
    get std ``0.02 / sqrt(2 (l + 1))``.

    * ``depth_scaled`` (``attention.wo``, ``feed_forward.w2``, and in SwiGLU models
      ``w3``: add its pattern): ``trunc_normal(0.02 / sqrt(2 (l + 1)), ±2)``; layer 0
      0.01414, layer 1 0.01, layer 31 0.0025;
    * ``in_projections`` (``wq``/``wk``/``wv``, ``w1``): ``trunc_normal(0.02, ±2)``;
    * embeddings N(0, 1); ``head`` ``trunc_normal(s, ±3s)`` with ``s = d^-1/2``, ``d`` the
      head's input width (std 0.9866 s after the cut); norm scale 1.

    The ±2 bounds are absolute, as in PyTorch, so these are practically untruncated.
    The depth comes from the layer index alone; ``num_layers``, when given, is checked
    against the length of every stack the per-layer rules see (a block whose name
    carries no layer index would otherwise be taken for a stack along axis 0).

    Sources: pytorch/torchtitan ``torchtitan/models/llama3/__init__.py``,
    ``torchtitan/models/common/param_init.py`` (``depth_scaled_std``); earlier
    ``torchtitan/models/llama3/model/model.py`` (``ModelArgs.depth_init``).

    Example:
      >>> from flaxinit.models import GPT
      >>> from flaxinit.recipes import llama_depth_init
      >>> tokens = jnp.zeros((1, 4), jnp.int32)
      >>> shapes = jax.eval_shape(GPT(num_layers=2, scan=True).init, jax.random.key(0), tokens)
      >>> report = explain_rules(shapes, llama_depth_init()).by_path()
      >>> report["params/blocks/attn/out/kernel"].actions
      ('per layer(axis 0, 2 layers): trunc_normal(0.02/sqrt(2(l+1)))',)
    """
    r = "llama_depth_init"
    L = None if num_layers is None else check_int(num_layers, r, "num_layers", at_least=1)
    std = check_number(std, r, "std", above=0)
    embedding_std = check_number(embedding_std, r, "embedding_std", at_least=0)

    def depth(layer):
        return truncated_normal_between(std=std / math.sqrt(2 * (layer.layer + 1)))

    def head_init(layer):
        s = 1 / math.sqrt(layer.fan_in)
        return truncated_normal_between(std=s, minval=-3 * s, maxval=3 * s)

    name = f"trunc_normal({fmt(std)}/sqrt(2(l+1)))"
    return [
        *rules_for(in_projections, truncated_normal_between(std=std), r, "in_projections"),
        *rules_for(depth_scaled, layer_init(depth, "flax", name, L), r, "depth_scaled"),
        *rules_for(embeddings, normal(embedding_std), r, "embeddings"),
        *rules_for(head, _single(head_init, "trunc_normal(d^-1/2, ±3σ)"), r, "head"),
        *_norms_and_biases(r, norm_scales, biases),
    ]


def olmo_mitchell(
    *,
    num_layers: int | None = None,
    cutoff: float = 3.0,
    in_projections: Patterns = _IN,
    attn_out: Patterns = ATTN_OUT,
    mlp_out: Patterns = MLP_OUT,
    embeddings: Patterns = EMBEDDING,
    head: Patterns = HEAD,
    biases: Patterns = None,
    norm_scales: Patterns = NORM_SCALE,
) -> Rules:
    """OLMo's ``mitchell`` init (OLMo-1B/7B): depth-indexed, truncated at ±3σ.

    With ``l`` the 0-based block index and ``d`` the model width:

    * attention ``out``: ``1 / sqrt(2 d (l + 1))``;
    * MLP ``fc2``: ``1 / sqrt(2 d_ff (l + 1))``, ``d_ff`` its input width;
    * query/key/value and ``fc1``: ``1 / sqrt(d)``; embeddings and an untied head:
      ``1 / sqrt(d)``;

    each drawn as ``trunc_normal(s, ±cutoff·s)`` (std 0.9866 s for cutoff 3); norm
    scale 1. OLMo-7B (d = 4096): attention out 0.01105 at layer 0, 0.00195 at layer 31.
    ``num_layers``, when given, is checked against every stack's length, as in
    :func:`llama_depth_init`.

    Sources: Groeneveld et al. 2024; allenai/OLMo ``olmo/model.py``
    (``OLMoSequentialBlock.reset_parameters``), ``olmo/initialization.py``
    (``init_normal``), ``olmo/config.py`` (``InitFnType.mitchell``).

    Example:
      >>> from flaxinit.recipes import olmo_mitchell
      >>> from flaxinit.models import GPT
      >>> tokens = jnp.zeros((1, 4), jnp.int32)
      >>> shapes = jax.eval_shape(GPT(num_layers=2).init, jax.random.key(0), tokens)
      >>> report = explain_rules(shapes, olmo_mitchell()).by_path()
      >>> report["params/blocks_1/attn/query/kernel"].actions
      ('tn(1/sqrt(d))',)
      >>> report["params/blocks_1/mlp/fc2/kernel"].actions  # layer l = 1, d_ff = 4 d
      ('tn(1/sqrt(2d_ff(l+1)))',)
    """
    r = "olmo_mitchell"
    L = None if num_layers is None else check_int(num_layers, r, "num_layers", at_least=1)
    c = check_number(cutoff, r, "cutoff", above=0)

    def tn(s):
        return truncated_normal_between(std=s, minval=-c * s, maxval=c * s)

    def attn_init(layer):
        return tn(1 / math.sqrt(2 * layer.fan_out * (layer.layer + 1)))

    def mlp_init(layer):
        return tn(1 / math.sqrt(2 * layer.fan_in * (layer.layer + 1)))

    def emb_init(key, shape, dtype=None):
        s = 1 / math.sqrt(shape[-1])
        return tn(s)(key, shape, dtype)

    return [
        *rules_for(
            in_projections,
            layer_init(lambda lyr: tn(1 / math.sqrt(lyr.fan_in)), "in", "tn(1/sqrt(d))", L),
            r,
            "in_projections",
        ),
        *rules_for(attn_out, layer_init(attn_init, "out", "tn(1/sqrt(2d(l+1)))", L), r, "attn_out"),
        *rules_for(mlp_out, layer_init(mlp_init, "out", "tn(1/sqrt(2d_ff(l+1)))", L), r, "mlp_out"),
        *rules_for(embeddings, emb_init, r, "embeddings"),
        *rules_for(
            head, _single(lambda lyr: tn(1 / math.sqrt(lyr.fan_in)), "tn(1/sqrt(d))"), r, "head"
        ),
        *_norms_and_biases(r, norm_scales, biases),
    ]


def t5(
    *,
    factor: float = 1.0,
    head_dim: int | None = None,
    query: Patterns = QUERY,
    key: Patterns = KEY,
    value: Patterns = VALUE,
    attn_out: Patterns = ATTN_OUT,
    mlp_in: Patterns = MLP_IN,
    mlp_out: Patterns = MLP_OUT,
    embeddings: Patterns = EMBEDDING,
    head: Patterns = HEAD,
    biases: Patterns = None,
    norm_scales: Patterns = NORM_SCALE,
) -> Rules:
    """T5 / Mesh TensorFlow: every projection N(0, factor / sqrt(fan_in)), the query
    with an extra ``1 / sqrt(d_kv)``.

    * query: ``factor · (d · d_kv)^-1/2``; key, value: ``factor · d^-1/2``;
    * attention ``out``: ``factor · (h · d_kv)^-1/2``;
    * ``fc1`` (``wi``): ``factor · d^-1/2``; ``fc2`` (``wo``): ``factor · d_ff^-1/2``;
    * embeddings and an untied head: N(0, factor); norm scale ``factor``.

    T5-base (d = 768, d_kv = 64, h = 12, d_ff = 3072): query 0.00451, key/value/out/wi
    0.0361, wo 0.0180. ``d_kv`` is read from a ``(d, heads, head_dim)`` query kernel,
    or given as ``head_dim`` for a 2-D one. T5 folds the attention's ``1/sqrt(d_kv)``
    into the query init and its attention does not scale the logits; stock Flax
    attention does, so pair this recipe with an unscaled ``attention_fn``.

    Sources: Raffel et al. 2020; HF ``models/t5/modeling_t5.py``
    ``T5PreTrainedModel._init_weights``; google-research/t5x ``examples/t5/layers.py``.

    Example:
      >>> from flaxinit.recipes import t5
      >>> from flaxinit.models import GPT
      >>> tokens = jnp.zeros((1, 4), jnp.int32)
      >>> shapes = jax.eval_shape(GPT(num_layers=2).init, jax.random.key(0), tokens)
      >>> report = explain_rules(shapes, t5()).by_path()
      >>> report["params/blocks_1/attn/query/kernel"].actions
      ('normal(f/sqrt(d*d_kv))',)
      >>> report["params/blocks_1/mlp/fc2/kernel"].actions
      ('normal(1/sqrt(fan_in))',)
    """
    r = "t5"
    f = check_number(factor, r, "factor", above=0)
    if head_dim is not None:
        head_dim = check_int(head_dim, r, "head_dim", at_least=1)

    def q_init(layer):
        shape = layer.ctx.shape
        d_kv = shape[-1] if len(shape) == 3 else head_dim
        if d_kv is None:
            raise ValueError(
                f"t5: the query kernel at {layer.ctx.path!r} has shape {shape}: pass "
                "head_dim= for a 2-D query kernel"
            )
        return normal(f / math.sqrt(layer.fan_in * d_kv))

    fan_in = lambda layer: normal(f / math.sqrt(layer.fan_in))
    vin = layer_init(fan_in, "in", f"normal({fmt(f)}/sqrt(fan_in))")
    vout = layer_init(fan_in, "out", f"normal({fmt(f)}/sqrt(fan_in))")
    return [
        *rules_for(query, layer_init(q_init, "in", "normal(f/sqrt(d*d_kv))"), r, "query"),
        *rules_for(key, vin, r, "key"),
        *rules_for(value, vin, r, "value"),
        *rules_for(mlp_in, vin, r, "mlp_in"),
        *rules_for(attn_out, vout, r, "attn_out"),
        *rules_for(mlp_out, vout, r, "mlp_out"),
        *rules_for(embeddings, normal(f), r, "embeddings"),
        *rules_for(head, normal(f), r, "head"),
        *rules_for(biases, fill(0.0), r, "biases"),
        *rules_for(norm_scales, norm_gain(f), r, "norm_scales"),
    ]


@dataclasses.dataclass(frozen=True)
class DeepNormConstants:
    """DeepNorm's α (residual multiplier in ``LN(α x + G(x))``) and β (init gain).

    ``None`` for a part the architecture lacks (an encoder-only model has no decoder).
    """

    encoder_alpha: float | None
    encoder_beta: float | None
    decoder_alpha: float | None
    decoder_beta: float | None


def deepnorm_constants(N: int, M: int) -> DeepNormConstants:
    """DeepNet's α and β for ``N`` encoder and ``M`` decoder layers (0 = none).

    =========================  ==========================  ===========================
    architecture               α                           β
    =========================  ==========================  ===========================
    encoder-only (M = 0)       (2N)^1/4                    (8N)^-1/4
    decoder-only (N = 0)       (2M)^1/4                    (8M)^-1/4
    encoder-decoder: encoder   0.81 (N^4 M)^1/16           0.87 (N^4 M)^-1/16
    encoder-decoder: decoder   (3M)^1/4                    (12M)^-1/4
    =========================  ==========================  ===========================

    Source: Wang et al. 2022, "DeepNet: Scaling Transformers to 1,000 Layers"
    (arXiv:2203.00555), Table 1; microsoft/torchscale ``architecture/encoder.py``,
    ``decoder.py``.

    Example:
      >>> c = deepnorm_constants(12, 0)
      >>> round(c.encoder_alpha, 3), round(c.encoder_beta, 3)
      (2.213, 0.319)
    """
    r = "deepnet"
    N = check_int(N, r, "N", at_least=0)
    M = check_int(M, r, "M", at_least=0)
    if N == 0 and M == 0:
        raise ValueError("deepnet: N (encoder layers) and M (decoder layers) are both 0")
    if M == 0:
        return DeepNormConstants((2 * N) ** 0.25, (8 * N) ** -0.25, None, None)
    if N == 0:
        return DeepNormConstants(None, None, (2 * M) ** 0.25, (8 * M) ** -0.25)
    x = (N**4 * M) ** (1 / 16)
    return DeepNormConstants(0.81 * x, 0.87 / x, (3 * M) ** 0.25, (12 * M) ** -0.25)


def deepnet(
    N: int,
    M: int,
    *,
    encoder: str = "encoder",
    decoder: str = "decoder",
    query: Patterns = QUERY,
    key: Patterns = KEY,
    value: Patterns = VALUE,
    attn_out: Patterns = ATTN_OUT,
    mlp_in: Patterns = MLP_IN,
    mlp_out: Patterns = MLP_OUT,
) -> Rules:
    """DeepNet (DeepNorm) init: Xavier normal with gain β for ``fc1``, ``fc2``, value and
    attention ``out``; gain 1 for query and key.

    β (and the forward multiplier α, which is architecture, not init) come from
    :func:`deepnorm_constants`: decoder-only ``M`` layers (``N = 0``): β = (8M)^-1/4;
    encoder-only (``M = 0``): (8N)^-1/4. With both, the patterns are prefixed with
    ``encoder/**/`` and ``decoder/**/`` and each side gets its own β. Xavier normal is
    N(0, gain² · 2 / (fan_in + fan_out)), plain (``torch.nn.init.xavier_normal_``).

    Sources: Wang et al. 2022 (arXiv:2203.00555), Fig. 2 pseudocode and Table 1;
    microsoft/torchscale ``torchscale/architecture/{encoder,decoder}.py``.

    Example:
      >>> from flaxinit.recipes import deepnet
      >>> rules = deepnet(0, 12)  # a 12-layer decoder: beta = 96^(-1/4)
      >>> [action for _, action in rules][2:4]  # value and fc1: beta; query and key: 1
      [per_layer(xavier_normal(gain=0.3195)), per_layer(xavier_normal(gain=0.3195))]
    """
    r = "deepnet"
    c = deepnorm_constants(N, M)
    sides = []
    if c.encoder_beta is not None:
        sides.append(("" if c.decoder_beta is None else encoder, c.encoder_beta, N))
    if c.decoder_beta is not None:
        sides.append(("" if c.encoder_beta is None else decoder, c.decoder_beta, M))
    groups = {
        "query": (query, False, "in"),
        "key": (key, False, "in"),
        "value": (value, True, "in"),
        "mlp_in": (mlp_in, True, "in"),
        "attn_out": (attn_out, True, "out"),
        "mlp_out": (mlp_out, True, "out"),
    }
    rules: Rules = []
    for prefix, beta, layers in sides:
        for arg, (patterns, scaled, kind) in groups.items():
            gain = beta if scaled else 1.0
            action = layer_init(
                lambda _, g=gain: xavier_normal(gain=g),
                kind,
                f"xavier_normal(gain={fmt(gain)})",
                layers,
            )
            for p in pattern_list(patterns, r, arg):
                if prefix:
                    try:
                        p = p.under(prefix)
                    except ValueError:
                        raise ValueError(
                            f"deepnet: {arg}={p.source!r}: an encoder-decoder recipe prefixes "
                            "its patterns with the encoder/decoder names, so they must be globs"
                        ) from None
                rules.append((p, action))
    return rules


def small_init(
    *,
    in_projections: Patterns = _IN,
    embeddings: Patterns = EMBEDDING,
) -> Rules:
    """GPT-NeoX ``small_init``: N(0, sqrt(2 / (5d))) for input projections and embeddings.

    ``d`` is the model width, read from each leaf (an input projection's input width,
    an embedding's feature axis); d = 4096 gives 0.00988. GPT-NeoX-20B pairs it with
    :func:`wang_init` for the output projections: ``small_init() + wang_init(L)``.

    Sources: Nguyen & Salazar 2019, "Transformers without Tears"; EleutherAI/gpt-neox
    ``megatron/model/init_functions.py`` (``small_init_init_method``), ``configs/20B.yml``.

    Example:
      >>> from flaxinit.recipes import small_init, wang_init
      >>> from flaxinit.models import GPT
      >>> tokens = jnp.zeros((1, 4), jnp.int32)
      >>> shapes = jax.eval_shape(GPT(num_layers=2).init, jax.random.key(0), tokens)
      >>> report = explain_rules(shapes, small_init() + wang_init(num_layers=2)).by_path()
      >>> report["params/blocks_1/attn/query/kernel"].actions  # GPT-NeoX 20B's pair
      ('normal(sqrt(2/(5d)))',)
      >>> report["params/blocks_1/mlp/fc2/kernel"].actions
      ('normal(2/(L sqrt(d)))',)
    """
    r = "small_init"
    std = lambda d: math.sqrt(2 / (5 * d))

    def emb_init(key, shape, dtype=None):
        return normal(std(shape[-1]))(key, shape, dtype)

    return [
        *rules_for(
            in_projections,
            layer_init(lambda lyr: normal(std(lyr.fan_in)), "in", "normal(sqrt(2/(5d)))"),
            r,
            "in_projections",
        ),
        *rules_for(embeddings, emb_init, r, "embeddings"),
    ]


def wang_init(num_layers: int, *, outputs: Patterns = (ATTN_OUT, MLP_OUT)) -> Rules:
    """GPT-NeoX ``wang_init``: output projections N(0, 2 / (L sqrt(d))).

    ``d`` is the model width (the projection's output width); d = 4096, L = 32 gives
    0.000977. From Ben Wang's GPT-J (mesh-transformer-jax).

    Sources: EleutherAI/gpt-neox ``megatron/model/init_functions.py``
    (``wang_init_method``), ``configs/20B.yml``.

    Example:
      >>> from flaxinit.recipes import wang_init
      >>> from flaxinit.models import GPT
      >>> tokens = jnp.zeros((1, 4), jnp.int32)
      >>> shapes = jax.eval_shape(GPT(num_layers=2).init, jax.random.key(0), tokens)
      >>> report = explain_rules(shapes, wang_init(num_layers=2)).by_path()
      >>> report["params/blocks_1/attn/out/kernel"].actions  # and mlp/fc2: the branch ends
      ('normal(2/(L sqrt(d)))',)
    """
    r = "wang_init"
    L = check_int(num_layers, r, "num_layers", at_least=1)
    action = layer_init(
        lambda lyr: normal(2 / (L * math.sqrt(lyr.fan_out))), "out", "normal(2/(L sqrt(d)))", L
    )
    return rules_for(outputs, action, r, "outputs")


def vit(
    *,
    std: float = 0.02,
    cls_std: float = 1e-6,
    head_bias: float = 0.0,
    kernels: Patterns = KERNEL,
    patch_embedding: Patterns = "patch_embed/kernel",
    pos_embedding: Patterns = "pos_embedding",
    cls: Patterns = "cls",
    head: Patterns = HEAD,
    head_biases: Patterns = HEAD_BIAS,
    biases: Patterns = BIAS,
    norm_scales: Patterns = NORM_SCALE,
) -> Rules:
    """ViT: kernels and position embeddings ``trunc_normal(0.02, ±2)``, zero head.

    * every kernel: ``truncated_normal_between(std=0.02, minval=-2, maxval=2)``
      (PyTorch's ``trunc_normal_``), timm's convention:
      *absolute* bounds, so practically untruncated and the std is 0.02 (jax's
      ``truncated_normal(0.02)`` cuts at ±2σ and has std 0.0176);
    * the patch-embedding conv: LeCun normal (the JAX reference, timm's ``jax`` mode);
    * ``pos_embedding``: ``trunc_normal(0.02, ±2)``; class token N(0, 1e-6) (0: zeros);
    * head kernel 0 and head bias ``head_bias`` (e.g. ``-log(num_classes)``, timm's
      ``jax_nlhb``); other biases 0; norm scale 1.

    Sources: Dosovitskiy et al. 2021; google-research/vision_transformer
    ``vit_jax/models_vit.py`` (zero head, ``pos_embedding`` N(0, 0.02)); timm
    ``timm/models/vision_transformer.py`` (``init_weights_vit_timm``, ``trunc_normal_``
    in ``timm/layers/weight_init.py``).

    Example:
      >>> from flaxinit.models import ViT
      >>> from flaxinit.recipes import vit
      >>> model = ViT(image_size=8, patch_size=4, d_model=16, num_layers=1)
      >>> shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 8, 8, 3)))
      >>> explain_rules(shapes, vit()).by_path()["params/head/kernel"].actions
      ('reinit(truncated_normal_between(std=0.02))', 'fill(0.0)')
    """
    r = "vit"
    std = check_number(std, r, "std", above=0)
    cls_std = check_number(cls_std, r, "cls_std", at_least=0)
    head_bias = check_number(head_bias, r, "head_bias")
    tn = truncated_normal_between(std=std)
    cls_action = normal(cls_std) if cls_std > 0 else fill(0.0)
    return [
        *rules_for(kernels, tn, r, "kernels"),
        *rules_for(patch_embedding, lecun_normal(), r, "patch_embedding"),
        *rules_for(pos_embedding, tn, r, "pos_embedding"),
        *rules_for(cls, cls_action, r, "cls"),
        *_norms_and_biases(r, norm_scales, biases),
        *rules_for(head, fill(0.0), r, "head"),
        *rules_for(head_biases, fill(head_bias), r, "head_biases"),
    ]
