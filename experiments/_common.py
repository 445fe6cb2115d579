"""Shared machinery of the experiments: configurations, results, training loops, data, models.

An experiment is a module ``experiments/<name>.py`` with

* ``CLAIM`` (what the literature says), ``SOURCE`` (who says it),
* ``CONFIGS = {"tiny": {...}, "quick": {...}, "full": {...}}``: ``tiny`` is the smoke
  test's (seconds), ``quick`` runs on 2 CPU cores (the whole set in under 10 minutes),
  ``full`` is sized for a GPU,
* ``run(config: Config) -> Result``: measures, then states each criterion with its
  verdict computed from the measured numbers (:class:`Check`).

:func:`run_experiment` times it and writes ``<out>/<name>/result.json`` (every number),
the PNG plots and ``summary.md``.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib
import inspect
import json
import math
import pathlib
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import flaxinit as fi
from flaxinit.diagnostics import digits

MODES = ("tiny", "quick", "full")


# ---------------------------------------------------------------------------------------
# Configurations and results
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Config:
    """One run of one experiment: its mode's parameters, the seed count and where to write."""

    name: str
    mode: str
    params: dict[str, Any]
    seeds: int
    out_dir: pathlib.Path
    progress: bool = False

    def __getitem__(self, key: str) -> Any:
        return self.params[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)


@dataclasses.dataclass
class Check:
    """One criterion of a claim, decided from the measured numbers."""

    criterion: str
    held: bool
    measured: str


@dataclasses.dataclass
class Result:
    """What an experiment found. ``numbers`` holds every number it measured (JSON-able)."""

    name: str
    claim: str
    source: str
    mode: str
    seeds: int
    checks: list[Check]
    headline: str
    numbers: dict[str, Any]
    plots: list[str]
    notes: str = ""
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def verdict(self) -> str:
        """``held`` if every check held, ``did not hold`` if none did, else ``partly held``."""
        held = [c.held for c in self.checks]
        if held and all(held):
            return "held"
        if not any(held):
            return "did not hold"
        return "partly held"


def result(
    config: Config,
    *,
    checks: Sequence[Check],
    headline: str,
    numbers: Mapping[str, Any],
    plots: Sequence[str],
    notes: str = "",
) -> Result:
    """A :class:`Result` for ``config`` with the experiment module's ``CLAIM`` and ``SOURCE``."""
    module = load(config.name)
    return Result(
        name=config.name,
        claim=module.CLAIM,
        source=module.SOURCE,
        mode=config.mode,
        seeds=config.seeds,
        checks=list(checks),
        headline=headline,
        numbers=dict(numbers),
        plots=list(plots),
        notes=notes,
        params=dict(config.params),
    )


def jsonable(x: Any) -> Any:
    """``x`` as plain JSON: arrays to (nested) lists, non-finite floats to strings."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (jax.Array, np.ndarray)):
        return jsonable(np.asarray(x).tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer, int)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        x = float(x)
        if math.isnan(x):
            return "NaN"
        if math.isinf(x):
            return "Infinity" if x > 0 else "-Infinity"
        return x
    if x is None or isinstance(x, str):
        return x
    if isinstance(x, pathlib.Path):
        return str(x)
    return repr(x)


def environment() -> dict[str, Any]:
    """Versions and devices, recorded with every result."""
    import flax

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "flaxinit": fi.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "machine": platform.machine(),
        "date": datetime.date.today().isoformat(),
    }


def write_result(res: Result, out_dir: pathlib.Path) -> None:
    """Writes ``result.json`` and ``summary.md`` (the plots are already there)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "name": res.name,
        "claim": res.claim,
        "source": res.source,
        "verdict": res.verdict,
        "headline": res.headline,
        "mode": res.mode,
        "seeds": res.seeds,
        "params": res.params,
        "checks": [dataclasses.asdict(c) for c in res.checks],
        "numbers": res.numbers,
        "plots": res.plots,
        "notes": res.notes,
        "wall_s": res.wall_s,
        "environment": environment(),
    }
    (out_dir / "result.json").write_text(json.dumps(jsonable(payload), indent=1) + "\n")
    (out_dir / "summary.md").write_text(summary_markdown(res))


def summary_markdown(res: Result) -> str:
    """The human-readable summary: claim, source, criteria with verdicts, plots."""
    lines = [
        f"# {res.name}: the claim {res.verdict}",
        "",
        f"**Claim.** {res.claim}",
        "",
        f"**Source.** {res.source}",
        "",
        f"**Finding.** {res.headline}",
        "",
        "| criterion | held | measured |",
        "|---|---|---|",
    ]
    for c in res.checks:
        lines.append(f"| {c.criterion} | {'yes' if c.held else 'no'} | {c.measured} |")
    lines += [""]
    if res.notes:
        lines += [f"**Notes.** {res.notes}", ""]
    lines += [f"![{p}]({p})" for p in res.plots]
    settings = ", ".join(f"{k}={v}" for k, v in res.params.items())
    lines += [
        "",
        f"Configuration `{res.mode}` ({res.seeds} seed(s)): {settings}.",
        f"Wall time {res.wall_s:.1f} s on {jax.default_backend()} "
        f"({jax.device_count()} device(s)), {datetime.date.today().isoformat()}. "
        "Every number is in `result.json`.",
        "",
    ]
    return "\n".join(lines)


def load(name: str) -> Any:
    """The experiment module ``experiments.<name>``."""
    from experiments import EXPERIMENTS

    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f"experiments.{name}")


def make_config(
    name: str,
    mode: str,
    out_root: str | pathlib.Path,
    *,
    seeds: int | None = None,
    progress: bool = False,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """The configuration of experiment ``name`` in ``mode``, writing under ``out_root/name``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    module = load(name)
    params = dict(module.CONFIGS[mode])
    params.update(overrides or {})
    n = int(seeds if seeds is not None else params.pop("seeds", 1))
    params.pop("seeds", None)
    if n < 1:
        raise ValueError(f"seeds must be >= 1, got {n}")
    return Config(name, mode, params, n, pathlib.Path(out_root) / name, progress)


def run_experiment(config: Config) -> Result:
    """Runs one experiment, timing it, and writes its results to ``config.out_dir``."""
    module = load(config.name)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    res = module.run(config)
    res.wall_s = time.perf_counter() - start
    write_result(res, config.out_dir)
    return res


def results_table(results: Sequence[Result]) -> str:
    """A plain-text table: name, verdict, headline number, wall time."""
    rows = [("experiment", "verdict", "headline", "wall s")]
    rows += [(r.name, r.verdict, r.headline, f"{r.wall_s:.1f}") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    out = []
    for i, row in enumerate(rows):
        cells = [row[j].ljust(widths[j]) for j in range(3)] + [row[3].rjust(6)]
        out.append("  ".join(cells))
        if i == 0:
            out.append("  ".join("-" * w for w in [*widths, 6]))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------


def figure(nrows: int = 1, ncols: int = 1, *, width: float = 5.0, height: float = 3.6):
    """A matplotlib figure (Agg backend) and a 2-D array of its axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    return fig, axes


def save_figure(fig: Any, config: Config, filename: str) -> str:
    """Saves ``fig`` as ``config.out_dir/filename`` and closes it; returns the file name."""
    import matplotlib.pyplot as plt

    config.out_dir.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(config.out_dir / filename, dpi=100)
    plt.close(fig)
    return filename


def plot_band(ax: Any, curves: np.ndarray, label: str, *, x: Any = None, **kwargs: Any) -> None:
    """Plots the mean of ``curves`` (seeds x points) with a min-max band."""
    curves = np.atleast_2d(np.asarray(curves, dtype=np.float64))
    x = np.arange(curves.shape[1]) if x is None else np.asarray(x)
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(curves, axis=0) if np.isfinite(curves).any() else curves[0]
    (line,) = ax.plot(x, mean, label=label, **kwargs)
    if curves.shape[0] > 1:
        lo, hi = np.nanmin(curves, axis=0), np.nanmax(curves, axis=0)
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------

# loss_fn(params, state, key) -> (loss, (state, metrics)); ``state`` carries anything that
# is not trained (BatchNorm statistics), ``metrics`` a dict of scalars logged every step.
LossFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]]


def _chunks(steps: int, most: int = 10) -> int:
    """The largest number of equal chunks, at most ``most``, that ``steps`` splits into."""
    return max(n for n in range(1, min(most, steps) + 1) if steps % n == 0)


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on stderr, or a do-nothing stand-in when disabled (not a terminal)."""
    if enabled:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=False, file=sys.stderr)

    class _Quiet:
        def update(self, n: int = 1) -> None:
            pass

        def close(self) -> None:
            pass

    return _Quiet()


def train(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    params: Any,
    key: jax.Array,
    steps: int,
    *,
    state: Any = None,
    batched: bool = False,
    sequential: bool = False,
    desc: str = "train",
    progress: bool = False,
) -> dict[str, Any]:
    """Trains ``params`` for ``steps`` optimizer steps, as jitted ``lax.scan`` chunks.

    With ``batched=True`` every leaf of ``params``, ``state`` and ``key`` has a leading
    axis (seeds, arms of a comparison) and the whole loop is ``jax.vmap``-ed over it: the
    members train independently, in one program. With ``sequential=True`` as well, the
    members run one after another through one compiled (unbatched) loop instead: the same
    numbers up to float rounding, and faster where XLA's CPU backend batches an op badly
    (convolutions become grouped convolutions under ``vmap``). The step key of step ``t``
    is ``fold_in(key, t)``, so results do not depend on the chunking.

    Returns:
      ``{"params", "state", "loss", **metrics}``; ``loss[..., t]`` is the loss at the
      parameters *before* step ``t`` (``loss[..., 0]`` is the loss at initialization).
    """

    def step(carry, t):
        params, opt_state, state, key = carry
        (loss, (state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, state, jax.random.fold_in(key, t)
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state, state, key), {"loss": loss, **metrics}

    def chunk(carry, ts):
        return jax.lax.scan(step, carry, ts)

    if batched and sequential:
        jitted = jax.jit(chunk)
        n = jax.tree.leaves(params)[0].shape[0]
        runs = [
            _train_loop(
                jitted, tx.init, jax.tree.map(lambda a, i=i: a[i], (params, state, key)),
                steps, f"{desc} [{i + 1}/{n}]", progress,
            )
            for i in range(n)
        ]  # fmt: skip
        out = {k: np.stack([r[k] for r in runs]) for k in runs[0] if k not in ("params", "state")}
        out["params"] = stack([r["params"] for r in runs])
        out["state"] = None if state is None else stack([r["state"] for r in runs])
        return out
    init_opt = tx.init
    if batched:
        chunk = jax.vmap(chunk, in_axes=(0, None))
        init_opt = jax.vmap(tx.init)
    return _train_loop(jax.jit(chunk), init_opt, (params, state, key), steps, desc, progress)


def _train_loop(chunk, init_opt, members, steps, desc, progress) -> dict[str, Any]:
    """Runs the jitted ``chunk`` over ``steps`` in equal chunks (see :func:`train`)."""
    params, state, key = members
    carry = (params, init_opt(params), state, key)
    n = _chunks(steps)
    bar = progress_bar(steps, desc, progress)
    logs = []
    for i in range(n):
        ts = jnp.arange(i * steps // n, (i + 1) * steps // n)
        carry, log = chunk(carry, ts)
        logs.append(jax.device_get(log))
        bar.update(len(ts))
    bar.close()
    out = {k: np.concatenate([log[k] for log in logs], axis=-1) for k in logs[0]}
    out["params"], out["state"] = carry[0], carry[2]
    return out


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy with integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return (jnp.argmax(logits, -1) == labels).mean()


def classifier_loss(model: nn.Module, x: Any, y: Any, batch_size: int | None = None) -> LossFn:
    """A :data:`LossFn` for a stateless Linen classifier: cross-entropy on ``(x, y)``.

    With ``batch_size`` each step draws a minibatch (with replacement) from the step key;
    else the whole set is one batch.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)

    def loss_fn(params, state, key):
        xb, yb = x, y
        if batch_size is not None:
            idx = jax.random.randint(key, (batch_size,), 0, x.shape[0])
            xb, yb = x[idx], y[idx]
        logits = model.apply({"params": params}, xb)
        return cross_entropy(logits, yb), (state, {"accuracy": accuracy(logits, yb)})

    return loss_fn


def evaluate(model: nn.Module, params: Any, x: Any, y: Any, *, batched: bool = False) -> dict:
    """Cross-entropy and accuracy of a stateless classifier (per member when ``batched``),
    and ``diverged``: whether any logit is NaN or infinite (the accuracy of such a net is
    argmax over NaNs, not a result)."""

    def one(p):
        logits = model.apply({"params": p}, x)
        return {
            "loss": cross_entropy(logits, y),
            "accuracy": accuracy(logits, y),
            "diverged": ~jnp.all(jnp.isfinite(logits)),
        }

    fn = jax.vmap(one) if batched else one
    return jax.device_get(jax.jit(fn)(params))


def leaf_path(keypath: Sequence[Any]) -> str:
    """A key path as ``a/b/c`` (dict keys, attribute names, indices)."""
    parts = []
    for k in keypath:
        parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
    return "/".join(parts)


def draw_kernels(params: Any, init: Callable, key: jax.Array, *, stacked: str = "layers") -> Any:
    """Every ``kernel`` leaf of ``params`` re-drawn with the initializer ``init``, eagerly.

    Leaves under a top-level ``stacked`` entry (an ``nn.scan`` stack) are drawn slice by
    slice with ``fi.initializers.layerwise(init)``, as the unrolled layers would be. Each
    leaf's key is ``fold_in(key, crc32(path))``. Biases and other leaves are kept.
    (Equivalent to ``fi.apply_rules(params, [("kernel", init)])`` with ``per_layer`` on the
    stack; done by hand because that call compiles a program per call, which is slow here.)
    """
    import zlib

    def draw(keypath, leaf):
        path = leaf_path(keypath)
        if not path.endswith("kernel"):
            return leaf
        k = jax.random.fold_in(key, zlib.crc32(path.encode()))
        if path.split("/")[0] == stacked:
            return fi.initializers.layerwise(init)(k, leaf.shape, leaf.dtype)
        return init(k, leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, params)


def smooth(curve: np.ndarray, window: int) -> np.ndarray:
    """A trailing moving average along the last axis (the first points average what exists)."""
    curve = np.asarray(curve, dtype=np.float64)
    c = np.cumsum(curve, axis=-1)
    out = c.copy()
    out[..., window:] = c[..., window:] - c[..., :-window]
    counts = np.minimum(np.arange(1, curve.shape[-1] + 1), window)
    return out / counts


def stack(trees: Sequence[Any]) -> Any:
    """Stacks pytrees of equal structure along a new leading axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def steps_to(curve: np.ndarray, target: float) -> int | None:
    """The first step at which ``curve <= target`` (``None`` if never)."""
    hits = np.nonzero(np.asarray(curve) <= target)[0]
    return int(hits[0]) if hits.size else None


def tail_mean(curve: np.ndarray, fraction: float = 0.1) -> float:
    """The mean of the last ``fraction`` of a curve (along its last axis, then all)."""
    curve = np.asarray(curve, dtype=np.float64)
    n = max(1, round(curve.shape[-1] * fraction))
    return float(np.mean(curve[..., -n:]))


# ---------------------------------------------------------------------------------------
# Data: all of it ships with a package (no download) and is deterministic.
# ---------------------------------------------------------------------------------------


def digits_split(test_size: int = 297, seed: int = 0) -> tuple[np.ndarray, ...]:
    """scikit-learn's bundled digits (standardized, via flaxinit), split ``train | test``.

    Returns ``(x_train, y_train, x_test, y_test)``: 1500 and 297 images by default.
    """
    x, y = digits(seed=seed)
    return x[test_size:], y[test_size:], x[:test_size], y[:test_size]


def mnist1d(num_samples: int = 5000, seed: int = 42) -> dict[str, np.ndarray]:
    """MNIST-1D (Greydanus 2020), generated locally from its templates by the ``mnist1d``
    package (nothing is downloaded). The defaults are the published dataset's: 5000
    samples of length 40, 80% train, seed 42.

    Returns ``{"x", "y", "x_test", "y_test"}`` as float32 / int32.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    d = make_dataset(args)
    return {
        "x": d["x"].astype(np.float32),
        "y": d["y"].astype(np.int32),
        "x_test": d["x_test"].astype(np.float32),
        "y_test": d["y_test"].astype(np.int32),
    }


def adding_problem(key: jax.Array, batch: int, length: int) -> tuple[jax.Array, jax.Array]:
    """Hochreiter & Schmidhuber's adding problem: ``x`` is ``(batch, length, 2)``, values in
    U[0, 1) and a marker channel with one mark in each half; ``y`` is the sum of the two
    marked values. Predicting the mean (1.0) scores MSE 1/6.
    """
    kv, ki, kj = jax.random.split(key, 3)
    values = jax.random.uniform(kv, (batch, length))
    i = jax.random.randint(ki, (batch,), 0, length // 2)
    j = jax.random.randint(kj, (batch,), length // 2, length)
    marks = jax.nn.one_hot(i, length) + jax.nn.one_hot(j, length)
    return jnp.stack([values, marks], axis=-1), (values * marks).sum(-1)


def copy_task(
    key: jax.Array, batch: int, delay: int, *, num_symbols: int = 8, copy_len: int = 10
) -> tuple[jax.Array, jax.Array]:
    """The copy (memory) task: ``copy_len`` random symbols, ``delay`` blanks, a delimiter,
    then the model must output the symbols. Tokens: 0 blank, 1..num_symbols symbols,
    num_symbols + 1 delimiter. Returns ``(tokens, targets)``, both ``(batch, length)``
    with ``length = 2 * copy_len + delay``; only the last ``copy_len`` targets count.
    Guessing scores cross-entropy ``log(num_symbols)``.
    """
    symbols = jax.random.randint(key, (batch, copy_len), 1, num_symbols + 1)
    blanks = jnp.zeros((batch, delay - 1), jnp.int32)
    delim = jnp.full((batch, 1), num_symbols + 1, jnp.int32)
    tail = jnp.zeros((batch, copy_len), jnp.int32)
    tokens = jnp.concatenate([symbols, blanks, delim, tail], axis=1)
    targets = jnp.concatenate([jnp.zeros((batch, copy_len + delay), jnp.int32), symbols], 1)
    return tokens, targets


# Standard-library modules whose docstrings make the character corpus: English prose that
# ships with every Python, so nothing is downloaded. Fixed order, for determinism.
CORPUS_MODULES = (
    "this",
    "argparse",
    "collections",
    "functools",
    "itertools",
    "json",
    "os",
    "pathlib",
    "re",
    "string",
    "textwrap",
    "typing",
    "dataclasses",
    "inspect",
    "subprocess",
    "threading",
    "logging",
    "unittest",
    "datetime",
    "decimal",
    "fractions",
    "statistics",
    "random",
    "heapq",
    "bisect",
    "contextlib",
    "abc",
    "enum",
    "csv",
    "shutil",
    "tempfile",
    "difflib",
    "pprint",
    "zipfile",
    "tarfile",
    "email.message",
    "http.client",
    "urllib.parse",
    "asyncio.tasks",
    "concurrent.futures",
)


def _zen() -> str:
    import codecs
    import this  # prints the Zen once, on first import; the text is rot13 in this.s

    return codecs.decode(this.s, "rot13")


def char_corpus(max_chars: int | None = None) -> tuple[str, dict[str, Any]]:
    """A character corpus from text that ships with Python: the Zen of Python and the
    docstrings of :data:`CORPUS_MODULES` and their public members, in a fixed order,
    restricted to printable ASCII and newlines.

    Returns ``(text, info)``; ``info`` records the Python version, size and a SHA-256, since
    the docstrings change between Python versions.
    """
    import contextlib
    import io

    parts = []
    for name in CORPUS_MODULES:
        if name == "this":
            with contextlib.redirect_stdout(io.StringIO()):
                parts.append(_zen())
            continue
        module = importlib.import_module(name)
        parts.append(inspect.getdoc(module) or "")
        for member in sorted(getattr(module, "__all__", None) or dir(module)):
            if member.startswith("_"):
                continue
            obj = getattr(module, member, None)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                parts.append(inspect.getdoc(obj) or "")
    text = "\n\n".join(p for p in parts if p)
    text = "".join(c if (32 <= ord(c) < 127 or c == "\n") else " " for c in text)
    if max_chars is not None:
        text = text[:max_chars]
    info = {
        "python": platform.python_version(),
        "chars": len(text),
        "sha256": hashlib.sha256(text.encode()).hexdigest()[:16],
        "modules": list(CORPUS_MODULES),
    }
    return text, info


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "linear": lambda x: x,
}


class _Hidden(nn.Module):
    """One hidden layer: Dense -> [BatchNorm] -> activation (maxout: max over pieces)."""

    width: int
    activation: str
    kernel_init: Callable
    use_bias: bool
    batchnorm: bool
    pieces: int
    train: bool

    @nn.compact
    def __call__(self, x: jax.Array, _: Any = None) -> tuple[jax.Array, None]:
        maxout = self.activation == "maxout"
        features = self.width * (self.pieces if maxout else 1)
        x = nn.Dense(features, use_bias=self.use_bias, kernel_init=self.kernel_init)(x)
        if self.batchnorm:
            x = nn.BatchNorm(use_running_average=not self.train)(x)
        if maxout:
            x = x.reshape(*x.shape[:-1], self.width, self.pieces).max(-1)
        else:
            x = ACTIVATIONS[self.activation](x)
        return x, None


class DeepMLP(nn.Module):
    """``depth`` hidden layers (Dense -> [BatchNorm] -> activation) of ``width``, then ``head``.

    The first hidden layer is ``first``; the other ``depth - 1`` are one ``nn.scan``
    stack ``layers`` (leaves ``(depth - 1, ...)``), so tracing and compiling cost the same
    at any depth. Flax calls ``kernel_init`` with each layer's own shape, so every layer
    is drawn as in an unrolled model. ``activation="maxout"`` uses maxout units of
    ``pieces`` linear pieces (Goodfellow et al. 2013).
    """

    depth: int
    width: int
    num_outputs: int = 10
    activation: str = "relu"
    kernel_init: Callable = fi.lecun_normal()
    head_init: Callable | None = None
    use_bias: bool = True
    batchnorm: bool = False
    pieces: int = 2

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        args = (
            self.width,
            self.activation,
            self.kernel_init,
            self.use_bias,
            self.batchnorm,
            self.pieces,
            train,
        )
        x, _ = _Hidden(*args, name="first")(x)
        if self.depth > 1:
            stack = nn.scan(
                _Hidden,
                variable_axes={"params": 0, "batch_stats": 0, "intermediates": 0},
                split_rngs={"params": True},
                length=self.depth - 1,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = stack(*args, name="layers")(x, None)
        head_init = self.head_init or self.kernel_init
        return nn.Dense(self.num_outputs, kernel_init=head_init, name="head")(x)


def fmt(x: float | None, digits_: int = 3) -> str:
    """A short number for tables: ``None`` -> ``never``, else ``digits_`` significant digits."""
    if x is None:
        return "never"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if not np.isfinite(x):
        return str(x)
    return f"{x:.{digits_}g}"
