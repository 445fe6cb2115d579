"""Diagnostics: an initialization's health before training, per layer, with plots.

``health_report(model, x, labels, variables=...)`` runs a Linen or NNX model once on a
batch, forward and backward, inside one ``jax.jit``. It measures every layer's
activations, every parameter's gradient and every weight matrix's rank and symmetry. It
then reports vanishing or exploding signals, saturated or dead units, unbroken symmetry
and rank-deficient weights, each with an explanation and a suggested fix.
``python -m flaxinit.doctor`` does this on built-in models and plots it. The models
are :mod:`flaxinit.models`'s (``flaxinit.diagnostics.MLP``, ``CNN``, ``GPT`` and
``NNXMLP`` are deprecated: they build the zoo's ``MLP``, ``ConvNet``, ``GPT``, ``NNXMLP``).
"""

import importlib

from flaxinit import _deprecation
from flaxinit.diagnostics.activations import (
    ActivationRecord,
    activation_stats,
    activation_values,
)
from flaxinit.diagnostics.data import digit_tokens, digits
from flaxinit.diagnostics.gradients import GradientRecord, gradient_stats
from flaxinit.diagnostics.plots import plot_activation_histograms, plot_depth_profiles
from flaxinit.diagnostics.probe import (
    Activation,
    NNXActivation,
    Nonlinearity,
    default_loss,
    nonlinearity,
)
from flaxinit.diagnostics.report import Finding, HealthReport, Thresholds, findings, health_report
from flaxinit.diagnostics.weights import WeightRecord, weight_stats

__all__ = [
    "Activation",
    "ActivationRecord",
    "Finding",
    "GradientRecord",
    "HealthReport",
    "NNXActivation",
    "Nonlinearity",
    "Thresholds",
    "WeightRecord",
    "activation_stats",
    "activation_values",
    "default_loss",
    "digit_tokens",
    "digits",
    "findings",
    "gradient_stats",
    "health_report",
    "nonlinearity",
    "plot_activation_histograms",
    "plot_depth_profiles",
    "weight_stats",
]


# The old classes build the zoo's model: the same layers, but zoo parameter names
# (hidden_i, conv_i, head) and no Activation layers (the nonlinearity is read from the jaxpr).
_ZOO = (
    "flaxinit.models.{} (the model it now builds: its parameter paths are the zoo's, "
    "hidden_i/conv_i/head instead of Dense_i/Conv_i)"
)


def _old_model(name: str):
    """Loads the deprecated name's builder (old signature, zoo model) on first use."""

    def load():
        return getattr(importlib.import_module("flaxinit.diagnostics._legacy"), name)

    return load


__getattr__ = _deprecation.module_getattr(
    "flaxinit.diagnostics",
    {
        "MLP": (_ZOO.format("MLP"), _old_model("MLP")),
        "CNN": (_ZOO.format("ConvNet"), _old_model("CNN")),
        "GPT": (_ZOO.format("GPT"), _old_model("GPT")),
        "NNXMLP": (_ZOO.format("NNXMLP"), _old_model("NNXMLP")),
    },
)
