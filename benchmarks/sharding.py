"""Sharded initialization of a GPT-style Linen model on 8 simulated CPU devices.

(1) Per-device compiled memory (``Compiled.memory_analysis()``, nothing run) of
    ``flaxinit.sharding.plan_init`` with a GPT-2 rule set, every matrix split 8
    ways, against the unsharded ``jax.jit(model.init)``. Goal: <= 1/8 x 1.1.
(2) Wall time of that sharded init with rules against plain sharded init
    (``jax.jit(model.init, out_shardings=...)``, the same layout), both run for
    real, medians of interleaved repeats. Goal: ratio <= 1.1.
Also the time of the abstract init and of planning (specs checked, no compile).

The default model has about 270M parameters (d_model 1024, 16 layers, vocab 32768,
1.1 GB in float32): a 1B float32 model needs 4 GB of parameters and about 3x that
in random-bit temporaries on one device, too much for the 24 GB, 2-core machine
shared with other jobs. ``--d-model 2048 --layers 20`` is about 1.07B.

    python benchmarks/sharding.py            # ~270M parameters
    python benchmarks/sharding.py --quick    # ~20M, a smoke run
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from _timing import compare, machine
from jax.sharding import PartitionSpec as P

import flaxinit as fi
from flaxinit.sharding import memory_stats, plan_init


class Block(nn.Module):
    d: int

    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm(name="ln_1")(x)
        h = nn.Dense(3 * self.d, name="c_attn")(h)[..., : self.d]
        x = x + nn.Dense(self.d, name="c_proj")(h)
        h = nn.Dense(4 * self.d, name="c_fc")(nn.LayerNorm(name="ln_2")(x))
        return x + nn.Dense(self.d, name="c_proj_mlp")(nn.gelu(h))


class GPT(nn.Module):
    vocab: int
    d: int
    layers: int
    ctx: int = 1024

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(self.vocab, self.d, name="wte")(tokens)
        x = x + nn.Embed(self.ctx, self.d, name="wpe")(jnp.arange(tokens.shape[-1]))
        for i in range(self.layers):
            x = Block(self.d, name=f"h_{i}")(x)
        x = nn.LayerNorm(name="ln_f")(x)
        return nn.Dense(self.vocab, use_bias=False, name="lm_head")(x)


LAYOUT = [
    ("wte/embedding", P("model", None)),
    ("wpe/embedding", P(None, "model")),
    ("c_attn/kernel", P(None, "model")),
    ("c_attn/bias", P("model")),
    ("c_fc/kernel", P(None, "model")),
    ("c_fc/bias", P("model")),
    ("c_proj/kernel", P("model", None)),
    ("c_proj_mlp/kernel", P("model", None)),
    ("lm_head/kernel", P(None, "model")),
]


def gpt2_rules(layers: int) -> list:
    return [
        ("kernel", fi.normal(0.02)),
        ("embedding", fi.normal(0.02)),
        ("bias", fi.fill(0.0)),
        ("**/c_proj/kernel", fi.scale(1 / math.sqrt(2 * layers))),
        ("**/c_proj_mlp/kernel", fi.scale(1 / math.sqrt(2 * layers))),
        ("ln_*/scale", fi.fill(1.0)),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--d-model", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--vocab", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    d = args.d_model or (256 if args.quick else 1024)
    layers = args.layers or (4 if args.quick else 16)
    vocab = args.vocab or (8192 if args.quick else 32768)
    repeats = args.repeats or (3 if args.quick else 5)

    model = GPT(vocab, d, layers)
    key, tokens = jax.random.key(0), jnp.zeros((1, 8), jnp.int32)
    mesh = jax.make_mesh((8,), ("model",))  # Explicit axes, jax.make_mesh's default
    rules = gpt2_rules(layers)

    print(f"machine: {machine()}")
    start = time.perf_counter()
    abstract = jax.eval_shape(model.init, key, tokens)
    t_abstract = time.perf_counter() - start
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract))
    print(f"model: d_model {d}, {layers} layers, vocab {vocab}: {n_params / 1e6:.0f}M parameters")
    start = time.perf_counter()
    plan = plan_init(model, key, tokens, mesh=mesh, rules=rules, partition_rules=LAYOUT)
    t_plan = time.perf_counter() - start

    sharded = plan.memory()
    unsharded = memory_stats(jax.jit(model.init).lower(key, tokens).compile())
    mem_ratio = sharded.total / unsharded.total

    plain = jax.jit(model.init, out_shardings=plan.shardings)
    t_ours, t_plain, ratio = compare(plan, lambda: plain(key, tokens), repeats=repeats, number=1)

    print(f"abstract init {t_abstract * 1e3:.0f} ms, plan (specs checked) {t_plan * 1e3:.0f} ms")
    print(f"unsharded init: {unsharded}")
    print(f"sharded init with rules: {sharded}")
    print("\n| measure | sharded init + rules | reference | ratio | goal |")
    print("|---|---|---|---|---|")
    print(
        f"| per-device peak bytes (vs unsharded `jax.jit(init)`) | "
        f"{sharded.total / 2**20:.1f} MiB | {unsharded.total / 2**20:.1f} MiB | "
        f"{mem_ratio:.4f} (= {mem_ratio * 8:.3f} / 8) | <= 1.1 / 8 |"
    )
    print(
        f"| wall time (vs plain sharded `jit(init, out_shardings)`) | "
        f"{t_ours * 1e3:.0f} ms | {t_plain * 1e3:.0f} ms | {ratio:.3f} | <= 1.10 |"
    )


if __name__ == "__main__":
    main()
