"""DCGAN recipes: N(0, 0.02) weights and N(1, 0.02) norm scales; a He discriminator.

Defaults name any kernel (``kernel``), norm modules (``bn*``, ``BatchNorm_*``, ...)
and every bias; apply a recipe to the generator's and the discriminator's variables
(or to one tree holding both, narrowing the patterns, e.g. ``discriminator/**/kernel``).
"""

from __future__ import annotations

from flaxinit._checks import check_number
from flaxinit.initializers import kaiming_normal, normal
from flaxinit.recipes._common import (
    BIAS,
    KERNEL,
    NORM_SCALE,
    Patterns,
    Rules,
    rules_for,
)
from flaxinit.rules import fill

__all__ = ["dcgan", "dcgan_he"]


def dcgan(
    *,
    std: float = 0.02,
    kernels: Patterns = KERNEL,
    norm_scales: Patterns = NORM_SCALE,
    biases: Patterns = BIAS,
) -> Rules:
    """DCGAN: every kernel N(0, 0.02), norm scale N(1, 0.02), biases (norm shifts
    included) 0; for generator and discriminator alike.

    "All weights were initialized from a zero-centered Normal distribution with standard
    deviation 0.02" (the paper); the PyTorch reference draws BatchNorm weights from
    N(1, 0.02).

    Sources: Radford, Metz, Chintala 2015 (arXiv:1511.06434) §4; pytorch/examples
    ``dcgan/main.py`` (``weights_init``).

    Example:
      >>> from flaxinit.models import Generator
      >>> from flaxinit.recipes import dcgan
      >>> shapes = jax.eval_shape(Generator().init, jax.random.key(0), jnp.ones((1, 16)))
      >>> explain_rules(shapes, dcgan()).by_path()["params/bn1/scale"].actions
      ('reinit(normal(stddev=0.02, mean=1))',)
    """
    r = "dcgan"
    std = check_number(std, r, "std", at_least=0)
    return [
        *rules_for(kernels, normal(std), r, "kernels"),
        *rules_for(norm_scales, normal(std, mean=1.0), r, "norm_scales"),
        *rules_for(biases, fill(0.0), r, "biases"),
    ]


def dcgan_he(
    *,
    negative_slope: float = 0.2,
    norm_std: float = 0.02,
    kernels: Patterns = KERNEL,
    norm_scales: Patterns = NORM_SCALE,
    biases: Patterns = BIAS,
) -> Rules:
    """The DCGAN variant with a He discriminator: for the discriminator's variables,
    with :func:`dcgan` for the generator's.

    Discriminator kernels: He normal for LeakyReLU(``negative_slope``),
    N(0, gain² / fan_in) with ``gain² = 2 / (1 + slope²)`` (``kaiming_normal_(a=0.2,
    nonlinearity="leaky_relu")``, plain normal; fan_in = in_channels · kh · kw); norm
    scale N(1, 0.02); biases 0. The generator keeps N(0, 0.02).

    Sources: He et al. 2015 (the leaky-ReLU gain); Radford et al. 2015 (the rest).

    Example:
      >>> from flaxinit.models import Discriminator
      >>> from flaxinit.recipes import dcgan_he
      >>> shapes = jax.eval_shape(Discriminator().init, jax.random.key(0), jnp.ones((1, 16, 16, 1)))
      >>> explain_rules(shapes, dcgan_he()).untouched
      ('batch_stats/bn2/mean', 'batch_stats/bn2/var')
    """
    r = "dcgan_he"
    slope = check_number(negative_slope, r, "negative_slope", at_least=0)
    norm_std = check_number(norm_std, r, "norm_std", at_least=0)
    he = kaiming_normal(a=slope, mode="fan_in", nonlinearity="leaky_relu")
    return [
        *rules_for(kernels, he, r, "kernels"),
        *rules_for(norm_scales, normal(norm_std, mean=1.0), r, "norm_scales"),
        *rules_for(biases, fill(0.0), r, "biases"),
    ]
