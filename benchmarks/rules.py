"""Benchmark of the path-rules engine.

(1) ``jax.jit`` of a GPT-style Linen model's ``init`` followed by ``apply_rules``
    with a 10-rule GPT-2 rule set, against ``jax.jit`` of the plain ``init``:
    compiled peak memory (from ``Compiled.memory_analysis()``, nothing is run) on a
    GPT-2-medium-sized model (~355M parameters), and wall time on a smaller model
    that runs in seconds on a laptop CPU. Goal: both ratios <= 1.1.
(2) Path resolution (the static plan, via ``explain_rules``) for a tree of 10,000
    leaves and 20 rules. Goal: < 0.5 s.

Run: ``python benchmarks/rules.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxinit.initializers import normal
from flaxinit.rules import apply_rules, explain_rules, fill, scale
from flaxinit.rules.planning import make_plan

# --------------------------------------------------------------------------- model


class Block(nn.Module):
    d: int
    heads: int

    @nn.compact
    def __call__(self, x):
        x = x + _Attention(self.d, self.heads, name="attn")(nn.LayerNorm(name="ln_1")(x))
        return x + _MLP(self.d, name="mlp")(nn.LayerNorm(name="ln_2")(x))


class _Attention(nn.Module):
    d: int
    heads: int

    @nn.compact
    def __call__(self, x):
        b, t, d = x.shape
        q, k, v = jnp.split(nn.Dense(3 * d, name="c_attn")(x), 3, axis=-1)
        split = lambda a: a.reshape(b, t, self.heads, d // self.heads)
        w = jnp.einsum("bqhd,bkhd->bhqk", split(q), split(k)) / math.sqrt(d // self.heads)
        w = jnp.where(jnp.tril(jnp.ones((t, t), bool)), w, -1e9)
        y = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(w), split(v)).reshape(b, t, d)
        return nn.Dense(d, name="c_proj")(y)


class _MLP(nn.Module):
    d: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.d, name="c_proj")(nn.gelu(nn.Dense(4 * self.d, name="c_fc")(x)))


class GPT(nn.Module):
    """GPT-2 layout and names: wte, wpe, h_{i}/{ln_1, attn, ln_2, mlp}, ln_f."""

    vocab: int
    ctx: int
    d: int
    layers: int
    heads: int

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(self.vocab, self.d, name="wte")(tokens)
        x = x + nn.Embed(self.ctx, self.d, name="wpe")(jnp.arange(tokens.shape[1]))
        for i in range(self.layers):
            x = Block(self.d, self.heads, name=f"h_{i}")(x)
        x = nn.LayerNorm(name="ln_f")(x)
        return x @ self.variables["params"]["wte"]["embedding"].T


def residual_scale(ctx):
    return 1 / math.sqrt(2 * ctx.num_layers)


# GPT-2's init (Radford et al. 2019 / HF GPT2PreTrainedModel._init_weights) in 10 rules.
GPT_RULES = [
    ("/params/wte/embedding", normal(0.02)),
    ("/params/wpe/embedding", normal(0.01)),
    ("attn/c_attn/kernel", normal(0.02)),
    ("attn/c_proj/kernel", normal(0.02)),
    ("attn/c_proj/kernel", scale(residual_scale)),
    ("mlp/c_fc/kernel", normal(0.02)),
    ("mlp/c_proj/kernel", normal(0.02)),
    ("mlp/c_proj/kernel", scale(residual_scale)),
    ("bias", fill(0.0)),
    ("ln_*/scale", fill(1.0)),
]

# The same patterns with no re-draw: none of init's work becomes dead code, so this
# shows what the rules themselves add to init (the worst case for the rules).
SCALE_RULES = [
    ("/params/wte/embedding", scale(0.5)),
    ("/params/wpe/embedding", scale(0.5)),
    ("attn/c_attn/kernel", scale(0.5)),
    ("attn/c_proj/kernel", scale(0.5)),
    ("attn/c_proj/kernel", scale(residual_scale)),
    ("mlp/c_fc/kernel", scale(0.5)),
    ("mlp/c_proj/kernel", scale(0.5)),
    ("mlp/c_proj/kernel", scale(residual_scale)),
    ("bias", fill(0.0)),
    ("ln_*/scale", fill(1.0)),
]

FULL = {"vocab": 50257, "ctx": 1024, "d": 1024, "layers": 24, "heads": 16}  # GPT-2 medium
TIMED = {"vocab": 8192, "ctx": 512, "d": 512, "layers": 8, "heads": 8}
QUICK_FULL = {"vocab": 50257, "ctx": 1024, "d": 768, "layers": 12, "heads": 12}  # GPT-2 small
QUICK_TIMED = {"vocab": 2048, "ctx": 128, "d": 128, "layers": 4, "heads": 4}


def _fns(cfg):
    """jit(init), jit(init + GPT_RULES), jit(init + SCALE_RULES)."""
    model = GPT(**cfg)
    tokens = jnp.zeros((1, 8), jnp.int32)
    init = lambda key: model.init(key, tokens)
    return {
        "jit(init)": jax.jit(init),
        "jit(init + GPT-2 rules)": jax.jit(lambda k: apply_rules(init(k), GPT_RULES, key=k)),
        "jit(init + scale/fill rules)": jax.jit(lambda k: apply_rules(init(k), SCALE_RULES)),
    }


def _count(cfg):
    model = GPT(**cfg)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


def _peak(fn):
    """Bytes live at once per the compiled program: arguments + outputs + temps."""
    t = time.perf_counter()
    compiled = fn.lower(jax.random.key(0)).compile()
    m = compiled.memory_analysis()
    peak = (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )
    return peak, m.temp_size_in_bytes, time.perf_counter() - t


def _median_times(fns, repeats):
    """Median wall time per program; runs interleaved so drift hits all alike."""
    key = jax.random.key(0)
    for fn in fns.values():
        jax.block_until_ready(fn(key))  # compile and warm up
    runs = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(fn(key))
            runs[name].append(time.perf_counter() - t)
    return {name: (statistics.median(ts), ts) for name, ts in runs.items()}


def bench_init(full, timed, repeats):
    print(f"## (1) jit(init) + apply_rules ({len(GPT_RULES)} rules) vs jit(init)\n")
    mib = 2**20
    peaks = {name: _peak(fn) for name, fn in _fns(full).items()}
    base = peaks["jit(init)"][0]
    print(f"memory: GPT {full} = {_count(full) / 1e6:.1f}M params (compiled, not run)\n")
    print("| program | peak MiB | temp MiB | ratio | compile s |")
    print("|---|---:|---:|---:|---:|")
    for name, (peak, temp, secs) in peaks.items():
        print(f"| {name} | {peak / mib:.1f} | {temp / mib:.1f} | {peak / base:.3f} | {secs:.1f} |")
    print()
    times = _median_times(_fns(timed), repeats)
    base_t = times["jit(init)"][0]
    size = f"{_count(timed) / 1e6:.1f}M params"
    print(f"time: GPT {timed} = {size}, median of {repeats} interleaved runs\n")
    print("| program | median ms | ratio | runs ms |")
    print("|---|---:|---:|---|")
    for name, (med, runs) in times.items():
        runs_ms = ", ".join(f"{t * 1e3:.0f}" for t in runs)
        print(f"| {name} | {med * 1e3:.1f} | {med / base_t:.3f} | {runs_ms} |")
    print()
    names = list(peaks)[1:]
    return {n: (peaks[n][0] / base, times[n][0] / base_t) for n in names}


# --------------------------------------------------------------------------- paths

MODULES = ["attn/q", "attn/k", "attn/v", "attn/o", "mlp/fc1", "mlp/fc2"]
MODULES += [f"moe/expert_{e}" for e in range(4)]


def big_tree(n_layers=400):
    """10,000 abstract leaves: 400 layers x 25 leaves, Linen-style paths."""
    sds = jax.ShapeDtypeStruct
    dense = lambda: {"kernel": sds((8, 8), jnp.float32), "bias": sds((8,), jnp.float32)}
    layer = {}
    for m in MODULES:
        a, b = m.split("/")
        layer.setdefault(a, {})[b] = dense()
    for ln in ("ln_1", "ln_2"):
        layer[ln] = {"scale": sds((8,), jnp.float32), "bias": sds((8,), jnp.float32)}
    layer["gate"] = sds((8,), jnp.float32)
    tree = {"params": {f"layers_{i}": layer for i in range(n_layers)}}
    assert len(jax.tree.leaves(tree)) == 25 * n_layers
    return tree


PATH_RULES = [
    ("attn/q/kernel", scale(0.5)),
    ("attn/k/kernel", scale(0.5)),
    ("*/attn/v/kernel", scale(0.5)),
    ("**/attn/o/kernel", scale(residual_scale)),
    ("mlp/fc1/kernel", fill(0.0)),
    ("mlp/fc2/kernel", scale(residual_scale)),
    ("/params/layers_0/**", fill(1.0)),
    ("/params/layers_1?/attn/*/bias", fill(0.0)),
    ("layers_[0-9]/mlp/*/bias", fill(0.0)),
    ("layers_[!0]*/ln_?/scale", fill(1.0)),
    ("ln_1/bias", fill(0.0)),
    ("ln_2/*", fill(0.0)),
    ("gate", fill(1.0)),
    (r"re:params/layers_\d*7/.*", scale(2.0)),
    ("re:.*/attn/(q|k)/bias", fill(0.0)),
    ("params/**/mlp/**/kernel", scale(1.0)),
    ("layers_39?/**", scale(1.0)),
    ("*/*/kernel", scale(1.0)),
    ("bias", scale(1.0)),
    ("/params/*/attn/o/*", scale(1.0)),
]


def bench_paths(repeats):
    tree = big_tree()
    assert len(PATH_RULES) == 20
    print("## (2) path resolution: 10,000 leaves, 20 rules\n")
    rows = []
    for name, fn in (
        ("make_plan (match only)", lambda: make_plan(tree, PATH_RULES, None)),
        ("explain_rules (plan + report)", lambda: explain_rules(tree, PATH_RULES)),
    ):
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        rows.append((name, statistics.median(times), times))
    report = explain_rules(tree, PATH_RULES)
    touched = sum(r.touched for r in report)
    print(
        f"{touched} of {len(report)} leaves touched, {len(report.unmatched_rules)} unmatched rules"
    )
    print("| step | median s | runs s |")
    print("|---|---:|---|")
    for name, med, times in rows:
        print(f"| {name} | {med:.3f} | {', '.join(f'{t:.3f}' for t in times)} |")
    print()
    return rows[1][1]


def machine():
    try:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")),
            "?",
        )
    except OSError:
        model = platform.processor() or "?"
    return (
        f"{model}, {os.cpu_count()} CPUs (nproc), {jax.devices()[0].platform}, "
        f"jax {jax.__version__}, Python {platform.python_version()}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models, 5 repeats")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    repeats = max(5, args.repeats if not args.quick else 5)
    print(f"machine: {machine()}\n")
    full, timed = (QUICK_FULL, QUICK_TIMED) if args.quick else (FULL, TIMED)
    ratios = bench_init(full, timed, repeats)
    plan_s = bench_paths(repeats)
    print("## summary\n")
    print("| measure | value | goal |")
    print("|---|---:|---|")
    for name, (mem, secs) in ratios.items():
        print(f"| peak memory ratio, {name} / jit(init) | {mem:.3f} | <= 1.1 |")
        print(f"| time ratio, {name} / jit(init) | {secs:.3f} | <= 1.1 |")
    print(f"| path resolution, 10k leaves x 20 rules | {plan_s:.3f} s | < 0.5 s |")


if __name__ == "__main__":
    main()
