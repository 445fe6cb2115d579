"""Deep residual nets without normalization: standard init explodes, Fixup / ReZero /
zero-init of the last layer of each branch trains."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import flaxinit as fi
from experiments import _common as C

CLAIM = (
    "A residual network of 50-100 blocks without normalization explodes with standard (He) "
    "init, as each block adds its own variance to the stream; starting every residual "
    "branch at zero (Fixup: last layer 0 and the others scaled by L^-1/2; ReZero/SkipInit: "
    "a branch multiplier at 0; zero-init of the branch's last layer) makes it trainable."
)
SOURCE = (
    "Zhang, Dauphin & Ma 2019, 'Fixup Initialization' (ICLR, arXiv:1901.09321); Bachlechner "
    "et al. 2021, 'ReZero is all you need' (arXiv:2003.04887); De & Smith 2020, SkipInit "
    "(arXiv:2002.10444); Goyal et al. 2017 (zero-init residual)."
)

CONFIGS = {
    "tiny": {"blocks": 4, "width": 8, "steps": 20, "lr": 1e-2, "batch": 32, "seeds": 1},
    "quick": {"blocks": 50, "width": 64, "steps": 400, "lr": 1e-2, "batch": 64, "seeds": 2},
    "full": {"blocks": 100, "width": 128, "steps": 3000, "lr": 1e-2, "batch": 256, "seeds": 5},
}


class Block(nn.Module):
    """``x + alpha * fc2(relu(fc1(x)))``, no normalization; ``alpha`` is a trained scalar."""

    width: int

    @nn.compact
    def __call__(self, x: jax.Array, _: Any = None) -> tuple[jax.Array, None]:
        h = nn.relu(nn.Dense(self.width, kernel_init=fi.he_normal(), name="fc1")(x))
        h = nn.Dense(self.width, kernel_init=fi.he_normal(), name="fc2")(h)
        alpha = self.param("alpha", fi.ones, ())
        return x + alpha * h, None


class ResMLP(nn.Module):
    """``stem`` (Dense + ReLU), ``num_blocks`` residual :class:`Block` s (one ``nn.scan``
    stack ``blocks``), ``head``. ``features=True`` returns the final residual stream."""

    num_blocks: int
    width: int
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, features: bool = False) -> jax.Array:
        x = nn.relu(nn.Dense(self.width, kernel_init=fi.he_normal(), name="stem")(x))
        stack = nn.scan(
            Block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=self.num_blocks,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = stack(self.width, name="blocks")(x, None)
        if features:
            return x
        return nn.Dense(self.num_classes, kernel_init=fi.he_normal(), name="head")(x)


def arm_rules(num_blocks: int) -> dict[str, list]:
    """The schemes as path rules over the He-initialized tree of this experiment's
    residual MLP (``flaxinit.recipes.fixup``/``rezero``/``zero_init_residual`` target the
    zoo's conv ResNet layout; these are the same rules on this model's names)."""
    return {
        "standard (He)": [],
        "Fixup": [
            ("blocks/fc1/kernel", fi.scale(lambda ctx: ctx.num_layers**-0.5)),
            ("blocks/fc2/kernel", fi.fill(0.0)),
            ("head/kernel", fi.fill(0.0)),
        ],
        "ReZero": [("blocks/alpha", fi.fill(0.0))],
        "zero-init residual": [("blocks/fc2/kernel", fi.fill(0.0))],
    }


def run(config: C.Config) -> C.Result:
    x, y, x_test, y_test = C.digits_split()
    chance = math.log(10)
    L = config["blocks"]
    model = ResMLP(num_blocks=L, width=config["width"])
    rules = arm_rules(L)
    members, init_std = [], {}
    for name, arm in rules.items():
        for s in range(config.seeds):
            key = jax.random.fold_in(jax.random.key(41), s)
            params = model.init(key, x[:2])["params"]
            if arm:
                params = fi.apply_rules(params, arm, num_layers=L)
            members.append(params)
            if s == 0:  # the stream's growth through the blocks, at init
                stream = model.apply({"params": params}, x[:256], features=True)
                stem = nn.relu(x[:256] @ params["stem"]["kernel"] + params["stem"]["bias"])
                init_std[name] = float(jnp.std(stream) / jnp.std(stem))
    out = C.train(
        C.classifier_loss(model, x, y, config["batch"]),
        optax.sgd(config["lr"], momentum=0.9),
        C.stack(members),
        jax.random.split(jax.random.key(42), len(members)),
        config["steps"],
        batched=True,
        desc="residual",
        progress=config.progress,
    )
    test = C.evaluate(model, out["params"], x_test, y_test, batched=True)
    loss = out["loss"].reshape(len(rules), config.seeds, -1)
    acc = np.asarray(test["accuracy"]).reshape(len(rules), config.seeds)
    numbers: dict = {"arms": {}}
    for i, name in enumerate(rules):
        finals = [C.tail_mean(c, 0.05) for c in loss[i]]
        numbers["arms"][name] = {
            "stream_std_growth_at_init": init_std[name],
            "initial_loss": loss[i, :, 0],
            "final_loss": finals,
            "diverged": [bool(not np.isfinite(f)) for f in finals],
            "test_accuracy": acc[i],
            "loss_curve_mean": loss[i].mean(0),
        }
    A = numbers["arms"]
    std_name = "standard (He)"
    zero_arms = [n for n in rules if n != std_name]
    std_final = A[std_name]["final_loss"]
    checks = [
        C.Check(
            f"standard init explodes: the residual stream's std grows > 1e6x over {L} blocks at "
            "init, and training diverges or stays above ln 10",
            A[std_name]["stream_std_growth_at_init"] > 1e6
            and all((not np.isfinite(f)) or f >= chance for f in std_final),
            f"growth {A[std_name]['stream_std_growth_at_init']:.3g}x, initial loss "
            f"{np.mean(A[std_name]['initial_loss']):.3g}, final {C.fmt(float(np.mean(std_final)))}",
        ),
    ]
    checks += [
        C.Check(
            f"{n} starts at the identity (stream growth <= 10x) and trains (final loss <= "
            f"0.1 ln 10 = {0.1 * chance:.2f}, every seed finite)",
            A[n]["stream_std_growth_at_init"] <= 10
            and all(np.isfinite(f) and f <= 0.1 * chance for f in A[n]["final_loss"]),
            f"growth {A[n]['stream_std_growth_at_init']:.3g}x, final loss per seed "
            + ", ".join(C.fmt(f) for f in A[n]["final_loss"]),
        )
        for n in zero_arms
    ]

    fig, axes = C.figure(1, 2, width=5)
    for name in rules:
        curve = np.asarray(A[name]["loss_curve_mean"], dtype=np.float64)
        axes[0, 0].plot(np.where(np.isfinite(curve), curve, np.nan), label=name)
    axes[0, 0].set(yscale="log", xlabel="step", ylabel="training loss",
                   title=f"{L} residual blocks, no normalization")  # fmt: skip
    axes[0, 0].legend(fontsize=8)
    names = list(rules)
    axes[0, 1].bar(range(len(names)), [A[n]["stream_std_growth_at_init"] for n in names])
    axes[0, 1].set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    axes[0, 1].set(yscale="log", ylabel="std(stream out) / std(stream in)", title="at init")
    plots = [C.save_figure(fig, config, "residual.png")]
    headline = (
        f"stream growth at init: He {A[std_name]['stream_std_growth_at_init']:.2g}x; final loss "
        + ", ".join(f"{n} {C.fmt(float(np.mean(A[n]['final_loss'])))}" for n in names)
    )
    return C.result(
        config,
        checks=checks,
        headline=headline,
        numbers=numbers,
        plots=plots,
        notes=(
            f"Residual MLP: stem Dense({config['width']})+ReLU, {L} blocks x + alpha * "
            "fc2(relu(fc1(x))) with a trained scalar alpha (init 1), readout; no "
            "normalization. He (he_normal) everywhere, then each scheme's path rules "
            "(flaxinit.apply_rules): Fixup scales fc1 by L^-1/2 and zeroes fc2 and the "
            "readout (its scalar biases are left out), ReZero sets alpha = 0, zero-init "
            "residual zeroes fc2 and nothing else, so once fc2 moves away from 0 every "
            "branch again adds He-sized variance to the stream (Fixup's L^-1/2 on fc1 is "
            "there to prevent that). SGD momentum 0.9, lr "
            f"{config['lr']}, minibatches of {config['batch']}, digits."
        ),
    )
