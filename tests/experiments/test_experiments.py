"""Smoke tests: every experiment runs end to end in its tiny configuration and writes its
results (JSON with the numbers, PNG plots, summary.md); the runner's command line works.

The tiny configurations make the numbers meaningless; they exercise the code paths and the
library's public API that each experiment uses (the experiments are its integration test).
"""

import json
import math

import numpy as np
import pytest

from experiments import EXPERIMENTS, _common
from experiments.__main__ import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# mutransfer's tiny run is tested, with more checks, in test_mutransfer.py (once: its four
# sweep programs take half a minute to compile).
@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n != "mutransfer"])
def test_experiment_runs_tiny_and_writes_results(name, tmp_path):
    config = _common.make_config(name, "tiny", tmp_path)
    result = _common.run_experiment(config)
    out = tmp_path / name
    payload = json.loads((out / "result.json").read_text())
    assert payload["name"] == name
    assert payload["verdict"] in ("held", "partly held", "did not hold")
    assert payload["verdict"] == result.verdict
    assert payload["claim"]
    assert payload["source"]
    assert payload["headline"]
    assert payload["numbers"], "the JSON must carry the measured numbers"
    assert payload["checks"]
    assert all(isinstance(c["held"], bool) and c["criterion"] for c in payload["checks"])
    assert payload["plots"]
    for plot in payload["plots"]:
        assert (out / plot).read_bytes()[:8] == PNG_SIGNATURE
    summary = (out / "summary.md").read_text()
    assert summary.startswith(f"# {name}: the claim {result.verdict}")
    assert payload["source"] in summary


def test_every_experiment_declares_claim_source_and_configs():
    for name in EXPERIMENTS:
        module = _common.load(name)
        assert module.CLAIM
        assert module.SOURCE
        assert set(module.CONFIGS) == set(_common.MODES)
        assert callable(module.run)


def test_cli_list_names_every_experiment(capsys):
    assert main(["list"]) == 0
    printed = capsys.readouterr().out
    for name in EXPERIMENTS:
        assert name in printed


def test_cli_runs_one_experiment_and_prints_the_table(tmp_path, capsys):
    assert main(["run", "prior_bias", "--tiny", "--seeds", "1", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "experiment" in printed
    assert "prior_bias" in printed
    assert "total" in printed
    assert (tmp_path / "prior_bias" / "result.json").exists()


def test_cli_rejects_unknown_names(tmp_path, capsys):
    assert main(["run", "no_such_experiment", "--tiny", "--out", str(tmp_path)]) == 2
    assert "unknown" in capsys.readouterr().err


def test_verdict_follows_the_checks():
    def res(*held):
        checks = [_common.Check(f"c{i}", h, "") for i, h in enumerate(held)]
        return _common.Result("x", "", "", "tiny", 1, checks, "", {}, [])

    assert res(True, True).verdict == "held"
    assert res(True, False).verdict == "partly held"
    assert res(False, False).verdict == "did not hold"


def test_jsonable_writes_strict_json():
    value = {"a": np.array([1.0, np.nan, np.inf]), "b": (np.int32(3), np.bool_(True)), "c": None}
    text = json.dumps(_common.jsonable(value), allow_nan=False)
    assert json.loads(text) == {"a": [1.0, "NaN", "Infinity"], "b": [3, True], "c": None}


def test_curve_helpers():
    curve = np.array([3.0, 2.0, 1.0, 0.5])
    assert _common.steps_to(curve, 1.0) == 2
    assert _common.steps_to(curve, 0.1) is None
    np.testing.assert_allclose(_common.smooth(curve, 2), [3.0, 2.5, 1.5, 0.75])
    assert math.isclose(_common.tail_mean(curve, 0.5), 0.75)


def test_data_is_deterministic_and_local():
    text, info = _common.char_corpus(1000)
    assert len(text) == 1000
    assert info["chars"] == 1000
    assert text.startswith("The Zen of Python")
    assert _common.char_corpus(1000)[0] == text
    x, y = _common.adding_problem(_common.jax.random.key(0), 4, 10)
    assert x.shape == (4, 10, 2)
    assert y.shape == (4,)
    np.testing.assert_allclose(np.asarray(x[..., 1].sum(1)), 2.0)
    tokens, targets = _common.copy_task(_common.jax.random.key(0), 3, 6, copy_len=4)
    assert tokens.shape == targets.shape == (3, 14)
    np.testing.assert_array_equal(np.asarray(targets[:, -4:]), np.asarray(tokens[:, :4]))


def test_evaluate_flags_a_diverged_net():
    # A NaN net's accuracy is argmax over NaNs (class 0's share), not a result.
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    model = nn.Dense(3)
    x = jnp.ones((6, 4))
    y = jnp.asarray([0, 0, 1, 1, 2, 2])
    params = model.init(jax.random.key(0), x)["params"]
    broken = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, broken)
    out = _common.evaluate(model, stacked, x, y, batched=True)
    assert out["diverged"].tolist() == [False, True]
    assert _common.evaluate(model, params, x, y)["diverged"] == np.False_
