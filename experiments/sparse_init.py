"""Martens' sparse initialization against dense init on layers with a large fan-in."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import optax

import flaxinit as fi
from experiments import _common as C
from flaxinit.diagnostics import activation_stats
from flaxinit.models import MLP

CLAIM = (
    "With a large fan-in m, a dense init must shrink every weight to std 1/sqrt(m) to keep "
    "units out of saturation (unit-scale dense weights saturate them more as m grows), so "
    "each unit is a faint blend of all its inputs; sparse init, a fixed number k = 15 of "
    "unit-scale non-zero weights per unit, keeps the unit's input scale independent of m "
    "without shrinking its weights, and trains at least as well."
)
SOURCE = (
    "Martens 2010, 'Deep learning via Hessian-free optimization' (ICML), Sec. 5 "
    "('sparse initialization'); Sutskever, Martens, Dahl & Hinton 2013 (ICML), Sec. 3."
)

CONFIGS = {
    "tiny": {"fan_ins": [16, 32], "depth": 2, "width": 16, "steps": 20, "lr": 0.01,
             "batch": 32, "samples": 1000, "seeds": 1},
    "quick": {"fan_ins": [64, 256, 1024], "depth": 3, "width": 256, "steps": 400, "lr": 0.01,
              "batch": 128, "samples": 5000, "seeds": 2},
    "full": {"fan_ins": [64, 256, 1024, 4096], "depth": 4, "width": 2048, "steps": 4000,
             "lr": 0.01, "batch": 256, "samples": 5000, "seeds": 5},
}  # fmt: skip

K = 15  # Martens' number of non-zero incoming weights per unit


def inits() -> dict[str, fi.Initializer]:
    return {
        "dense N(0,1/m)": fi.lecun_normal(),
        "dense N(0,1)": fi.normal(1.0),
        f"sparse {K}, N(0,1)": fi.sparse(nonzero=K, stddev=1.0),
    }


def layer_profile(model, variables, x) -> dict[str, list]:
    """Per hidden layer: pre-activation std, tanh saturation, and per unit the largest
    incoming weight (mean over units)."""
    records = activation_stats(model, x, variables=variables, activation="tanh")
    linear = [r for r in records if r.kind == "linear"][:-1]
    kernels = [variables["params"][r.path]["kernel"] for r in linear]
    return {
        "std": [float(r.std) for r in linear],
        "saturated": [float(r.saturated_fraction) for r in linear],
        "max_weight": [float(np.abs(np.asarray(k)).max(0).mean()) for k in kernels],
    }


def run(config: C.Config) -> C.Result:
    data = C.mnist1d(config["samples"])
    x, y, x_test, y_test = data["x"], data["y"], data["x_test"], data["y_test"]
    depth = config["depth"]
    numbers: dict = {"at_init": {}, "training": {}}
    # 1. At init, with hidden fan-in m = width: the scale of the units against m.
    for m in config["fan_ins"]:
        model = MLP((m,) * depth, activation="tanh")
        template = model.init(jax.random.key(0), x[:2])
        for name, init in inits().items():
            params = C.draw_kernels(template["params"], init, jax.random.key(81))
            prof = layer_profile(model, {"params": params}, x[:512])
            # The last hidden layer has fan-in m (the first one has the input's 40).
            numbers["at_init"][f"{name}/{m}"] = {**prof, "fan_in": m}

    # 2. Training the widest configured net (fan-in `width`).
    model = MLP((config["width"],) * depth, activation="tanh")
    template = model.init(jax.random.key(0), x[:2])["params"]
    names = list(inits())
    members = [
        C.draw_kernels(template, init, jax.random.fold_in(jax.random.key(82), s))
        for init in inits().values()
        for s in range(config.seeds)
    ]
    out = C.train(
        C.classifier_loss(model, x, y, config["batch"]),
        optax.sgd(config["lr"], momentum=0.9),
        C.stack(members),
        jax.random.split(jax.random.key(83), len(members)),
        config["steps"],
        batched=True,
        desc="sparse vs dense",
        progress=config.progress,
    )
    test = C.evaluate(model, out["params"], x_test, y_test, batched=True)
    loss = out["loss"].reshape(len(names), config.seeds, -1)
    acc = np.asarray(test["accuracy"]).reshape(len(names), config.seeds)
    for i, name in enumerate(names):
        numbers["training"][name] = {
            "loss_curve_mean": loss[i].mean(0),
            "final_loss": float(np.mean([C.tail_mean(c, 0.05) for c in loss[i]])),
            "test_accuracy": acc[i],
        }

    ms = config["fan_ins"]
    lo, hi = min(ms), max(ms)
    AI = numbers["at_init"]
    dense, unit, sparse = names

    def last(name, m, what):
        return AI[f"{name}/{m}"][what][-1]

    sat = [last(unit, m, "saturated") for m in ms]
    shrink = last(dense, lo, "max_weight") / last(dense, hi, "max_weight")
    sp_std = [last(sparse, m, "std") for m in ms]
    sp_w = [last(sparse, m, "max_weight") for m in ms]
    T = numbers["training"]
    checks = [
        C.Check(
            "unit-scale dense weights saturate tanh more as the fan-in grows (saturated "
            "fraction of the last hidden layer increases with m)",
            all(b > a for a, b in itertools.pairwise(sat)),
            ", ".join(f"m={m}: {s:.2f}" for m, s in zip(ms, sat, strict=True)),
        ),
        C.Check(
            f"dense N(0, 1/m) shrinks each unit's largest weight like 1/sqrt(m): from m={lo} "
            f"to m={hi} by >= half of sqrt({hi}/{lo}) = {np.sqrt(hi / lo):.2g}",
            shrink >= 0.5 * np.sqrt(hi / lo),
            f"shrinks {shrink:.3g}x",
        ),
        C.Check(
            "sparse init's pre-activation std and largest weight do not depend on m (within "
            "1.5x over the fan-ins)",
            max(sp_std) <= 1.5 * min(sp_std) and max(sp_w) <= 1.5 * min(sp_w),
            "std " + ", ".join(f"{v:.2f}" for v in sp_std)
            + "; max weight " + ", ".join(f"{v:.2f}" for v in sp_w),
        ),
        C.Check(
            f"training at fan-in {config['width']}: sparse's final training loss <= 1.1x "
            "dense N(0, 1/m)'s",
            T[sparse]["final_loss"] <= 1.1 * T[dense]["final_loss"],
            ", ".join(f"{n} {T[n]['final_loss']:.3g}" for n in names),
        ),
        C.Check(
            "(beyond the claim) sparse generalizes as well: test accuracy >= dense "
            "N(0, 1/m)'s - 2 points",
            np.mean(T[sparse]["test_accuracy"]) >= np.mean(T[dense]["test_accuracy"]) - 0.02,
            ", ".join(f"{n} {np.mean(T[n]['test_accuracy']):.3f}" for n in names),
        ),
    ]  # fmt: skip

    fig, axes = C.figure(1, 3, width=4.4)
    for name in names:
        axes[0, 0].plot(ms, [last(name, m, "std") for m in ms], "o-", label=name)
        axes[0, 1].plot(ms, [last(name, m, "max_weight") for m in ms], "o-", label=name)
        axes[0, 2].plot(C.smooth(T[name]["loss_curve_mean"], 25), label=name)
    axes[0, 0].set(xscale="log", yscale="log", xlabel="fan-in m",
                   ylabel="pre-activation std", title="last hidden layer at init")  # fmt: skip
    axes[0, 1].set(xscale="log", yscale="log", xlabel="fan-in m",
                   ylabel="mean of max |w| per unit", title="largest weight per unit")  # fmt: skip
    axes[0, 2].set(yscale="log", xlabel="step", ylabel="training loss (25-step mean)",
                   title=f"tanh MLP, width {config['width']}, MNIST-1D")  # fmt: skip
    for ax in axes[0]:
        ax.legend(fontsize=8)
    plots = [C.save_figure(fig, config, "sparse_init.png")]
    headline = f"final loss at width {config['width']}: " + ", ".join(
        f"{n} {T[n]['final_loss']:.3g}" for n in names
    )
    return C.result(
        config,
        checks=checks,
        headline=headline,
        numbers=numbers,
        plots=plots,
        notes=(
            f"flaxinit.models.MLP with {depth} tanh layers on MNIST-1D (generated by the "
            "mnist1d package). At init the hidden width (the fan-in of every hidden layer "
            "after the first) runs over the configured fan-ins; statistics from "
            "flaxinit.diagnostics.activation_stats on 512 examples (saturated = |tanh| > 0.99)."
            f" Training: width {config['width']}, SGD momentum 0.9, lr {config['lr']}, "
            f"minibatches of {config['batch']}; every kernel, readout included, takes the "
            "arm's init (fi.lecun_normal, fi.normal(1), fi.sparse(nonzero=15, stddev=1))."
        ),
    )
