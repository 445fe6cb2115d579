"""GPT-2's 1/sqrt(2L) scaling of the residual output projections, in a deep small
character-level GPT: residual-stream growth at init, and the loss curves."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import flaxinit as fi
from experiments import _common as C

CLAIM = (
    "In a pre-LayerNorm transformer every block adds its attention and MLP outputs to the "
    "residual stream, so at init the stream's variance grows with the number of blocks; "
    "scaling the weights of the residual output projections by 1/sqrt(2L) (L blocks, two "
    "branches each) keeps the stream at the embedding's scale, and GPT-2 uses it to train "
    "deep models."
)
SOURCE = (
    "Radford et al. 2019, 'Language Models are Unsupervised Multitask Learners' (GPT-2), "
    "Sec. 2.3; HF transformers GPT2PreTrainedModel._init_weights (c_proj std 0.02/sqrt(2L))."
)

CONFIGS = {
    "tiny": {"blocks": 2, "width": 16, "heads": 2, "context": 16, "batch": 8, "steps": 10,
             "lr": 1e-3, "chars": 20000, "seeds": 1},
    "quick": {"blocks": 12, "width": 48, "heads": 4, "context": 32, "batch": 16, "steps": 200,
              "lr": 2e-3, "chars": 200000, "seeds": 1},
    "full": {"blocks": 48, "width": 256, "heads": 8, "context": 128, "batch": 64,
             "steps": 5000, "lr": 6e-4, "chars": None, "seeds": 3},
}  # fmt: skip

STD = 0.02  # GPT-2's base std for every kernel and embedding


class MLP(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.gelu(nn.Dense(4 * self.width, kernel_init=fi.normal(STD), name="fc1")(x))
        return nn.Dense(self.width, kernel_init=fi.normal(STD), name="fc2")(h)


class Block(nn.Module):
    """Pre-LN block; sows the residual stream after it (``intermediates/stream``)."""

    width: int
    heads: int

    @nn.compact
    def __call__(self, x: jax.Array, _: Any = None) -> tuple[jax.Array, None]:
        h = nn.LayerNorm(name="ln1")(x)
        mask = nn.make_causal_mask(jnp.ones(x.shape[:2]))
        x = x + nn.MultiHeadDotProductAttention(
            self.heads, kernel_init=fi.normal(STD), name="attn"
        )(h, h, mask=mask)
        x = x + MLP(self.width, name="mlp")(nn.LayerNorm(name="ln2")(x))
        self.sow("intermediates", "stream", x)
        return x, None


class GPT(nn.Module):
    """Token and position embeddings, ``blocks`` pre-LN blocks (an ``nn.scan`` stack
    ``blocks``: ``blocks/attn/out/kernel``, ``blocks/mlp/fc2/kernel``), final LN, readout."""

    vocab: int
    blocks: int
    width: int
    heads: int
    context: int

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        embed = fi.normal(STD)
        x = nn.Embed(self.vocab, self.width, embedding_init=embed, name="wte")(tokens)
        x = x + nn.Embed(self.context, self.width, embedding_init=embed, name="wpe")(
            jnp.arange(tokens.shape[1])
        )
        self.sow("intermediates", "embedding", x)
        stack = nn.scan(
            Block,
            variable_axes={"params": 0, "intermediates": 0},
            split_rngs={"params": True},
            length=self.blocks,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = stack(self.width, self.heads, name="blocks")(x, None)
        x = nn.LayerNorm(name="ln_f")(x)
        return nn.Dense(self.vocab, kernel_init=fi.normal(STD), name="head")(x)


def gpt2_rules(num_blocks: int) -> list:
    """GPT-2's depth scaling as path rules.

    The arms differ only in the 1/sqrt(2L) factor, so this is the factor alone rather
    than ``flaxinit.recipes.gpt2``, which also re-draws every kernel with N(0, 0.02)."""
    factor = fi.scale(lambda ctx: 1 / math.sqrt(2 * ctx.num_layers))
    return [("**/attn/out/kernel", factor), ("**/mlp/fc2/kernel", factor)]


def run(config: C.Config) -> C.Result:
    text, corpus = C.char_corpus(config["chars"])
    vocab = sorted(set(text))
    data = np.array([vocab.index(c) for c in text], dtype=np.int32)
    split = int(0.9 * len(data))
    train_data, val_data = jnp.asarray(data[:split]), jnp.asarray(data[split:])
    T, L = config["context"], config["blocks"]
    model = GPT(len(vocab), L, config["width"], config["heads"], T)

    def windows(source, key, n):
        start = jax.random.randint(key, (n,), 0, source.shape[0] - T - 1)
        return source[start[:, None] + jnp.arange(T + 1)]

    arms = {"unscaled (0.02)": [], "GPT-2 1/sqrt(2L)": gpt2_rules(L)}
    members, streams = [], {}
    probe = windows(val_data, jax.random.key(0), 32)[:, :-1]
    for name, rules in arms.items():
        for s in range(config.seeds):
            params = model.init(jax.random.fold_in(jax.random.key(51), s), probe[:2])["params"]
            if rules:
                params = fi.apply_rules(params, rules, num_layers=L)
            members.append(params)
            if s == 0:
                _, inter = model.apply({"params": params}, probe, mutable=["intermediates"])
                emb = inter["intermediates"]["embedding"][0]
                stream = inter["intermediates"]["blocks"]["stream"][0]  # (L, B, T, D)
                streams[name] = np.concatenate(
                    [[float(jnp.std(emb))], np.asarray(jnp.std(stream, axis=(1, 2, 3)))]
                )

    def loss_fn(params, state, key):
        batch = windows(train_data, key, config["batch"])
        logits = model.apply({"params": params}, batch[:, :-1])
        return C.cross_entropy(logits, batch[:, 1:]), (state, {})

    out = C.train(
        loss_fn,
        optax.adam(config["lr"]),
        C.stack(members),
        jax.random.split(jax.random.key(52), len(members)),
        config["steps"],
        batched=True,
        desc="gpt",
        progress=config.progress,
    )
    val = windows(val_data, jax.random.key(53), 64)

    def val_loss(params):
        return C.cross_entropy(model.apply({"params": params}, val[:, :-1]), val[:, 1:])

    vloss = np.asarray(jax.jit(jax.vmap(val_loss))(out["params"])).reshape(len(arms), -1)
    loss = out["loss"].reshape(len(arms), config.seeds, -1)
    numbers: dict = {"corpus": corpus, "vocab_size": len(vocab), "arms": {}}
    for i, name in enumerate(arms):
        numbers["arms"][name] = {
            "stream_std_by_block": streams[name],
            "stream_growth": float(streams[name][-1] / streams[name][0]),
            "loss_curve_mean": loss[i].mean(0),
            "final_train_loss": float(np.mean([C.tail_mean(c, 0.1) for c in loss[i]])),
            "val_loss": vloss[i],
            "val_loss_mean": float(vloss[i].mean()),
        }
    un, sc = (numbers["arms"][n] for n in arms)
    checks = [
        C.Check(
            f"at init the scaled stream stays at the embedding's scale (std growth over {L} "
            "blocks <= 1.5x)",
            sc["stream_growth"] <= 1.5,
            f"scaled {sc['stream_growth']:.3g}x",
        ),
        C.Check(
            "without the scaling the stream grows >= 2x more",
            un["stream_growth"] >= 2 * sc["stream_growth"],
            f"unscaled {un['stream_growth']:.3g}x vs scaled {sc['stream_growth']:.3g}x",
        ),
        C.Check(
            f"the scaled model's validation loss after {config['steps']} steps is no worse "
            "than the unscaled one's",
            sc["val_loss_mean"] <= un["val_loss_mean"],
            f"scaled {sc['val_loss_mean']:.4f}, unscaled {un['val_loss_mean']:.4f} nats/char",
        ),
    ]

    fig, axes = C.figure(1, 2, width=5)
    for name in arms:
        axes[0, 0].plot(np.arange(L + 1), numbers["arms"][name]["stream_std_by_block"], "o-",
                        ms=3, label=name)  # fmt: skip
        axes[0, 1].plot(C.smooth(numbers["arms"][name]["loss_curve_mean"], 20), label=name)
    axes[0, 0].set(xlabel="blocks", ylabel="residual stream std", title="at init")
    axes[0, 1].set(yscale="log", xlabel="step", ylabel="training loss (nats/char)",
                   title=f"{L}-block char GPT")  # fmt: skip
    for ax in axes[0]:
        ax.legend(fontsize=8)
    plots = [C.save_figure(fig, config, "transformer_depth.png")]
    headline = (
        f"stream growth at init {un['stream_growth']:.2g}x unscaled vs "
        f"{sc['stream_growth']:.2g}x scaled; val loss {un['val_loss_mean']:.3f} vs "
        f"{sc['val_loss_mean']:.3f}"
    )
    return C.result(
        config,
        checks=checks,
        headline=headline,
        numbers=numbers,
        plots=plots,
        notes=(
            f"Character GPT (pre-LN, {L} blocks, width {config['width']}, {config['heads']} "
            f"heads, context {T}) on {corpus['chars']} characters of Python's own docs (the "
            "Zen of Python and standard-library docstrings, Python "
            f"{corpus['python']}; 90% train, 10% validation). Every kernel and embedding "
            "N(0, 0.02), biases 0; the scaled arm multiplies attn/out and mlp/fc2 by "
            f"1/sqrt(2L) with flaxinit.apply_rules. Adam, lr {config['lr']}, batches of "
            f"{config['batch']} windows."
        ),
    )
