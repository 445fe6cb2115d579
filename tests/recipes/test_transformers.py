"""Transformer recipes on the zoo's GPT and ViT, Linen and NNX, unrolled and scanned."""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np
import pytest
from _recipe_helpers import (
    KEY,
    RBG,
    THREEFRY,
    abstract_linen,
    abstract_nnx,
    assert_std,
    assert_uniform,
    assert_untouched,
    per_layer,
    pooled,
    run,
    select,
)
from flax import nnx

from flaxinit.initializers import truncated_normal_std
from flaxinit.models import GPT, MLP, NNXGPT, NNXMLP, NNXViT, ViT
from flaxinit.recipes import (
    bert,
    deepnet,
    deepnorm_constants,
    gpt2,
    llama_depth_init,
    megatron,
    olmo_mitchell,
    small_init,
    t5,
    transformer,
    vit,
    wang_init,
)
from flaxinit.rules import apply_rules, explain_rules

D, L, H, V, T = 64, 2, 2, 64, 16
TS3 = truncated_normal_std(-3.0, 3.0)  # std of a normal cut at ±3σ, in units of σ
FRAMEWORKS = ["linen", "nnx"]
LAYOUTS = [("linen", False), ("linen", True), ("nnx", False), ("nnx", True)]
BLOCK_KERNELS = {  # tail pattern -> (fan_in, fan_out) of one layer
    "attn/query/kernel": (D, D),
    "attn/key/kernel": (D, D),
    "attn/value/kernel": (D, D),
    "attn/out/kernel": (D, D),
    "mlp/fc1/kernel": (D, 4 * D),
    "mlp/fc2/kernel": (4 * D, D),
}
IN_PROJ = ["attn/query/kernel", "attn/key/kernel", "attn/value/kernel", "mlp/fc1/kernel"]
OUT_PROJ = ["attn/out/kernel", "mlp/fc2/kernel"]


@functools.cache
def gpt(framework: str, scan: bool):
    """The zoo GPT, scrambled (see _recipe_helpers.scramble)."""
    if framework == "linen":
        model = GPT(vocab_size=V, max_len=T, d_model=D, num_layers=L, num_heads=H, scan=scan)
        return abstract_linen(model, jnp.zeros((1, 4), jnp.int32))
    return abstract_nnx(lambda: NNXGPT(V, T, D, L, H, scan=scan, rngs=nnx.Rngs(0)))


RECIPES = {
    "transformer": lambda: transformer(L),
    "gpt2": lambda: gpt2(L),
    "llama_depth_init": llama_depth_init,
    "olmo_mitchell": olmo_mitchell,
    "t5": lambda: t5(factor=0.5),
    "deepnet": lambda: deepnet(0, L),
    "neox": lambda: small_init() + wang_init(L),
}


EQUALITY = {"transformer", "llama_depth_init", "olmo_mitchell"}  # see PER_LAYER


@functools.cache
def result(recipe: str, framework: str, scan: bool):
    """``(tree, rules, before, after)`` for a recipe on a GPT layout, computed once
    (each apply compiles a program) and shared by the formula and layer tests."""
    tree, rules = gpt(framework, scan), RECIPES[recipe]()
    # The NNX llama pair runs on jax's default generator (the engine vmaps its draws).
    threefry = (recipe, framework) == ("llama_depth_init", "nnx")
    key = THREEFRY if threefry else RBG if recipe in EQUALITY else KEY
    before, after, _ = run(tree, rules, key=key)
    return tree, rules, before, after


def layers(view, tail, scan):
    got = per_layer(view, tail, scan)
    assert sorted(got) == list(range(L))
    return got


def assert_fill(view, pattern, value):
    for path, a in select(view, pattern).items():
        np.testing.assert_array_equal(a, np.float32(value), err_msg=path)


def assert_norms_and_biases(after):
    assert_fill(after, "bias", 0.0)
    assert_fill(after, "ln[^/]*/scale", 1.0)


# --------------------------------------------------------------------------- recipes


@pytest.mark.parametrize(("framework", "scan"), LAYOUTS)
def test_transformer(framework, scan):
    tree, rules, before, after = result("transformer", framework, scan)
    untouched = assert_untouched(tree, rules, before, after)
    assert [p.split("/")[-2:] for p in untouched] == [["head", "kernel"]]
    gain = 1 / math.sqrt(2 * L)
    for tail, (fan_in, fan_out) in BLOCK_KERNELS.items():
        g = gain if tail in OUT_PROJ else 1.0
        assert_uniform(
            pooled(layers(after, tail, scan).values()), g * math.sqrt(6 / (fan_in + fan_out))
        )
    assert_std(pooled(select(after, "w[tp]e/embedding").values()), 0.02)
    assert_norms_and_biases(after)


@pytest.mark.parametrize(("framework", "scan"), [("linen", False), ("nnx", True)])
def test_gpt2(framework, scan):
    tree, rules, _, after = result("gpt2", framework, scan)
    assert not explain_rules(tree, rules).untouched
    plain = [*IN_PROJ, "head/kernel", "w[tp]e/embedding"]
    assert_std(pooled(a for t in plain for a in select(after, t).values()), 0.02)
    for tail in OUT_PROJ:
        assert_std(pooled(layers(after, tail, scan).values()), 0.02 / math.sqrt(2 * L))
    assert_norms_and_biases(after)


@pytest.mark.parametrize(("framework", "hybrid"), [("linen", False), ("nnx", True)])
def test_megatron(framework, hybrid):
    tree = gpt(framework, False)
    sigma, emb = 0.01, 0.05
    rules = megatron(sigma, L, hybrid=hybrid, embedding_std=emb)
    _, after, _ = run(tree, rules)
    assert_std(
        pooled(a for t in [*IN_PROJ, "head/kernel"] for a in select(after, t).values()), sigma
    )
    out_std = sigma / math.sqrt((1 if hybrid else 2) * L)
    assert_std(pooled(a for t in OUT_PROJ for a in select(after, t).values()), out_std)
    assert_std(pooled(select(after, "w[tp]e/embedding").values()), emb)
    assert_norms_and_biases(after)


@pytest.mark.parametrize(("framework", "tf_truncated"), [("linen", True), ("nnx", False)])
def test_bert(framework, tf_truncated):
    tree = gpt(framework, False)
    _, after, _ = run(tree, bert(tf_truncated=tf_truncated))
    x = pooled(select(after, "(kernel|embedding)").values())
    if tf_truncated:  # cut at ±2σ, not rescaled: std 0.8796 σ
        assert np.abs(x).max() <= 0.04 * (1 + 1e-6)
        assert_std(x, 0.02 * truncated_normal_std(-2.0, 2.0))
    else:
        assert np.abs(x).max() > 0.04
        assert_std(x, 0.02)
    assert_norms_and_biases(after)


@pytest.mark.parametrize(("framework", "scan"), LAYOUTS)
def test_llama_depth_init(framework, scan):
    tree, rules, before, after = result("llama_depth_init", framework, scan)
    untouched = assert_untouched(tree, rules, before, after)
    assert untouched
    assert all(p.endswith("bias") for p in untouched)
    for tail in OUT_PROJ:
        for layer, a in layers(after, tail, scan).items():
            assert_std(a, 0.02 / math.sqrt(2 * (layer + 1)))
    assert_std(pooled(a for t in IN_PROJ for a in layers(after, t, scan).values()), 0.02)
    assert_std(pooled(select(after, "w[tp]e/embedding").values()), 1.0)
    (head,) = select(after, "head/kernel").values()
    s = 1 / math.sqrt(D)
    assert np.abs(head).max() <= 3 * s * (1 + 1e-6)
    assert_std(head, s * TS3)
    assert_fill(after, "ln[^/]*/scale", 1.0)


@pytest.mark.parametrize(("framework", "scan"), [("linen", True), ("nnx", False), ("nnx", True)])
def test_olmo_mitchell(framework, scan):
    _, _, _, after = result("olmo_mitchell", framework, scan)
    for tail, width in (("attn/out/kernel", D), ("mlp/fc2/kernel", 4 * D)):
        for layer, a in layers(after, tail, scan).items():
            s = 1 / math.sqrt(2 * width * (layer + 1))
            assert np.abs(a).max() <= 3 * s * (1 + 1e-6)
            assert_std(a, s * TS3)
    s = 1 / math.sqrt(D)
    rest = [
        a for t in [*IN_PROJ, "head/kernel", "w[tp]e/embedding"] for a in select(after, t).values()
    ]
    assert np.abs(pooled(rest)).max() <= 3 * s * (1 + 1e-6)
    assert_std(pooled(rest), s * TS3)


@pytest.mark.parametrize(("framework", "scan"), [("linen", False), ("nnx", True)])
def test_t5(framework, scan):
    f = 0.5
    tree, rules, before, after = result("t5", framework, scan)
    assert_untouched(tree, rules, before, after)
    d_kv = D // H
    expected = {
        "attn/query/kernel": f / math.sqrt(D * d_kv),
        "attn/key/kernel": f / math.sqrt(D),
        "attn/value/kernel": f / math.sqrt(D),
        "attn/out/kernel": f / math.sqrt(H * d_kv),
        "mlp/fc1/kernel": f / math.sqrt(D),
        "mlp/fc2/kernel": f / math.sqrt(4 * D),
    }
    for tail, std in expected.items():
        assert_std(pooled(layers(after, tail, scan).values()), std)
    assert_std(pooled(select(after, "(w[tp]e/embedding|head/kernel)").values()), f)
    assert_fill(after, "ln[^/]*/scale", f)


def test_t5_two_dim_query_needs_head_dim():
    tree = {"blocks_0": {"q": {"kernel": jnp.zeros((8, 8))}}}
    with pytest.raises(ValueError, match="head_dim"):
        apply_rules(tree, t5(query="q/kernel"), key=KEY, strict=False)
    out = apply_rules(tree, t5(query="q/kernel", head_dim=4), key=KEY, strict=False)
    assert float(jnp.std(out["blocks_0"]["q"]["kernel"])) > 0


@pytest.mark.parametrize(("framework", "scan"), [("linen", True), ("nnx", False)])
def test_deepnet_decoder_only(framework, scan):
    beta = (8 * L) ** -0.25
    _, _, _, after = result("deepnet", framework, scan)
    for tail, (fan_in, fan_out) in BLOCK_KERNELS.items():
        gain = 1.0 if tail in ("attn/query/kernel", "attn/key/kernel") else beta
        assert_std(
            pooled(layers(after, tail, scan).values()), gain * math.sqrt(2 / (fan_in + fan_out))
        )


def test_deepnet_encoder_decoder():
    # An encoder of N unrolled and a decoder of M stacked layers (attention only).
    N, M = 3, 2
    attn = lambda *lead: {
        "attn": {
            "query": {"kernel": jnp.zeros((*lead, D, H, D // H))},
            "value": {"kernel": jnp.zeros((*lead, D, H, D // H))},
            "out": {"kernel": jnp.zeros((*lead, H, D // H, D))},
        }
    }
    tree = {
        "encoder": {f"layers_{i}": attn() for i in range(N)},
        "decoder": {"layers": attn(M)},
        "head": {"kernel": jnp.ones((D, 4))},
    }
    c = deepnorm_constants(N, M)
    rules = deepnet(N, M, mlp_in=None, mlp_out=None, key=None)
    before, after, _ = run(tree, rules)
    assert_untouched(tree, rules, before, after)
    np.testing.assert_array_equal(after["head/kernel"], 1.0)
    for side, beta, scan in (("encoder", c.encoder_beta, False), ("decoder", c.decoder_beta, True)):
        view = {p: a for p, a in after.items() if p.startswith(side + "/")}
        for tail in ("attn/value/kernel", "attn/out/kernel"):
            assert_std(pooled(per_layer(view, tail, scan).values()), beta * math.sqrt(2 / (2 * D)))
        assert_std(pooled(per_layer(view, "attn/query/kernel", scan).values()), math.sqrt(1 / D))
    with pytest.raises(ValueError, match="globs"):
        deepnet(2, 2, value="re:.*/value/kernel")


def test_deepnorm_constants_match_the_paper_table():
    # Worked values of lsuv_recipes.md §2.9 (from Wang et al. 2022, Table 1).
    c = deepnorm_constants(12, 0)
    assert (round(c.encoder_alpha, 3), round(c.encoder_beta, 3)) == (2.213, 0.319)
    assert c.decoder_alpha is None
    c = deepnorm_constants(100, 0)
    assert (round(c.encoder_alpha, 3), round(c.encoder_beta, 3)) == (3.761, 0.188)
    c = deepnorm_constants(18, 18)
    assert (round(c.encoder_alpha, 3), round(c.encoder_beta, 3)) == (1.999, 0.353)
    assert (round(c.decoder_alpha, 3), round(c.decoder_beta, 3)) == (2.711, 0.261)
    c = deepnorm_constants(0, 12)
    assert (round(c.decoder_alpha, 3), round(c.decoder_beta, 3)) == (2.213, 0.319)
    with pytest.raises(ValueError, match="both 0"):
        deepnorm_constants(0, 0)
    with pytest.raises(ValueError, match="N"):
        deepnorm_constants(-1, 2)
    with pytest.raises(TypeError, match="M"):
        deepnorm_constants(2, 1.5)


@pytest.mark.parametrize(("framework", "scan"), [("linen", False), ("nnx", True)])
def test_small_init_and_wang_init(framework, scan):
    tree, rules, before, after = result("neox", framework, scan)
    untouched = assert_untouched(tree, rules, before, after)
    assert any(p.endswith("head/kernel") for p in untouched)
    small = [a for t in [*IN_PROJ, "w[tp]e/embedding"] for a in select(after, t).values()]
    assert_std(pooled(small), math.sqrt(2 / (5 * D)))
    assert_std(
        pooled(a for t in OUT_PROJ for a in select(after, t).values()), 2 / (L * math.sqrt(D))
    )


@functools.cache
def vit_model(framework: str):
    if framework == "linen":
        model = ViT(image_size=8, patch_size=4, d_model=D, num_layers=2, num_heads=H)
        return abstract_linen(model, jnp.ones((1, 8, 8, 3)))
    return abstract_nnx(lambda: NNXViT(8, 4, 3, D, 2, H, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_vit(framework):
    tree = vit_model(framework)
    head_bias = -math.log(10)
    _, after, _ = run(tree, vit(head_bias=head_bias))
    blocks = [a for t in BLOCK_KERNELS for a in select(after, t).values()]
    assert_std(pooled(blocks), 0.02)  # absolute bounds ±2: the std is 0.02, not 0.0176
    (patch,) = select(after, "patch_embed/kernel").values()
    assert_std(patch, 1 / math.sqrt(4 * 4 * 3))
    assert_std(pooled(select(after, "pos_embedding").values()), 0.02)
    assert_std(pooled(select(after, "cls").values()), 1e-6)
    assert_fill(after, "head/kernel", 0.0)
    assert_fill(after, "head/bias", np.float32(head_bias))
    assert_fill(after, "(attn/[a-z]+|mlp/fc[12]|ln[^/]*|patch_embed)/bias", 0.0)
    assert_fill(after, "ln[^/]*/scale", 1.0)


# --------------------------------------------------------------------------- layers

# Which block kernels each recipe draws per layer, and in which frameworks the
# scanned and unrolled GPTs are compared (each apply compiles: the grid is kept small).
PER_LAYER = [
    ("transformer", "linen", list(BLOCK_KERNELS)),
    ("transformer", "nnx", list(BLOCK_KERNELS)),
    ("llama_depth_init", "linen", OUT_PROJ),
    ("llama_depth_init", "nnx", OUT_PROJ),
    ("olmo_mitchell", "nnx", list(BLOCK_KERNELS)),
]


@pytest.mark.parametrize(("recipe", "framework", "tails"), PER_LAYER)
def test_scanned_and_unrolled_gpt_get_the_same_layers(recipe, framework, tails):
    unrolled = result(recipe, framework, False)[3]
    scanned = result(recipe, framework, True)[3]
    for tail in tails:
        u, s = layers(unrolled, tail, False), layers(scanned, tail, True)
        for i in range(L):
            np.testing.assert_array_equal(s[i], u[i], err_msg=f"{tail} layer {i}")
        assert not np.array_equal(u[0], u[1])


def test_explain_shows_per_layer_rules_on_a_stack():
    report = explain_rules(gpt("linen", True), llama_depth_init()).by_path()
    assert "per layer(axis 0, 2 layers)" in report["params/blocks/attn/out/kernel"].actions[0]
    assert report["params/head/kernel"].actions == ("trunc_normal(d^-1/2, ±3σ)",)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(
    "recipe", [lambda: gpt2(2), lambda: transformer(2), llama_depth_init, t5, vit]
)
def test_strict_raises_on_a_model_without_attention(framework, recipe):
    if framework == "linen":
        tree = abstract_linen(MLP((8,)), jnp.ones((1, 4)))
    else:
        tree = abstract_nnx(lambda: NNXMLP(4, (8,), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="matched no leaf"):
        apply_rules(tree, recipe(), key=KEY)


def test_a_stack_of_the_wrong_length_or_a_sliced_kernel_raise():
    with pytest.raises(ValueError, match="built for num_layers=3"):
        apply_rules(gpt("linen", True), gpt2(L + 1), key=KEY)
    with pytest.raises(ValueError, match="built for num_layers=3"):
        apply_rules(gpt("nnx", True), olmo_mitchell(num_layers=L + 1), key=KEY)
    # A block whose name carries no layer index is taken for a stack along axis 0.
    tree = {"encoder": {"mlp": {"fc2": {"kernel": jnp.zeros((16, 8))}}}}
    with pytest.raises(ValueError, match="at least 2 dims"):
        apply_rules(tree, llama_depth_init(), key=KEY, strict=False)


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: transformer(0), ValueError, "num_layers"),
        (lambda: gpt2(-1), ValueError, "num_layers"),
        (lambda: gpt2(2.0), TypeError, "num_layers"),
        (lambda: gpt2(True), TypeError, "num_layers"),
        (lambda: gpt2(2, std=-0.1), ValueError, "std"),
        (lambda: gpt2(2, kernels=3), TypeError, "kernels"),
        (lambda: gpt2(2, residual=["a**"]), ValueError, "residual"),
        (lambda: megatron(0.02, 0), ValueError, "num_layers"),
        (lambda: megatron(float("nan"), 2), ValueError, "sigma"),
        (lambda: t5(factor=0.0), ValueError, "factor"),
        (lambda: t5(head_dim=0), ValueError, "head_dim"),
        (lambda: olmo_mitchell(cutoff=0), ValueError, "cutoff"),
        (lambda: wang_init(0), ValueError, "num_layers"),
        (lambda: vit(std=0), ValueError, "std"),
        (lambda: llama_depth_init(std="0.02"), TypeError, "std"),
        (lambda: llama_depth_init(num_layers=0), ValueError, "num_layers"),
    ],
)
def test_bad_arguments_raise_when_built(build, error, match):
    with pytest.raises(error, match=match):
        build()
