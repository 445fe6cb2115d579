"""Why the initializer matters: activation std through a deep ReLU MLP, per scheme.

Run with ``python -m flaxinit.demo [--depth 50] [--width 256] [--activation relu]``.
Builds one NNX MLP per initializer, pushes a batch of unit-variance inputs through
it, and prints the std of each layer's activations: a scheme matched to the
nonlinearity keeps it near its input's, the others make it vanish or explode.
"""

from __future__ import annotations

import argparse
import math

import jax
import jax.numpy as jnp
from flax import nnx

import flaxinit as fi

ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh, "linear": lambda x: x}


def schemes(activation: str) -> dict[str, fi.Initializer]:
    gain = fi.calculate_gain(activation if activation != "linear" else "linear")
    return {
        "normal(0.01)": fi.normal(0.01),
        "lecun_normal (Flax default)": fi.lecun_normal(),
        "glorot_uniform": fi.glorot_uniform(),
        "he_normal": fi.he_normal(),
        f"orthogonal(gain={gain:.3g})": fi.orthogonal(gain),
    }


class MLP(nnx.Module):
    def __init__(self, depth: int, width: int, kernel_init: fi.Initializer, rngs: nnx.Rngs):
        self.layers = nnx.List(
            [nnx.Linear(width, width, kernel_init=kernel_init, rngs=rngs) for _ in range(depth)]
        )

    def __call__(self, x, activation):
        stds = []
        for layer in self.layers:
            x = activation(layer(x))
            stds.append(jnp.std(x))
        return jnp.stack(stds)


def activation_stds(init, depth, width, activation, batch, seed=0):
    model = MLP(depth, width, init, nnx.Rngs(seed))
    return jax.device_get(nnx.jit(lambda m, x: m(x, ACTIVATIONS[activation]))(model, batch))


def verdict(last: float, first: float) -> str:
    ratio = last / first if first > 0 else 0.0
    if not math.isfinite(ratio) or ratio > 1e3:
        return "explodes"
    if ratio < 1e-3:
        return "vanishes"
    if ratio < 0.1 or ratio > 10:
        return "drifts"
    return "keeps the signal"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--activation", choices=sorted(ACTIVATIONS), default="relu")
    args = parser.parse_args(argv)

    x = jax.random.normal(jax.random.key(0), (args.batch, args.width))
    results = {
        name: activation_stds(init, args.depth, args.width, args.activation, x)
        for name, init in schemes(args.activation).items()
    }
    rows = sorted({1, *range(5, args.depth + 1, max(1, args.depth // 10)), args.depth})
    name_width = max(len(n) for n in results) + 2
    print(
        f"Activation std after each layer of a {args.depth}-layer {args.activation} MLP "
        f"(width {args.width}, input std 1.0, batch {args.batch})\n"
    )
    print("layer".ljust(name_width) + "".join(f"{r:>10d}" for r in rows) + "   verdict")
    for name, stds in results.items():
        cells = "".join(f"{float(stds[r - 1]):>10.3g}" for r in rows)
        print(name.ljust(name_width) + cells + "   " + verdict(float(stds[-1]), float(stds[0])))
    print(
        "\nReLU halves the second moment at every layer: only a variance of 2/fan_in (He) "
        "or an orthogonal matrix with gain sqrt(2) makes up for it."
    )


if __name__ == "__main__":
    main()
