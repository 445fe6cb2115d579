"""Symmetry breaking: with zero or constant init the hidden units of a layer stay identical
through training, so the network is as good as one unit wide; random init breaks it."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

import flaxinit as fi
from experiments import _common as C

CLAIM = (
    "Initializing all weights to zero or to one constant never breaks the symmetry between "
    "hidden units: they get identical gradients, stay identical through training, and each "
    "weight matrix stays rank 1 (its null space swallows all but one direction of the "
    "input), so the loss plateaus; zero init is worse still, as no hidden weight gets a "
    "gradient at all. Random init breaks the symmetry and trains."
)
SOURCE = (
    "Goodfellow, Bengio & Courville 2016, 'Deep Learning', Sec. 8.4 ('break symmetry'); "
    "Rumelhart, Hinton & Williams 1986."
)

CONFIGS = {
    "tiny": {"depth": 2, "width": 8, "steps": 20, "lr": 0.05, "constant": 0.1, "seeds": 1},
    "quick": {"depth": 2, "width": 32, "steps": 600, "lr": 0.05, "constant": 0.1, "seeds": 3},
    "full": {"depth": 3, "width": 128, "steps": 3000, "lr": 0.05, "constant": 0.1, "seeds": 5},
}


def unit_spread(params: dict) -> jax.Array:
    """The largest difference between any hidden unit's incoming weights and unit 0's,
    over all hidden layers, relative to the largest weight (0 = all units identical)."""
    spreads, scales = [], []
    for w in (params["first"]["Dense_0"]["kernel"], params["layers"]["Dense_0"]["kernel"]):
        spreads.append(jnp.max(jnp.abs(w - w[..., :1])))
        scales.append(jnp.max(jnp.abs(w)))
    return jnp.max(jnp.stack(spreads)) / jnp.maximum(jnp.max(jnp.stack(scales)), 1e-30)


def run(config: C.Config) -> C.Result:
    x, y, x_test, y_test = C.digits_split()
    width, depth = config["width"], config["depth"]
    model = C.DeepMLP(depth=depth, width=width, activation="tanh")
    template = model.init(jax.random.key(0), x[:2])["params"]
    inits = {
        "zero": fi.zeros,
        f"constant {config['constant']}": fi.constant(config["constant"]),
        "random (Xavier)": fi.xavier_normal(),
    }
    names = list(inits)
    # Arms x seeds, trained as one vmapped program; zero/constant ignore the seed's key.
    members = [
        C.draw_kernels(template, inits[n], jax.random.fold_in(jax.random.key(3), s))
        for n in names
        for s in range(config.seeds)
    ]
    base = C.classifier_loss(model, x, y)

    def loss_fn(params, state, key):
        loss, (state, metrics) = base(params, state, key)
        return loss, (state, {**metrics, "unit_spread": unit_spread(params)})

    out = C.train(
        loss_fn,
        optax.sgd(config["lr"], momentum=0.9),
        C.stack(members),
        jax.random.split(jax.random.key(4), len(members)),
        config["steps"],
        batched=True,
        desc="symmetry",
        progress=config.progress,
    )
    test = C.evaluate(model, out["params"], x_test, y_test, batched=True)
    n = config.seeds
    numbers: dict = {"arms": {}}
    for i, name in enumerate(names):
        rows = slice(i * n, (i + 1) * n)
        final = jax.tree.map(lambda a, i=i: a[i * n], out["params"])  # first seed
        stats = {r.path: r for r in fi.diagnostics.weight_stats(final)}
        hidden = [p for p in stats if p.startswith(("first", "layers"))]
        numbers["arms"][name] = {
            "loss_curve": out["loss"][rows],
            "unit_spread_curve": out["unit_spread"][rows],
            "final_loss": [C.tail_mean(c, 0.05) for c in out["loss"][rows]],
            "test_accuracy": test["accuracy"][rows],
            "hidden_rank": {p: int(stats[p].rank) for p in hidden},
            "hidden_full_rank": {p: int(stats[p].full_rank) for p in hidden},
            "hidden_duplicate_units": {p: int(stats[p].duplicate_cols) for p in hidden},
            "final_unit_spread": float(out["unit_spread"][i * n, -1]),
            "first_layer_singular_values": np.linalg.svd(
                np.asarray(final["first"]["Dense_0"]["kernel"]), compute_uv=False
            ),
        }
    zero, const, rand = (numbers["arms"][nm] for nm in names)
    chance = math.log(10)
    fl = {nm: float(np.mean(numbers["arms"][nm]["final_loss"])) for nm in names}
    stacked_rank = const["hidden_rank"]
    checks = [
        C.Check(
            f"zero: hidden weights never move (rank 0) and the loss stays >= 0.9 ln 10 "
            f"= {0.9 * chance:.2f}",
            all(r == 0 for r in zero["hidden_rank"].values()) and fl[names[0]] >= 0.9 * chance,
            f"ranks {list(zero['hidden_rank'].values())}, final loss {fl[names[0]]:.3f}",
        ),
        C.Check(
            "constant: hidden units stay identical (spread <= 1e-6 of max|W|, all but one "
            "unit duplicates) and every hidden weight matrix is rank 1",
            const["final_unit_spread"] <= 1e-6
            and all(d == width - 1 for d in const["hidden_duplicate_units"].values())
            and all(r == 1 for r in stacked_rank.values()),
            f"spread {const['final_unit_spread']:.2g}, duplicates "
            f"{list(const['hidden_duplicate_units'].values())}, "
            f"ranks {list(stacked_rank.values())}",
        ),
        C.Check(
            "constant: the loss plateaus (final loss >= 5x random init's)",
            fl[names[1]] >= 5 * fl[names[2]],
            f"constant {fl[names[1]]:.3f}, random {fl[names[2]]:.3g}",
        ),
        C.Check(
            "random: units differ (no duplicates, full rank) and test accuracy >= 90%",
            all(d == 0 for d in rand["hidden_duplicate_units"].values())
            and all(
                rand["hidden_rank"][p] == rand["hidden_full_rank"][p] for p in rand["hidden_rank"]
            )
            and float(np.mean(rand["test_accuracy"])) >= 0.9,
            f"duplicates {list(rand['hidden_duplicate_units'].values())}, ranks "
            f"{list(rand['hidden_rank'].values())}, test accuracy "
            f"{float(np.mean(rand['test_accuracy'])):.3f}",
        ),
    ]

    fig, axes = C.figure(1, 3, width=4.6)
    for name in names:
        arm = numbers["arms"][name]
        C.plot_band(axes[0, 0], arm["loss_curve"], name)
        C.plot_band(axes[0, 1], np.maximum(arm["unit_spread_curve"], 1e-12), name)
        sv = np.asarray(arm["first_layer_singular_values"])
        axes[0, 2].plot(np.arange(1, len(sv) + 1), np.maximum(sv, 1e-12), "o-", ms=3, label=name)
    axes[0, 0].set(yscale="log", xlabel="step", ylabel="training loss", title="loss")
    axes[0, 1].set(
        yscale="log", xlabel="step", ylabel="max |w_j - w_0| / max |W|", title="unit spread"
    )
    axes[0, 2].set(
        yscale="log", xlabel="index", ylabel="singular value", title="first layer after training"
    )
    for ax in axes[0]:
        ax.legend(fontsize=8)
    plots = [C.save_figure(fig, config, "symmetry.png")]
    headline = (
        f"final loss zero {fl[names[0]]:.2f}, constant {fl[names[1]]:.2f}, random "
        f"{fl[names[2]]:.2g}; constant ranks {list(stacked_rank.values())}"
    )
    return C.result(
        config,
        checks=checks,
        headline=headline,
        numbers=numbers,
        plots=plots,
        notes=(
            f"tanh MLP, {depth} hidden layers of {width} units, on the digits (full batch, "
            "SGD momentum 0.9). All kernels, including the readout's, get the arm's init; "
            "biases start at 0. Ranks and duplicate units come from "
            "flaxinit.diagnostics.weight_stats (numerical rank with numpy's tolerance; the "
            "stacked layers' matrices are shown as one matrix per stack)."
        ),
    )
