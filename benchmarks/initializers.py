"""flaxinit initializers against their jax.nn.initializers twins, side by side.

Each pair is jitted, warmed up, then timed alternately over several repeats; the
table shows the median time per call of each and the median of the per-repeat
ratios (flaxinit / jax). Goal: ratio <= 1.10 in float32.

    python benchmarks/initializers.py            # full: 1024^2, 4096^2; orthogonal 2048^2, 4096^2
    python benchmarks/initializers.py --quick    # small sizes, fewer repeats
"""

from __future__ import annotations

import argparse

import jax
import jax.nn.initializers as jax_init
import jax.numpy as jnp
from _timing import compare, machine

import flaxinit as fi

PAIRS = [
    ("normal(0.02)", fi.normal(0.02), jax_init.normal(0.02)),
    ("uniform(0.1)", fi.uniform(0.1), jax_init.uniform(0.1)),
    ("truncated_normal(0.02)", fi.truncated_normal(0.02), jax_init.truncated_normal(0.02)),
    ("glorot_uniform", fi.glorot_uniform(), jax_init.glorot_uniform()),
    ("glorot_normal", fi.glorot_normal(), jax_init.glorot_normal()),
    ("he_normal", fi.he_normal(), jax_init.he_normal()),
    ("he_uniform", fi.he_uniform(), jax_init.he_uniform()),
    ("lecun_normal", fi.lecun_normal(), jax_init.lecun_normal()),
    ("lecun_uniform", fi.lecun_uniform(), jax_init.lecun_uniform()),
    (
        "variance_scaling(fan_geo_avg)",
        fi.variance_scaling(1.0, "fan_geo_avg", "normal"),
        jax_init.variance_scaling(1.0, "fan_geo_avg", "normal"),
    ),
    ("zeros", fi.zeros, jax_init.zeros),
    ("constant(0.5)", fi.constant(0.5), jax_init.constant(0.5)),
]
ORTHOGONAL = [("orthogonal", fi.orthogonal(), jax_init.orthogonal())]
# 16-bit rows are informative: flaxinit draws in float32 then casts, jax draws in bf16.
BF16 = [("he_normal [bf16]", fi.he_normal(), jax_init.he_normal())]


def run(rows, sizes, repeats, number, dtype=jnp.float32):
    key = jax.random.key(0)
    results = []
    for name, ours, theirs in rows:
        for n in sizes:
            shape = (n, n)
            f_ours = jax.jit(lambda k, f=ours, s=shape: f(k, s, dtype))
            f_theirs = jax.jit(lambda k, f=theirs, s=shape: f(k, s, dtype))
            t_ours, t_theirs, ratio = compare(
                lambda f=f_ours: f(key), lambda f=f_theirs: f(key), repeats=repeats, number=number
            )
            results.append((name, f"{n}x{n}", t_ours, t_theirs, ratio))
            times = f"{t_ours * 1e3:9.2f} ms  {t_theirs * 1e3:9.2f} ms"
            print(f"  {name:32s} {n:5d}^2  {times}  {ratio:6.3f}", flush=True)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    sizes = [256, 1024] if args.quick else [1024, 4096]
    ortho_sizes = [256, 512] if args.quick else [2048, 4096]
    repeats = args.repeats or (5 if args.quick else 9)

    print(f"machine: {machine()}")
    print(f"repeats: {repeats} (median), float32 unless marked\n")
    print(f"  {'initializer':32s} {'size':>7s}  {'flaxinit':>12s}  {'jax':>12s}  {'ratio':>6s}")
    results = run(PAIRS, sizes, repeats, number=5 if args.quick else 3)
    results += run(ORTHOGONAL, ortho_sizes, max(3, repeats // 3), number=1)
    results += run(BF16, sizes, repeats, number=3, dtype=jnp.bfloat16)

    print("\n| initializer | size | flaxinit (ms) | jax (ms) | ratio |")
    print("|---|---|---|---|---|")
    for name, size, t_ours, t_theirs, ratio in results:
        print(f"| {name} | {size} | {t_ours * 1e3:.2f} | {t_theirs * 1e3:.2f} | {ratio:.3f} |")
    float32 = [r for r in results if "bf16" not in r[0]]
    worst = max(float32, key=lambda r: r[4])
    print(f"\nworst float32 ratio: {worst[4]:.3f} ({worst[0]}, {worst[1]}); goal <= 1.10")


if __name__ == "__main__":
    main()
