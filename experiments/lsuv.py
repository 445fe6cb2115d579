"""Mishkin & Matas 2016: LSUV against He and orthogonal init on a deep thin net, with ReLU,
tanh and maxout units."""

from __future__ import annotations

import math

import jax
import numpy as np
import optax

import flaxinit as fi
from experiments import _common as C

CLAIM = (
    "Layer-sequential unit-variance init (orthonormal kernels, then each layer rescaled to "
    "unit output variance on a batch) trains very deep thin networks end to end, and is "
    "as good as or better than He and orthogonal init across activations (ReLU, maxout), "
    "tanh being the paper's exception."
)
SOURCE = (
    "Mishkin & Matas 2016, 'All you need is a good init' (ICLR, arXiv:1511.06422), Sec. 3-4 "
    "and Tables 2-3 (FitNets; activation study)."
)

CONFIGS = {
    "tiny": {"depth": 4, "width": 8, "steps": 20, "lr": 1e-3, "batch": 32,
             "activations": ["maxout"], "seeds": 1},
    "quick": {"depth": 20, "width": 32, "steps": 600, "lr": 3e-3, "batch": 128,
              "activations": ["relu", "tanh", "maxout"], "seeds": 2},
    "full": {"depth": 40, "width": 64, "steps": 4000, "lr": 3e-3, "batch": 256,
             "activations": ["relu", "tanh", "maxout"], "seeds": 5},
}  # fmt: skip

INITS = ("he", "orthogonal", "lsuv")


def gain(activation: str) -> float:
    """Orthogonal init's gain: PyTorch's table; maxout (not in it) gets 1."""
    return 1.0 if activation == "maxout" else fi.calculate_gain(activation)


def run(config: C.Config) -> C.Result:
    x, y, x_test, y_test = C.digits_split()
    tx = optax.sgd(config["lr"], momentum=0.9)
    chance = math.log(10)
    numbers: dict = {"activations": {}}
    for act in config["activations"]:
        model = C.DeepMLP(depth=config["depth"], width=config["width"], activation=act)
        template = model.init(jax.random.key(0), x[:2])["params"]
        inits = {
            "he": fi.kaiming_normal(nonlinearity="relu"),
            "orthogonal": fi.orthogonal(gain(act)),
            "lsuv": fi.orthogonal(),  # the pre-init; fitted below
        }
        members, lsuv_rounds = [], []
        for name in INITS:
            for s in range(config.seeds):
                key = jax.random.fold_in(jax.random.key(21), s)
                params = C.draw_kernels(template, inits[name], key)
                if name == "lsuv":
                    variables, report = fi.lsuv(model, {"params": params}, x[:256], pre_init=None)
                    params = variables["params"]
                    lsuv_rounds.append([f.rounds for f in report])
                members.append(params)
        out = C.train(
            C.classifier_loss(model, x, y, config["batch"]),
            tx,
            C.stack(members),
            jax.random.split(jax.random.key(22), len(members)),
            config["steps"],
            batched=True,
            desc=act,
            progress=config.progress,
        )
        test = C.evaluate(model, out["params"], x_test, y_test, batched=True)
        loss = out["loss"].reshape(len(INITS), config.seeds, -1)
        acc = test["accuracy"].reshape(len(INITS), config.seeds)
        diverged = np.asarray(test["diverged"]).reshape(len(INITS), config.seeds)
        entry = {"lsuv_rounds_per_layer": lsuv_rounds}
        for i, name in enumerate(INITS):
            curve = C.smooth(loss[i].mean(0), 25)
            entry[name] = {
                "loss_curve_mean": loss[i].mean(0),
                "initial_loss": loss[i, :, 0],
                "final_loss": float(np.mean([C.tail_mean(c, 0.05) for c in loss[i]])),
                "steps_to_half_chance": C.steps_to(curve, 0.5 * chance),
                "test_accuracy": acc[i],
                "test_accuracy_mean": float(acc[i].mean()),
                "diverged": diverged[i],
            }
        numbers["activations"][act] = entry

    A = numbers["activations"]
    judged = [a for a in config["activations"] if a != "tanh"]
    best_other = {a: max(A[a]["he"]["test_accuracy_mean"], A[a]["orthogonal"]["test_accuracy_mean"])
                  for a in A}  # fmt: skip
    cap = config["steps"]

    def steps(a, n):
        v = A[a][n]["steps_to_half_chance"]
        return cap if v is None else v

    checks = [
        C.Check(
            f"LSUV trains the {config['depth']}-layer net with every activation (final "
            f"training loss <= 0.25 ln 10 = {0.25 * chance:.2f})",
            all(A[a]["lsuv"]["final_loss"] <= 0.25 * chance for a in A),
            ", ".join(f"{a} {A[a]['lsuv']['final_loss']:.3g}" for a in A),
        ),
        C.Check(
            f"LSUV's test accuracy >= the better of He and orthogonal - 1 point "
            f"({', '.join(judged)})",
            all(A[a]["lsuv"]["test_accuracy_mean"] >= best_other[a] - 0.01 for a in judged),
            "; ".join(
                f"{a}: LSUV {A[a]['lsuv']['test_accuracy_mean']:.3f}, best other "
                f"{best_other[a]:.3f}"
                for a in A
            ),
        ),
        C.Check(
            f"LSUV converges as fast: steps to 0.5 ln 10 <= 1.25x the faster of He and "
            f"orthogonal ({', '.join(judged)})",
            all(
                steps(a, "lsuv") <= 1.25 * min(steps(a, "he"), steps(a, "orthogonal"))
                for a in judged
            ),
            "; ".join(
                f"{a}: LSUV {steps(a, 'lsuv')}, He {steps(a, 'he')}, orth {steps(a, 'orthogonal')}"
                for a in A
            ),
        ),
    ]

    acts = config["activations"]
    fig, axes = C.figure(1, len(acts), width=4.4)
    for ax, act in zip(axes[0], acts, strict=True):
        for name in INITS:
            ax.plot(C.smooth(A[act][name]["loss_curve_mean"], 25), label=name)
        ax.axhline(chance, color="gray", ls=":", lw=1)
        ax.set(yscale="log", xlabel="step", ylabel="training loss (25-step mean)",
               title=f"{act}, {config['depth']} layers x {config['width']}")  # fmt: skip
        ax.legend(fontsize=8)
    plots = [C.save_figure(fig, config, "loss_curves.png")]

    def shown(a, n):
        # A net that diverged to NaN has no accuracy to show (argmax over NaNs).
        if np.all(A[a][n]["diverged"]):
            return "diverged"
        return f"{A[a][n]['test_accuracy_mean']:.2f}"

    headline = "test acc LSUV/He/orth: " + "; ".join(
        f"{a} {shown(a, 'lsuv')}/{shown(a, 'he')}/{shown(a, 'orthogonal')}" for a in acts
    )
    return C.result(
        config,
        checks=checks,
        headline=headline,
        numbers=numbers,
        plots=plots,
        notes=(
            f"Deep thin MLP ({config['depth']} hidden layers of {config['width']} units; "
            "maxout units take the max of 2 linear pieces) on the digits, SGD momentum 0.9, "
            f"lr {config['lr']}, minibatches of {config['batch']}. He is kaiming_normal "
            "(gain sqrt 2) for every activation, orthogonal uses the activation's gain (1 for "
            "maxout), LSUV is flaxinit.lsuv (pre-activation unit variance, tol 0.1) on "
            "orthonormal kernels with a batch of 256 training images. Tanh is reported but "
            "not judged, as in the paper."
        ),
    )
