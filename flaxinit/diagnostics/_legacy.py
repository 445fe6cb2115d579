"""The built-in models that ``flaxinit.diagnostics`` exported before the zoo served the
diagnostics: their old signatures, building the :mod:`flaxinit.models` equivalent.

Reached only through the deprecated names ``flaxinit.diagnostics.MLP``, ``CNN``, ``GPT``
and ``NNXMLP`` (one release); remove with them.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from flaxinit import models


def MLP(depth=30, width=256, activation="relu", num_classes=10, kernel_init=None) -> Any:
    """``depth`` hidden layers of ``width``: :class:`flaxinit.models.MLP`."""
    return models.MLP((width,) * depth, num_classes, activation=activation, kernel_init=kernel_init)


def CNN(depth=6, width=32, activation="relu", num_classes=10, kernel_init=None) -> Any:
    """``depth`` conv layers of ``width`` channels: :class:`flaxinit.models.ConvNet`."""
    return models.ConvNet((width,) * depth, num_classes, activation, kernel_init)


def GPT(
    vocab_size=17, depth=2, width=64, num_heads=4, max_len=64, activation="gelu", kernel_init=None
) -> Any:
    """``depth`` blocks of ``width``: :class:`flaxinit.models.GPT`."""
    return models.GPT(
        vocab_size,
        max_len,
        width,
        depth,
        num_heads,
        activation=activation,
        kernel_init=kernel_init,
    )


def NNXMLP(
    in_features, depth=30, width=256, activation="relu", num_classes=10, kernel_init=None, *, rngs
) -> nnx.Module:
    """``depth`` hidden layers of ``width``: :class:`flaxinit.models.NNXMLP`."""
    features = (width,) * depth
    return models.NNXMLP(
        in_features,
        features,
        num_classes,
        activation=activation,
        kernel_init=kernel_init,
        rngs=rngs,
    )
