"""The health report: activations, gradients and weights in one pass, turned into findings."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax

from flaxinit import activations as activations_table
from flaxinit.diagnostics import probe, records
from flaxinit.diagnostics.activations import ActivationRecord, activation_records
from flaxinit.diagnostics.gradients import GradientRecord, gradient_records
from flaxinit.diagnostics.weights import WeightRecord, structure_layouts, weight_records
from flaxinit.tables import format_table

SEVERITIES = ("info", "warning", "error")


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """When a statistic becomes a finding. Override any field: ``Thresholds(drift_error=1e3)``.

    The *forward signal* is the std of each linear layer's output (pre-activation), from
    the first linear layer to the last hidden one (embeddings and the readout are left
    out, see :func:`depth_profile`). The *backward signal* is the RMS of the loss
    gradient with respect to those same outputs.

    Attributes:
      drift_warning: a warning when the forward signal's ratio ``last / first``, or the
        backward signal's ratio ``first / last``, is outside
        ``[1/drift_warning, drift_warning]``. Default 10.
      drift_error: an error beyond ``drift_error``. Default 100. From hidden layer 1 to
        30 of a ReLU MLP, Xavier weights shrink the std by about ``2**-14.5`` (each ReLU
        layer halves the second moment), far past it; He weights keep it, up to the
        finite-width fluctuations, well inside 10.
      saturation_level: the part of a bounded nonlinearity's half-range past which an
        output counts as saturated. Default 0.99, i.e. ``|tanh| > 0.99``. See
        :attr:`ActivationRecord.saturated_fraction`.
      saturated_warning: a warning when a layer has more than this fraction of saturated
        outputs. Default 0.1. A unit-variance tanh pre-activation is saturated ~1% of the
        time.
      saturated_error: an error above this fraction. Default 0.5.
      dead_warning: a warning when more than this fraction of a rectifier layer's units
        are 0 for the whole batch. Default 0.5. The representations of different inputs
        grow correlated with depth, so even a healthy deep ReLU MLP has dead units on a
        batch. On 512 digits, layers 20-30 of a 30-layer MLP at He or orthogonal(sqrt 2)
        init have 20-35% dead units.
      dead_error: an error above this fraction. Default 0.9.
      min_rank_ratio: an error when a weight's ``rank / min(rows, cols)`` is below this.
        Default 0.9. A smaller deficit is reported as info. A random square float32
        matrix has a singular value under the rank tolerance 1-2% of the time, which
        leaves it one short of full rank.
      duplicate_tol: rows or columns within ``duplicate_tol * max|W|`` of each other
        (max-norm) are duplicates. Default 1e-6, just above float32 rounding. Any
        duplicate is a finding: a warning for columns or rows alone, an error for both
        (every unit identical, as with a constant init).
    """

    drift_warning: float = 10.0
    drift_error: float = 100.0
    saturation_level: float = 0.99
    saturated_warning: float = 0.1
    saturated_error: float = 0.5
    dead_warning: float = 0.5
    dead_error: float = 0.9
    min_rank_ratio: float = 0.9
    duplicate_tol: float = 1e-6


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem, in plain language.

    Attributes:
      severity: ``"info"``, ``"warning"`` or ``"error"``.
      code: a stable identifier. One of ``nonfinite``, ``collapsed``,
        ``vanishing_activations``, ``exploding_activations``, ``vanishing_gradients``,
        ``exploding_gradients``, ``saturated``, ``dead_units``, ``symmetric``,
        ``rank_deficient``.
      layers: the paths involved (layer outputs or weight leaves).
      summary: a few words, e.g. ``"activations vanish (x3.1e-05)"``.
      message: what was measured and what it means.
      fix: what to try.
    """

    severity: str
    code: str
    layers: tuple[str, ...]
    summary: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"[{self.severity}] {self.message}\n    fix: {self.fix}"


def _g(x: float | None) -> str:
    """3 significant digits; ``-`` for missing."""
    if x is None:
        return "-"
    return f"{x:.3g}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def _ranges(numbers: Iterable[int]) -> str:
    """``1-4, 7`` from ``[1, 2, 3, 4, 7]``."""
    out: list[str] = []
    for n in sorted(set(numbers)):
        if out and out[-1][1] == n - 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in out)


def _family(name: str | None) -> str | None:
    info = None if name is None else activations_table.lookup(name)
    return None if info is None else info.family


def _target_gain(name: str | None) -> tuple[float, str]:
    """The ``std * sqrt(fan_in)`` a nonlinearity wants, and the initializers that give it."""
    family = _family(name)
    if family == "rectifier":
        return math.sqrt(2.0), "he_normal or orthogonal(sqrt(2))"
    if name == "tanh":
        return 1.0, "lecun_normal, or xavier_normal(gain=5/3) for wide layers"
    if name == "sigmoid":
        return 1.0, "lecun_normal or xavier_normal"
    return 1.0, "lecun_normal"


def _named(weights: Sequence[WeightRecord], keep: Callable[[float], bool]) -> str:
    """`` (path gain, ...)``: the weights whose gain ``keep`` selects, the first three."""
    hit = [w for w in weights if math.isfinite(w.gain) and keep(w.gain)]
    if not hit:
        return ""
    shown = ", ".join(f"{w.path} {w.gain:.2g}" for w in hit[:3])
    more = f" and {len(hit) - 3} more" if len(hit) > 3 else ""
    return f" (layers: {shown}{more})"


def _scale_fix(
    direction: str,
    act: str | None,
    gain: float | None,
    weights: Sequence[WeightRecord] = (),
) -> str:
    """Advice for a drifting signal, from the nonlinearity and the weights' measured gain
    (the median); the layers whose own gain is off are named."""
    target, inits = _target_gain(act)
    what = f"a {act} net" if act else "this net"
    if gain is None or not math.isfinite(gain):
        return f"initialize with {inits}"
    if gain == 0:
        # Constant weights: the spread is 0 whatever the signal does, so no gain is "right".
        return f"the weights have zero spread (zero or constant init): use a random init, {inits}"
    measured = f"weights have std*sqrt(fan_in) = {gain:.2g}"
    if direction == "vanish" and _family(act) == "rectifier" and 0.8 <= gain <= 1.25:
        names = _named(weights, lambda g: g < 0.8 * target)
        return (
            f"{measured} (Xavier/LeCun scale){names}; a ReLU layer halves the signal's "
            f"second moment, so {what} needs {target:.2g}: try {inits}"
        )
    if direction == "vanish" and gain < 0.8 * target:
        names = _named(weights, lambda g: g < 0.8 * target)
        return f"{measured}{names}, too small for {what} (wants about {target:.2g}): try {inits}"
    if direction == "explode" and gain > 1.25 * target:
        names = _named(weights, lambda g: g > 1.25 * target)
        return f"{measured}{names}, too large for {what} (wants about {target:.2g}): try {inits}"
    return (
        f"{measured}, about right for {what}, so the cause is elsewhere (biases, the input's "
        "scale, skip connections, normalization): rescale each layer on data (LSUV), or "
        "check those"
    )


def _drift(
    code: str,
    quantity: str,
    first: tuple[int, str, float],
    last: tuple[int, str, float],
    ratio: float,
    th: Thresholds,
    fix: Callable[[str], str],
) -> Finding | None:
    if not (math.isfinite(ratio) and ratio >= 0):
        return None
    outside = lambda limit: ratio < 1 / limit or ratio > limit
    if not outside(th.drift_warning):
        return None
    severity = "error" if outside(th.drift_error) else "warning"
    direction = "vanish" if ratio < 1 else "explode"
    (n0, p0, v0), (n1, p1, v1) = first, last
    word = "vanishing" if direction == "vanish" else "exploding"
    per_layer = ratio ** (1 / max(n1 - n0, 1))
    if quantity == "gradients":
        step = f", x{1 / per_layer:.3g} per layer going back" if ratio > 0 else ""
        message = (
            f"gradients at layer {n0} ({p0}) are {ratio:.2g} of those at layer {n1} ({p1}) "
            f"(RMS {v0:.3g} vs {v1:.3g}{step}): {word}"
        )
    else:
        step = f", about x{per_layer:.3g} per layer" if ratio > 0 else ""
        message = (
            f"activation std goes from {v0:.3g} at layer {n0} ({p0}) to {v1:.3g} at layer "
            f"{n1} ({p1}): x{ratio:.2g}{step}: {word}"
        )
    verb = "vanish" if direction == "vanish" else "explode"
    return Finding(
        severity,
        f"{word}_{code}",
        (p0, p1),
        f"{quantity} {verb} (x{ratio:.2g})",
        message,
        fix(direction),
    )


def _threshold_finding(
    records: Sequence[ActivationRecord],
    field: str,
    warning: float,
    error: float,
    make: Callable[[str, list[ActivationRecord], ActivationRecord], Finding],
) -> Finding | None:
    hit = [r for r in records if getattr(r, field) is not None and getattr(r, field) > warning]
    if not hit:
        return None
    worst = max(hit, key=lambda r: getattr(r, field))
    return make("error" if getattr(worst, field) > error else "warning", hit, worst)


def depth_profile(activations: Sequence[ActivationRecord]) -> tuple[ActivationRecord, ...]:
    """The layers whose signal is compared across depth: the linear ones but two kinds.

    Two kinds of linear layer are left out:

    * Embeddings. Their output is their table's scale (often N(0, 0.02^2) by design),
      not a transformed input.
    * The last linear layer (the readout), when at least two others remain. The
      gradient at its output is set by the loss, and its shape (e.g. 256 -> 10) scales
      the gradient below it by ``sqrt(fan_out / fan_in)`` whatever the init.
    """
    layers = [r for r in activations if r.kind == "linear" and not r.embedding]
    return tuple(layers[:-1] if len(layers) >= 3 else layers)


def findings(
    activations: Sequence[ActivationRecord],
    gradients: Sequence[GradientRecord],
    weights: Sequence[WeightRecord],
    thresholds: Thresholds | None = None,
) -> tuple[Finding, ...]:
    """Turns records into findings, most severe first.

    This is a pure function of the records: call it again with other ``thresholds``
    without running the model.
    """
    th = thresholds or Thresholds()
    out: list[Finding] = []
    linear = [r for r in activations if r.kind == "linear"]
    profile = depth_profile(activations)
    acts = [r for r in activations if r.activation is not None]
    names = [r.activation for r in acts]
    act = max(set(names), key=names.count) if names else None
    gains = [w.gain for w in weights if w.rows > 1 and w.cols > 1 and math.isfinite(w.gain)]
    gain = statistics.median(gains) if gains else None
    matrices = [w for w in weights if w.rows > 1 and w.cols > 1]
    fix = lambda direction: _scale_fix(direction, act, gain, matrices)

    bad = [r for r in activations if not all(map(math.isfinite, (r.std, r.grad_rms or 0.0)))]
    if bad:
        out.append(
            Finding(
                "error",
                "nonfinite",
                tuple(r.path for r in bad),
                "NaN/inf",
                f"layers {_ranges(r.depth for r in bad)} ({bad[0].path}, ...) produce NaN or "
                "inf in the forward or backward pass: the signal overflowed",
                fix("explode"),
            )
        )
    flat = [r for r in linear if r.std == 0]
    if flat:
        own = {w.path.rpartition("/")[0]: w for w in weights}.get(flat[0].path)
        if (own is not None and own.std == 0) or flat[0] is linear[0]:
            why = f"layer {flat[0].depth}'s weights are constant"
            cure = (
                "zero or constant weights do this: use a random init (e.g. he_normal for "
                "ReLU, lecun_normal otherwise)"
            )
        else:
            why = "the signal shrank layer by layer until float32 rounded it to exactly 0"
            cure = fix("vanish")
        out.append(
            Finding(
                "error",
                "collapsed",
                tuple(r.path for r in flat),
                "signal collapsed",
                f"the output of layers {_ranges(r.depth for r in flat)} ({flat[0].path}, ...) "
                f"is the same for every example (std 0): no information about the input "
                f"passes them; {why}",
                cure,
            )
        )
    if len(profile) >= 2 and not bad:
        a, b = profile[0], profile[-1]
        if a.std > 0:
            f = _drift(
                "activations",
                "activations",
                (a.depth, a.path, a.std),
                (b.depth, b.path, b.std),
                b.std / a.std,
                th,
                fix,
            )
            out += [f] if f else []
        if b.grad_rms:
            f = _drift(
                "gradients",
                "gradients",
                (a.depth, a.path, a.grad_rms),
                (b.depth, b.path, b.grad_rms),
                a.grad_rms / b.grad_rms,
                th,
                fix,
            )
            out += [f] if f else []

    def saturated(severity, hit, worst):
        return Finding(
            severity,
            "saturated",
            tuple(r.path for r in hit),
            f"{worst.activation} saturated ({worst.saturated_fraction:.0%})",
            f"{len(hit)} of {sum(r.activation == worst.activation for r in acts)} "
            f"{worst.activation} layers (layers "
            f"{_ranges(r.depth for r in hit)}) have more than {th.saturated_warning:.0%} of "
            f"their outputs saturated (beyond {th.saturation_level:g} of the range), up to "
            f"{worst.saturated_fraction:.0%} at layer {worst.depth} ({worst.path}). The "
            "slope there is ~0, so little gradient passes",
            f"the pre-activations are too large; {fix('explode')}",
        )

    def dead(severity, hit, worst):
        return Finding(
            severity,
            "dead_units",
            tuple(r.path for r in hit),
            f"dead units ({worst.dead_fraction:.0%})",
            f"{len(hit)} {worst.activation} layers (layers {_ranges(r.depth for r in hit)}) "
            f"have more than {th.dead_warning:.0%} dead units (0 for the whole batch), up to "
            f"{worst.dead_fraction:.0%} at layer {worst.depth} ({worst.path}). Dead units get "
            "no gradient and never recover",
            "dead units come from zero or tiny weights, negative biases, or a collapsed "
            "signal: use he_normal with zero biases, or a leaky_relu",
        )

    for field, warn, err, make in (
        ("saturated_fraction", th.saturated_warning, th.saturated_error, saturated),
        ("dead_fraction", th.dead_warning, th.dead_error, dead),
    ):
        f = _threshold_finding(activations, field, warn, err, make)
        out += [f] if f else []

    dup = [w for w in weights if w.duplicate_cols > 0 or w.duplicate_rows > 0]
    if dup:
        both = [w for w in dup if w.duplicate_cols > 0 and w.duplicate_rows > 0]
        w = max(dup, key=lambda w: w.duplicate_cols + w.duplicate_rows)
        out.append(
            Finding(
                "error" if both else "warning",
                "symmetric",
                tuple(w.path for w in dup),
                "symmetric weights",
                f"{len(dup)} weight matrices have repeated columns or rows, e.g. {w.path}: "
                f"{w.duplicate_cols} of {w.cols} columns and {w.duplicate_rows} of {w.rows} "
                "rows repeat another. Units with the same incoming weights compute the "
                "same function. When their outgoing weights match as well, they also get "
                "the same gradient, and training never tells them apart: the symmetry is "
                "not broken",
                "use a random init for weights (he_normal, glorot_uniform, orthogonal, ...); "
                "constants suit biases only",
            )
        )
    deficient = [w for w in weights if w.rank < w.full_rank]
    if deficient:
        w = min(deficient, key=lambda w: w.rank / w.full_rank)
        severe = [w for w in deficient if w.rank / w.full_rank < th.min_rank_ratio]
        out.append(
            Finding(
                "error" if severe else "info",
                "rank_deficient",
                tuple(w.path for w in deficient),
                "rank-deficient weights" if severe else "numerically rank-deficient weights",
                f"{len(deficient)} weight matrices are rank-deficient, e.g. {w.path}: rank "
                f"{w.rank} of {w.full_rank} (smallest/largest singular value "
                f"{_g(w.sv_ratio)}). A {w.rows - w.rank}-dimensional subspace of its input is "
                "mapped to zero, and whatever the input holds there is lost",
                "use a random or orthogonal init; zero and constant inits have rank 0 and 1"
                if severe
                else "a singular value just under float32's rank tolerance is common in "
                "random square matrices; orthogonal gives a perfectly conditioned start",
            )
        )
    order = {s: i for i, s in enumerate(reversed(SEVERITIES))}
    return tuple(sorted(out, key=lambda f: order[f.severity]))


@dataclasses.dataclass(frozen=True)
class HealthReport:
    """Records and findings of one model on one batch. ``str(report)`` is the printed table.

    Attributes:
      activations, gradients, weights: the records from :func:`activation_stats`,
        :func:`gradient_stats` and :func:`weight_stats`. Gradients are empty without a
        loss.
      findings: most severe first.
      thresholds: the ones used.
    """

    activations: tuple[ActivationRecord, ...]
    gradients: tuple[GradientRecord, ...]
    weights: tuple[WeightRecord, ...]
    findings: tuple[Finding, ...]
    thresholds: Thresholds

    @property
    def status(self) -> str:
        """``"ok"`` when there are no warnings or errors, else the worst severity."""
        worst = max((SEVERITIES.index(f.severity) for f in self.findings), default=0)
        return "ok" if worst == 0 else SEVERITIES[worst]

    @property
    def codes(self) -> set[str]:
        """The codes of all findings."""
        return {f.code for f in self.findings}

    @property
    def linear(self) -> tuple[ActivationRecord, ...]:
        """The linear layers' records (embeddings included), in execution order."""
        return tuple(r for r in self.activations if r.kind == "linear")

    @property
    def profile(self) -> tuple[ActivationRecord, ...]:
        """The layers findings compare across depth; see :func:`depth_profile`."""
        return depth_profile(self.activations)

    def verdict(self) -> str:
        """One line: ``ok`` or the warnings and errors' summaries."""
        problems = [f.summary for f in self.findings if f.severity != "info"]
        return "ok: signal kept alive" if not problems else "; ".join(problems)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per linear layer joining its output, the activation after it, its weight.

        Keys: ``layer`` (depth), ``path``, ``std``, ``grad_rms``, ``activation`` and
        ``source`` (the nonlinearity after it and where it came from: ``"layer"``,
        ``"declared"``, ``"inferred"``), ``act_std``, ``zero``, ``dead``, ``saturated``,
        ``weight``, ``gain``, ``rank``, ``full_rank``, ``dup_cols``, ``dup_rows``,
        ``grad_ratio`` (``||g|| / ||W||`` of that weight).
        """
        weights = {w.path.rpartition("/")[0]: w for w in reversed(self.weights)}
        grads = {g.path: g for g in self.gradients}
        out = []
        for r in self.linear:
            # The activation right after a linear layer is the one it feeds.
            nxt = self.activations[r.index + 1] if r.index + 1 < len(self.activations) else None
            after = nxt if nxt is not None and nxt.kind == "activation" else None
            unit = after or r
            act_std = after.std if after is not None else r.activated_std
            zero = after.zero_fraction if after is not None else r.activated_zero_fraction
            w = weights.get(r.path)
            g = grads.get(w.path) if w is not None else None
            out.append(
                {
                    "layer": r.depth,
                    "path": r.path,
                    "std": r.std,
                    "grad_rms": r.grad_rms,
                    "activation": unit.activation,
                    "source": unit.activation_source,
                    "act_std": act_std,
                    "zero": zero,
                    "dead": unit.dead_fraction,
                    "saturated": unit.saturated_fraction,
                    "weight": None if w is None else w.path,
                    "gain": None if w is None else w.gain,
                    "rank": None if w is None else w.rank,
                    "full_rank": None if w is None else w.full_rank,
                    "dup_cols": None if w is None else w.duplicate_cols,
                    "dup_rows": None if w is None else w.duplicate_rows,
                    "grad_ratio": None if g is None else g.ratio,
                }
            )
        return out

    def table(self) -> str:
        """The per-layer table: one row per linear layer."""
        headers = [
            "#",
            "layer",
            "std",
            "grad rms",
            "nonlinearity",
            "act std",
            "zeros",
            "dead",
            "satur.",
            "w gain",
            "rank",
            "dup c/r",
            "|g|/|w|",
        ]
        rows = [
            [
                str(r["layer"]),
                r["path"],
                _g(r["std"]),
                _g(r["grad_rms"]),
                "-" if r["activation"] is None else f"{r['activation']} ({r['source']})",
                _g(r["act_std"]),
                _pct(r["zero"]),
                _pct(r["dead"]),
                _pct(r["saturated"]),
                _g(r["gain"]),
                "-" if r["rank"] is None else f"{r['rank']}/{r['full_rank']}",
                "-" if r["dup_cols"] is None else f"{r['dup_cols']}/{r['dup_rows']}",
                _g(r["grad_ratio"]),
            ]
            for r in self.rows()
        ]
        right = [i for i in range(2, len(headers)) if headers[i] != "nonlinearity"]
        return format_table(headers, rows, right=right)

    def __str__(self) -> str:
        lines = [self.table(), ""]
        lines += [str(f) for f in self.findings] or ["no findings: the signal is kept alive"]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain data: lists of dicts for the records and findings, and the thresholds."""
        return dataclasses.asdict(self)


@jax.jit(static_argnums=(0, 1, 2, 3, 4))
def _report_pass(spec, gradients, level, duplicate_tol, layouts, dynamic, x, labels):
    capture = probe.run(spec, dynamic, x, labels, gradients=gradients)
    acts = activation_records(capture, level)
    grads = gradient_records(capture) if gradients else records.pack(GradientRecord, [])
    weights = weight_records(capture.params, duplicate_tol, capture.modules, layouts=layouts)
    return acts, grads, weights


def health_report(
    model: Any,
    x: Any,
    labels: Any = None,
    *,
    variables: Any = None,
    activation: str | Callable[[jax.Array], jax.Array] | None = None,
    loss_fn: Callable[[Any, Any], jax.Array] | None = None,
    thresholds: Thresholds | None = None,
    call_kwargs: Mapping[str, Any] | None = None,
    structure: Any = None,
) -> HealthReport:
    """Activations, gradients and weights of a model on a batch, in one jitted pass, and findings.

    Findings cover:

    * the forward signal (std of each linear output) and the backward signal (RMS of the
      gradient reaching it), first layer against last: vanishing or exploding;
    * saturated tanh/sigmoid units and dead ReLU units;
    * weights with repeated rows or columns (symmetry not broken) or a rank deficit;
    * NaN/inf, and layers whose output is constant over the batch.

    Each finding explains the measurement and suggests a fix, using the nonlinearity and
    the weights' measured ``std * sqrt(fan_in)``. The thresholds are in
    :class:`Thresholds`. The arguments are those of :func:`activation_stats`. Without
    ``labels`` or ``loss_fn`` there is no backward pass and no gradient findings. With
    ``structure=fi.model_structure(model, x)`` the weights are the model's kernels on
    their true fan axes (see :func:`weight_stats`), so Einsum and attention kernels
    get the right ``std * sqrt(fan_in)``.

    Example:
      >>> from flaxinit.diagnostics import digits, health_report
      >>> from flaxinit.models import MLP
      >>> x, y = digits(256)
      >>> model = MLP(features=(64,) * 20, kernel_init=glorot_uniform())
      >>> report = health_report(model, x, y, variables=model.init(jax.random.key(0), x))
      >>> report.status, sorted(report.codes)
      ('error', ['vanishing_activations', 'vanishing_gradients'])
    """
    th = thresholds or Thresholds()
    spec, dynamic = probe.prepare(
        model, variables, activation=activation, loss_fn=loss_fn, call_kwargs=call_kwargs
    )
    gradients = probe.has_loss(probe.unwrap(spec), labels)
    with probe.blas_single_threaded():
        packed = _report_pass(
            spec,
            gradients,
            th.saturation_level,
            th.duplicate_tol,
            structure_layouts(structure),
            dynamic,
            x,
            labels,
        )
        acts, grads, weights = (records.unpack(p) for p in packed)
    return HealthReport(
        tuple(acts), tuple(grads), tuple(weights), findings(acts, grads, weights, th), th
    )
