"""The doctor command line: no arguments (the comparison), a few arguments, and errors."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import flaxinit as fi
from flaxinit import doctor

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _verdicts(out):
    """{scheme: the verdict line} from the doctor's printout."""
    lines = out.split("\nVerdict:\n")[1].splitlines()
    return {line.split()[0]: line for line in lines if line[:2] == "  " and line[2:3] != " "}


def test_no_arguments_compares_the_schemes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # A new scheme is one registry entry: the no-argument comparison picks it up.
    half_he = doctor.from_initializer(fi.scaled(fi.he_normal(), 0.5))
    monkeypatch.setitem(doctor.SCHEMES, "half_he", half_he)
    assert doctor.main([]) == 0
    out = capsys.readouterr().out
    verdicts = _verdicts(out)
    assert list(verdicts) == list(doctor.SCHEMES)
    assert " FAIL " in verdicts["half_he"]
    assert "vanish" in verdicts["half_he"]
    for kept in ("he_normal", "orthogonal", "lsuv"):
        assert " OK " in verdicts[kept]
    for lost in ("glorot_uniform", "lecun_normal", "normal:0.01"):
        assert " FAIL " in verdicts[lost]
        assert "vanish" in verdicts[lost]
    assert "Keeps the signal alive: he_normal, orthogonal, lsuv." in out
    for name in ("depth_profile.png", "histograms.png"):
        path = tmp_path / "results" / "doctor" / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        assert str(os.path.join("results", "doctor", name)) in out


def test_cli_with_arguments_in_a_subprocess(tmp_path):
    cmd = [sys.executable, "-m", "flaxinit.doctor", "--model", "cnn", "--init", "he_normal"]
    cmd += ["--depth", "2", "--width", "4", "--batch", "32", "--format", "svg"]
    cmd += ["--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    # One scheme: its per-layer table, one row per Conv and the head.
    assert "== he_normal ==" in done.stdout
    assert "2-layer relu CNN" in done.stdout
    for layer in ("Conv_0", "Conv_1", "Dense_0"):
        assert layer in done.stdout
    for name in ("depth_profile.svg", "histograms.svg"):
        assert "<svg" in (tmp_path / name).read_text()


def test_gpt_zero_init_in_process(capsys, tmp_path):
    argv = ["--model", "gpt", "--depth", "1", "--width", "8", "--batch", "8", "--init", "zeros"]
    assert doctor.main([*argv, "--out", str(tmp_path), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "1-block GPT" in out
    # One scheme: the per-layer table lists the attention projections and the MLP.
    for layer in ("Block_0/MultiHeadDotProductAttention_0/query", "Block_0/Dense_1"):
        assert layer in out
    verdicts = _verdicts(out)
    assert list(verdicts) == ["zeros"]
    assert " FAIL " in verdicts["zeros"]
    assert "symmetric weights" in verdicts["zeros"]
    assert "Plots:" not in out
    assert not list(tmp_path.iterdir())


def test_bad_initializer_is_a_usage_error(capsys):
    assert doctor.main(["--init", "no_such_init", "--no-plots"]) == 2
    assert "unknown initializer 'no_such_init'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("spec", "std"),
    [("normal:0.5", 0.5), ("he_normal", np.sqrt(2 / 400)), ("orthogonal:3", 3 / np.sqrt(400))],
)
def test_parse_initializer(spec, std):
    w = doctor.parse_initializer(spec)(jax.random.key(0), (400, 400))
    # The std of n = 160000 draws is within 6 standard errors, 6 / sqrt(2n), of its value.
    assert float(w.std()) == pytest.approx(std, rel=6 / np.sqrt(2 * 400 * 400))


def test_parse_initializer_errors():
    assert doctor.parse_initializer("zeros") is fi.zeros
    with pytest.raises(ValueError, match="takes no arguments"):
        doctor.parse_initializer("zeros:1")
    with pytest.raises(ValueError, match="unknown initializer 'scaled'"):
        doctor.parse_initializer("scaled")
