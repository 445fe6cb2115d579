"""The initializer catalogue: pure ``(key, shape, dtype, out_sharding) -> Array`` functions.

Each one drops into ``kernel_init=``/``bias_init=`` of ``flax.linen`` and
``flax.nnx`` modules. Names shared with ``jax.nn.initializers`` take jax's arguments
and, in float32, give jax's values; ``xavier_*``/``kaiming_*``/``trunc_normal`` follow
``torch.nn.init`` semantics with Flax's ``(..., in, out)`` fan layout.
"""

from flaxinit.initializers._core import Initializer
from flaxinit.initializers.basic import (
    constant,
    normal,
    ones,
    trunc_normal,
    truncated_normal,
    truncated_std,
    uniform,
    uniform_range,
    zeros,
)
from flaxinit.initializers.combinators import blockwise, scaled, stacked
from flaxinit.initializers.fans import calculate_gain, compute_fans
from flaxinit.initializers.orthogonal import delta_orthogonal, orthogonal
from flaxinit.initializers.structured import dirac, identity, sparse
from flaxinit.initializers.variance_scaling import (
    glorot_normal,
    glorot_uniform,
    he_normal,
    he_uniform,
    kaiming_normal,
    kaiming_uniform,
    lecun_normal,
    lecun_uniform,
    variance_scaling,
    xavier_normal,
    xavier_uniform,
)

__all__ = [
    "Initializer",
    "blockwise",
    "calculate_gain",
    "compute_fans",
    "constant",
    "delta_orthogonal",
    "dirac",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "identity",
    "kaiming_normal",
    "kaiming_uniform",
    "lecun_normal",
    "lecun_uniform",
    "normal",
    "ones",
    "orthogonal",
    "scaled",
    "sparse",
    "stacked",
    "trunc_normal",
    "truncated_normal",
    "truncated_std",
    "uniform",
    "uniform_range",
    "variance_scaling",
    "xavier_normal",
    "xavier_uniform",
    "zeros",
]
