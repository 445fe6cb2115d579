"""The muTransfer experiment: a smoke run of its tiny configuration (the result's structure,
not its numbers) and its pure helpers (final loss, best LR, criteria with diverged runs).

Run with simulated devices, as the suite does:
``XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m pytest -n 0 <this file>``.
"""

import json

import numpy as np
import pytest

from experiments import _common

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def mutransfer():
    return _common.load("mutransfer")


def test_tiny_run_writes_the_sweep_per_width_and_arm(tmp_path, mutransfer):
    config = _common.make_config("mutransfer", "tiny", tmp_path)
    result = _common.run_experiment(config)
    out = tmp_path / "mutransfer"
    payload = json.loads((out / "result.json").read_text())
    assert payload["verdict"] == result.verdict
    assert payload["plots"] == ["mutransfer.png"]
    assert (out / "mutransfer.png").read_bytes()[:8] == PNG_SIGNATURE
    assert (out / "summary.md").read_text().startswith("# mutransfer: the claim")
    # Two criteria per setup: muP's best LR stays, SP's moves (or the widest net diverges).
    assert len(payload["checks"]) == 2 * len(mutransfer.SETUPS)
    assert all(isinstance(c["held"], bool) for c in payload["checks"])

    numbers = payload["numbers"]
    lo, hi = config["log2_lrs"]
    assert numbers["log2_lrs"] == list(range(lo, hi + 1))
    n_lrs = hi - lo + 1
    for label in mutransfer.SETUPS:
        setup = numbers["setups"][label]
        widths = config[f"{label.lower()}_widths"]
        assert setup["widths"] == widths
        for arm in mutransfer.ARMS:
            for w in widths:
                d = setup["arms"][arm][str(w)]
                assert len(d["final_loss"]) == len(d["initial_loss"]) == n_lrs
                assert len(d["diverged"]) == n_lrs
                assert d["best_index"] is None or 0 <= d["best_index"] < n_lrs
            summary = numbers["summary"][label][arm]
            assert set(summary["best_log2_lr"]) == {str(w) for w in widths}
        # muP zeroes the readout: its initial loss is log(classes) exactly, SP's is not.
        mup0 = setup["arms"]["muP"][str(widths[-1])]["initial_loss"]
        classes = setup["setup"].get("vocab_size", 10)
        np.testing.assert_allclose(mup0, np.log(classes), rtol=1e-5)


def test_final_loss_and_best_lr_treat_diverged_runs_as_worst(mutransfer):
    steps = 20
    good = np.linspace(2.0, 1.0, steps)
    curves = np.stack([good, good * 0.5, np.full(steps, np.nan), np.linspace(2.0, 3.0, steps)])
    curves = curves[:, None, :]  # (lrs, seeds, steps)
    f = mutransfer.final_losses(curves)
    assert np.isinf(f["final"][2])
    assert f["diverged"].tolist() == [False, False, True, True]  # NaN; above its initial loss
    assert mutransfer.best_index(f["final"]) == 1
    assert mutransfer.best_index(np.array([np.nan, np.inf])) is None
    # A seed that diverges makes the learning rate diverge.
    two_seeds = np.stack([good, np.where(np.arange(steps) > 15, np.inf, good)])[None]
    assert np.isinf(mutransfer.final_losses(two_seeds)["final"][0])


def test_criteria_from_best_indices(mutransfer):
    lrs = 2.0 ** np.arange(-6, 0)

    def width(final):
        """One width's sweep from its final losses (initial loss 2 everywhere)."""
        final = np.asarray(final, dtype=np.float64)
        return {
            "final_loss": final,
            "initial_loss": np.full(len(lrs), 2.0),
            "diverged": ~np.isfinite(final) | (final > 2.0),
            "best_index": mutransfer.best_index(final),
        }

    def verdicts(sp, mup):
        res = {
            "widths": [8, 16],
            "arms": {
                "SP": dict(zip([8, 16], map(width, sp), strict=True)),
                "muP": dict(zip([8, 16], map(width, mup), strict=True)),
            },
        }
        s = mutransfer.shifts(res, lrs)
        return s, [c.held for c in mutransfer.checks_for("X", s, [8, 16])]

    inf = np.inf
    stay = [[1, 1, 1, 0.5, 1, 1], [1, 1, 1, 0.4, 1, 1]]
    # SP's best LR moves one step, but the wide net diverges at the narrow net's best LR.
    s, held = verdicts([[1, 1, 1, 1, 0.5, 1], [1, 1, 1, 0.4, inf, inf]], stay)
    assert s["SP"]["shift_steps"] == 1
    assert s["SP"]["widest_at_narrowest_best"]["diverged"]
    assert s["muP"]["shift_steps"] == 0
    assert held == [True, True]
    # SP moving two steps holds; muP moving two steps fails.
    s, held = verdicts([[1, 1, 1, 1, 0.5, 1], [1, 1, 0.4, 1, 1, 1]],
                       [[1, 0.5, 1, 1, 1, 1], stay[1]])  # fmt: skip
    assert (s["SP"]["shift_steps"], s["muP"]["shift_steps"]) == (2, 2)
    assert held == [False, True]
    # SP moving one step with the wide net still training there fails.
    assert verdicts([[1, 1, 1, 1, 0.5, 1], [1, 1, 1, 0.4, 0.6, 1]], stay)[1] == [True, False]
    # Every run of the widest net diverged (NaN or inf): no best LR, no crash, not held.
    s, held = verdicts([[1, 1, 1, 1, 0.5, 1], [np.nan, inf, inf, inf, inf, inf]],
                       [stay[0], [np.nan] * 6])  # fmt: skip
    assert s["SP"]["shift_steps"] is None
    assert s["SP"]["widest_at_narrowest_best"]["diverged"]
    assert held == [False, True]
