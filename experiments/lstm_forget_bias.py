"""The LSTM forget-gate bias: 0 against 1 and 2, on the adding problem and the copy task."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import flaxinit as fi
from experiments import _common as C

CLAIM = (
    "Initializing the LSTM forget-gate bias to 1 (or more) instead of 0 keeps the cell "
    "remembering at the start of training (sigmoid(0) = 0.5 halves the memory every step), "
    "so gradients reach far back and long-memory tasks train faster."
)
SOURCE = (
    "Gers, Schmidhuber & Cummins 2000, 'Learning to Forget' (Neural Computation 12(10)); "
    "Jozefowicz, Zaremba & Sutskever 2015, 'An Empirical Exploration of Recurrent Network "
    "Architectures' (ICML), Sec. 4."
)

CONFIGS = {
    "tiny": {"tasks": ["adding", "copy"], "length": 8, "hidden": 8, "batch": 16, "steps": 10,
             "lr": 3e-3, "biases": [0.0, 1.0, 2.0], "seeds": 1},
    "quick": {"tasks": ["adding", "copy"], "length": 50, "hidden": 32, "batch": 64,
              "steps": 500, "lr": 3e-3, "biases": [0.0, 1.0, 2.0], "seeds": 2},
    "full": {"tasks": ["adding", "copy"], "length": 200, "hidden": 128, "batch": 128,
             "steps": 5000, "lr": 1e-3, "biases": [0.0, 1.0, 2.0], "seeds": 5},
}  # fmt: skip

COPY_LEN, SYMBOLS = 5, 8


class Recurrent(nn.Module):
    """``nn.RNN(nn.OptimizedLSTMCell)`` and a readout: per position (copy) or last (adding)."""

    hidden: int
    outputs: int
    per_position: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.RNN(nn.OptimizedLSTMCell(self.hidden), name="rnn")(x)
        if not self.per_position:
            h = h[:, -1]
        return nn.Dense(self.outputs, name="head")(h)


def forget_bias_rules(value: float) -> list:
    """Forget-gate bias ``value`` as a path rule (Linen LSTM cells keep it in ``hf/bias``).

    Only the forget bias differs between the arms, so this is one rule rather than
    ``flaxinit.recipes.lstm``, which also re-draws the kernels."""
    return [("**/hf/bias", fi.fill(value))]


def task(name: str, length: int):
    """``(model_outputs, per_position, batch_fn(key, n) -> (x, y), loss(out, y), baseline)``."""
    if name == "adding":

        def batch_fn(key, n):
            return C.adding_problem(key, n, length)

        def loss(out, y):
            return jnp.mean((out[:, 0] - y) ** 2)

        return 1, False, batch_fn, loss, 1 / 6

    def batch_fn(key, n):
        tokens, targets = C.copy_task(key, n, length, num_symbols=SYMBOLS, copy_len=COPY_LEN)
        return jax.nn.one_hot(tokens, SYMBOLS + 2), targets

    def loss(out, y):
        return C.cross_entropy(out[:, -COPY_LEN:], y[:, -COPY_LEN:])

    return SYMBOLS + 2, True, batch_fn, loss, math.log(SYMBOLS)


def run(config: C.Config) -> C.Result:
    biases = config["biases"]
    numbers: dict = {"tasks": {}}
    checks, curves = [], {}
    for task_name in config["tasks"]:
        outputs, per_position, batch_fn, loss_of, baseline = task(task_name, config["length"])
        model = Recurrent(config["hidden"], outputs, per_position)
        x0, _ = batch_fn(jax.random.key(0), 2)
        members = []
        for b in biases:
            for s in range(config.seeds):
                params = model.init(jax.random.fold_in(jax.random.key(61), s), x0)["params"]
                members.append(fi.apply_rules(params, forget_bias_rules(b)))

        def loss_fn(params, state, key, model=model, batch_fn=batch_fn, loss_of=loss_of):
            x, y = batch_fn(key, config["batch"])
            return loss_of(model.apply({"params": params}, x), y), (state, {})

        out = C.train(
            loss_fn,
            optax.adam(config["lr"]),
            C.stack(members),
            jax.random.split(jax.random.key(62), len(members)),
            config["steps"],
            batched=True,
            desc=task_name,
            progress=config.progress,
        )
        loss = out["loss"].reshape(len(biases), config.seeds, -1)
        entry = {"baseline_loss": baseline, "biases": {}}
        for i, b in enumerate(biases):
            curve = C.smooth(loss[i].mean(0), 25)
            entry["biases"][str(b)] = {
                "loss_curve_mean": loss[i].mean(0),
                "final_loss": float(np.mean([C.tail_mean(c, 0.1) for c in loss[i]])),
                # Area under the learning curve: the mean loss over all steps (lower = faster).
                "mean_loss_over_training": float(loss[i].mean()),
                "steps_to_half_baseline": C.steps_to(curve, 0.5 * baseline),
            }
            curves[(task_name, b)] = loss[i]
        numbers["tasks"][task_name] = entry
        auc = {b: entry["biases"][str(b)]["mean_loss_over_training"] for b in biases}
        zero, positive = biases[0], biases[1:]
        checks.append(
            C.Check(
                f"{task_name} (T={config['length']}): forget bias "
                f"{' and '.join(f'{b:g}' for b in positive)} each learn faster than bias "
                f"{zero:g} (lower mean loss over the {config['steps']} steps)",
                all(auc[b] < auc[zero] for b in positive),
                ", ".join(f"bias {b:g}: {auc[b]:.4g}" for b in biases)
                + f" (baseline {baseline:.3g})",
            )
        )

    tasks = config["tasks"]
    fig, axes = C.figure(1, len(tasks), width=5)
    for ax, task_name in zip(axes[0], tasks, strict=True):
        for b in biases:
            C.plot_band(ax, C.smooth(curves[(task_name, b)], 25), f"forget bias {b:g}")
        ax.axhline(numbers["tasks"][task_name]["baseline_loss"], color="gray", ls=":", lw=1,
                   label="no-memory baseline")  # fmt: skip
        ax.set(yscale="log", xlabel="step",
               ylabel="MSE" if task_name == "adding" else "cross-entropy on the copy",
               title=f"{task_name}, T = {config['length']}")  # fmt: skip
        ax.legend(fontsize=8)
    plots = [C.save_figure(fig, config, "forget_bias.png")]
    headline = "; ".join(
        f"{t}: mean loss "
        + "/".join(
            f"{numbers['tasks'][t]['biases'][str(b)]['mean_loss_over_training']:.3g}"
            for b in biases
        )
        + f" for bias {'/'.join(f'{b:g}' for b in biases)}"
        for t in tasks
    )
    return C.result(
        config,
        checks=checks,
        headline=headline,
        numbers=numbers,
        plots=plots,
        notes=(
            f"nn.RNN(nn.OptimizedLSTMCell({config['hidden']})) with Flax's default init "
            "(lecun_normal input kernels, orthogonal recurrent kernels, zero biases), then "
            "the forget-gate bias set with flaxinit.apply_rules(('**/hf/bias', fill(b))). "
            f"Adding problem: 2 marked values among {config['length']}, MSE (predicting 1 "
            f"scores 1/6). Copy: {COPY_LEN} of {SYMBOLS} symbols, recalled after "
            f"{config['length']} blanks (guessing scores ln {SYMBOLS}). Adam lr "
            f"{config['lr']}, fresh batches of {config['batch']} every step. Learning speed is "
            "judged by the mean loss over all steps (the area under the learning curve); the "
            "final loss (mean of the last 10% of steps) is in `numbers`."
        ),
    )
