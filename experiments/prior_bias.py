"""Initializing the output bias to the log prior on imbalanced classification."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

import flaxinit as fi
from experiments import _common as C
from flaxinit import recipes
from flaxinit.diagnostics import digits

CLAIM = (
    "On imbalanced binary classification, setting the output bias to the log-odds of the "
    "class prior, b = log(pi / (1 - pi)), makes the initial loss equal the prior's entropy "
    "H(pi) instead of ln 2, so the network does not spend its first steps learning the "
    "prior, and training is faster."
)
SOURCE = (
    "Lin et al. 2017, 'Focal Loss for Dense Object Detection' (RetinaNet, arXiv:1708.02002), "
    "Sec. 4.1 'Initialization'; Karpathy 2019, 'A Recipe for Training Neural Networks' "
    "('init well')."
)

CONFIGS = {
    "tiny": {"priors": [0.1, 0.01], "width": 8, "steps": 20, "lr": 0.05, "seeds": 1},
    "quick": {"priors": [0.1, 0.01], "width": 32, "steps": 300, "lr": 0.05, "seeds": 3},
    "full": {"priors": [0.1, 0.01], "width": 128, "steps": 2000, "lr": 0.05, "seeds": 5},
}


def imbalanced(prior: float) -> tuple[np.ndarray, np.ndarray]:
    """Digits as 'is it a 0?': 10% positives as they come; fewer kept for smaller priors."""
    x, labels = digits(seed=0)
    pos, neg = np.nonzero(labels == 0)[0], np.nonzero(labels != 0)[0]
    keep = max(1, min(len(pos), round(prior * len(neg) / (1 - prior))))
    idx = np.sort(np.concatenate([pos[:keep], neg]))
    return x[idx], (labels[idx] == 0).astype(np.float32)


def entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def prior_rules(prior: float) -> list:
    """The prior-bias recipe for a sigmoid head: ``head/bias = log(pi / (1 - pi))``."""
    return recipes.prior_bias(prior, activation="sigmoid", bias="head/bias")


def run(config: C.Config) -> C.Result:
    model = C.DeepMLP(
        depth=1,
        width=config["width"],
        num_outputs=1,
        kernel_init=fi.he_normal(),
        head_init=fi.normal(0.01),  # small readout weights, as RetinaNet's head
    )
    numbers: dict = {"priors": {}}
    checks, curves = [], {}
    for prior in config["priors"]:
        x, y = imbalanced(prior)
        actual = float(y.mean())
        arms = {"bias 0": [], "log-prior bias": prior_rules(actual)}
        members = []
        for rules in arms.values():
            for s in range(config.seeds):
                params = model.init(jax.random.fold_in(jax.random.key(71), s), x[:2])["params"]
                members.append(fi.apply_rules(params, rules) if rules else params)
        xj, yj = jnp.asarray(x), jnp.asarray(y)

        def loss_fn(params, state, key, xj=xj, yj=yj):
            logits = model.apply({"params": params}, xj)[:, 0]
            return optax.sigmoid_binary_cross_entropy(logits, yj).mean(), (state, {})

        out = C.train(
            loss_fn,
            optax.sgd(config["lr"], momentum=0.9),
            C.stack(members),
            jax.random.split(jax.random.key(72), len(members)),
            config["steps"],
            batched=True,
            desc=f"prior {prior}",
            progress=config.progress,
        )
        loss = out["loss"].reshape(len(arms), config.seeds, -1)
        h = entropy(actual)
        entry = {"positives": int(y.sum()), "samples": len(y), "prior": actual, "entropy": h}
        for i, name in enumerate(arms):
            curve = loss[i].mean(0)
            entry[name] = {
                "initial_loss": loss[i, :, 0],
                "loss_curve_mean": curve,
                "steps_to_half_entropy": C.steps_to(curve, 0.5 * h),
                "mean_loss_over_training": float(loss[i].mean()),
                "final_loss": float(curve[-1]),
            }
            curves[(prior, name)] = loss[i]
        numbers["priors"][str(prior)] = entry
        zero, log_prior = entry["bias 0"], entry["log-prior bias"]
        init_prior = float(np.mean(log_prior["initial_loss"]))
        init_zero = float(np.mean(zero["initial_loss"]))
        s_prior, s_zero = log_prior["steps_to_half_entropy"], zero["steps_to_half_entropy"]
        cap = config["steps"]
        pct = f"{100 * (1 - actual):.0f}/{100 * actual:.0f}"
        checks += [
            C.Check(
                f"{pct}: initial loss with the log-prior bias = H(pi) +- 0.01, below bias 0's "
                "(about ln 2)",
                abs(init_prior - h) <= 0.01 and init_prior < init_zero,
                f"{init_prior:.4f} vs H = {h:.4f}; {init_zero:.4f} vs ln 2 = 0.6931",
            ),
            C.Check(
                f"{pct}: the log-prior bias reaches H(pi)/2 in fewer steps",
                s_prior is not None and s_prior < (cap if s_zero is None else s_zero),
                f"steps: log-prior {C.fmt(s_prior)}, bias 0 {C.fmt(s_zero)}",
            ),
            C.Check(
                f"{pct}: the log-prior bias has the lower mean loss over the "
                f"{config['steps']} steps",
                log_prior["mean_loss_over_training"] < zero["mean_loss_over_training"],
                f"log-prior {log_prior['mean_loss_over_training']:.4f}, bias 0 "
                f"{zero['mean_loss_over_training']:.4f}",
            ),
        ]

    priors = config["priors"]
    fig, axes = C.figure(1, len(priors), width=5)
    for ax, prior in zip(axes[0], priors, strict=True):
        entry = numbers["priors"][str(prior)]
        for name in ("bias 0", "log-prior bias"):
            C.plot_band(ax, curves[(prior, name)], name)
        ax.axhline(entry["entropy"], color="gray", ls=":", lw=1, label="H(prior)")
        ax.set(yscale="log", xlabel="step", ylabel="binary cross-entropy",
               title=f"{entry['positives']} positives of {entry['samples']}")  # fmt: skip
        ax.legend(fontsize=8)
    plots = [C.save_figure(fig, config, "prior_bias.png")]
    p = numbers["priors"]
    headline = "; ".join(
        f"pi={p[str(q)]['prior']:.3f}: initial loss {np.mean(p[str(q)]['log-prior bias']['initial_loss']):.3f} "  # noqa: E501
        f"(H={p[str(q)]['entropy']:.3f}) vs {np.mean(p[str(q)]['bias 0']['initial_loss']):.3f}"
        for q in priors
    )
    return C.result(
        config,
        checks=checks,
        headline=headline,
        numbers=numbers,
        plots=plots,
        notes=(
            "Digits as a binary task ('is it a 0?'): all 178 zeros give pi = 0.099; for pi "
            "= 0.01 only the first 16 zeros are kept. MLP with one He-initialized ReLU layer "
            f"of {config['width']} and a readout with N(0, 0.01) weights; the readout bias is "
            "0 or log(pi/(1-pi)) (flaxinit.apply_rules(('head/bias', fill(...)))). Full-batch "
            f"SGD momentum 0.9, lr {config['lr']}, sigmoid cross-entropy. With bias 0 the "
            "initial loss is a little above ln 2 because the readout's logits are small, not "
            "exactly 0."
        ),
    )
