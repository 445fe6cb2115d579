"""Saxe et al. 2013: in deep linear nets, orthogonal init gives depth-independent learning
times, scaled Gaussian init does not."""

from __future__ import annotations

import jax
import numpy as np
import optax

import flaxinit as fi
from experiments import _common as C

CLAIM = (
    "In deep linear networks, random orthogonal initialization makes learning time (steps to "
    "a target loss) independent of depth, because the end-to-end map is an isometry (all "
    "singular values 1); scaled Gaussian init (variance 1/n) has singular values that spread "
    "with depth and its learning time grows with depth."
)
SOURCE = (
    "Saxe, McClelland & Ganguli 2013, 'Exact solutions to the nonlinear dynamics of learning "
    "in deep linear neural networks' (arXiv:1312.6120), Sec. 3-4, Fig. 6."
)

CONFIGS = {
    "tiny": {"depths": [1, 3], "width": 16, "steps": 30, "lr": 2e-3, "batch": 64,
             "target": 1.5, "seeds": 1},
    "quick": {"depths": [2, 8, 32, 64], "width": 64, "steps": 300, "lr": 2e-3, "batch": 128,
              "target": 0.3, "seeds": 2},
    "full": {"depths": [2, 4, 8, 16, 32, 64, 128], "width": 64, "steps": 1000, "lr": 2e-3,
             "batch": 256, "target": 0.3, "seeds": 5},
}  # fmt: skip


def end_to_end_singular_values(params) -> np.ndarray:
    """Singular values of the product of the hidden layers' matrices (the deep part)."""
    stack = np.asarray(params["layers"]["Dense_0"]["kernel"], dtype=np.float64)
    prod = np.eye(stack.shape[-1])
    for w in stack:
        prod = prod @ w
    return np.linalg.svd(prod, compute_uv=False)


def run(config: C.Config) -> C.Result:
    x, y, _, _ = C.digits_split()
    width = config["width"]
    inits = {"orthogonal": fi.orthogonal(), "gaussian 1/n": fi.normal(width**-0.5)}
    tx = optax.sgd(config["lr"], momentum=0.9)
    numbers: dict = {"steps_to_target": {n: {} for n in inits}, "curves": {}, "spectra": {}}
    for depth in config["depths"]:
        # Input layer and readout Xavier in both arms; the `depth` hidden layers differ.
        model = C.DeepMLP(
            depth=depth + 1,
            width=width,
            activation="linear",
            use_bias=False,
            kernel_init=fi.xavier_normal(),
        )
        template = model.init(jax.random.key(0), x[:2])["params"]
        members = []
        for init in inits.values():
            for s in range(config.seeds):
                key = jax.random.fold_in(jax.random.key(11), s)
                p = dict(template)
                p["layers"] = C.draw_kernels({"layers": template["layers"]}, init, key)["layers"]
                members.append(p)
        out = C.train(
            C.classifier_loss(model, x, y, config["batch"]),
            tx,
            C.stack(members),
            jax.random.split(jax.random.key(12), len(members)),
            config["steps"],
            batched=True,
            desc=f"depth {depth}",
            progress=config.progress,
        )
        loss = out["loss"].reshape(len(inits), config.seeds, -1)
        for i, name in enumerate(inits):
            curve = C.smooth(loss[i].mean(0), 10)
            numbers["steps_to_target"][name][str(depth)] = C.steps_to(curve, config["target"])
            numbers["curves"][f"{name}/{depth}"] = loss[i].mean(0)
            numbers["spectra"][f"{name}/{depth}"] = end_to_end_singular_values(
                members[i * config.seeds]
            )

    depths = config["depths"]
    lo, hi = str(min(depths)), str(max(depths))
    T = numbers["steps_to_target"]
    cap = config["steps"]

    def t(name, d):  # never reaching the target counts as the whole budget
        v = T[name][d]
        return cap if v is None else v

    orth_flat = T["orthogonal"][hi] is not None and t("orthogonal", hi) <= 1.25 * t(
        "orthogonal", lo
    )
    ratio_lo = t("gaussian 1/n", lo) / max(t("orthogonal", lo), 1)
    ratio_hi = t("gaussian 1/n", hi) / max(t("orthogonal", hi), 1)
    gauss_min = min(t("gaussian 1/n", str(d)) for d in depths)
    sv = numbers["spectra"]
    checks = [
        C.Check(
            f"orthogonal: steps to loss {config['target']} at depth {hi} <= 1.25x those at "
            f"depth {lo} (flat in depth)",
            orth_flat,
            "orthogonal steps "
            + ", ".join(f"{d}: {C.fmt(T['orthogonal'][str(d)])}" for d in depths),
        ),
        C.Check(
            f"Gaussian slows relative to orthogonal: its steps ratio at depth {hi} >= 2x the "
            f"ratio at depth {lo}",
            ratio_hi >= 2 * ratio_lo,
            f"Gaussian/orthogonal {ratio_lo:.2f} at {lo}, {ratio_hi:.2f} at {hi}; Gaussian "
            "steps " + ", ".join(f"{d}: {C.fmt(T['gaussian 1/n'][str(d)])}" for d in depths),
        ),
        C.Check(
            f"Gaussian: learning time grows with depth (steps at depth {hi} >= 1.5x its "
            "fewest over depths)",
            t("gaussian 1/n", hi) >= 1.5 * gauss_min,
            f"{t('gaussian 1/n', hi)} vs fewest {gauss_min}",
        ),
        C.Check(
            f"at init, depth {hi}: orthogonal's end-to-end singular values are all 1 (+-1e-3), "
            "Gaussian's spread over > 10x",
            bool(np.max(np.abs(np.asarray(sv[f"orthogonal/{hi}"]) - 1)) <= 1e-3)
            and float(np.max(sv[f"gaussian 1/n/{hi}"]) / np.min(sv[f"gaussian 1/n/{hi}"])) > 10,
            f"orthogonal in [{np.min(sv[f'orthogonal/{hi}']):.4f}, "
            f"{np.max(sv[f'orthogonal/{hi}']):.4f}], Gaussian in "
            f"[{np.min(sv[f'gaussian 1/n/{hi}']):.2g}, {np.max(sv[f'gaussian 1/n/{hi}']):.2g}]",
        ),
    ]

    fig, axes = C.figure(1, 3, width=4.6)
    for name in inits:
        steps = [t(name, str(d)) for d in depths]
        axes[0, 0].plot(depths, steps, "o-", label=name)
        for d in (min(depths), max(depths)):
            axes[0, 1].plot(
                C.smooth(numbers["curves"][f"{name}/{d}"], 10), label=f"{name}, depth {d}"
            )
        s = np.sort(np.asarray(sv[f"{name}/{hi}"]))[::-1]
        axes[0, 2].plot(np.arange(1, len(s) + 1), s, label=name)
    axes[0, 0].set(
        xscale="log", xlabel="hidden layers", ylabel=f"steps to loss {config['target']}",
        title="learning time vs depth",
    )  # fmt: skip
    # The depths themselves as ticks: log-scale minor labels overlapped.
    from matplotlib.ticker import NullFormatter

    axes[0, 0].set_xticks(depths, [str(d) for d in depths])
    axes[0, 0].xaxis.set_minor_formatter(NullFormatter())
    axes[0, 1].axhline(config["target"], color="gray", ls=":")
    axes[0, 1].set(yscale="log", xlabel="step", ylabel="training loss", title="loss curves")
    axes[0, 2].set(
        yscale="log", xlabel="index", ylabel="singular value",
        title=f"end-to-end map at init, depth {hi}",
    )  # fmt: skip
    for ax in axes[0]:
        ax.legend(fontsize=8)
    plots = [C.save_figure(fig, config, "learning_time.png")]
    headline = (
        f"steps to {config['target']} at depth {lo} -> {hi}: orthogonal "
        f"{C.fmt(T['orthogonal'][lo])} -> {C.fmt(T['orthogonal'][hi])}, Gaussian "
        f"{C.fmt(T['gaussian 1/n'][lo])} -> {C.fmt(T['gaussian 1/n'][hi])}"
    )
    return C.result(
        config,
        checks=checks,
        headline=headline,
        numbers=numbers,
        plots=plots,
        notes=(
            f"Linear network without biases on the digits: a Xavier input layer, `depth` "
            f"hidden {width}x{width} layers (orthogonal, gain 1, or N(0, 1/{width})), a Xavier "
            f"readout; softmax cross-entropy, SGD momentum 0.9 at a fixed learning rate for "
            f"every depth, minibatches of {config['batch']}. Steps are read off the seed-mean "
            "loss curve smoothed over 10 steps; a run that never reaches the target counts "
            "as the whole budget. With a fixed learning rate a deeper orthogonal net learns "
            "faster, not just as fast (its gradient sums over more layers): Saxe et al.'s "
            "depth independence is for a learning rate scaled with depth."
        ),
    )
