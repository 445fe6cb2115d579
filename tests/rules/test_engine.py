"""apply_rules / explain_rules on real Linen and NNX models."""

import math
import zlib

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxinit.initializers import he_normal, normal, orthogonal
from flaxinit.rules import (
    LeafReport,
    RulesReport,
    apply_rules,
    apply_rules_,
    at,
    explain_rules,
    fill,
    per_layer,
    reinit,
    scale,
)

KEY = jax.random.key(7)


def h32(text):
    return zlib.crc32(text.encode())


def rule_key(key, path, pattern, occurrence=0):
    """The documented per-rule key of a leaf without a layer index."""
    return jax.random.fold_in(jax.random.fold_in(key, h32(path)), h32(f"{pattern}#{occurrence}"))


def assert_trees_bitwise_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --------------------------------------------------------------------------- models


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        # Tiny sizes: XLA on CPU compiles large 3-D random draws slowly.
        h = nn.Conv(4, (2,))(x)  # Conv_0
        h = nn.Conv(4, (2,))(h)  # Conv_1
        out_init = nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("heads", "kv", "embed")
        )
        h = nn.MultiHeadDotProductAttention(
            num_heads=2, qkv_features=4, out_kernel_init=out_init, name="attn"
        )(h)
        lstm = nn.LSTMCell(4, name="lstm")
        olstm = nn.OptimizedLSTMCell(4, name="olstm")
        _, y = lstm(lstm.initialize_carry(jax.random.key(0), h[:, 0].shape), h[:, 0])
        _, y2 = olstm(olstm.initialize_carry(jax.random.key(0), h[:, 0].shape), h[:, 0])
        return nn.Dense(2, name="head")(y + y2)


@pytest.fixture(scope="module")
def linen_vars():
    return LinenNet().init(jax.random.key(0), jnp.ones((1, 3, 4)))


LINEN_RULES = [
    ("Conv_*/kernel", reinit(he_normal(), name="he_normal")),
    ("attn/query/kernel", reinit(orthogonal(), in_axis=0, out_axis=(1, 2))),
    ("attn/out/kernel", scale(0.5)),
    ("*/hf/bias", fill(1.0)),
    ("/params/head/**", fill(0.0)),
]


@pytest.fixture(scope="module")
def linen_out(linen_vars):
    return apply_rules(linen_vars, LINEN_RULES, key=KEY)


def test_linen_model_rules(linen_vars, linen_out):
    v, out = linen_vars, linen_out
    p, q = v["params"], out["params"]
    for name in ("Conv_0", "Conv_1"):
        expected = he_normal()(
            rule_key(KEY, f"params/{name}/kernel", "Conv_*/kernel"), (2, 4, 4), jnp.float32
        )
        np.testing.assert_array_equal(q[name]["kernel"], expected)
        np.testing.assert_array_equal(q[name]["bias"], p[name]["bias"])
    w = q["attn"]["query"]["kernel"].reshape(4, 4)
    np.testing.assert_allclose(w @ w.T, np.eye(4), atol=1e-5)
    box = q["attn"]["out"]["kernel"]
    assert type(box) is nn.LogicallyPartitioned
    assert box.names == ("heads", "kv", "embed")
    np.testing.assert_array_equal(box.value, p["attn"]["out"]["kernel"].value * np.float32(0.5))
    for cell in ("lstm", "olstm"):
        np.testing.assert_array_equal(q[cell]["hf"]["bias"], np.ones(4, np.float32))
        np.testing.assert_array_equal(q[cell]["hi"]["bias"], p[cell]["hi"]["bias"])
        np.testing.assert_array_equal(q[cell]["hf"]["kernel"], p[cell]["hf"]["kernel"])
    np.testing.assert_array_equal(q["head"]["kernel"], 0.0)
    chex.assert_trees_all_equal_shapes_and_dtypes(nn.unbox(v), nn.unbox(out))
    assert jax.tree.structure(v) == jax.tree.structure(out)


def test_linen_jit_bitwise(linen_vars, linen_out):
    jitted = jax.jit(lambda t, k: apply_rules(t, LINEN_RULES, key=k))(linen_vars, KEY)
    assert_trees_bitwise_equal(linen_out, jitted)


def test_linen_without_params_level(linen_vars):
    out = apply_rules(linen_vars["params"], [("/head/kernel", fill(2.0)), ("hf/bias", fill(1.0))])
    np.testing.assert_array_equal(out["head"]["kernel"], 2.0)
    np.testing.assert_array_equal(out["lstm"]["hf"]["bias"], 1.0)
    assert type(out["attn"]["out"]["kernel"]) is nn.LogicallyPartitioned
    with pytest.raises(ValueError, match="closest paths: 'head/kernel'"):
        apply_rules(linen_vars["params"], [("/params/head/kernel", fill(2.0))])


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(4, 4, kernel_size=(2,), rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=2,
            in_features=4,
            qkv_features=4,
            decode=False,
            kernel_metadata={"out_sharding": (None, "heads", None)},
            rngs=rngs,
        )
        self.lstm = nnx.LSTMCell(4, 4, rngs=rngs)
        self.olstm = nnx.OptimizedLSTMCell(4, 4, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)


@pytest.fixture(scope="module")
def nnx_net():
    with nnx.use_eager_sharding(False):
        return NNXNet(nnx.Rngs(0))


def forget_gate(ctx):
    h = ctx.shape[-1] // 4
    return (..., slice(h, 2 * h))


NNX_RULES = [
    ("conv/kernel", he_normal()),
    ("attn/query/kernel", reinit(orthogonal(), in_axis=0, out_axis=(1, 2))),
    ("attn/out/kernel", scale(0.5)),
    ("lstm/hf/bias", fill(1.0)),
    ("olstm/dense_h/bias", at(forget_gate, fill(1.0))),
    ("olstm/dense_h/kernel", at[:, 4:8](orthogonal())),
]


@pytest.fixture(scope="module")
def nnx_out(nnx_net):
    before = jax.tree.map(np.asarray, nnx.state(nnx_net))
    out = apply_rules(nnx_net, NNX_RULES, key=KEY)
    assert_trees_bitwise_equal(nnx.state(nnx_net), before)  # the input is left alone
    return out


def test_nnx_module_rules(nnx_net, nnx_out):
    m, out = nnx_net, nnx_out
    assert type(out) is NNXNet
    assert out is not m
    expected = he_normal()(rule_key(KEY, "conv/kernel", "conv/kernel"), (2, 4, 4), jnp.float32)
    np.testing.assert_array_equal(out.conv.kernel[...], expected)
    w = out.attn.query.kernel[...].reshape(4, 4)
    np.testing.assert_allclose(w @ w.T, np.eye(4), atol=1e-5)
    np.testing.assert_array_equal(
        out.attn.out.kernel[...], m.attn.out.kernel[...] * np.float32(0.5)
    )
    np.testing.assert_array_equal(out.lstm.hf.bias[...], 1.0)
    np.testing.assert_array_equal(out.lstm.if_.kernel[...], m.lstm.if_.kernel[...])
    bias = np.zeros(16, np.float32)
    bias[4:8] = 1.0
    np.testing.assert_array_equal(out.olstm.dense_h.bias[...], bias)
    kernel = out.olstm.dense_h.kernel[...]
    np.testing.assert_allclose(kernel[:, 4:8].T @ kernel[:, 4:8], np.eye(4), atol=1e-5)
    np.testing.assert_array_equal(kernel[:, :4], m.olstm.dense_h.kernel[...][:, :4])
    np.testing.assert_array_equal(kernel[:, 8:], m.olstm.dense_h.kernel[...][:, 8:])
    # Variables keep their type and metadata.
    assert type(out.bn.mean) is nnx.BatchStat
    assert type(out.attn.query.kernel) is nnx.Param
    assert out.attn.query.kernel.get_metadata() == m.attn.query.kernel.get_metadata()
    assert out.attn.query.kernel.get_metadata()["out_sharding"] == (None, "heads", None)


def test_nnx_jit_bitwise_on_state_and_module(nnx_net, nnx_out):
    expected = nnx.state(nnx_out)
    jitted = jax.jit(lambda s, k: apply_rules(s, NNX_RULES, key=k))(nnx.state(nnx_net), KEY)
    assert_trees_bitwise_equal(jitted, expected)
    jit_module = jax.jit(lambda m, k: apply_rules(m, NNX_RULES, key=k))(nnx_net, KEY)
    assert_trees_bitwise_equal(nnx.state(jit_module), expected)


def test_apply_rules_in_place():
    m = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    kernel_var = m.kernel
    expected = apply_rules(m, [("kernel", normal(1.0)), ("bias", fill(0.5))], key=KEY)
    assert apply_rules_(m, [("kernel", normal(1.0)), ("bias", fill(0.5))], key=KEY) is m
    assert m.kernel is kernel_var
    np.testing.assert_array_equal(m.kernel[...], expected.kernel[...])
    np.testing.assert_array_equal(m.bias[...], 0.5)
    with pytest.raises(TypeError, match=r"nnx\.Module"):
        apply_rules_({"a": jnp.ones(2)}, [("a", fill(0.0))])


# --------------------------------------------------------------------------- semantics


def test_all_matching_rules_apply_in_order():
    tree = {"w": jnp.zeros((64, 32))}
    drawn = apply_rules(tree, [("w", normal(1.0))], key=KEY)["w"]
    chained = apply_rules(tree, [("w", normal(1.0)), ("**", scale(2.0))], key=KEY)["w"]
    np.testing.assert_array_equal(chained, drawn * np.float32(2.0))
    reversed_ = apply_rules(tree, [("**", scale(2.0)), ("w", normal(1.0))], key=KEY)["w"]
    np.testing.assert_array_equal(reversed_, drawn)  # the re-draw wins when it comes last


def test_rules_draw_independently_and_keys_follow_pattern():
    record = at[0](lambda key, leaf, ctx: jax.random.key_data(key))
    record2 = at[1](lambda key, leaf, ctx: jax.random.key_data(key))
    tree = {"k": jnp.zeros((2, 2), jnp.uint32)}
    out = apply_rules(tree, [("k", record), ("k", record2)], key=KEY)["k"]
    np.testing.assert_array_equal(out[0], jax.random.key_data(rule_key(KEY, "k", "k", 0)))
    np.testing.assert_array_equal(out[1], jax.random.key_data(rule_key(KEY, "k", "k", 1)))
    assert not np.array_equal(out[0], out[1])


def test_unrelated_rules_do_not_change_draws():
    tree = {"a": jnp.zeros((8, 8)), "b": jnp.zeros((8, 8))}
    alone = apply_rules(tree, [("a", normal(1.0))], key=KEY)
    more = apply_rules(tree, [("b", normal(1.0)), ("b", scale(3.0)), ("a", normal(1.0))], key=KEY)
    np.testing.assert_array_equal(alone["a"], more["a"])


def test_order_independence_when_leaves_are_added_or_reordered():
    z = jnp.zeros((4, 4))
    small = {"enc": {"w": z}, "dec": {"w": z}}
    bigger = {"aaa": z, "dec": {"w": z, "extra": z}, "enc": {"w": z}, "zzz": [z, z]}
    rules = [("**", normal(1.0))]
    a = apply_rules(small, rules, key=KEY)
    b = apply_rules(bigger, rules, key=KEY)
    np.testing.assert_array_equal(a["enc"]["w"], b["enc"]["w"])
    np.testing.assert_array_equal(a["dec"]["w"], b["dec"]["w"])
    assert not np.array_equal(a["enc"]["w"], a["dec"]["w"])


def test_order_independence_on_real_models():
    class Small(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(4, name="out")(nn.Dense(8, name="fc")(x))

    class Bigger(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(8, name="fc")(x)
            x = nn.Dense(8, name="adapter")(x)  # a new layer in the middle
            return nn.Dense(4, name="out")(x)

    x = jnp.ones((1, 8))
    rules = [("kernel", he_normal())]
    a = apply_rules(Small().init(jax.random.key(0), x), rules, key=KEY)["params"]
    b = apply_rules(Bigger().init(jax.random.key(1), x), rules, key=KEY)["params"]
    np.testing.assert_array_equal(a["fc"]["kernel"], b["fc"]["kernel"])
    np.testing.assert_array_equal(a["out"]["kernel"], b["out"]["kernel"])


def test_typed_and_legacy_keys_agree():
    tree = {"w": jnp.zeros((16, 16)), "layers_2": {"w": jnp.zeros((4, 4))}}
    rules = [("**/w", he_normal())]
    typed = apply_rules(tree, rules, key=jax.random.key(3))
    legacy = apply_rules(tree, rules, key=jax.random.PRNGKey(3))
    assert_trees_bitwise_equal(typed, legacy)
    with pytest.raises(TypeError, match="key"):
        apply_rules(tree, rules, key=3)
    with pytest.raises(ValueError, match="single key"):
        apply_rules(tree, rules, key=jax.random.split(KEY, 2))


def test_same_key_same_tree_same_bits_and_other_key_differs():
    tree = {"w": jnp.zeros((16, 16))}
    a = apply_rules(tree, [("w", normal(1.0))], key=KEY)
    b = apply_rules(tree, [("w", normal(1.0))], key=KEY)
    c = apply_rules(tree, [("w", normal(1.0))], key=jax.random.key(8))
    np.testing.assert_array_equal(a["w"], b["w"])
    assert not np.array_equal(a["w"], c["w"])


def test_no_rules_and_non_strict_unmatched_return_the_same_values(linen_vars):
    assert_trees_bitwise_equal(apply_rules(linen_vars, []), linen_vars)
    out = apply_rules(linen_vars, [("nope", fill(0.0))], strict=False)
    assert_trees_bitwise_equal(out, linen_vars)


def test_eager_call_keeps_committed_shardings():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("a", "b"))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("a", "b"))
    w = jax.device_put(jnp.zeros((16, 8)), sharding)
    rules = [("w", normal(1.0)), ("b", fill(1.0))]
    out = apply_rules({"w": w, "b": np.zeros(8, np.float32)}, rules, key=KEY)
    assert out["w"].sharding == sharding
    reference = apply_rules({"w": jnp.zeros((16, 8)), "b": jnp.zeros(8)}, rules, key=KEY)
    np.testing.assert_array_equal(out["w"], reference["w"])
    np.testing.assert_array_equal(out["b"], 1.0)


# --------------------------------------------------------------------------- errors


def test_strict_unmatched_names_pattern_and_closest_paths(linen_vars):
    with pytest.raises(ValueError, match="matched no leaf") as info:
        apply_rules(linen_vars, [("kernel", fill(0.0)), ("*/atn/out/kernel", fill(0.0))])
    msg = str(info.value)
    assert "rule 1 pattern '*/atn/out/kernel'" in msg
    assert "'params/attn/out/kernel'" in msg
    closest = msg.split("closest paths: ")[1].split("\n")[0].split(", ")
    assert len(closest) == 3
    assert "rule 0" not in msg


def test_strict_reports_every_unmatched_rule():
    tree = {"params": {"dense": {"kernel": jnp.ones((2, 2))}}}
    with pytest.raises(ValueError, match="matched no leaf") as info:
        apply_rules(tree, [("kernal", fill(0.0)), ("re:bias", fill(0.0))])
    msg = str(info.value)
    assert "'kernal'" in msg
    assert "'re:bias'" in msg
    assert "'params/dense/kernel'" in msg


@pytest.mark.parametrize(
    "rules",
    [[("kernel",)], ["kernel"], [("kernel", fill(0.0), 1)], "kernel", {"kernel": fill(0.0)}, 3],
)
def test_malformed_rules_are_type_errors(rules):
    with pytest.raises(TypeError):
        apply_rules({"kernel": jnp.ones(2)}, rules)


def test_bad_pattern_or_action_raise_before_any_work():
    with pytest.raises(ValueError, match="unbalanced"):
        apply_rules({"kernel": jnp.ones(2)}, [("kernel", fill(0.0)), ("ker[nel", fill(0.0))])
    with pytest.raises(TypeError, match="action must be"):
        apply_rules({"kernel": jnp.ones(2)}, [("kernel", 0.0)])


def test_shape_or_dtype_change_raises_naming_path_and_both():
    tree = {"params": {"w": jnp.ones((2, 3))}}
    with pytest.raises(ValueError, match=r"'params/w'.*shape \(2, 3\) -> \(3, 2\)"):
        apply_rules(tree, [("w", lambda key, x, ctx: x.T)])
    with pytest.raises(ValueError, match=r"'params/w'.*dtype float32 -> float16"):
        apply_rules(tree, [("w", lambda key, x, ctx: x.astype(jnp.float16))])
    wrong_dtype_init = lambda key, shape, dtype=None: jnp.zeros(shape, jnp.int32)
    with pytest.raises(ValueError, match=r"dtype float32 -> int32"):
        apply_rules(tree, [("w", wrong_dtype_init)], key=KEY)


def test_context_checks():
    tree = {"w": jnp.ones((2, 2))}
    with pytest.raises(ValueError, match="shadow"):
        apply_rules(tree, [("w", fill(0.0))], context={"path": 1})
    with pytest.raises(TypeError, match="num_layers"):
        apply_rules(tree, [("w", fill(0.0))], context={"num_layers": 2.5})
    with pytest.raises(TypeError, match="layer_of"):
        apply_rules(tree, [("w", fill(0.0))], context={"layer_of": 3})


# --------------------------------------------------------------------------- layers


def _ctx_probe(seen):
    def probe(key, leaf, ctx):
        seen[(ctx.path, ctx.layer)] = ctx
        return leaf

    return probe


def test_layer_and_num_layers_from_paths_and_context():
    z = jnp.zeros((2, 2))
    tree = {
        "enc": {f"layers_{i}": {"w": z} for i in range(2)},
        "dec": {f"block_{i}": {"w": z} for i in range(4)},
        "head": {"w": z},
    }
    seen = {}
    apply_rules(tree, [("w", _ctx_probe(seen))])
    assert seen[("enc/layers_1/w", 1)].num_layers == 2
    assert seen[("dec/block_3/w", 3)].num_layers == 4
    assert seen[("head/w", None)].num_layers == 4  # the tree's largest stack
    seen.clear()
    apply_rules(tree, [("w", _ctx_probe(seen))], context={"num_layers": 12})
    assert {c.num_layers for c in seen.values()} == {12}
    seen.clear()
    layer_of = lambda path: 7 if path.startswith("head") else None
    apply_rules(tree, [("w", _ctx_probe(seen))], context={"layer_of": layer_of})
    assert seen[("head/w", 7)].num_layers == 8
    assert ("enc/layers_1/w", None) in seen


def test_no_layers_gives_none():
    seen = {}
    apply_rules({"w": jnp.zeros((2, 2))}, [("w", _ctx_probe(seen))])
    assert seen[("w", None)].num_layers is None


class Block(nn.Module):
    @nn.compact
    def __call__(self, x, _=None):
        boxed = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("mlp", "embed"))
        h = nn.Dense(4, name="fc")(x)  # unboxed: stacking is declared by per_layer
        return x + nn.Dense(4, kernel_init=boxed, name="out")(h), None


class Unrolled(nn.Module):
    @nn.compact
    def __call__(self, x):
        for i in range(3):
            x, _ = Block(name=f"layers_{i}")(x)
        return x


class Scanned(nn.Module):
    @nn.compact
    def __call__(self, x):
        stack = nn.scan(
            Block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=3,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        return stack(name="layers")(x, None)[0]


DEPTH_RULES = [
    ("out/kernel", normal(0.02)),
    ("out/kernel", scale(lambda ctx: 1 / math.sqrt(2 * (ctx.layer + 1)))),
    ("fc/kernel", per_layer(orthogonal())),
    ("fc/bias", per_layer(fill(lambda ctx: ctx.layer + 10 * ctx.num_layers))),
]


def test_linen_scan_matches_unrolled_per_layer():
    x = jnp.ones((1, 4))
    unrolled = Unrolled().init(jax.random.key(0), x)
    scanned = Scanned().init(jax.random.key(1), x)
    run = lambda t: apply_rules(t, DEPTH_RULES, key=KEY)
    eager = run(scanned)
    assert_trees_bitwise_equal(jax.jit(run)(scanned), eager)
    u, s = nn.unbox(run(unrolled))["params"], eager["params"]["layers"]
    assert type(s["out"]["kernel"]) is nn.LogicallyPartitioned
    assert s["out"]["kernel"].names == ("layers", "mlp", "embed")
    s = nn.unbox(s)
    for i in range(3):
        for leaf in (("out", "kernel"), ("fc", "kernel"), ("fc", "bias")):
            np.testing.assert_array_equal(
                s[leaf[0]][leaf[1]][i], u[f"layers_{i}"][leaf[0]][leaf[1]]
            )
        np.testing.assert_array_equal(u[f"layers_{i}"]["fc"]["bias"], i + 30)
        # The depth recipe itself: layer i's draw times 1/sqrt(2(i+1)).
        k = jax.random.fold_in(jax.random.fold_in(KEY, h32("params/layers/out/kernel")), i)
        draw = normal(0.02)(jax.random.fold_in(k, h32("out/kernel#0")), (4, 4), jnp.float32)
        np.testing.assert_allclose(
            s["out"]["kernel"][i], draw / math.sqrt(2 * (i + 1)), rtol=1e-6, atol=0
        )


class NBlock(nnx.Module):
    def __init__(self, rngs):
        self.fc = nnx.Linear(4, 4, rngs=rngs)
        self.out = nnx.Linear(4, 4, kernel_metadata={"out_sharding": ("mlp", "embed")}, rngs=rngs)


class NStack(nnx.Module):
    def __init__(self, rngs):
        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make(rngs):
            return NBlock(rngs)

        self.blocks = make(rngs)


class NList(nnx.Module):
    def __init__(self, rngs):
        self.blocks = nnx.List([NBlock(rngs) for _ in range(3)])


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg", "unsafe_rbg"])
def test_nnx_vmap_matches_list_per_layer(impl):
    with nnx.use_eager_sharding(False):
        stacked, unrolled = NStack(nnx.Rngs(0)), NList(nnx.Rngs(1))
    key = jax.random.key(5, impl=impl)
    s = apply_rules(stacked, DEPTH_RULES, key=key)
    u = apply_rules(unrolled, DEPTH_RULES, key=key)
    for i in range(3):
        for mod, p in (("out", "kernel"), ("fc", "kernel"), ("fc", "bias")):
            got = getattr(getattr(s.blocks, mod), p)[...][i]
            want = getattr(getattr(u.blocks[i], mod), p)[...]
            np.testing.assert_array_equal(got, want)
    assert s.blocks.out.kernel.get_metadata()["out_sharding"] == ("layers", "mlp", "embed")


def test_per_layer_axis_and_opt_out():
    tree = {"a": jnp.zeros((4, 3, 5)), "b": jnp.zeros((3, 2))}
    out = apply_rules(
        tree,
        [
            ("a", per_layer(fill(lambda ctx: ctx.layer), axis=1)),
            ("b", per_layer(fill(lambda ctx: ctx.num_layers), axis=-2)),
        ],
    )
    for i in range(3):
        np.testing.assert_array_equal(out["a"][:, i, :], i)
    np.testing.assert_array_equal(out["b"], 3.0)
    with pytest.raises(ValueError, match="out of range"):
        apply_rules(tree, [("b", per_layer(fill(0.0), axis=2))])

    # `at` inside a stacked leaf indexes one layer's slice.
    stack = {"bias": jnp.zeros((3, 8))}
    static = at[..., 2:4](fill(lambda ctx: ctx.layer + 1))
    dynamic = at(lambda ctx: slice(ctx.shape[-1] // 2, None), fill(lambda ctx: -ctx.layer))
    out = apply_rules(stack, [("bias", per_layer(static)), ("bias", per_layer(dynamic))])
    expected = np.zeros((3, 8), np.float32)
    for i in range(3):
        expected[i, 2:4] = i + 1
        expected[i, 4:] = -i
    np.testing.assert_array_equal(out["bias"], expected)

    box = nn.LogicallyPartitioned(jnp.zeros((3, 4)), names=("layers", "embed"))
    seen = {}
    apply_rules({"w": box}, [("w", per_layer(_ctx_probe(seen), axis=None))])
    assert seen[("w", None)].shape == (3, 4)
    seen.clear()
    apply_rules({"w": box}, [("w", _ctx_probe(seen))])
    assert seen[("w", 2)].shape == (4,)
    assert seen[("w", 2)].stacked


# --------------------------------------------------------------------------- explain


def test_explain_rules_report(linen_vars):
    rules = [*LINEN_RULES, ("attn/**/kernel", scale(2.0)), ("nothing/here", fill(0.0))]
    report = explain_rules(linen_vars, rules)
    assert isinstance(report, RulesReport)
    assert len(report) == len(jax.tree.leaves(nn.unbox(linen_vars)))
    rec = report.by_path()["params/attn/out/kernel"]
    assert isinstance(rec, LeafReport)
    assert rec.shape == (2, 2, 4)
    assert rec.dtype == np.float32
    assert rec.rules == (2, 5)
    assert rec.patterns == ("attn/out/kernel", "attn/**/kernel")
    assert rec.actions == ("scale(0.5)", "scale(2.0)")
    assert report.by_path()["params/Conv_0/kernel"].actions == ("reinit(he_normal)",)
    assert "params/Conv_0/bias" in report.untouched
    assert "params/Conv_0/kernel" not in report.untouched
    assert [(m.index, m.pattern) for m in report.unmatched_rules] == [(6, "nothing/here")]
    text = str(report)
    lines = text.splitlines()
    assert lines[0].split() == ["path", "shape", "dtype", "layer", "rules"]
    # Aligned: every row starts its second column where the header does.
    col = lines[0].index("shape")
    rows = [line for line in lines[2:] if line.startswith("params/")]
    assert len(rows) == len(report)
    assert all(line[col - 2 : col] == "  " and line[col] != " " for line in rows)
    assert "#2 scale(0.5) -> #5 scale(2.0)" in text
    assert "unmatched rules:" in text
    assert "'nothing/here'" in text
    assert "RulesReport(" in repr(report)


def test_explain_on_abstract_and_stacked_trees():
    abstract = jax.eval_shape(Scanned().init, jax.random.key(0), jnp.ones((1, 4)))
    report = explain_rules(abstract, DEPTH_RULES)
    rec = report.by_path()["params/layers/out/kernel"]
    assert rec.stacked_axis == 0
    assert rec.actions[0].startswith("per layer(axis 0, 3 layers): reinit(normal(stddev=0.02))")
    assert report.by_path()["params/layers/fc/bias"].actions[0].startswith("per layer")
    assert report.unmatched_rules == ()
    assert "stack@0" in str(report)


def test_at_out_of_range_or_partial_raises_naming_the_leaf():
    tree = {"b": jnp.zeros((64,))}
    for index, fragment in [
        ((Ellipsis, slice(64, 128)), "reaches outside"),
        (200, "index 200 is outside"),
        (slice(32, 96), "reaches outside"),
        (slice(10, 10), "selects nothing"),
    ]:
        with pytest.raises(ValueError, match=rf"'b' of shape \(64,\).*{fragment}"):
            apply_rules(tree, [("b", at(index, fill(1.0)))])
    out = apply_rules(tree, [("b", at[..., 16:32](fill(1.0)))])
    assert float(out["b"].sum()) == 16.0


def test_fan_based_redraw_of_a_vector_names_rule_and_leaf_and_is_explained():
    from flaxinit.initializers import he_normal

    tree = {"dense": {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros((3,))}}
    rules = [("*", he_normal())]
    with pytest.raises(ValueError, match=r"rule 0 \('\*'.*'dense/bias' of shape \(3,\)"):
        apply_rules(tree, rules, key=jax.random.key(0))
    report = explain_rules(tree, rules)
    assert any("cannot draw 'dense/bias'" in p for p in report.problems)
    assert "problems:" in str(report)


def test_explain_has_a_legend_and_flags_a_scale_a_later_redraw_overwrites():
    from flaxinit.initializers import normal

    tree = {"w": jnp.zeros((4, 4))}
    rules = [("w", scale(0.5)), ("w", normal(0.02))]
    report = explain_rules(tree, rules)
    redraw = "reinit(normal(stddev=0.02))"
    assert report.legend == ((0, "w", "scale(0.5)"), (1, "w", redraw))
    assert report.problems == (f"#0 scale(0.5) on 'w' is overwritten by #1 {redraw}",)
    text = str(report)
    assert "#0 'w' -> scale(0.5)" in text
    # A re-draw then a scale is the intended order: nothing to flag.
    assert explain_rules(tree, rules[::-1]).problems == ()


def test_closest_paths_are_ranked_by_segments():
    tree = {
        "encoderdecoderblock_0": {
            "MultiHeadDotProductAttention_0": {"out": {"kernel": jnp.zeros((2, 2))}},
            "MlpBlock_0": {
                "Dense_0": {"kernel": jnp.zeros((2, 2))},
                "Dense_1": {"kernel": jnp.zeros((2, 2))},
            },
        }
    }
    with pytest.raises(
        ValueError, match=r"closest paths: 'encoderdecoderblock_0/MlpBlock_0/Dense_1"
    ):
        apply_rules(tree, [("fc2/kernel", fill(0.0))])


def test_an_equal_recipe_reuses_the_compiled_program_and_a_changed_one_does_not():
    from flaxinit import recipes
    from flaxinit.models import GPT
    from flaxinit.rules import engine

    tokens = jnp.zeros((1, 4), jnp.int32)
    shapes = jax.eval_shape(GPT(num_layers=2).init, jax.random.key(0), tokens)
    tree = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
    key = jax.random.key(3)
    first = apply_rules(tree, recipes.gpt2(2), key=key)
    programs = dict(engine._PROGRAMS)
    # A new call of the recipe builds new closures with the same code and values.
    again = apply_rules(tree, recipes.gpt2(2), key=key)
    assert dict(engine._PROGRAMS).keys() == programs.keys()
    chex.assert_trees_all_equal(first, again)
    # Another std is another program and other values, never a stale result.
    other = apply_rules(tree, recipes.gpt2(2, std=0.03), key=key)
    assert len(set(engine._PROGRAMS) - set(programs)) == 1
    w = other["params"]["blocks_0"]["mlp"]["fc1"]["kernel"]
    v = first["params"]["blocks_0"]["mlp"]["fc1"]["kernel"]
    np.testing.assert_allclose(np.asarray(w), 1.5 * np.asarray(v), rtol=1e-5)


_FACTOR = 0.5


def test_a_cached_program_sees_a_changed_global():
    global _FACTOR
    tree = {"w": jnp.ones((3,))}
    rules = lambda: [("w", scale(lambda ctx: _FACTOR))]
    assert float(apply_rules(tree, rules())["w"][0]) == 0.5
    _FACTOR = 2.0
    try:
        assert float(apply_rules(tree, rules())["w"][0]) == 2.0
    finally:
        _FACTOR = 0.5


def test_a_cached_program_sees_a_mutated_object():
    class Config:
        factor = 0.5

    config = Config()
    tree = {"w": jnp.ones((3,))}
    rules = lambda: [("w", scale(lambda ctx: config.factor))]
    assert float(apply_rules(tree, rules())["w"][0]) == 0.5
    config.factor = 3.0
    assert float(apply_rules(tree, rules())["w"][0]) == 3.0
