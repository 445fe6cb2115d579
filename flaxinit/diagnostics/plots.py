"""Plots: activation std and gradient RMS against depth, and histograms of activations.

The figures are drawn with matplotlib's object API on an Agg canvas. pyplot is never
imported and the global backend is left alone, so this works headless and inside
notebooks alike. The file format comes from the suffix: ``.png``, ``.svg``, ``.pdf``, ...
matplotlib is the ``flaxinit[plots]`` extra.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping

import numpy as np

from flaxinit.diagnostics.report import HealthReport


def new_figure(width: float, height: float):
    """A matplotlib figure on the Agg canvas (no display needed), sized in inches; the
    one place flaxinit's plots (diagnostics, the muP coordinate check) make figures."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'flaxinit[plots]'") from error
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | pathlib.Path) -> pathlib.Path:
    """Writes ``fig`` to ``path`` (parent folders created) and returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _positive(values: list[float | None]) -> np.ndarray:
    """Values for a log axis: missing, zero and non-finite become NaN (a gap in the line)."""
    a = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return np.where(np.isfinite(a) & (a > 0), a, np.nan)


def plot_depth_profiles(
    reports: HealthReport | Mapping[str, HealthReport],
    path: str | pathlib.Path,
    *,
    title: str | None = None,
) -> pathlib.Path:
    """Activation std and gradient RMS of each linear layer against depth, one line per report.

    The left panel shows the forward signal: the std of each linear layer's output, with
    embeddings and the readout left out (see :attr:`HealthReport.profile`). The right
    panel shows the backward signal: the RMS of the loss gradient reaching that output.
    Both use log axes. A signal that reaches exactly 0 leaves a gap and gets "(reaches 0)"
    in its legend entry. The right panel is left out when no report has gradients.

    Args:
      reports: one :class:`HealthReport`, or several by name (e.g. per initializer).
      path: where to write; the suffix picks the format.
      title: the figure title.

    Returns:
      The path written.

    Example:
      >>> import tempfile, pathlib
      >>> from flaxinit.diagnostics import digits, health_report
      >>> from flaxinit.diagnostics.plots import plot_depth_profiles
      >>> from flaxinit.models import MLP
      >>> x, y = digits(64)
      >>> model = MLP(features=(16,) * 3)
      >>> report = health_report(model, x, y, variables=model.init(jax.random.key(0), x))
      >>> with tempfile.TemporaryDirectory() as d:
      ...     png = plot_depth_profiles({"lecun_normal": report}, pathlib.Path(d) / "depth.png")
      ...     png.read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
      True
    """
    if isinstance(reports, HealthReport):
        reports = {"": reports}
    with_grads = any(r.gradients for r in reports.values())
    fig = new_figure(11 if with_grads else 6, 4.2)
    axes = fig.subplots(1, 2 if with_grads else 1, squeeze=False)[0]
    panels = [("std", "activation std (linear layer output)")]
    panels += [("grad_rms", "gradient RMS at the layer output")] if with_grads else []
    for ax, (field, label) in zip(axes, panels, strict=True):
        for name, report in reports.items():
            layers = report.profile
            values = [getattr(r, field) for r in layers]
            y = _positive(values)
            reaches_zero = any(v == 0 for v in values)
            legend = name + (" (reaches 0)" if reaches_zero else "")
            ax.plot([r.depth for r in layers], y, marker="o", markersize=2.5, label=legend)
        ax.set_yscale("log")
        ax.set_xlabel("layer (depth)")
        ax.set_ylabel(label)
        ax.grid(True, which="major", alpha=0.3)
    if any(reports):
        axes[0].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def _shown(v: np.ndarray, log: bool, max_values: int) -> tuple[float, float, np.ndarray]:
    """``(std, fraction of zeros, values to draw)`` of one panel's outputs."""
    v = v[:: max(1, math.ceil(v.size / max_values))]
    std = float(np.std(v)) if v.size else float("nan")
    zeros = float(np.mean(v == 0)) if v.size else 0.0
    values = v[(v != 0) & np.isfinite(v)]
    return std, zeros, np.log10(np.abs(values)) if log else values


def plot_activation_histograms(
    samples: Mapping[str, Mapping[str, np.ndarray]],
    path: str | pathlib.Path,
    *,
    log: bool = True,
    bins: int = 40,
    title: str | None = None,
    max_values: int = 100_000,
) -> pathlib.Path:
    """Histograms of layer outputs: one row per name (e.g. initializer), one column per layer.

    With ``log`` (the default) each panel is a histogram of ``log10|a|`` over the nonzero
    outputs, and all panels share the x axis. A signal that shrinks or grows with depth
    or from scheme to scheme then shifts visibly. With ``log=False`` the values
    themselves are shown, each panel on its own x range. Exact zeros (ReLU's off units)
    are never drawn as bars, where they would hide the rest; each title gives their
    fraction and the std. At most ``max_values`` values per panel are used, evenly
    strided.

    Args:
      samples: ``{row name: {layer name: array}}``, e.g. from
        :func:`~flaxinit.diagnostics.activation_values`.
      path: where to write; the suffix picks the format.
      log: histogram ``log10|a|`` on a shared axis, rather than ``a``.
      bins: bars per histogram.
      title: the figure title.
      max_values: the most values drawn per panel.

    Returns:
      The path written.

    Example:
      >>> import tempfile, pathlib
      >>> from flaxinit.diagnostics.plots import plot_activation_histograms
      >>> data = {"he_normal": {"layer 1": np.random.default_rng(0).normal(size=1000)}}
      >>> with tempfile.TemporaryDirectory() as d:
      ...     svg = plot_activation_histograms(data, pathlib.Path(d) / "hist.svg")
      ...     b"<svg" in svg.read_bytes()
      True
    """
    rows = list(samples)
    cols = list(dict.fromkeys(c for r in rows for c in samples[r]))
    shown = {
        (r, c): _shown(np.asarray(samples[r][c], dtype=np.float64).ravel(), log, max_values)
        for r in rows
        for c in samples[r]
    }
    edges: int | np.ndarray = bins
    if log:  # one set of bins for all panels, so bar widths compare too
        finite = [s[2] for s in shown.values() if s[2].size]
        lo = min((s.min() for s in finite), default=-1.0)
        hi = max((s.max() for s in finite), default=1.0)
        edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    fig = new_figure(2.8 * max(len(cols), 1), 1.7 * max(len(rows), 1) + 0.6)
    axes = fig.subplots(
        max(len(rows), 1), max(len(cols), 1), squeeze=False, sharex="all" if log else "none"
    )
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            ax = axes[i][j]
            if col not in samples[row]:
                ax.set_axis_off()
                continue
            std, zeros, values = shown[row, col]
            if values.size:
                ax.hist(values, bins=edges, color=f"C{i}")
            note = f", {zeros:.0%} zeros" if zeros else ""
            ax.set_title(f"{row}: {col}\nstd {std:.2g}{note}", fontsize="small")
            ax.tick_params(labelsize="x-small")
            ax.set_yticks([])
    for ax in axes[-1]:
        ax.set_xlabel("log10 |output|" if log else "output", fontsize="small")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
