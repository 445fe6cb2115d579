"""The model zoo: Linen and NNX twins share parameter names and shapes, the forward
passes give the documented shapes, and the scanned GPT is the unrolled one."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxinit.models import (
    GPT,
    MLP,
    NNXGPT,
    NNXMLP,
    ConvNet,
    Discriminator,
    Generator,
    LSTMClassifier,
    NNXConvNet,
    NNXDiscriminator,
    NNXGenerator,
    NNXLSTMClassifier,
    NNXResNet,
    NNXViT,
    ResNet,
    ViT,
)
from flaxinit.rules import tree_paths

TOKENS = jnp.zeros((2, 8), jnp.int32)
IMAGES = jnp.ones((2, 8, 8, 3))

# (name, linen model, its input, nnx constructor, output shape)
PAIRS = [
    ("mlp", MLP((16, 8), 5), jnp.ones((2, 12)), lambda r: NNXMLP(12, (16, 8), 5, rngs=r), (2, 5)),
    (
        "convnet",
        ConvNet((4, 4), 3),
        jnp.ones((2, 64)),
        lambda r: NNXConvNet(8, (4, 4), 3, rngs=r),
        (2, 3),
    ),
    ("resnet", ResNet(2, 8), IMAGES, lambda r: NNXResNet(3, 2, 8, rngs=r), (2, 10)),
    (
        "resnet_plain",
        ResNet(2, 8, norm=False),
        IMAGES,
        lambda r: NNXResNet(3, 2, 8, norm=False, rngs=r),
        (2, 10),
    ),
    (
        "resnet_rezero",
        ResNet(2, 8, gate="rezero"),
        IMAGES,
        lambda r: NNXResNet(3, 2, 8, gate="rezero", rngs=r),
        (2, 10),
    ),
    (
        "resnet_fixup",
        ResNet(2, 8, norm=False, gate="fixup"),
        IMAGES,
        lambda r: NNXResNet(3, 2, 8, norm=False, gate="fixup", rngs=r),
        (2, 10),
    ),
    ("gpt", GPT(32, 8, 16, 2, 2), TOKENS, lambda r: NNXGPT(32, 8, 16, 2, 2, rngs=r), (2, 8, 32)),
    (
        "gpt_scan",
        GPT(32, 8, 16, 3, 2, scan=True),
        TOKENS,
        lambda r: NNXGPT(32, 8, 16, 3, 2, scan=True, rngs=r),
        (2, 8, 32),
    ),
    (
        "vit",
        ViT(8, 4, 16, 2, 2),
        IMAGES,
        lambda r: NNXViT(8, 4, 3, 16, 2, 2, rngs=r),
        (2, 10),
    ),
    (
        "vit_scan",
        ViT(8, 4, 16, 2, 2, scan=True),
        IMAGES,
        lambda r: NNXViT(8, 4, 3, 16, 2, 2, scan=True, rngs=r),
        (2, 10),
    ),
    (
        "lstm",
        LSTMClassifier(8, 2, cell="lstm"),
        jnp.ones((2, 5, 3)),
        lambda r: NNXLSTMClassifier(3, 8, 2, cell="lstm", rngs=r),
        (2, 4),
    ),
    (
        "generator",
        Generator(4, 8),
        jnp.ones((2, 4)),
        lambda r: NNXGenerator(4, 8, rngs=r),
        (2, 16, 16, 1),
    ),
    (
        "discriminator",
        Discriminator(8),
        jnp.ones((2, 16, 16, 1)),
        lambda r: NNXDiscriminator(1, 8, rngs=r),
        (2, 1),
    ),
]


def linen_params(model, x):
    """``path -> shape`` of a Linen model's params, in NNX's naming: no ``params/``
    level, ``blocks_3`` as ``blocks/3``, the LSTM's ``if`` gate as ``if_``."""
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    out = {}
    for path, a in tree_paths(variables["params"]):
        path = re.sub(r"(blocks|hidden|rnn|conv)_([0-9]+)", r"\1/\2", path)
        out[re.sub(r"/if/", "/if_/", path)] = a.shape
    return out


def nnx_params(make):
    model = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
    return {p: a.shape for p, a in tree_paths(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("pair", PAIRS, ids=[p[0] for p in PAIRS])
def test_linen_and_nnx_twins_have_the_same_parameters(pair):
    _, model, x, make, _ = pair
    assert linen_params(model, x) == nnx_params(make)


@pytest.mark.parametrize("pair", PAIRS, ids=[p[0] for p in PAIRS])
def test_forward_shapes(pair):
    _, model, x, make, out_shape = pair
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert jax.eval_shape(model.apply, variables, x).shape == out_shape
    nnx_model = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
    graphdef, state = nnx.split(nnx_model)
    out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
    assert out.shape == out_shape


def test_layouts_the_recipes_rely_on():
    gpt = linen_params(GPT(32, 8, 16, 2, 2), TOKENS)
    assert gpt["blocks/1/attn/query/kernel"] == (16, 2, 8)
    assert gpt["blocks/1/attn/out/kernel"] == (2, 8, 16)
    assert gpt["blocks/0/mlp/fc1/kernel"] == (16, 64)
    assert gpt["wte/embedding"] == (32, 16)
    assert gpt["head/kernel"] == (16, 32)
    stacked = nnx_params(lambda r: NNXGPT(32, 8, 16, 3, 2, scan=True, rngs=r))
    assert stacked["blocks/attn/out/kernel"] == (3, 2, 8, 16)
    assert stacked["blocks/mlp/fc2/bias"] == (3, 16)
    fused = nnx_params(lambda r: NNXLSTMClassifier(3, 8, cell="optimized", rngs=r))
    assert fused["rnn/0/cell/dense_h/kernel"] == (8, 32)
    assert fused["rnn/0/cell/dense_h/bias"] == (32,)
    linen_opt = linen_params(LSTMClassifier(8, cell="optimized"), jnp.ones((1, 5, 3)))
    assert linen_opt == linen_params(LSTMClassifier(8, cell="lstm"), jnp.ones((1, 5, 3)))
    fixup = nnx_params(lambda r: NNXResNet(3, 1, 8, norm=False, gate="fixup", rngs=r))
    assert {p for p in fixup if p.startswith("blocks/0/") and fixup[p] == ()} == {
        f"blocks/0/{n}" for n in ("bias1a", "bias1b", "bias2a", "bias2b", "scale")
    }


def _stack(layers):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)


def test_linen_scanned_gpt_is_the_unrolled_gpt():
    L = 3
    unrolled = GPT(32, 8, 16, L, 2)
    rng = np.random.default_rng(0)  # random values, without running the initializers
    shapes = jax.eval_shape(unrolled.init, jax.random.key(0), TOKENS)
    variables = jax.tree_util.tree_map(
        lambda a: jnp.asarray(0.2 * rng.standard_normal(a.shape), a.dtype), shapes
    )
    params = dict(variables["params"])
    params["blocks"] = _stack([params.pop(f"blocks_{i}") for i in range(L)])
    scanned = GPT(32, 8, 16, L, 2, scan=True)
    want = jax.jit(unrolled.apply)(variables, TOKENS)
    got = jax.jit(scanned.apply)({"params": params}, TOKENS)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.isfinite(want).all()


def test_nnx_scanned_gpt_is_the_unrolled_gpt():
    L = 3
    rng = np.random.default_rng(0)  # random values, without running the initializers
    fill = lambda a: jnp.asarray(0.2 * rng.standard_normal(a.shape), a.dtype)
    g1, u_state = nnx.split(nnx.eval_shape(lambda: NNXGPT(32, 8, 16, L, 2, rngs=nnx.Rngs(0))))
    g2, s_state = nnx.split(
        nnx.eval_shape(lambda: NNXGPT(32, 8, 16, L, 2, scan=True, rngs=nnx.Rngs(0)))
    )
    pure = jax.tree_util.tree_map(fill, nnx.to_pure_dict(u_state))
    nnx.replace_by_pure_dict(u_state, pure)
    stacked = {**pure, "blocks": _stack([pure["blocks"][i] for i in range(L)])}
    nnx.replace_by_pure_dict(s_state, stacked)
    forward = lambda g, s: jax.jit(lambda s: nnx.merge(g, s)(TOKENS))(s)
    want = forward(g1, u_state)
    np.testing.assert_allclose(forward(g2, s_state), want, rtol=1e-5, atol=1e-5)
    assert np.isfinite(want).all()
    assert np.abs(want).max() > 0


def test_bad_variants_raise():
    with pytest.raises(ValueError, match="gate"):
        jax.eval_shape(ResNet(gate="skip").init, jax.random.key(0), IMAGES)
    with pytest.raises(ValueError, match="norm=False"):
        NNXResNet(3, gate="fixup", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="cell"):
        NNXLSTMClassifier(3, cell="gru", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="cell"):
        jax.eval_shape(LSTMClassifier(cell="gru").init, jax.random.key(0), jnp.ones((1, 2, 3)))


def test_models_are_stock_flax_modules():
    v = jax.eval_shape(GPT(32, 8, 16, 1, 2).init, jax.random.key(0), TOKENS)
    assert set(v["params"]["blocks_0"]["attn"]) == {"query", "key", "value", "out"}
    m = nnx.eval_shape(lambda: NNXGPT(32, 8, 16, 1, 2, rngs=nnx.Rngs(0)))
    assert isinstance(m.blocks[0].attn, nnx.MultiHeadAttention)
    assert isinstance(m.wte, nnx.Embed)
    assert isinstance(m.blocks[0].ln1, nnx.LayerNorm)
    assert nn.MultiHeadDotProductAttention is not None


def test_activation_and_kernel_init_reach_every_layer():
    # tanh(x @ 1) @ 1 with zero biases: the nonlinearity by name or function, the kernel
    # initializer on every Dense/Linear.
    x = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)
    ones = nn.initializers.ones
    want = jnp.tanh(x @ jnp.ones((3, 4))) @ jnp.ones((4, 2))
    linen = MLP((4,), 2, activation="tanh", kernel_init=ones)
    np.testing.assert_allclose(linen.apply(linen.init(jax.random.key(0), x), x), want, rtol=1e-6)
    twin = NNXMLP(3, (4,), 2, activation=jnp.tanh, kernel_init=ones, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(twin(x), want, rtol=1e-6)
    images = jnp.ones((2, 16))  # 4x4, one channel
    conv = ConvNet((2,), 1, activation="relu", kernel_init=nn.initializers.zeros)
    params = conv.init(jax.random.key(0), images)["params"]
    assert all(float(jnp.abs(p["kernel"]).max()) == 0 for p in params.values())


def test_gpt_kernel_init_reaches_attention_mlp_and_head_not_embeddings():
    zeros = nn.initializers.zeros
    params = jax.jit(GPT(32, 8, 16, 1, 2, kernel_init=zeros).init)(jax.random.key(0), TOKENS)
    kernels = {p: a for p, a in tree_paths(params["params"]) if p.endswith("kernel")}
    assert {p for p in kernels if p.startswith("blocks_0/attn")} == {
        f"blocks_0/attn/{n}/kernel" for n in ("query", "key", "value", "out")
    }
    assert all(float(jnp.abs(a).max()) == 0 for a in kernels.values())
    assert float(jnp.abs(params["params"]["wte"]["embedding"]).max()) > 0
    m = NNXGPT(32, 8, 16, 1, 2, activation="relu", kernel_init=zeros, rngs=nnx.Rngs(0))
    assert float(jnp.abs(m.blocks[0].attn.query.kernel[...]).max()) == 0
    assert float(jnp.abs(m.blocks[0].mlp.fc1.kernel[...]).max()) == 0
    assert m.blocks[0].mlp.activation == "relu"


def test_convnet_needs_square_pixel_counts():
    with pytest.raises(ValueError, match=r"square number of pixels.*\(2, 10\)"):
        jax.eval_shape(ConvNet((2,)).init, jax.random.key(0), jnp.ones((2, 10)))
