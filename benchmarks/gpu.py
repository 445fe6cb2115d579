"""flaxinit on an accelerator: init throughput against the PRNG-bound limit, and what
`fi.lsuv` costs a user at a realistic size.

(a) Init throughput: every matrix of a 24-layer, d_model 1024 GPT (the zoo's
    `flaxinit.models.GPT`, vocab 50304) drawn with `fi.kaiming_normal()` (or
    `--init he_normal`, truncated: see INITS for its compile time) in one jitted
    program, in GB/s of parameters written, against the PRNG-bound limit: the same
    shapes drawn with `jax.random.normal` alone. Medians of repeats, compiled once.
(b) LSUV, user-paid: `fi.lsuv`'s first call (trace, compile, run; caches emptied)
    without and with the orthonormal pre-init, and a repeated call with a new key,
    against a jitted forward pass's first call and a forward pass, on a ResNet-50
    (bottleneck blocks 3-4-6-3, BatchNorm with running averages, defined below) at
    batch 256 and on the GPT above (batch 16 x 1024 tokens).

Prints a markdown table headed by the device name. On a CPU it stops with a message,
unless `--smoke`, which runs the same code on tiny models (for tests; < 20 s).

    python benchmarks/gpu.py            # accelerator: about 3-5 minutes in all
    python benchmarks/gpu.py --smoke    # anywhere, tiny sizes
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from _timing import first_call, machine
from _timing import median_time as _median_time

import flaxinit as fi
from flaxinit.models import GPT


class Bottleneck(nn.Module):
    """ResNet-50's bottleneck block (1x1, 3x3, 1x1 convs, expansion 4)."""

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x):
        norm = lambda: nn.BatchNorm(use_running_average=True)
        h = nn.relu(norm()(nn.Conv(self.features, (1, 1), use_bias=False)(x)))
        h = nn.Conv(self.features, (3, 3), self.strides, use_bias=False)(h)
        h = nn.relu(norm()(h))
        h = norm()(nn.Conv(self.features * 4, (1, 1), use_bias=False)(h))
        if x.shape[-1] != h.shape[-1] or self.strides != 1:
            x = nn.Conv(self.features * 4, (1, 1), self.strides, use_bias=False)(x)
            x = norm()(x)
        return nn.relu(x + h)


class ResNet50(nn.Module):
    """ResNet-50 (He et al. 2016): 53 convs and a Dense head, 25.6M parameters."""

    stages: tuple[int, ...] = (3, 4, 6, 3)
    width: int = 64
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.width, (7, 7), 2, use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True)(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
        for i, blocks in enumerate(self.stages):
            for j in range(blocks):
                x = Bottleneck(self.width * 2**i, strides=2 if i and not j else 1)(x)
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


def median_time(fn, repeats: int) -> float:
    return _median_time(fn, repeats, warm=True)


INITS = {
    # Untruncated (torch's kaiming_normal_): the default here.
    "kaiming_normal": lambda: fi.kaiming_normal(nonlinearity="relu"),
    # Truncated (jax's flavour): on an H200 with jax 0.11.2 the program drawing the
    # GPT's matrices with it compiled for over 6 minutes; opt in with --init he_normal.
    "he_normal": fi.he_normal,
}


def init_throughput(model, example, repeats: int, init: str) -> dict:
    shapes = jax.eval_shape(model.init, jax.random.key(0), example)
    matrices = [leaf for leaf in jax.tree.leaves(shapes) if leaf.ndim >= 2]
    nbytes = sum(leaf.size * leaf.dtype.itemsize for leaf in matrices)
    # Same-shape matrices are drawn as one vmapped batch (one op per distinct shape, as
    # a scanned model stores them): one op per matrix made XLA's compile of the GPT's
    # ~200 matrices the whole cost of the run.
    groups = collections.Counter((m.shape, m.dtype) for m in matrices)
    he = INITS[init]()

    def draw(sample, key):
        keys = jax.random.split(key, len(groups))
        return [
            jax.vmap(lambda k, shape=shape, dtype=dtype: sample(k, shape, dtype))(
                jax.random.split(group_key, count)
            )
            for group_key, ((shape, dtype), count) in zip(keys, groups.items(), strict=True)
        ]

    ours = jax.jit(functools.partial(draw, he))
    limit = jax.jit(functools.partial(draw, jax.random.normal))

    key = jax.random.key(0)
    t_ours = median_time(lambda: ours(key), repeats)
    t_limit = median_time(lambda: limit(key), repeats)
    return {
        "GB": nbytes / 1e9,
        f"fi.{init} GB/s": nbytes / t_ours / 1e9,
        "jax.random.normal GB/s": nbytes / t_limit / 1e9,
        "ratio": t_limit / t_ours,
    }


def lsuv_cost(label, model, x, repeats: int) -> dict:
    variables = jax.jit(model.init)(jax.random.key(0), x)
    jax.block_until_ready(variables)
    forward_first = lambda: jax.jit(lambda v, x: model.apply(v, x))(variables, x)
    call = lambda key, pre: fi.lsuv(model, variables, x, key=key, pre_init=pre)[0]
    t_fwd = first_call(forward_first)
    t_first = first_call(lambda: call(jax.random.key(1), None))
    t_first_ortho = first_call(lambda: call(jax.random.key(1), "orthogonal"))
    forward = jax.jit(lambda v, x: model.apply(v, x))
    t_pass = median_time(lambda: forward(variables, x), max(repeats, 5))
    keys = iter(range(10, 10_000))
    t_again = median_time(lambda: call(jax.random.key(next(keys)), None), repeats)
    t_again_ortho = median_time(lambda: call(jax.random.key(next(keys)), "orthogonal"), repeats)
    print(f"  {label}: done", file=sys.stderr, flush=True)
    return {
        "model": label,
        "forward first s": t_fwd,
        "forward ms": t_pass * 1e3,
        "lsuv first s": t_first,
        "first / fwd first": t_first / t_fwd,
        "lsuv+ortho first s": t_first_ortho,
        "ortho first / fwd first": t_first_ortho / t_fwd,
        "again (fwd)": t_again / t_pass,
        "again+ortho (fwd)": t_again_ortho / t_pass,
    }


def table(rows: list[dict], formats: dict[str, str]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [formats.get(c, "{}").format(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, any backend")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--init", choices=sorted(INITS), default="kaiming_normal")
    args = parser.parse_args(argv)
    backend = jax.default_backend()
    if backend == "cpu" and not args.smoke:
        print(
            "benchmarks/gpu.py measures an accelerator, and jax's default backend is the "
            "CPU: nothing to measure. Run it where jax sees a GPU or TPU, or pass --smoke "
            "for a tiny run of the same code.",
            file=sys.stderr,
        )
        return 2
    device = jax.devices()[0]
    if args.smoke:
        gpt = GPT(vocab_size=128, max_len=32, d_model=32, num_layers=2, num_heads=2)
        tokens = jnp.zeros((4, 32), jnp.int32) + jnp.arange(32) % 128
        resnet, image, repeats = ResNet50(stages=(1, 1), width=8, num_classes=10), (4, 32), 2
    else:
        gpt = GPT(vocab_size=50304, max_len=1024, d_model=1024, num_layers=24, num_heads=16)
        tokens = jax.random.randint(jax.random.key(1), (16, 1024), 0, 50304)
        resnet, image, repeats = ResNet50(), (256, args.image_size), args.repeats
    images = jax.random.normal(jax.random.key(2), (image[0], image[1], image[1], 3))

    start = time.perf_counter()
    print(f"# flaxinit on {device.device_kind} ({backend}, {jax.device_count()} devices)")
    print(f"\n{machine()}; medians of {repeats} runs; first calls once each, caches emptied\n")
    throughput = init_throughput(gpt, tokens, repeats, args.init)
    print(f"## Init throughput (GPT matrices, fi.{args.init} vs jax.random.normal)\n")
    print(table([throughput], dict.fromkeys(throughput, "{:.3g}")), flush=True)
    print(f"\n({time.perf_counter() - start:.0f} s so far)", flush=True)
    rows = [
        lsuv_cost(f"ResNet-50, batch {image[0]}, {image[1]}px", resnet, images, repeats),
        lsuv_cost(
            f"GPT {gpt.num_layers}x{gpt.d_model}, batch {tokens.shape}", gpt, tokens, repeats
        ),
    ]
    print("\n## LSUV, user-paid\n")
    print(table(rows, {k: "{:.3g}" for k in rows[0] if k != "model"}))
    print(f"\nwall time {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
