"""model_structure on the look-alike models and the zoo: roles, fan axes, stacks,
layers, residual outputs and norm offsets, each checked against what the model's
code does (the expected values are read off the models' source, not the output)."""

from __future__ import annotations

import functools
import os
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import flaxinit as fi
from flaxinit import models
from flaxinit.structure import ROLES, ModelStructure, model_structure

sys.path.insert(0, os.path.dirname(__file__))

import lookalike_models as lm

CASES = {make.__name__.removeprefix("make_"): make for make in lm.ALL_CASES}


@functools.cache
def structure_of(name: str) -> ModelStructure:
    case = CASES[name]()
    return model_structure(case.model, *case.args, **case.kwargs)


def expect(s: ModelStructure, path: str, role: str, fan_in=None, fan_out=None, batch=None):
    leaf = s[path]
    assert leaf.role == role, (path, leaf.role, leaf.evidence, leaf.reason)
    if fan_in is not None:
        assert leaf.fan_in_axes == fan_in, (path, leaf.fan_in_axes)
    if fan_out is not None:
        assert leaf.fan_out_axes == fan_out, (path, leaf.fan_out_axes)
    if batch is not None:
        assert leaf.batch_axes == batch, (path, leaf.batch_axes)
    return leaf


def test_gemma_einsum_layouts_and_offset_norms():
    s = structure_of("gemma_like")
    assert s.api == "nnx"
    assert s.num_layers == lm.LAYERS
    for i in range(lm.LAYERS):
        p = f"layers/{i}"
        # q: 'BTD,NDH->BTNH' on (heads, d, head_dim): contracts d (axis 1).
        q = expect(s, f"{p}/attn/q_einsum/w", "attention_query", (1,), (0, 2), ())
        assert (q.fan_in, q.fan_out) == (lm.D_MODEL, lm.D_MODEL)
        # kv: 'BSD,CKDH->CBSKH' then indexed [0]/[1]: C is a part axis.
        kv = expect(s, f"{p}/attn/kv_einsum/w", "attention_key", (2,), (1, 3), (0,))
        assert kv.roles == ("attention_key", "attention_value")
        # out: 'BTNH,NHD->BTD' contracts heads and head_dim.
        out = expect(s, f"{p}/attn/attn_vec_einsum/w", "attention_out", (0, 1), (2,), ())
        assert out.residual_output
        assert out.layer == i
        # gated MLP: (2, d, ff) indexed into gate and up; (ff, d) back.
        expect(s, f"{p}/mlp/gating_einsum", "mlp_in", (1,), (2,), (0,))
        assert expect(s, f"{p}/mlp/linear", "mlp_out", (0,), (1,), ()).residual_output
        for norm in ("pre_attention_norm", "pre_ffw_norm"):
            assert expect(s, f"{p}/{norm}/scale", "norm_scale").norm_offset == 1.0
    assert s["final_norm/scale"].norm_offset == 1.0
    emb = expect(s, "embedder/embedding", "embedding", (0,), (1,))
    assert any("tied" in e for e in emb.evidence)  # decode() reads out through attend


@pytest.mark.parametrize("tied", [True, False])
def test_lm1b_stock_attention_and_mlp_block(tied):
    s = structure_of("lm1b_like" if tied else "lm1b_untied_like")
    for i in range(lm.LAYERS):
        b = f"params/encoderdecoderblock_{i}"
        mha = f"{b}/MultiHeadDotProductAttention_0"
        expect(s, f"{mha}/query/kernel", "attention_query", (0,), (1, 2))
        expect(s, f"{mha}/key/kernel", "attention_key", (0,), (1, 2))
        expect(s, f"{mha}/value/kernel", "attention_value", (0,), (1, 2))
        assert expect(s, f"{mha}/out/kernel", "attention_out", (0, 1), (2,)).residual_output
        expect(s, f"{b}/MlpBlock_0/Dense_0/kernel", "mlp_in", (0,), (1,))
        assert expect(s, f"{b}/MlpBlock_0/Dense_1/kernel", "mlp_out").residual_output
        assert expect(s, f"{b}/MlpBlock_0/Dense_0/bias", "bias").layer == i
        assert expect(s, f"{b}/LayerNorm_0/scale", "norm_scale").norm_offset == 0.0
        expect(s, f"{b}/LayerNorm_1/bias", "norm_bias")
        assert not s[f"{b}/LayerNorm_0/scale"].residual_output  # pre-LN: a linear follows
    expect(s, "params/posembed_output/pos_embedding", "embedding")
    expect(s, "params/embed/embedding", "embedding", (0,), (1,))
    if not tied:
        expect(s, "params/logitdense/kernel", "readout", (0,), (1,))


@pytest.mark.parametrize("name", ["resnet_bn_like", "grouped_conv_like"])
def test_batchnorm_resnets(name):
    s = structure_of(name)
    block = "ResNetBlock_1" if name == "resnet_bn_like" else "ResNeXtBlock_0"
    last = "BatchNorm_1" if name == "resnet_bn_like" else "BatchNorm_2"
    # The branch ends in a norm: its scale (and bias) reach the residual add directly.
    assert expect(s, f"params/{block}/{last}/scale", "norm_scale").residual_output
    assert not s[f"params/{block}/BatchNorm_0/scale"].residual_output
    # A projection shortcut's norm is not the end of the residual branch.
    assert not expect(s, f"params/{block}/norm_proj/scale", "norm_scale").residual_output
    expect(s, f"params/{block}/conv_proj/kernel", "conv", (0, 1, 2), (3,))
    expect(s, "params/Dense_0/kernel", "readout", (0,), (1,))
    stat = expect(s, f"batch_stats/{block}/BatchNorm_0/var", "other")
    assert "statistic" in stat.reason
    if name == "grouped_conv_like":
        # feature_group_count=4: the kernel is (3, 3, width/4, width); its fan-in is
        # the window times the in-features of one group, which is its own axes.
        conv = expect(s, "params/ResNeXtBlock_0/Conv_1/kernel", "conv", (0, 1, 2), (3,))
        assert conv.fan_in == 3 * 3 * conv.shape[2]
        assert any("4 groups" in e for e in conv.evidence)


def test_moe_expert_axis_is_a_batch_axis():
    s = structure_of("moe_like")
    for i in range(lm.LAYERS):
        b = f"params/block_{i}"
        # 'BTD,EDF->BTEF': E passes through, then 'BTEF,EFD->BTED' batches it.
        wi = expect(s, f"{b}/moe/wi", "mlp_in", (1,), (2,), (0,))
        wo = expect(s, f"{b}/moe/wo", "mlp_out", (1,), (2,), (0,))
        assert wo.residual_output
        assert not wi.residual_output
        expect(s, f"{b}/moe/router/kernel", "dense", (0,), (1,))
        # The router's softmax weights must not make the next block's q/k/v look like
        # attention outputs.
        expect(s, f"{b}/attn/query/kernel", "attention_query")
    expect(s, "params/head/kernel", "readout")


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("scanned_linen_like", "params/blocks"),
        ("maxtext_like", "params/decoder/layers"),
        ("scanned_nnx_like", "layers"),
    ],
)
def test_scanned_stacks_are_followed_per_layer(name, prefix):
    s = structure_of(name)
    assert s.num_layers == lm.LAYERS
    attn = "self_attention" if name == "maxtext_like" else "attn"
    q = expect(s, f"{prefix}/{attn}/query/kernel", "attention_query", (1,), (2, 3), (0,))
    out = expect(s, f"{prefix}/{attn}/out/kernel", "attention_out", (1, 2), (3,), (0,))
    assert q.layer_axis == 0
    assert q.layer is None
    assert out.residual_output
    if name == "maxtext_like":
        for w in ("wi_0", "wi_1"):
            expect(s, f"{prefix}/mlp/{w}/kernel", "mlp_in", (1,), (2,), (0,))
        expect(s, f"{prefix}/mlp/wo/kernel", "mlp_out", (1,), (2,), (0,))
        expect(s, "params/decoder/logits_dense/kernel", "readout")
    else:
        expect(s, f"{prefix}/fc1/kernel", "mlp_in", (1,), (2,), (0,))
        expect(s, f"{prefix}/fc2/kernel", "mlp_out", (1,), (2,), (0,))
        # A stacked bias is still a bias (its layer axis is not a position axis).
        expect(s, f"{prefix}/fc1/bias", "bias")
    if name == "scanned_linen_like":
        # Positions looked up by an iota: a learned position embedding.
        expect(s, "params/wpe/embedding", "embedding", (0,), (1,))


def test_unrolled_nnx_list_blocks():
    s = structure_of("mha_mlp_nnx_like")
    for i in range(lm.LAYERS):
        assert expect(s, f"blocks/{i}/attn/out/kernel", "attention_out").layer == i
        expect(s, f"blocks/{i}/mlp/linear1/kernel", "mlp_in")
        expect(s, f"blocks/{i}/mlp/linear2/kernel", "mlp_out")
    expect(s, "head/kernel", "readout")
    expect(s, "embed/embedding", "embedding")


def test_zoo_models():
    tokens = jnp.zeros((2, 8), jnp.int32)
    gpt = model_structure(models.GPT(num_layers=2, scan=True), tokens)
    assert gpt["params/blocks/attn/out/kernel"].role == "attention_out"
    nnx_gpt = model_structure(models.NNXGPT(num_layers=2, rngs=nnx.Rngs(0)), tokens)
    assert nnx_gpt["blocks/1/mlp/fc2/kernel"].role == "mlp_out"
    vit = models.ViT(image_size=8, patch_size=4, d_model=16, num_layers=1)
    s = model_structure(vit, jnp.zeros((1, 8, 8, 3)))
    assert s["params/cls"].role == "embedding"  # concatenated to the patch tokens
    assert s["params/patch_embed/kernel"].role == "conv"
    lstm = model_structure(models.LSTMClassifier(), tokens)
    assert lstm["params/rnn_0/cell/hi/kernel"].role == "dense"  # not a residual MLP
    rezero = model_structure(models.ResNet(gate="rezero"), jnp.zeros((1, 8, 8, 3)), train=False)
    alpha = rezero["params/blocks_0/alpha"]
    assert alpha.role == "other"
    assert "ReZero" in alpha.reason


def test_plain_mlp_and_unknowns_are_other_with_a_reason():
    import flax.linen as nn

    class Gated(nn.Module):
        @nn.compact
        def __call__(self, x):
            gain = self.param("gain", nn.initializers.ones, (x.shape[-1],))
            unused = self.param("unused", nn.initializers.zeros, (3,))
            del unused
            return nn.Dense(2, name="head")(nn.relu(nn.Dense(8, name="hidden")(x * gain)))

    s = model_structure(Gated(), jnp.ones((2, 4)))
    assert s["params/hidden/kernel"].role == "dense"
    assert s["params/head/kernel"].role == "readout"
    assert s["params/gain"].role == "other"
    assert "no normalization" in s["params/gain"].reason
    assert s["params/unused"].role == "other"
    assert "not used" in s["params/unused"].reason
    assert all(leaf.role in ROLES for leaf in s.values())


def test_abstract_and_real_variables_agree():
    case = CASES["lm1b_untied_like"]()
    init = functools.partial(case.model.init, **case.kwargs)
    abstract = jax.eval_shape(init, jax.random.key(0), *case.args)
    a = model_structure(case.model, *case.args, variables=abstract, **case.kwargs)
    b = structure_of("lm1b_untied_like")
    assert {p: leaf.signature() for p, leaf in a.items()} == {
        p: leaf.signature() for p, leaf in b.items()
    }
    # ShapeDtypeStruct inputs work too (nothing is computed).
    tokens = jax.ShapeDtypeStruct(case.args[0].shape, case.args[0].dtype)
    c = model_structure(case.model, tokens, variables=abstract, **case.kwargs)
    assert c["params/logitdense/kernel"].role == "readout"


def test_report_table_and_lookup():
    s = structure_of("gemma_like")
    text = str(s)
    assert "attention_key+attention_value" in text
    assert "norm_scale (1 + scale)" in text
    assert "in[1] out[0, 2]" in text
    assert s.by_role()["attention_value"] == [p for p in s if "kv_einsum" in p]
    assert s.select("norm_scale:residual") == []
    with pytest.raises(KeyError, match="no leaf at"):
        s["nope"]
    with pytest.raises(ValueError, match="unknown role '@mlp:first'"):
        s.select("mlp:first")


def test_bad_inputs():
    case = CASES["lm1b_like"]()
    with pytest.raises(TypeError, match=r"flax\.linen\.Module or an nnx\.Module"):
        model_structure(lambda x: x, jnp.ones(3))
    with pytest.raises(Exception, match=r"fi.model_structure") as info:
        model_structure(case.model, jnp.ones((2, 3, 4, 5)), **case.kwargs)
    assert info.value is not None
    nnx_case = CASES["mha_mlp_nnx_like"]()
    with pytest.raises(TypeError, match="variables= is for Linen"):
        model_structure(nnx_case.model, *nnx_case.args, variables={})


def test_top_level_export():
    assert fi.model_structure is model_structure


def test_packed_projection_indexed_apart_keeps_its_packed_fan_out():
    import flax.linen as nn

    class Packed(nn.Module):
        @nn.compact
        def __call__(self, x):
            d = x.shape[-1]
            qkv = nn.Dense(3 * d, name="qkv")(x).reshape(*x.shape[:-1], 3, d)
            return nn.Dense(2, name="head")(qkv[..., 0, :] * qkv[..., 1, :] + qkv[..., 2, :])

    s = model_structure(Packed(), jnp.ones((2, 4)))
    leaf = s["params/qkv/kernel"]
    assert leaf.fan_in_axes == (0,)
    assert leaf.fan_out_axes == (1,)
    assert leaf.batch_axes == ()
    assert any("packed width" in e for e in leaf.evidence)


def test_a_structure_of_a_deeper_model_is_refused():
    deep = model_structure(models.GPT(num_layers=3), jnp.zeros((1, 4), jnp.int32))
    shallow = jax.eval_shape(
        models.GPT(num_layers=2).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32)
    )
    with pytest.raises(ValueError, match=r"the model uses 'params/blocks_2/"):
        fi.apply_rules(shallow, [("bias", fi.fill(0.0))], structure=deep)
    # The params collection alone is fine.
    two = model_structure(models.GPT(num_layers=2), jnp.zeros((1, 4), jnp.int32))
    fi.explain_rules(shallow["params"], [("@bias", fi.fill(0.0))], structure=two)


def test_a_model_without_parameters_prints():
    import flax.linen as nn

    class Identity(nn.Module):
        def __call__(self, x):
            return x

    s = model_structure(Identity(), jnp.ones(3))
    assert len(s) == 0
    assert "path" in str(s)


def test_batchnorm_with_axis_name_and_tuple_outputs():
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Conv(8, (3, 3), name="conv")(x)
            h = nn.BatchNorm(use_running_average=True, axis_name="batch", name="bn")(h)
            h = nn.relu(h)
            logits = nn.Dense(3, name="head")(h.mean(axis=(1, 2)))
            return logits, {"features": h}  # (logits, cache)

    s = model_structure(Net(), jnp.ones((2, 6, 6, 3)))
    assert s["params/conv/kernel"].role == "conv"
    assert s["params/bn/scale"].role == "norm_scale"
    assert s["params/bn/bias"].role == "norm_bias"
    assert s["params/head/kernel"].role == "readout"
    assert "statistic" in s["batch_stats/bn/mean"].reason
