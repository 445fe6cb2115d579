"""fi.mup.rules / scale_updates / learning_rate_multipliers / update_labels: TP-V Table 3
relative to the base model's own init, the multipliers moved by the abc-symmetry (proved
exactly on a small network), NNX states, jit, and the errors."""

from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import flaxinit as fi
from flaxinit.models import GPT, NNXGPT

X = jnp.ones((1, 8))
TOKENS = jnp.zeros((2, 8), jnp.int32)


LECUN = nn.initializers.lecun_normal()


def mlp(width: int, init=LECUN) -> nn.Module:
    dense = lambda n: nn.Dense(n, kernel_init=init)
    return nn.Sequential([dense(width), nn.relu, dense(width), nn.relu, dense(3)])


def rms(x) -> float:
    return float(jnp.sqrt(jnp.mean(jnp.square(x))))


def kernels(variables):
    return {k: v["kernel"] for k, v in variables["params"].items()}


@pytest.mark.parametrize(
    "init",
    [nn.initializers.lecun_normal(), nn.initializers.normal(0.02)],
    ids=["fan_in_init", "constant_std_init"],
)
def test_init_is_table_3_relative_to_the_base_init(init):
    # Whatever the model's own width rule (lecun: 1/sqrt(fan_in); GPT-2: 0.02 flat), the
    # result is the base init's scale times muP's factor.
    params = mlp(256, init).init(jax.random.key(0), X)
    base = mlp(64, init).init(jax.random.key(1), X)
    new = kernels(fi.apply_rules(params, fi.mup.rules(params, base), key=jax.random.key(2)))
    old = kernels(base)
    np.testing.assert_allclose(rms(new["layers_0"]), rms(old["layers_0"]), rtol=1e-5)  # input
    np.testing.assert_allclose(rms(new["layers_2"]), rms(old["layers_2"]) / 2, rtol=1e-5)  # hidden
    assert float(jnp.abs(new["layers_4"]).max()) == 0.0  # readout="zero"
    scaled = fi.mup.rules(params, base, readout="scaled")
    out = kernels(fi.apply_rules(params, scaled, key=jax.random.key(2)))["layers_4"]
    np.testing.assert_allclose(rms(out), rms(old["layers_4"]) / 4, rtol=1e-5)


def test_constant_std_init_hidden_rms_shrinks_with_sqrt_width():
    init = nn.initializers.normal(0.02)
    params = mlp(256, init).init(jax.random.key(0), X)
    base = mlp(64, init).init(jax.random.key(1), X)
    new = kernels(fi.apply_rules(params, fi.mup.rules(params, base), key=jax.random.key(2)))
    # base rms of 64*64 draws: 0.02 within 5 standard errors (0.02 * 5 / sqrt(2 * 4096)).
    band = 0.02 * 5 / math.sqrt(2 * 64 * 64)
    assert abs(rms(new["layers_2"]) - 0.01) < band / 2
    assert abs(rms(kernels(params)["layers_2"]) - 0.01) > 5 * band  # the SP draw: 0.02


def test_flax_embed_is_input_like_and_keeps_the_base_scale():
    # nn.Embed draws 1/sqrt(features): shrinking with width. muP wants the base value.
    class Tiny(nn.Module):
        width: int

        @nn.compact
        def __call__(self, tokens):
            return nn.Dense(5)(nn.Embed(50, self.width)(tokens))

    params = Tiny(256).init(jax.random.key(0), TOKENS)
    base = Tiny(16).init(jax.random.key(1), TOKENS)
    new = fi.apply_rules(params, fi.mup.rules(params, base), key=jax.random.key(2))
    table, base_table = (
        new["params"]["Embed_0"]["embedding"],
        base["params"]["Embed_0"]["embedding"],
    )
    np.testing.assert_allclose(rms(table), rms(base_table), rtol=1e-5)
    assert rms(params["params"]["Embed_0"]["embedding"]) < rms(base_table) / 3


def test_scale_updates_multiplies_by_table_3():
    shapes = lambda w: jax.eval_shape(mlp(w).init, jax.random.key(0), X)["params"]
    params = mlp(256).init(jax.random.key(0), X)["params"]
    ones = jax.tree.map(jnp.ones_like, params)
    for optimizer, want in [
        ("adam", {"layers_0": 1.0, "layers_2": 0.25, "layers_4": 0.25}),
        ("sgd", {"layers_0": 4.0, "layers_2": 1.0, "layers_4": 0.25}),
    ]:
        tx = fi.mup.scale_updates(shapes(256), shapes(64), optimizer=optimizer)
        updates, _ = tx.update(ones, tx.init(params), params)
        got = {k: float(v["kernel"][0, 0]) for k, v in updates.items()}
        assert got == want, optimizer
        bias = float(updates["layers_0"]["bias"][0])
        assert bias == (1.0 if optimizer == "adam" else 4.0)  # vector: Adam x1, SGD x m_out
    multipliers = fi.mup.learning_rate_multipliers(shapes(256), shapes(64))
    assert multipliers["layers_2"]["kernel"] == 0.25
    # Built from Linen variables, it scales the params collection the optimizer updates.
    variables = lambda w: jax.eval_shape(mlp(w).init, jax.random.key(0), X)
    tx = fi.mup.scale_updates(variables(256), variables(64))
    updates, _ = tx.update(ones, tx.init(params), params)
    assert float(updates["layers_2"]["kernel"][0, 0]) == 0.25


def test_scale_updates_under_jit_and_with_multi_transform_agree():
    params = mlp(128).init(jax.random.key(0), X)["params"]
    base = jax.eval_shape(mlp(32).init, jax.random.key(0), X)["params"]
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
    chained = optax.chain(optax.adam(1e-2), fi.mup.scale_updates(params, base))
    labels, multipliers = fi.mup.update_labels(params, base)
    multi = optax.multi_transform(
        {k: optax.chain(optax.adam(1e-2), optax.scale(m)) for k, m in multipliers.items()}, labels
    )

    @jax.jit
    def step(p, tx_state, tx_index):
        tx = (chained, multi)[tx_index]
        return tx.update(grads, tx_state, p)[0]

    a = jax.jit(lambda p, s: chained.update(grads, s, p)[0])(params, chained.init(params))
    b = jax.jit(lambda p, s: multi.update(grads, s, p)[0])(params, multi.init(params))
    chex.assert_trees_all_close(a, b, rtol=1e-6)
    del step


def test_abc_symmetry_moving_a_forward_multiplier_is_exact_under_adam():
    # A layer computing (a * w) x trains exactly like one computing w' x with w' = a w at
    # init and Adam's LR times a (eps = 0): the rule behind the moved 1/d_head and L^-alpha.
    a, lr, steps = 0.25, 1e-2, 5
    x = jax.random.normal(jax.random.key(0), (16, 6))
    y = jax.random.normal(jax.random.key(1), (16, 3))
    w0 = {"w": jax.random.normal(jax.random.key(2), (6, 3)), "v": jnp.ones((3, 3))}

    def train(multiplier, params, tx):
        def loss(p):
            return jnp.mean((x @ (multiplier * p["w"]) @ p["v"] - y) ** 2)

        state = tx.init(params)
        for _ in range(steps):
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            params = optax.apply_updates(params, updates)
        return multiplier * params["w"]

    explicit = train(a, w0, optax.adam(lr, eps=0.0))
    moved_tx = optax.chain(
        optax.adam(lr, eps=0.0),
        optax.masked(optax.scale(a), {"w": True, "v": False}),
    )
    moved = train(1.0, {"w": a * w0["w"], "v": w0["v"]}, moved_tx)
    np.testing.assert_allclose(moved, explicit, rtol=2e-5, atol=1e-7)
    unmoved = train(1.0, {"w": a * w0["w"], "v": w0["v"]}, optax.adam(lr, eps=0.0))
    assert float(jnp.max(jnp.abs(unmoved - explicit))) > 1e-3  # the LR factor matters


def test_transformer_attention_and_readout_with_structure():
    model, base_model = GPT(d_model=64), GPT(d_model=32)
    params = jax.eval_shape(model.init, jax.random.key(0), TOKENS)
    base = jax.eval_shape(base_model.init, jax.random.key(1), TOKENS)
    structure = fi.model_structure(model, TOKENS, variables=params)
    parametrization = fi.mup.parametrize(params, base, structure=structure)
    plan = {p.path: p for p in parametrization.leaves}
    q = plan["params/blocks_0/attn/query/kernel"]
    # hidden (x 1/sqrt 2) and the moved 1/d_head (head_dim 16 -> 32: x 1/sqrt 2)
    assert q.init_scale == pytest.approx(0.5)
    assert q.lr_multiplier == pytest.approx(0.5 * 2**-0.5)
    assert plan["params/blocks_0/attn/query/bias"].init == "scale"
    assert plan["params/blocks_0/attn/key/kernel"].init_scale == pytest.approx(2**-0.5)
    assert plan["params/blocks_0/attn/key/kernel"].lr_multiplier == pytest.approx(0.5)
    assert plan["params/blocks_0/attn/out/kernel"].shape.kind == "hidden"
    assert plan["params/head/kernel"].init == "zero"
    assert plan["params/wte/embedding"].lr_multiplier == 1.0
    assert "attention 1/d_head" in str(parametrization)


def test_depth_multipliers_on_scanned_and_unrolled_stacks():
    for scan in (True, False):
        model = GPT(d_model=64, num_layers=4, scan=scan)
        params = jax.eval_shape(model.init, jax.random.key(0), TOKENS)
        base = jax.eval_shape(
            GPT(d_model=32, num_layers=2, scan=scan).init, jax.random.key(1), TOKENS
        )
        structure = fi.model_structure(model, TOKENS, variables=params)
        prefix = "params/blocks" if scan else "params/blocks_3"
        complete = {
            p.path: p
            for p in fi.mup.parametrize(params, base, structure=structure, depth="completep").leaves
        }
        fc2 = complete[f"{prefix}/mlp/fc2/kernel"]
        assert fc2.init_scale == pytest.approx(2**-0.5 / 2)  # hidden, then x (L/L_base)^-1
        assert fc2.lr_multiplier == pytest.approx(0.5 / 2)
        assert complete[f"{prefix}/mlp/fc1/kernel"].lr_multiplier == pytest.approx(0.5)
        sqrt = {
            p.path: p
            for p in fi.mup.parametrize(params, base, structure=structure, depth="depth_mup").leaves
        }
        # Depth-muP: branch x 2^-1/2; every in-block leaf's Adam LR x 2^(1/2 - 1).
        assert sqrt[f"{prefix}/mlp/fc1/kernel"].lr_multiplier == pytest.approx(0.5 * 2**-0.5)
        assert sqrt[f"{prefix}/ln1/scale"].lr_multiplier == pytest.approx(2**-0.5)
        assert sqrt["params/ln_f/scale"].lr_multiplier == 1.0


def test_nnx_state_and_optimizer():
    model, base = NNXGPT(d_model=64, rngs=nnx.Rngs(0)), NNXGPT(d_model=32, rngs=nnx.Rngs(1))
    structure = fi.model_structure(model, TOKENS)
    params, base_params = nnx.state(model, nnx.Param), nnx.state(base, nnx.Param)
    new = fi.apply_rules(
        params, fi.mup.rules(params, base_params, structure=structure), key=jax.random.key(0)
    )
    nnx.update(model, new)
    assert float(jnp.abs(model.head.kernel[...]).max()) == 0.0
    tx = optax.chain(
        optax.sgd(1.0),
        fi.mup.scale_updates(params, base_params, structure=structure, optimizer="sgd"),
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    before = model.blocks[0].mlp.fc1.kernel[...]
    grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    optimizer.update(model, grads)
    # muSGD, hidden with fan-in and fan-out both x2: LR x 1.
    np.testing.assert_allclose(before - model.blocks[0].mlp.fc1.kernel[...], 1.0, rtol=1e-6)


def test_tied_readout_is_refused_unless_the_model_scales_it():
    class Tied(nn.Module):
        width: int

        @nn.compact
        def __call__(self, tokens):
            embed = nn.Embed(50, self.width)
            return embed.attend(nn.Dense(self.width)(embed(tokens)))

    params = Tied(64).init(jax.random.key(0), TOKENS)
    base = Tied(32).init(jax.random.key(1), TOKENS)
    structure = fi.model_structure(Tied(64), TOKENS, variables=params)
    with pytest.raises(ValueError, match=r"'params/Embed_0/embedding' is also the readout"):
        fi.mup.rules(params, base, structure=structure)
    rules = fi.mup.rules(params, base, structure=structure, tied_readout_scaled=True)
    assert any("Embed_0" in pattern for pattern, _ in rules)


def test_bad_inputs():
    params = mlp(256).init(jax.random.key(0), X)
    abstract = jax.eval_shape(mlp(64).init, jax.random.key(0), X)
    base = mlp(64).init(jax.random.key(1), X)
    with pytest.raises(
        ValueError, match=r"base has no values \(the leaf at 'params/layers_0/bias'"
    ):
        fi.mup.rules(params, abstract)
    with pytest.raises(ValueError, match=r"optimizer must be one of \('adam', 'sgd'\)"):
        fi.mup.rules(params, base, optimizer="rmsprop")
    with pytest.raises(ValueError, match="readout must be one of"):
        fi.mup.rules(params, base, readout="small")
    with pytest.raises(ValueError, match="depth='completep' is defined for Adam"):
        fi.mup.scale_updates(params, base, optimizer="sgd", depth="completep", residual=[".*"])
    with pytest.raises(ValueError, match="depth= needs the residual branches"):
        fi.mup.scale_updates(params, base, depth="depth_mup")
    with pytest.raises(TypeError, match="query must be a list of regular expressions"):
        fi.mup.rules(params, base, query="q")
    tx = fi.mup.scale_updates(params["params"], base["params"])
    other = mlp(128).init(jax.random.key(0), X)["params"]
    with pytest.raises(ValueError, match=r"'layers_0/bias' has shape \(128,\) but .*\(256,\)"):
        tx.update(other, tx.init(other))
    with pytest.raises(
        ValueError, match="the updates have 1 leaves, the parameters it was built for 6"
    ):
        tx.update({"layers_0": {"bias": jnp.ones(256)}}, tx.init(None))

    # Attention without a structure and without a recognisable query kernel.
    class Attn(nn.Module):
        width: int

        @nn.compact
        def __call__(self, x):
            h = nn.Dense(3 * self.width, name="attn_qkv")(x)
            return nn.Dense(2, name="head")(h)

    a = Attn(64).init(jax.random.key(0), X)
    b = Attn(32).init(jax.random.key(0), X)
    with pytest.raises(ValueError, match=r"'params/attn_qkv/bias' looks like attention"):
        fi.mup.rules(a, b)
    assert fi.mup.rules(a, b, query=[])  # stated: no query kernel carries 1/d_head
