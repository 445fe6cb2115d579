"""muTransfer: the best learning rate drifts with width under the standard parametrization
and stays put under muP, for a character GPT and an MLP on MNIST-1D (TP-V, Fig. 1)."""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import flaxinit as fi
from experiments import _common as C
from flaxinit.models import GPT, MLP

CLAIM = (
    "Under the standard parametrization (SP: the model's own init, one Adam learning rate "
    "for every parameter) the learning rate that trains a network best drifts with its "
    "width, so a rate tuned on a narrow model is wrong, or diverges, on a wide one; under "
    "the maximal update parametrization (muP: per-layer init scales and learning rates "
    "relative to a base width) the best learning rate stays where it is as the width "
    "grows, so it can be tuned on the narrow model and transferred (muTransfer)."
)
SOURCE = (
    "Yang et al. 2022, 'Tensor Programs V: Tuning Large Neural Networks via Zero-Shot "
    "Hyperparameter Transfer' (arXiv:2203.03466), Fig. 1 (Transformers, Adam, training "
    "loss against log2 learning rate per width) and Table 3; microsoft/mup."
)

# LR grids are powers of two, given by their log2 bounds (inclusive).
CONFIGS = {
    "tiny": {"gpt_widths": [16, 32], "mlp_widths": [16, 32], "log2_lrs": [-8, -5],
             "gpt_layers": 1, "gpt_heads": 2, "context": 8, "gpt_batch": 4, "gpt_steps": 4,
             "mlp_depth": 2, "mlp_batch": 16, "mlp_steps": 4, "chars": 5000,
             "samples": 500, "seeds": 1},
    # 2 CPU cores: the GPT at 32..256 (1 block) rather than 64..512, which would take
    # about 4x the time of the whole quick run at its widest width.
    "quick": {"gpt_widths": [32, 64, 128, 256], "mlp_widths": [64, 128, 256, 512],
              "log2_lrs": [-14, -3], "gpt_layers": 1, "gpt_heads": 4, "context": 32,
              "gpt_batch": 8, "gpt_steps": 200, "mlp_depth": 3, "mlp_batch": 128,
              "mlp_steps": 500, "chars": 200000, "samples": 5000, "seeds": 1},
    # One GPU (not run yet; estimates): the widest program, GPT width 2048 with 24 members
    # of 101M parameters, their Adam state and activations, needs about 85 GB and 60 TFLOP
    # a step; the whole run roughly 15-20 minutes on an H200.
    "full": {"gpt_widths": [128, 256, 512, 1024, 2048],
             "mlp_widths": [128, 256, 512, 1024, 2048, 4096], "log2_lrs": [-15, -4],
             "gpt_layers": 2, "gpt_heads": 8, "context": 128, "gpt_batch": 32,
             "gpt_steps": 2000, "mlp_depth": 3, "mlp_batch": 128, "mlp_steps": 3000,
             "chars": None, "samples": 5000, "seeds": 1},
}  # fmt: skip

ARMS = ("SP", "muP")
SETUPS = ("GPT", "MLP")
# The fraction of the run's last training losses averaged into the final loss.
TAIL = 0.1


# ---------------------------------------------------------------------------------------
# One width's sweep: the grid (arms x learning rates x seeds) as one sharded program
# ---------------------------------------------------------------------------------------


def sweep(width: dict, apply_loss: Any, lrs: np.ndarray, seeds: int, steps: int) -> np.ndarray:
    """Trains every (arm, learning rate, seed) of one width as one program,
    ``jax.jit(jax.vmap(member))``, with the grid sharded over a 1-D mesh of every device.

    A member's whole run is a pure function of three numbers: it draws the model's own
    init from its seed (SP), applies ``width["rules"]`` to that draw (muP), keeps its arm's
    params and trains them with ``optax.adam(lr)``, followed for muP by
    ``width["tx"]`` (``fi.mup.scale_updates``; both arms' updates are computed and the
    member's is selected). ``apply_loss(params, key) -> loss`` is the training loss on the
    batch drawn from ``key``; the batches depend on the seed only, so every arm and
    learning rate sees the same data. Returns the loss curves,
    ``(arms, len(lrs), seeds, steps)``; ``[..., t]`` is the loss before step ``t``.
    """
    grid = [(a, i, s) for a in range(len(ARMS)) for i in range(len(lrs)) for s in range(seeds)]
    n_dev = jax.device_count()
    padded = grid + [grid[-1]] * (-len(grid) % n_dev)  # padding members are dropped
    arm_col = jnp.asarray([a for a, _, _ in padded], jnp.int32)
    lr_col = jnp.asarray([lrs[i] for _, i, _ in padded], jnp.float32)
    seed_col = jnp.asarray([s for _, _, s in padded], jnp.int32)
    model, x, rules, structure, mup_tx = (
        width[k] for k in ("model", "x", "rules", "structure", "tx")
    )
    mup = ARMS.index("muP")

    def pick(arm, sp_tree, mup_tree):
        return jax.tree.map(lambda u, m: jnp.where(arm == mup, m, u), sp_tree, mup_tree)

    def member(arm, lr, seed):
        variables = model.init(jax.random.fold_in(jax.random.key(1), seed), x)
        mup_variables = fi.apply_rules(
            variables, rules, key=jax.random.fold_in(jax.random.key(2), seed),
            structure=structure,
        )  # fmt: skip
        params = pick(arm, variables["params"], mup_variables["params"])
        adam = optax.adam(lr)
        key = jax.random.fold_in(jax.random.key(7), seed)

        def step(carry, t):
            p, opt_state = carry
            loss, grads = jax.value_and_grad(apply_loss)(p, jax.random.fold_in(key, t))
            updates, opt_state = adam.update(grads, opt_state, p)
            scaled, _ = mup_tx.update(updates, mup_tx.init(p), p)
            return (optax.apply_updates(p, pick(arm, updates, scaled)), opt_state), loss

        _, losses = jax.lax.scan(step, (params, adam.init(params)), jnp.arange(steps))
        return losses

    mesh = jax.make_mesh((n_dev,), ("grid",), axis_types=(AxisType.Auto,))
    spec = NamedSharding(mesh, P("grid"))
    program = jax.jit(jax.vmap(member), in_shardings=(spec,) * 3, out_shardings=spec)
    cols = [jax.device_put(c, spec) for c in (arm_col, lr_col, seed_col)]
    losses = np.asarray(jax.block_until_ready(program(*cols)))[: len(grid)]
    return losses.reshape(len(ARMS), len(lrs), seeds, steps)


def final_losses(curves: np.ndarray) -> dict[str, np.ndarray]:
    """Per learning rate (``curves``: ``(lrs, seeds, steps)``): the final training loss (mean
    of the last :data:`TAIL` of the steps, over seeds; +inf if any of them is not finite),
    the initial loss and whether the run diverged (a non-finite final loss, or one above
    the initial loss)."""
    n = max(1, round(curves.shape[-1] * TAIL))
    with np.errstate(invalid="ignore", over="ignore"):
        tail = curves[..., -n:].astype(np.float64).mean(-1)  # (lrs, seeds)
        final = np.where(np.isfinite(tail).all(-1), tail.mean(-1), np.inf)
    initial = curves[..., 0].astype(np.float64).mean(-1)
    diverged = ~np.isfinite(final) | (final > initial)
    return {"final": final, "initial": initial, "diverged": diverged}


def best_index(final: np.ndarray) -> int | None:
    """The index of the lowest final loss; NaN counts as +inf; None if every run diverged."""
    final = np.where(np.isnan(final), np.inf, final)
    return int(np.argmin(final)) if np.isfinite(final).any() else None


# ---------------------------------------------------------------------------------------
# The two setups: params per width and arm, and the training loss
# ---------------------------------------------------------------------------------------


def widths_setup(make, widths, x, structure_of) -> dict[int, dict]:
    """For each width: the model, muP's init rules (``fi.mup.rules`` relative to the
    narrowest width) and update scaling (``fi.mup.scale_updates``), read from abstract
    params; the base is the narrowest model's own init, with values (its RMS per leaf
    sets muP's init scales)."""
    base = jax.jit(make(widths[0]).init)(jax.random.key(0), x)
    delta = jax.eval_shape(make(widths[1]).init, jax.random.key(0), x)
    out = {}
    for w in widths:
        model = make(w)
        variables = jax.eval_shape(model.init, jax.random.key(0), x)
        structure = structure_of(model, variables)
        # delta (a second width) says which axes grow; muP needs it at the base width
        # itself, and it changes nothing at the others.
        rules = fi.mup.rules(variables, base, structure=structure, delta=delta)
        tx = fi.mup.scale_updates(
            variables["params"], base["params"], structure=structure, delta=delta["params"]
        )
        out[w] = {
            "model": model,
            "x": x,
            "rules": rules,
            "structure": structure,
            "tx": tx,
            "n_params": int(sum(a.size for a in jax.tree.leaves(variables["params"]))),
        }
    return out


def gpt_setup(config: C.Config) -> tuple[dict, Any, dict]:
    text, corpus = C.char_corpus(config["chars"])
    vocab = sorted(set(text))
    data = jnp.asarray(np.array([vocab.index(c) for c in text], dtype=np.int32))
    T, B = config["context"], config["gpt_batch"]

    def make(width):
        return GPT(len(vocab), T, width, config["gpt_layers"], config["gpt_heads"], scan=True)

    x = data[: 2 * T].reshape(2, T)

    def structure_of(model, variables):
        return fi.model_structure(model, x, variables=variables)

    def loss_for(model):
        def apply_loss(params, key):
            start = jax.random.randint(key, (B,), 0, data.shape[0] - T - 1)
            batch = data[start[:, None] + jnp.arange(T + 1)]
            logits = model.apply({"params": params}, batch[:, :-1])
            return C.cross_entropy(logits, batch[:, 1:])

        return apply_loss

    params = widths_setup(make, config["gpt_widths"], x, structure_of)
    info = {"corpus": corpus, "vocab_size": len(vocab), "context": T, "batch": B,
            "layers": config["gpt_layers"], "heads": config["gpt_heads"],
            "head_dim": {w: w // config["gpt_heads"] for w in config["gpt_widths"]}}  # fmt: skip
    return params, loss_for, info


def mlp_setup(config: C.Config) -> tuple[dict, Any, dict]:
    data = C.mnist1d(config["samples"])
    xs, ys = jnp.asarray(data["x"]), jnp.asarray(data["y"])
    B, depth = config["mlp_batch"], config["mlp_depth"]

    def make(width):
        return MLP((width,) * depth, 10)

    x = xs[:2]

    def loss_for(model):
        def apply_loss(params, key):
            idx = jax.random.randint(key, (B,), 0, xs.shape[0])
            return C.cross_entropy(model.apply({"params": params}, xs[idx]), ys[idx])

        return apply_loss

    params = widths_setup(make, config["mlp_widths"], x, lambda m, v: None)
    info = {"train_samples": int(xs.shape[0]), "hidden_layers": depth, "batch": B}
    return params, loss_for, info


# ---------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------


def measure(name, setup, widths, steps, lrs, config) -> dict:
    """Every width's LR sweep under SP and muP: curves, final losses, best LR index."""
    params, loss_for, info = setup(config)
    out: dict = {"setup": info, "widths": widths, "steps": steps, "arms": {a: {} for a in ARMS}}
    out["n_params"] = {w: params[w]["n_params"] for w in widths}
    out["members_per_width"] = len(ARMS) * len(lrs) * config.seeds
    out["seconds_by_width"] = {}
    bar = C.progress_bar(len(widths), f"{name} widths", config.progress)
    for w in widths:
        p = params[w]
        start = time.perf_counter()
        curves_all = sweep(p, loss_for(p["model"]), lrs, config.seeds, steps)
        out["seconds_by_width"][w] = time.perf_counter() - start  # compile included
        bar.update()
        for arm, curves in zip(ARMS, curves_all, strict=True):
            f = final_losses(curves)
            out["arms"][arm][w] = {
                "final_loss": f["final"],
                "initial_loss": f["initial"],
                "diverged": f["diverged"],
                "best_index": best_index(f["final"]),
                "curves_seed0": curves[:, 0, :: max(1, steps // 100)],
            }
    bar.close()
    return out


def shifts(res: dict, lrs: np.ndarray) -> dict:
    """Per arm: the best log2 LR per width, how many grid steps it moves (max - min over the
    widths), and where the widest net stands at the narrowest net's best LR."""
    log2 = np.log2(lrs)
    out = {}
    widths = res["widths"]
    for arm in ARMS:
        per = res["arms"][arm]
        best = [per[w]["best_index"] for w in widths]
        found = [b for b in best if b is not None]
        spread = (max(found) - min(found)) if len(found) == len(best) else None
        b0 = best[0]
        wide = per[widths[-1]]
        at = None if b0 is None else {
            "log2_lr": float(log2[b0]),
            "final_loss": float(wide["final_loss"][b0]),
            "initial_loss": float(wide["initial_loss"][b0]),
            "diverged": bool(wide["diverged"][b0]),
        }  # fmt: skip
        out[arm] = {
            "best_log2_lr": {
                w: (None if b is None else float(log2[b]))
                for w, b in zip(widths, best, strict=True)
            },
            "best_final_loss": {
                w: (None if b is None else float(per[w]["final_loss"][b]))
                for w, b in zip(widths, best, strict=True)
            },
            "shift_steps": spread,
            "signed_shift_steps": None if spread is None else best[-1] - best[0],
            "widest_at_narrowest_best": at,
            # TP-V's "wider is better" under muP: each width's loss at the base's best LR.
            "final_loss_at_narrowest_best": None if b0 is None else {
                w: float(per[w]["final_loss"][b0]) for w in widths
            },
        }  # fmt: skip
    return out


def checks_for(label: str, s: dict, widths: list) -> list[C.Check]:
    mup, sp = s["muP"], s["SP"]
    fmt_best = lambda d: ", ".join(f"{w}: {C.fmt(d[w])}" for w in widths)
    at = sp["widest_at_narrowest_best"]
    sp_moved = sp["shift_steps"] is not None and sp["shift_steps"] >= 2
    sp_diverged = at is not None and at["diverged"]
    at_text = "n/a" if at is None else (
        f"width {widths[-1]} at 2^{at['log2_lr']:g}: final {C.fmt(at['final_loss'])} vs "
        f"initial {C.fmt(at['initial_loss'])} ({'diverged' if at['diverged'] else 'trained'})"
    )  # fmt: skip
    return [
        C.Check(
            f"{label}, muP: the best LR moves <= 1 grid step (a factor 2) across widths "
            f"{widths[0]}..{widths[-1]}",
            mup["shift_steps"] is not None and mup["shift_steps"] <= 1,
            f"best log2 LR {fmt_best(mup['best_log2_lr'])}; moves "
            f"{C.fmt(mup['shift_steps'])} step(s)",
        ),
        C.Check(
            f"{label}, SP: the best LR moves >= 2 grid steps across widths, or the widest net "
            "diverges (loss not finite or above its initial loss) at the narrowest net's best LR",
            sp_moved or sp_diverged,
            f"best log2 LR {fmt_best(sp['best_log2_lr'])}; moves {C.fmt(sp['shift_steps'])} "
            f"step(s); {at_text}",
        ),
    ]


def plot(config: C.Config, results: dict, lrs: np.ndarray, filename: str) -> str:
    """TP-V Fig. 1: final training loss against log2 LR, a curve per width (stars at the
    best LR), SP and muP side by side with the same y range; diverged runs are gaps."""
    import matplotlib as mpl

    log2 = np.log2(lrs)
    fig, axes = C.figure(len(results), 2, width=5, height=3.6)
    for r, (label, res) in enumerate(results.items()):
        widths = res["widths"]
        colors = mpl.colormaps["viridis"](np.linspace(0.0, 0.85, len(widths)))
        finite, initial = [], []
        for c, arm in enumerate(ARMS):
            ax = axes[r, c]
            for w, color in zip(widths, colors, strict=True):
                d = res["arms"][arm][w]
                y = np.where(np.isfinite(d["final_loss"]), d["final_loss"], np.nan)
                finite.append(y[np.isfinite(y)])
                initial.append(np.max(d["initial_loss"]))
                ax.plot(log2, y, "o-", ms=3, color=color, label=f"width {w}")
                if d["best_index"] is not None:
                    b = d["best_index"]
                    ax.plot(log2[b], y[b], "*", ms=11, color=color, mec="k", mew=0.5)
            ax.set(xlabel="log2 learning rate (Adam)", ylabel="final training loss",
                   title=f"{label}: {arm}")  # fmt: skip
            ax.legend(fontsize=7)
        vals = np.concatenate(finite)
        if vals.size:  # from the best loss up to a little above the initial loss
            lo, hi = vals.min(), min(vals.max(), 1.1 * max(initial))
            pad = 0.05 * max(hi - lo, 1e-3)
            for ax in axes[r]:
                ax.set_ylim(lo - pad, hi + pad)
    return C.save_figure(fig, config, filename)


def notes(config: C.Config, g: dict, lo: int, hi: int) -> str:
    gpt = (
        f"GPT: the zoo's flaxinit.models.GPT (pre-LN, {g['layers']} block(s), {g['heads']} "
        "heads at every width, so the head dimension grows with the width; context "
        f"{g['context']}, batches of {g['batch']} windows, {config['gpt_steps']} steps) on "
        f"{g['corpus']['chars']} characters of Python's own docs. "
        if g
        else ""
    )
    return (
        f"Widths {config['gpt_widths']} (GPT) and {config['mlp_widths']} (MLP), Adam at "
        f"learning rates 2^{lo}..2^{hi} (powers of 2). {gpt}MLP: the zoo's "
        f"flaxinit.models.MLP ({config['mlp_depth']} ReLU hidden layers of the width) on "
        f"MNIST-1D, batches of {config['mlp_batch']}, {config['mlp_steps']} steps. SP: "
        "Flax's default init (lecun_normal kernels, zero biases, Embed N(0, 1/d)) and "
        "optax.adam(lr) for every leaf. muP: the same draw rescaled by "
        "fi.apply_rules(variables, fi.mup.rules(variables, base, structure=...)) with base "
        "= the narrowest width's own init (readout at zero, hidden kernels at the base's "
        "RMS / sqrt(m), the attention query by a further 1/sqrt(m_head) for muP's 1/d_head "
        "logits), and optax.chain(optax.adam(lr), fi.mup.scale_updates(...)) (hidden and "
        "output leaves' LR / m); at the base width the two arms differ only in the "
        "readout's zero init. Each width's grid (arms x learning rates x seeds) is one "
        "jax.jit(jax.vmap(member)) program sharded over a 1-D mesh of every device; a "
        "member draws its init, applies the rules and trains, and every member sees the "
        f"same batches. Final loss: the mean training loss over the last {TAIL:.0%} of the "
        "steps; a run whose loss is not finite counts as +inf (never the best) and as "
        "diverged, as does one whose final loss is above its initial loss."
    )


def run(config: C.Config) -> C.Result:
    lo, hi = config["log2_lrs"]
    lrs = 2.0 ** np.arange(lo, hi + 1, dtype=np.float64)
    setups = {
        "GPT": (gpt_setup, config["gpt_widths"], config["gpt_steps"]),
        "MLP": (mlp_setup, config["mlp_widths"], config["mlp_steps"]),
    }
    setups = {k: v for k, v in setups.items() if k in config.get("setups", SETUPS)}
    results, summary, checks, timings = {}, {}, [], {}
    for label, (setup, widths, steps) in setups.items():
        start = time.perf_counter()
        results[label] = measure(label, setup, widths, steps, lrs, config)
        timings[label] = time.perf_counter() - start
        summary[label] = shifts(results[label], lrs)
        checks += checks_for(label, summary[label], widths)
    plots = [plot(config, results, lrs, "mutransfer.png")]
    numbers = {
        "log2_lrs": np.log2(lrs),
        "devices": jax.device_count(),
        "seconds": timings,
        "summary": summary,
        "setups": results,
    }

    def best_text(label, arm):
        b = summary[label][arm]["best_log2_lr"]
        return "/".join(C.fmt(b[w]) for w in results[label]["widths"])

    headline = "; ".join(
        f"{label} best log2 LR by width SP {best_text(label, 'SP')}, muP {best_text(label, 'muP')}"
        for label in results
    )
    g = results.get("GPT", {}).get("setup", {})
    return C.result(
        config,
        checks=checks,
        headline=headline,
        numbers=numbers,
        plots=plots,
        notes=notes(config, g, lo, hi),
    )
