"""The initializer catalogue: pure ``(key, shape, dtype, out_sharding) -> Array`` functions.

Each one drops into ``kernel_init=``/``bias_init=`` of ``flax.linen`` and
``flax.nnx`` modules. Names shared with ``jax.nn.initializers`` take jax's arguments
and, in float32, give jax's values; ``xavier_*``/``kaiming_*``/``uniform_between``/
``truncated_normal_between`` follow ``torch.nn.init`` semantics with Flax's
``(..., in, out)`` fan layout. The combinators (``scaled``, ``layerwise``,
``blockwise``) and ``truncated_normal_std`` live here only, not at the top level.

Renamed (the old names warn for one release): ``uniform_range`` -> ``uniform_between``,
``trunc_normal(mean, std, a, b)`` -> ``truncated_normal_between(mean, std, minval,
maxval)``, ``truncated_std`` -> ``truncated_normal_std``, ``stacked`` -> ``layerwise``.
"""

from flaxinit._deprecation import module_getattr
from flaxinit.initializers._core import Initializer
from flaxinit.initializers.basic import (
    constant,
    normal,
    ones,
    truncated_normal,
    truncated_normal_between,
    truncated_normal_std,
    uniform,
    uniform_between,
    zeros,
)
from flaxinit.initializers.combinators import blockwise, layerwise, scaled
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


def _legacy_trunc_normal():
    from flaxinit.initializers.basic import trunc_normal

    return trunc_normal


# Old name -> (new name, loader). `trunc_normal` keeps its a=/b= keywords while it lasts.
RENAMED = {
    "uniform_range": ("flaxinit.initializers.uniform_between", lambda: uniform_between),
    "trunc_normal": ("flaxinit.initializers.truncated_normal_between", _legacy_trunc_normal),
    "truncated_std": ("flaxinit.initializers.truncated_normal_std", lambda: truncated_normal_std),
    "stacked": ("flaxinit.initializers.layerwise", lambda: layerwise),
}

__getattr__ = module_getattr(__name__, RENAMED)

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
    "layerwise",
    "lecun_normal",
    "lecun_uniform",
    "normal",
    "ones",
    "orthogonal",
    "scaled",
    "sparse",
    "truncated_normal",
    "truncated_normal_between",
    "truncated_normal_std",
    "uniform",
    "uniform_between",
    "variance_scaling",
    "xavier_normal",
    "xavier_uniform",
    "zeros",
]
