"""Plots are written, and are valid PNG/SVG files that image readers load back."""

import jax
import matplotlib.image
import numpy as np
import pytest
from PIL import Image

import flaxinit as fi
from flaxinit.diagnostics import activation_values, digits, health_report
from flaxinit.diagnostics.plots import plot_activation_histograms, plot_depth_profiles
from flaxinit.models import MLP

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def reports(deep_mlp, batch, init_with):
    """Reports and layer outputs of the deep MLP (the doctor's model: compiled once)."""
    x, y = batch
    out = {}
    for name, init in (("he_normal", fi.he_normal()), ("normal:0.01", fi.normal(0.01))):
        variables = init_with(init)
        values = activation_values(deep_mlp, x, variables=variables)
        out[name] = (health_report(deep_mlp, x, y, variables=variables), values)
    return out


def _check_png(path, min_side):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3
    assert min(image.shape[:2]) >= min_side
    assert image.std() > 0  # something was drawn
    with Image.open(path) as im:
        im.verify()
        assert im.format == "PNG"


def test_depth_profiles_png(reports, tmp_path):
    path = plot_depth_profiles({k: r for k, (r, _) in reports.items()}, tmp_path / "a/depth.png")
    assert path == tmp_path / "a/depth.png"
    _check_png(path, 300)


def test_depth_profiles_single_report_without_gradients_svg(tmp_path):
    x, _ = digits(32)
    model = MLP((8, 8))
    report = health_report(model, x, variables=model.init(jax.random.key(0), x))
    assert report.gradients == ()
    path = plot_depth_profiles(report, tmp_path / "depth.svg", title="no labels")
    text = path.read_text()
    assert "<svg" in text
    assert "no labels" in text


@pytest.mark.parametrize("log", [True, False])
def test_histograms_png(reports, tmp_path, log):
    layers = ("hidden_0", "hidden_15", "hidden_29")
    samples = {
        name: {k: np.asarray(values[k]) for k in layers} for name, (_, values) in reports.items()
    }
    path = plot_activation_histograms(samples, tmp_path / "hist.png", log=log, title="t")
    _check_png(path, 300)
