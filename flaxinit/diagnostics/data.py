"""The bundled real dataset: scikit-learn's handwritten digits (1797 images, 8x8, 10 classes).

``sklearn.datasets.load_digits`` reads a file shipped inside scikit-learn, so nothing is
downloaded. scikit-learn is the ``flaxinit[data]`` extra.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.cache
def _load() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the bundled dataset needs scikit-learn: pip install 'flaxinit[data]'"
        ) from error
    digits = load_digits()
    return digits.data.astype(np.float32), digits.target.astype(np.int32)


def _subset(n: int | None, seed: int) -> np.ndarray:
    total = len(_load()[1])
    order = np.random.default_rng(seed).permutation(total)
    if n is None:
        return order
    if not 0 < n <= total:
        raise ValueError(f"digits: n must be in 1..{total}, got {n}")
    return order[:n]


def digits(n: int | None = None, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: ``n`` digit images as float32 ``(n, 64)`` standardized pixels, int32 labels.

    Each pixel is standardized over all 1797 images, ``(x - mean) / std``. The 3 pixels
    that are 0 in every image have std 0; they are divided by 1 and stay 0. The images are
    a random subset, drawn with ``numpy.random.default_rng(seed)``. ``n=None`` takes all
    of them.

    Example:
      >>> from flaxinit.diagnostics import digits
      >>> x, y = digits(512)
      >>> x.shape, y.shape, int(y.max())
      ((512, 64), (512,), 9)
    """
    x, y = _load()
    mean, std = x.mean(axis=0), x.std(axis=0)
    x = (x - mean) / np.where(std > 0, std, 1.0)
    idx = _subset(n, seed)
    return x[idx].astype(np.float32), y[idx]


def digit_tokens(n: int | None = None, *, seed: int = 0) -> np.ndarray:
    """The same images as sequences of 64 integer tokens: their pixel intensities, 0..16.

    This is a language-modelling task for the built-in GPT: predict the next pixel from
    the ones before it, in raster order.

    Example:
      >>> from flaxinit.diagnostics import digit_tokens
      >>> t = digit_tokens(4)
      >>> t.shape, t.dtype, int(t.max()) <= 16
      ((4, 64), dtype('int32'), True)
    """
    x, _ = _load()
    return x[_subset(n, seed)].astype(np.int32)
