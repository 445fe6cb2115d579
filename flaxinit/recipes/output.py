"""Output-layer recipes: biases from class priors, positive biases, unit variances.

Karpathy's "init well" advice and the detection literature: an output bias that
already predicts the base rates removes the first iterations' "hockey stick" loss.
"""

from __future__ import annotations

import math

import numpy as np

from flaxinit._checks import check_bool, check_choice, check_number
from flaxinit.recipes._common import (
    BIAS,
    HEAD_BIAS,
    Patterns,
    Rules,
    as_float_array,
    rules_for,
)
from flaxinit.rules import fill

__all__ = ["positive_bias", "prior_bias", "unit_variance"]

_ACTIVATIONS = ("softmax", "sigmoid")


def prior_bias(
    class_priors: float | list[float] | np.ndarray,
    *,
    activation: str = "softmax",
    bias: Patterns = HEAD_BIAS,
) -> Rules:
    """The output bias that makes the untrained model predict the class priors.

    * ``activation="softmax"``: ``b_c = log p_c`` (softmax is shift-invariant, so any
      constant may be added); the priors must sum to 1;
    * ``activation="sigmoid"`` (independent binary outputs): ``b_c = log(p_c / (1 - p_c))``,
      each ``p_c`` the rate of positives of output ``c``: 90% positives give 2.197,
      RetinaNet's π = 0.01 gives -4.595.

    Every prior must lie in (0, 1). The bias must have one entry per prior (or a single
    prior broadcasts to every output).

    Sources: Lin et al. 2017, "Focal Loss for Dense Object Detection" §3.3 (torchvision
    ``models/detection/retinanet.py``); big_vision ``train.py`` (``init_head_bias``);
    Karpathy 2019, "A Recipe for Training Neural Networks" ("init well").

    Args:
      class_priors: a prior per class (or one prior, for sigmoid).
      activation: ``"softmax"`` or ``"sigmoid"``.
      bias: the output bias pattern.

    Example:
      >>> from flaxinit.recipes import prior_bias
      >>> rules = prior_bias([0.9], activation="sigmoid")
      >>> tree = apply_rules({"head": {"bias": jnp.zeros(1)}}, rules)
      >>> round(float(tree["head"]["bias"][0]), 3)
      2.197
    """
    r = "prior_bias"
    check_choice(activation, r, "activation", _ACTIVATIONS)
    p = as_float_array(class_priors, r, "class_priors")
    if p.size == 0:
        raise ValueError(f"{r}: class_priors is empty")
    if not np.all((p > 0) & (p < 1)):
        raise ValueError(
            f"{r}: every class prior must lie in (0, 1), got class_priors={p.tolist()}"
        )
    if activation == "softmax":
        if p.ndim == 0 or not math.isclose(float(p.sum()), 1.0, abs_tol=1e-5):
            raise ValueError(
                f"{r}: softmax class_priors must be a sequence summing to 1, got sum "
                f"{float(p.sum()):.6g}"
            )
        values = np.log(p)
    else:
        values = np.log(p) - np.log1p(-p)
    return rules_for(bias, fill(values.astype(np.float32)), r, "bias")


def positive_bias(value: float = 0.1, *, biases: Patterns = BIAS) -> Rules:
    """A small positive bias, so ReLU units start active instead of dying early.

    AlexNet initialized the biases of several layers to 1 "to accelerate the early
    stages of learning by providing the ReLUs with positive inputs"; 0.1 is the common
    modern choice (TensorFlow tutorials' ``tf.constant(0.1)``).

    Sources: Krizhevsky, Sutskever, Hinton 2012 §5; Goodfellow, Bengio, Courville,
    *Deep Learning* §8.4 ("setting the bias to 0.1 ... for ReLU").

    Example:
      >>> from flaxinit.recipes import positive_bias
      >>> tree = {"hidden_0": {"bias": jnp.zeros(2)}, "head": {"bias": jnp.zeros(2)}}
      >>> tree = apply_rules(tree, positive_bias(0.1, biases="hidden_*/bias"))
      >>> tree["hidden_0"]["bias"].tolist(), tree["head"]["bias"].tolist()
      ([0.10000000149011612, 0.10000000149011612], [0.0, 0.0])
    """
    value = check_number(value, "positive_bias", "value", above=0)
    return rules_for(biases, fill(value), "positive_bias", "biases")


def unit_variance(*, params: Patterns = "variance", log_space: bool = False) -> Rules:
    """A learned variance (or precision, or temperature) parameter starts at 1 (0 when
    stored as a logarithm).

    A Gaussian likelihood with learned variance (heteroscedastic regression, VAE
    decoders, learned loss weights) starts as the plain squared error: σ² = 1.

    Sources: Kendall & Gal 2017 (learned aleatoric variance, with log σ² = 0 at init);
    Kendall, Gal, Cipolla 2018 (learned task weights).

    Example:
      >>> from flaxinit.recipes import unit_variance
      >>> rules = unit_variance(params="log_var", log_space=True)
      >>> tree = apply_rules({"log_var": jnp.full(3, 0.7)}, rules)
      >>> tree["log_var"].tolist()  # log(1) = 0
      [0.0, 0.0, 0.0]
    """
    log_space = check_bool(log_space, "unit_variance", "log_space")
    return rules_for(params, fill(0.0 if log_space else 1.0), "unit_variance", "params")
