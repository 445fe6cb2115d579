"""The doctor: no arguments (the comparison), a few arguments, your own model, and errors."""

import importlib
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import flaxinit as fi

# The module (``flaxinit.doctor`` is the command line; ``fi.doctor`` the function).
doctor = importlib.import_module("flaxinit.diagnostics.doctor")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _verdicts(out):
    """{scheme: the verdict line} from the doctor's printout."""
    lines = out.split("\nVerdict:\n")[1].splitlines()
    return {line.split()[0]: line for line in lines if line[:2] == "  " and line[2:3] != " "}


def test_no_arguments_compares_the_schemes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # A new scheme is one registry entry: the no-argument comparison picks it up.
    half_he = doctor.from_initializer(fi.initializers.scaled(fi.he_normal(), 0.5))
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
    for layer in ("conv_0", "conv_1", "head"):
        assert layer in done.stdout
    for name in ("depth_profile.svg", "histograms.svg"):
        assert "<svg" in (tmp_path / name).read_text()


def test_gpt_zero_init_in_process(capsys, tmp_path):
    argv = ["--model", "gpt", "--depth", "1", "--width", "8", "--batch", "8", "--init", "zeros"]
    assert doctor.main([*argv, "--out", str(tmp_path), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "1-block GPT" in out
    # One scheme: the per-layer table lists the attention projections and the MLP.
    for layer in ("blocks_0/attn/query", "blocks_0/mlp/fc2"):
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


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("uniform_range:-1,1", "uniform_between:-1,1"),
        ("trunc_normal:0,2", "truncated_normal_between:0,2"),
    ],
)
def test_parse_initializer_takes_the_old_names_with_a_warning(old, new):
    with pytest.warns(DeprecationWarning, match=f"use '{new.split(':')[0]}'"):
        got = doctor.parse_initializer(old)(jax.random.key(0), (20, 20))
    np.testing.assert_array_equal(got, doctor.parse_initializer(new)(jax.random.key(0), (20, 20)))


# ------------------------------------------------------------------ the doctor on your model

USER_MODELS = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, flax.linen as nn
    from flax import nnx

    class Net(nn.Module):
        depth: int = 4

        @nn.compact
        def __call__(self, x):
            for _ in range(self.depth):
                x = nn.relu(nn.Dense(16)(x))
            return nn.Dense(5)(x)

    net = Net()

    def make_net():  # a factory; the same model as net, so the tests share compiled programs
        return Net()

    class BNNet(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = True):
            x = nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x))
            x = nn.relu(nn.Conv(4, (3, 3))(nn.relu(x)))
            return nn.Dense(3)(x.reshape(x.shape[0], -1))

    class Pair(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(2):
                x = nn.relu(nn.Dense(8)(x))
            return nn.Dense(4)(x), {"cache": jnp.zeros((x.shape[0], 3, 2))}

    class Tokens(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            h = nn.Embed(50, 8)(tokens)
            for _ in range(2):
                h = nn.relu(nn.Dense(8)(h))
            return nn.Dense(50)(h)

    class NNXNet(nnx.Module):
        def __init__(self, rngs=None):
            rngs = rngs or nnx.Rngs(0)
            self.layers = nnx.List([nnx.Linear(6 if i == 0 else 8, 8, rngs=rngs) for i in range(3)])
            self.out = nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, x):
            for layer in self.layers:
                x = jax.nn.relu(layer(x))
            return self.out(x)

    class Scanned(nn.Module):
        @nn.compact
        def __call__(self, x):
            x, _ = nn.scan(
                Step, variable_axes={"params": 0}, split_rngs={"params": True}, length=3
            )()(nn.Dense(8)(x), None)
            return nn.Dense(2)(x)

    class Step(nn.Module):
        @nn.compact
        def __call__(self, h, _):
            return nn.relu(nn.Dense(8)(h)), None

    not_a_model = 3

    def makes_an_int():
        return 3

    def needs_arguments(width):
        return Net()
    """
)


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    """A module ``doctor_user_models`` of tiny models, importable as the CLI imports it."""
    (tmp_path / "doctor_user_models.py").write_text(USER_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "doctor_user_models", raising=False)
    yield "doctor_user_models"
    sys.modules.pop("doctor_user_models", None)


def _run(capsys, *argv):
    code = doctor.main([*argv, "--no-plots"])
    out, err = capsys.readouterr()
    return code, out, err


def test_user_linen_model_instance(user_models, capsys):
    code, out, err = _run(
        capsys,
        *("--model", f"{user_models}:net", "--input-shape", "32,6", "--activation", "relu"),
        *("--init", "normal:0.01", "--init", "orthogonal"),
    )
    assert code == 0, err
    assert f"{user_models}:net (a Linen Net) on random N(0, 1) inputs of shape (32, 6)" in out
    assert "random labels in [0, 5) for the output (32, 5)" in out
    assert "Note: orthogonal: gain 1.414 (for relu)." in out
    verdicts = _verdicts(out)
    assert list(verdicts) == ["normal:0.01", "orthogonal"]
    assert " OK " in verdicts["orthogonal"]
    assert " FAIL " in verdicts["normal:0.01"]
    assert "vanish" in verdicts["normal:0.01"]
    assert "Loses it or has problems: normal:0.01." in out


def test_user_factory_and_labels_from_files_match_the_python_api(user_models, tmp_path, capsys):
    # The CLI is a thin layer over fi.doctor: the same model, batch and key give the
    # same comparison, which str() of the report prints.
    x = np.asarray(jax.random.normal(jax.random.key(3), (40, 6)), np.float32)
    y = np.asarray(jax.random.randint(jax.random.key(4), (40,), 0, 5), np.int32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    argv = ["--model", f"{user_models}:make_net", "--data", str(tmp_path / "x.npy")]
    argv += ["--labels", str(tmp_path / "y.npy"), "--batch", "32", "--seed", "1"]
    code, out, err = _run(capsys, *argv, "--init", "own_init", "--init", "normal:0.01")
    assert code == 0, err
    assert f"the first 32 rows of {tmp_path / 'x.npy'} (shape (32, 6) float32)" in out
    module = importlib.import_module(user_models)
    report = doctor.doctor(
        module.make_net(),
        (x[:32], y[:32]),
        schemes=["own_init", "normal:0.01"],
        key=jax.random.key(1),
    )
    assert isinstance(report, doctor.DoctorReport)
    assert str(report) in out
    assert str(report).startswith(report.table())
    assert list(report.reports) == ["own_init", "normal:0.01"]
    assert all(isinstance(r, fi.diagnostics.HealthReport) for r in report.reports.values())
    assert report.alive == ("own_init",)
    assert report.best == "own_init"
    assert "vanish" in report.verdicts()["normal:0.01"]
    # own_init is the model's own Linen init with the key; the scheme re-drew its kernels.
    own = module.make_net().init(jax.random.key(1), x[:32])
    assert jax.tree.all(jax.tree.map(np.array_equal, report.variables["own_init"], own))
    small = report.initialized("normal:0.01")["params"]["Dense_1"]
    assert float(small["kernel"].std()) == pytest.approx(0.01, rel=0.2)
    np.testing.assert_array_equal(small["bias"], own["params"]["Dense_1"]["bias"])


def test_user_nnx_model_with_plots(user_models, tmp_path, capsys):
    argv = ["--model", f"{user_models}:NNXNet", "--input-shape", "16,6", "--init", "lsuv"]
    code = doctor.main([*argv, "--out", str(tmp_path), "--format", "svg"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "(an NNX NNXNet)" in out
    assert "== lsuv ==" in out  # one scheme: its per-layer table
    for layer in ("layers/0", "layers/2", "out"):
        assert layer in out
    assert " OK " in _verdicts(out)["lsuv"]
    for name in ("depth_profile.svg", "histograms.svg"):
        assert "<svg" in (tmp_path / name).read_text()


def test_python_api_on_an_nnx_model_leaves_it_unchanged(user_models):
    model = importlib.import_module(user_models).NNXNet()
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    x = jax.random.normal(jax.random.key(0), (16, 6))
    y = jax.random.randint(jax.random.key(1), (16,), 0, 3)
    report = doctor.doctor(model, (x, y), schemes=["normal:0.01", "lsuv"], activation="relu")
    after = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    assert jax.tree.all(jax.tree.map(np.array_equal, before, after))
    assert report.alive == ("lsuv",)
    assert report.best == "lsuv"
    assert "activations vanish" in report.verdicts()["normal:0.01"]
    fitted = report.initialized("lsuv")
    assert isinstance(fitted, nnx.Module)
    assert fitted is not model
    std = float(fitted.layers[0](x).std())
    assert std == pytest.approx(1.0, abs=0.1)  # LSUV: unit variance on the batch


def test_redraw_uses_the_true_fan_axes_and_keeps_the_rest():
    # An attention kernel (in, heads, head_dim) is drawn with fan_in = in, not heads;
    # biases (here ones) stay as the model made them.
    model = nn.MultiHeadDotProductAttention(num_heads=4, bias_init=nn.initializers.ones)
    x = jnp.ones((2, 3, 64))
    case = doctor.Case(model, model.init(jax.random.key(0), x), x)
    new = doctor.from_initializer(fi.he_normal())(case, jax.random.key(1))["params"]
    assert new["query"]["kernel"].shape == (64, 4, 16)
    assert float(new["query"]["kernel"].std()) == pytest.approx(np.sqrt(2 / 64), rel=0.05)
    assert float(new["out"]["kernel"].std()) == pytest.approx(np.sqrt(2 / 64), rel=0.05)
    np.testing.assert_array_equal(new["query"]["bias"], np.ones((4, 16)))


@pytest.mark.parametrize("train", ["False", "True"])
def test_user_batchnorm_model_in_eval_and_train_mode(user_models, capsys, train):
    argv = ["--model", f"{user_models}:BNNet", "--input-shape", "8,6,6,1"]
    code, out, err = _run(capsys, *argv, "--call-kwargs", f"train={train}", "--init", "he_normal")
    assert code == 0, err
    assert f"called with train={train}" in out
    assert "Conv_0" in out
    assert "Dense_0" in out
    assert list(_verdicts(out)) == ["he_normal"]


def test_user_model_returning_a_tuple(user_models, capsys):
    argv = ["--model", f"{user_models}:Pair", "--input-shape", "8,6", "--init", "he_normal"]
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    assert "random labels in [0, 4) for the output[0] (8, 4)" in out
    assert "grad" in out
    assert list(_verdicts(out)) == ["he_normal"]


def test_user_token_model(user_models, capsys):
    argv = ["--model", f"{user_models}:Tokens", "--input-shape", "8,5"]
    argv += ["--input-dtype", "int32", "--vocab", "50", "--init", "he_normal"]
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    assert "random integers in [0, 50) of shape (8, 5)" in out
    assert "random labels in [0, 50) for the output (8, 5, 50)" in out
    assert "Embed_0" in out  # the embedding is in the per-layer table, not the profile


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "no_such_module_xyz:net", "--input-shape", "2,6"], "cannot import module"),
        (["--model", "{m}:nothere", "--input-shape", "2,6"], "has no attribute 'nothere'"),
        (["--model", "{m}:not_a_model", "--input-shape", "2,6"], "not a Linen or NNX model"),
        (["--model", "{m}:makes_an_int", "--input-shape", "2,6"], "returned an object of type"),
        (["--model", "{m}:needs_arguments", "--input-shape", "2,6"], "with no arguments failed"),
        (["--model", "{m}:net"], "--input-shape is needed"),
        (["--model", "{m}:net", "--input-shape", "2,x"], "--input-shape must be positive"),
        (["--model", "{m}:net", "--input-shape", "0,6"], "--input-shape must be positive"),
        (["--model", "{m}:NNXNet", "--input-shape", "2,7"], "rejected an input of shape (2, 7)"),
        (
            ["--model", "{m}:net", "--input-shape", "2,6", "--call-kwargs", "train=False"],
            "unexpected keyword argument 'train'",
        ),
        (["--model", "{m}:net", "--input-shape", "2,6", "--call-kwargs", "train"], "NAME=VALUE"),
        (
            ["--model", "{m}:net", "--input-shape", "2,6", "--call-kwargs", "train=Flase"],
            "the value of train is not a Python literal: Flase",
        ),
        (["--model", "{m}:net", "--input-shape", "2,6", "--depth", "3"], "--depth applies"),
        (["--model", "cnn", "--input-shape", "2,6"], "--input-shape applies to a model given"),
        (["--model", "cnn3"], "--model must be mlp, cnn, gpt or MODULE:NAME"),
        (["--model", "{m}:Tokens", "--input-shape", "2,5", "--input-dtype", "int32"], "--vocab"),
        (["--model", "{m}:Scanned", "--input-shape", "2,6"], "runs inside a JAX transform"),
        (["--no-such-flag"], "unrecognized arguments"),
    ],
)
def test_errors_are_one_line_and_exit_status_2(user_models, capsys, argv, message):
    code, out, err = _run(capsys, *(a.format(m=user_models) for a in argv))
    assert code == 2
    assert err.startswith("doctor: "), err
    assert err.count("\n") == 1, err
    assert message in err
    assert not out
