"""flaxinit doctor: which initialization keeps the signal alive? Per-layer health before training.

Run ``python -m flaxinit.doctor`` for the comparison: a 30-layer ReLU MLP on
scikit-learn's digits (bundled with scikit-learn, nothing is downloaded), initialized with
each scheme in :data:`SCHEMES`. For each scheme it prints a table and a verdict, and it
writes plots of activation std and gradient RMS against depth. Options pick another
built-in model (``--model cnn|gpt``), another initializer (``--init he_normal``,
``--init normal:0.01``, ``--init orthogonal:1.414``, repeatable), the depth, width and
activation. With one ``--init`` it prints that scheme's full per-layer table.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

import flaxinit as fi
from flaxinit.diagnostics import (
    CNN,
    GPT,
    MLP,
    HealthReport,
    activation_values,
    digit_tokens,
    digits,
    health_report,
    nonlinearity,
    plot_activation_histograms,
    plot_depth_profiles,
)
from flaxinit.diagnostics.probe import blas_single_threaded

Batch = tuple[Any, Any]
# A scheme maps (model, its default variables, a batch, a key) to new variables.
Scheme = Callable[[nn.Module, dict, Batch, jax.Array], dict]


def from_initializer(init: fi.Initializer) -> Scheme:
    """A scheme that re-initializes the model with ``kernel_init=init`` (biases stay zero).

    The model's own ``init`` is used, so Flax hands the initializer the shapes it
    expects. Attention kernels, for example, are flattened to 2-D first.

    Example:
      >>> from flaxinit.doctor import from_initializer
      >>> from flaxinit.diagnostics import MLP
      >>> model, x = MLP(depth=1, width=4), jnp.ones((2, 3))
      >>> variables = from_initializer(zeros)(model, {}, (x, None), jax.random.key(0))
      >>> float(abs(variables["params"]["Dense_0"]["kernel"]).max())
      0.0
    """

    def scheme(model: nn.Module, variables: dict, batch: Batch, key: jax.Array) -> dict:
        del variables  # started afresh
        return model.clone(kernel_init=init).init(key, batch[0])

    return scheme


def orthogonal_with_gain(model: nn.Module, variables: dict, batch: Batch, key: jax.Array) -> dict:
    """Orthogonal weights scaled by the gain of the model's activation (sqrt(2) for ReLU).

    The gain is ``fi.calculate_gain(model.activation)``, or 1 where that table has no
    entry (e.g. gelu).
    """
    try:
        gain = fi.calculate_gain(model.activation)
    except ValueError:
        gain = 1.0
    return from_initializer(fi.orthogonal(gain))(model, variables, batch, key)


def lsuv_scheme(model: nn.Module, variables: dict, batch: Batch, key: jax.Array) -> dict:
    """LSUV (Mishkin & Matas 2016): orthonormal kernels, then each linear layer rescaled
    in one compiled pass so its output has unit variance on the batch (:func:`flaxinit.lsuv`)."""
    del variables  # started afresh
    init_key, lsuv_key = jax.random.split(key)
    fresh = model.init(init_key, batch[0])
    new, _ = fi.lsuv(model, fresh, batch[0], key=lsuv_key)
    return new


# The comparison run with no arguments. Adding a scheme takes one entry.
SCHEMES: dict[str, Scheme] = {
    "glorot_uniform": from_initializer(fi.glorot_uniform()),  # Xavier
    "lecun_normal": from_initializer(fi.lecun_normal()),  # Flax's default
    "normal:0.01": from_initializer(fi.normal(0.01)),  # N(0, 0.01^2)
    "he_normal": from_initializer(fi.he_normal()),
    "orthogonal": orthogonal_with_gain,
    "lsuv": lsuv_scheme,
}

# Catalogue names that are initializers themselves rather than factories.
_DIRECT = {"zeros": fi.zeros, "ones": fi.ones}
_NOT_FACTORIES = {
    "Initializer",
    "calculate_gain",
    "compute_fans",
    "truncated_std",
    "scaled",
    "stacked",
    "blockwise",
}


def _arg(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def parse_initializer(spec: str) -> fi.Initializer:
    """An initializer from ``name`` or ``name:arg,arg,...``, using the catalogue's names.

    Arguments are positional and parsed as int, then float, else kept as strings:
    ``normal:0.01``, ``orthogonal:1.414``, ``variance_scaling:2,fan_in,normal``,
    ``kaiming_normal:0,fan_out,relu``.

    Example:
      >>> from flaxinit.doctor import parse_initializer
      >>> w = parse_initializer("normal:0.5")(jax.random.key(0), (1000, 10))
      >>> round(float(w.std()), 1)
      0.5
    """
    name, _, rest = spec.partition(":")
    args = [_arg(a) for a in rest.split(",")] if rest else []
    if name in _DIRECT:
        if args:
            raise ValueError(f"{name} takes no arguments, got {spec!r}")
        return _DIRECT[name]
    if name not in fi.__all__ or name in _NOT_FACTORIES:
        known = sorted(set(fi.__all__) - _NOT_FACTORIES)
        raise ValueError(f"unknown initializer {name!r}; known: {', '.join(known)}")
    return getattr(fi, name)(*args)


def resolve_scheme(spec: str) -> Scheme:
    """A scheme from :data:`SCHEMES` by name, else from :func:`parse_initializer`."""
    if spec in SCHEMES:
        return SCHEMES[spec]
    return from_initializer(parse_initializer(spec))


MODELS = ("mlp", "cnn", "gpt")
_DEFAULTS = {  # depth, width, activation
    "mlp": (30, 256, "relu"),
    "cnn": (8, 32, "relu"),
    "gpt": (4, 64, "gelu"),
}


def build(
    kind: str, depth: int, width: int, activation: str, batch: int, seed: int
) -> tuple[nn.Module, Batch, str]:
    """The built-in model, its batch ``(x, labels)`` from the digits, and a description."""
    if kind == "gpt":
        tokens = digit_tokens(batch, seed=seed)
        x, y = tokens[:, :-1], tokens[:, 1:]
        heads = 4 if width % 4 == 0 else 1
        model = GPT(depth=depth, width=width, num_heads=heads, activation=activation)
        what = (
            f"a {depth}-block GPT (width {width}, {heads} heads, {activation}) predicting the "
            f"next pixel of {batch} scikit-learn digits (63 tokens each, 17 intensities)"
        )
        return model, (x, y), what
    x, y = digits(batch, seed=seed)
    data = f"{batch} scikit-learn digits (8x8 pixels, standardized; 10 classes)"
    if kind == "cnn":
        model = CNN(depth=depth, width=width, activation=activation)
        return model, (x, y), f"a {depth}-layer {activation} CNN ({width} channels) on {data}"
    model = MLP(depth=depth, width=width, activation=activation)
    return model, (x, y), f"a {depth}-layer {activation} MLP (width {width}) on {data}"


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.2g}"


def _profile(report: HealthReport) -> dict[str, Any]:
    layers = report.profile
    first, mid, last = layers[0], layers[len(layers) // 2], layers[-1]
    fwd = last.std / first.std if first.std > 0 else None
    bwd = None
    if last.grad_rms and first.grad_rms is not None:
        bwd = first.grad_rms / last.grad_rms
    return {"first": first, "mid": mid, "last": last, "fwd": fwd, "bwd": bwd}


def _label(status: str) -> str:
    return {"ok": "OK", "warning": "WARN", "error": "FAIL"}[status]


def comparison_table(reports: Mapping[str, HealthReport]) -> str:
    """One row per scheme: std and gradient RMS at the first, middle and last layer."""
    p0 = _profile(next(iter(reports.values())))
    n0, nm, n1 = p0["first"].depth, p0["mid"].depth, p0["last"].depth
    headers = [
        "scheme",
        f"std@{n0}",
        f"std@{nm}",
        f"std@{n1}",
        f"{n1}/{n0}",
        f"grad@{n0}",
        f"grad@{nm}",
        f"grad@{n1}",
        f"{n0}/{n1}",
        "status",
    ]
    rows = []
    for name, report in reports.items():
        p = _profile(report)
        rows.append(
            [
                name,
                _g(p["first"].std),
                _g(p["mid"].std),
                _g(p["last"].std),
                _g(p["fwd"]),
                _g(p["first"].grad_rms),
                _g(p["mid"].grad_rms),
                _g(p["last"].grad_rms),
                _g(p["bwd"]),
                _label(report.status),
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in (0, len(cells) - 1) else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def verdict(name: str, report: HealthReport, width: int) -> str:
    """``name  OK  ...`` with the problems and the first fix, or the kept ratios."""
    head = f"  {name.ljust(width)}  {_label(report.status).ljust(4)}  "
    problems = [f for f in report.findings if f.severity != "info"]
    if not problems:
        p = _profile(report)
        n0, n1 = p["first"].depth, p["last"].depth
        kept = f"std x{_g(p['fwd'])}"
        kept += f", gradient x{_g(p['bwd'])}" if p["bwd"] is not None else ""
        return head + f"signal kept alive ({kept} between layers {n0} and {n1})"
    pad = " " * len(head)
    fix = textwrap.fill(
        "fix: " + problems[0].fix, width=100, initial_indent=pad, subsequent_indent=pad + "     "
    )
    return head + report.verdict() + "\n" + fix


def _histogram_samples(
    model: nn.Module, x: Any, variables: dict, report: HealthReport
) -> dict[str, np.ndarray]:
    """The first, middle and last activation layers' outputs (linear ones if none)."""
    sites = [r for r in report.activations if r.kind == "activation"] or list(report.profile)
    chosen = list(dict.fromkeys([sites[0], sites[len(sites) // 2], sites[-1]]))
    values = activation_values(model, x, variables=variables)
    return {f"layer {r.depth} ({r.path})": np.asarray(values[r.path]) for r in chosen}


def write_plots(
    model: nn.Module,
    x: Any,
    reports: Mapping[str, HealthReport],
    variables: Mapping[str, dict],
    out: pathlib.Path,
    fmt: str,
    title: str,
) -> list[pathlib.Path]:
    """Depth profiles and activation histograms of every scheme, into ``out``."""
    depth = plot_depth_profiles(reports, out / f"depth_profile.{fmt}", title=title)
    samples = {
        name: _histogram_samples(model, x, variables[name], report)
        for name, report in reports.items()
    }
    hist = plot_activation_histograms(samples, out / f"histograms.{fmt}", title=title)
    return [depth, hist]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    """The command line's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m flaxinit.doctor",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python -m flaxinit.doctor                  # compare the schemes, write plots\n"
            "  python -m flaxinit.doctor --init he_normal # one scheme's per-layer table\n"
            "  python -m flaxinit.doctor --model cnn --activation tanh --init orthogonal:1.67"
        ),
    )
    p.add_argument("--model", choices=MODELS, default="mlp", help="built-in model (mlp)")
    p.add_argument(
        "--init",
        action="append",
        metavar="SPEC",
        help="a scheme (" + ", ".join(SCHEMES) + ") or a catalogue initializer, e.g. "
        "he_normal, normal:0.01, orthogonal:1.414; repeatable (default: all schemes)",
    )
    p.add_argument("--depth", type=_positive, help="layers (mlp 30, cnn 8) or blocks (gpt 4)")
    p.add_argument("--width", type=_positive, help="units, channels or model width (256/32/64)")
    p.add_argument("--activation", help="a jax.nn name: relu, tanh, gelu, ... (relu; gpt gelu)")
    p.add_argument("--batch", type=_positive, default=512, help="digits in the batch (512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch (0)")
    p.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path("results/doctor"),
        help="folder for the plots (results/doctor)",
    )
    p.add_argument("--format", choices=("png", "svg"), default="png", help="plot format")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("--details", action="store_true", help="per-layer table for every scheme")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the doctor; returns the exit code (0, or 2 for bad arguments)."""
    start = time.perf_counter()
    args = parser().parse_args(argv)
    depth, width, activation = _DEFAULTS[args.model]
    depth, width = args.depth or depth, args.width or width
    activation = args.activation or activation
    try:
        nonlinearity(activation)  # an unknown name fails here, not deep inside init
        schemes = {s: resolve_scheme(s) for s in args.init} if args.init else dict(SCHEMES)
        model, (x, y), what = build(args.model, depth, width, activation, args.batch, args.seed)
    except (ValueError, TypeError) as error:
        print(f"doctor: {error}", file=sys.stderr)
        return 2

    key = jax.random.key(args.seed)
    # QR/SVD-based inits call LAPACK eagerly: keep OpenBLAS from fighting XLA's threads.
    with blas_single_threaded():
        base = model.init(key, x)
        variables = {name: scheme(model, base, (x, y), key) for name, scheme in schemes.items()}
    reports = {name: health_report(model, x, y, variables=v) for name, v in variables.items()}

    print(f"flaxinit doctor: {what}.")
    print(
        "Before any training: the std of each linear layer's output (forward signal) and the "
        "RMS of the loss gradient reaching it (backward signal), at the first, middle and last "
        "hidden layer. A ratio near 1 keeps the signal; below 0.01 or above 100 it is lost.\n"
    )
    if len(reports) == 1 or args.details:
        for name, report in reports.items():
            print(f"== {name} ==\n{report}\n")
    print(comparison_table(reports))
    print("\nVerdict:")
    width_names = max(map(len, reports))
    for name, report in reports.items():
        print(verdict(name, report, width_names))
    alive = [n for n, r in reports.items() if r.status == "ok"]
    lost = [n for n, r in reports.items() if r.status != "ok"]
    if len(reports) > 1:
        print(f"\nKeeps the signal alive: {', '.join(alive) or 'none'}.")
        print(f"Loses it or has problems: {', '.join(lost) or 'none'}.")
    if not args.no_plots:
        title = what[0].upper() + what[1:]
        paths = write_plots(model, x, reports, variables, args.out, args.format, title)
        print("\nPlots: " + ", ".join(str(p) for p in paths))
    if len(reports) > 1 and not args.details:
        print("Per-layer tables: add --details, or pick one scheme: --init he_normal")
    print(f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
