"""Batch normalization makes training robust to a poor init; a good init still converges
faster with it."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

import flaxinit as fi
from experiments import _common as C

CLAIM = (
    "With BatchNorm after every linear layer, a deep ReLU net trains even from a poor init "
    "(N(0, 0.01), whose signal vanishes without normalization) while the same net without "
    "BatchNorm does not train; from a good init (He) BatchNorm still converges faster."
)
SOURCE = (
    "Ioffe & Szegedy 2015, 'Batch Normalization' (ICML, arXiv:1502.03167), Sec. 3.3 and "
    "4.2 ('less careful initialization'); the seeds' statement of it in flaxinit's issue."
)

CONFIGS = {
    "tiny": {"depth": 3, "width": 8, "steps": 20, "lr": 0.02, "batch": 32, "seeds": 1},
    "quick": {"depth": 15, "width": 64, "steps": 600, "lr": 0.02, "batch": 128, "seeds": 2},
    "full": {"depth": 30, "width": 128, "steps": 3000, "lr": 0.02, "batch": 256, "seeds": 5},
}

INITS = {"poor N(0,0.01)": fi.normal(0.01), "good (He)": fi.kaiming_normal()}


def make_loss(model, x, y, batch: int, batchnorm: bool) -> C.LossFn:
    x, y = jnp.asarray(x), jnp.asarray(y)

    def loss_fn(params, stats, key):
        idx = jax.random.randint(key, (batch,), 0, x.shape[0])
        if batchnorm:
            logits, new = model.apply(
                {"params": params, "batch_stats": stats}, x[idx], mutable=["batch_stats"]
            )
            stats = new["batch_stats"]
        else:
            logits = model.apply({"params": params}, x[idx])
        return C.cross_entropy(logits, y[idx]), (stats, {"accuracy": C.accuracy(logits, y[idx])})

    return loss_fn


def run(config: C.Config) -> C.Result:
    x, y, x_test, y_test = C.digits_split()
    chance = math.log(10)
    tx = optax.sgd(config["lr"], momentum=0.9)
    numbers: dict = {"arms": {}}
    for batchnorm in (False, True):
        model = C.DeepMLP(depth=config["depth"], width=config["width"], batchnorm=batchnorm)
        template = model.init(jax.random.key(0), x[:2])
        members, stats = [], []
        for init in INITS.values():
            for s in range(config.seeds):
                key = jax.random.fold_in(jax.random.key(31), s)
                members.append(C.draw_kernels(template["params"], init, key))
                stats.append(template.get("batch_stats"))
        out = C.train(
            make_loss(model, x, y, config["batch"], batchnorm),
            tx,
            C.stack(members),
            jax.random.split(jax.random.key(32), len(members)),
            config["steps"],
            state=C.stack(stats) if batchnorm else None,
            batched=True,
            desc="with BN" if batchnorm else "without BN",
            progress=config.progress,
        )

        def test_acc(params, stats, model=model, batchnorm=batchnorm):
            variables = {"params": params}
            if batchnorm:
                variables["batch_stats"] = stats
            return C.accuracy(model.apply(variables, x_test, train=False), y_test)

        acc = jax.jit(jax.vmap(test_acc))(out["params"], out["state"])
        loss = out["loss"].reshape(len(INITS), config.seeds, -1)
        acc = np.asarray(acc).reshape(len(INITS), config.seeds)
        for i, name in enumerate(INITS):
            arm = f"{name}, {'BN' if batchnorm else 'no BN'}"
            numbers["arms"][arm] = {
                "loss_curve_mean": loss[i].mean(0),
                "final_loss": float(np.mean([C.tail_mean(c, 0.05) for c in loss[i]])),
                "steps_to_0.1_chance": C.steps_to(C.smooth(loss[i].mean(0), 25), 0.1 * chance),
                "test_accuracy": acc[i],
            }

    A = numbers["arms"]
    poor, good = list(INITS)
    cap = config["steps"]
    good_bn = A[f"{good}, BN"]["steps_to_0.1_chance"]
    good_nobn = A[f"{good}, no BN"]["steps_to_0.1_chance"]
    checks = [
        C.Check(
            f"poor init with BN trains (final loss <= 0.25 ln 10 = {0.25 * chance:.2f})",
            A[f"{poor}, BN"]["final_loss"] <= 0.25 * chance,
            f"final loss {A[f'{poor}, BN']['final_loss']:.3g}",
        ),
        C.Check(
            f"poor init without BN does not (final loss >= 0.8 ln 10 = {0.8 * chance:.2f})",
            A[f"{poor}, no BN"]["final_loss"] >= 0.8 * chance,
            f"final loss {A[f'{poor}, no BN']['final_loss']:.3g}",
        ),
        C.Check(
            "good init converges faster with BN (fewer steps to 0.1 ln 10)",
            good_bn is not None and good_bn < (cap if good_nobn is None else good_nobn),
            f"steps: BN {C.fmt(good_bn)}, no BN {C.fmt(good_nobn)}",
        ),
    ]

    fig, axes = C.figure(1, 1, width=6)
    ax = axes[0, 0]
    for arm, entry in A.items():
        ls = "-" if "no BN" not in arm else "--"
        ax.plot(C.smooth(entry["loss_curve_mean"], 25), ls, label=arm)
    ax.axhline(chance, color="gray", ls=":", lw=1)
    ax.set(yscale="log", xlabel="step", ylabel="training loss (25-step mean)",
           title=f"{config['depth']}-layer ReLU MLP on digits")  # fmt: skip
    ax.legend(fontsize=8)
    plots = [C.save_figure(fig, config, "loss_curves.png")]
    headline = (
        f"final loss poor init: BN {A[f'{poor}, BN']['final_loss']:.3g} vs no BN "
        f"{A[f'{poor}, no BN']['final_loss']:.3g}; He steps to 0.23: BN {C.fmt(good_bn)}, "
        f"no BN {C.fmt(good_nobn)}"
    )
    return C.result(
        config,
        checks=checks,
        headline=headline,
        numbers=numbers,
        plots=plots,
        notes=(
            f"MLP of {config['depth']} Dense -> [BatchNorm] -> ReLU layers of {config['width']} "
            f"units on the digits; SGD momentum 0.9, lr {config['lr']}, minibatches of "
            f"{config['batch']} (BatchNorm uses the minibatch's statistics in training and "
            "the running averages for the test accuracy). The poor and good inits apply to "
            "every kernel, readout included."
        ),
    )
