"""flaxinit: neural-network parameter initialization for JAX and Flax.

The top level holds what a user types daily: the initializer catalogue, the rules
(``apply_rules``, ``explain_rules``, ``RuleContext`` and the actions ``scale``, ``fill``,
``reinit``, ``at``, ``per_layer``, ``merge_pretrained``), ``lsuv``, ``health_report``,
``doctor``, ``model_structure``, ``init_sharded``/``nnx_init_sharded`` and the
subpackages. Everything else lives in its subpackage (``flaxinit.diagnostics``,
``flaxinit.initializers``, ...).

``diagnostics``, ``mup``, ``recipes``, ``sharding`` and ``models`` (and the names
taken from them) load on first use (PEP 562), so ``import flaxinit`` costs little more
than ``import jax, flax`` and never loads matplotlib. Names that moved off the
top level keep working for one release, with a ``DeprecationWarning`` naming their new
home.
"""

import importlib
from typing import Any

from flaxinit import initializers, inspection, rules, structure
from flaxinit._deprecation import warn_renamed
from flaxinit.initializers import (
    Initializer,
    calculate_gain,
    compute_fans,
    constant,
    delta_orthogonal,
    dirac,
    glorot_normal,
    glorot_uniform,
    he_normal,
    he_uniform,
    identity,
    kaiming_normal,
    kaiming_uniform,
    lecun_normal,
    lecun_uniform,
    normal,
    ones,
    orthogonal,
    sparse,
    truncated_normal,
    truncated_normal_between,
    uniform,
    uniform_between,
    variance_scaling,
    xavier_normal,
    xavier_uniform,
    zeros,
)
from flaxinit.lsuv import lsuv
from flaxinit.rules import (
    RuleContext,
    apply_rules,
    apply_rules_,
    at,
    explain_rules,
    fill,
    merge_pretrained,
    per_layer,
    reinit,
    scale,
)
from flaxinit.structure import model_structure

__version__ = "0.1.0"

# Loaded on first access: name -> (module, attribute; None for the module itself).
_LAZY: dict[str, tuple[str, str | None]] = {
    "diagnostics": ("flaxinit.diagnostics", None),
    "health_report": ("flaxinit.diagnostics", "health_report"),
    "doctor": ("flaxinit.diagnostics.doctor", "doctor"),
    "mup": ("flaxinit.mup", None),
    "recipes": ("flaxinit.recipes", None),
    "sharding": ("flaxinit.sharding", None),
    "init_sharded": ("flaxinit.sharding", "init_sharded"),
    "nnx_init_sharded": ("flaxinit.sharding", "nnx_init_sharded"),
    "models": ("flaxinit.models", None),
}


def _load(module: str, attribute: str | None) -> Any:
    loaded = importlib.import_module(module)
    return loaded if attribute is None else getattr(loaded, attribute)


def _moved(module: str, name: str) -> tuple[str, Any]:
    """``(dotted new home, loader)`` of ``module.name``, loaded on use."""
    return f"{module}.{name}", lambda: _load(module, name)


# Names that left the top level (issue 18): old name -> (new home, loader).
MOVED: dict[str, tuple[str, Any]] = {
    **{
        name: _moved("flaxinit.diagnostics", name)
        for name in (
            "ActivationRecord",
            "Finding",
            "GradientRecord",
            "HealthReport",
            "Thresholds",
            "WeightRecord",
            "activation_stats",
            "gradient_stats",
            "weight_stats",
        )
    },
    "DoctorError": _moved("flaxinit.diagnostics.doctor", "DoctorError"),
    "DoctorReport": _moved("flaxinit.diagnostics.doctor", "DoctorReport"),
    "LSUVReport": _moved("flaxinit.lsuv", "LSUVReport"),
    "LayerFit": _moved("flaxinit.lsuv", "LayerFit"),
    "RulesReport": _moved("flaxinit.rules", "RulesReport"),
    "rule_labels": _moved("flaxinit.rules", "rule_labels"),
    "rule_mask": _moved("flaxinit.rules", "rule_mask"),
    "LeafStructure": _moved("flaxinit.structure", "LeafStructure"),
    "ModelStructure": _moved("flaxinit.structure", "ModelStructure"),
    "partition_specs": _moved("flaxinit.sharding", "partition_specs"),
    "scaled": _moved("flaxinit.initializers", "scaled"),
    "blockwise": _moved("flaxinit.initializers", "blockwise"),
    "stacked": _moved("flaxinit.initializers", "layerwise"),
    "truncated_std": _moved("flaxinit.initializers", "truncated_normal_std"),
    "uniform_range": ("flaxinit.uniform_between", lambda: uniform_between),
    # The old function keeps its a=/b= keywords while it lasts.
    "trunc_normal": (
        "flaxinit.truncated_normal_between",
        lambda: _load("flaxinit.initializers.basic", "trunc_normal"),
    ),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = _load(*_LAZY[name])
        globals()[name] = value  # later accesses skip __getattr__
        return value
    if name in MOVED:
        new, load = MOVED[name]
        warn_renamed(f"flaxinit.{name}", new)  # attributed to the caller of fi.<name>
        return load()
    raise AttributeError(f"module 'flaxinit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "Initializer",
    "RuleContext",
    "apply_rules",
    "apply_rules_",
    "at",
    "calculate_gain",
    "compute_fans",
    "constant",
    "delta_orthogonal",
    "diagnostics",
    "dirac",
    "doctor",
    "explain_rules",
    "fill",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "health_report",
    "identity",
    "init_sharded",
    "initializers",
    "inspection",
    "kaiming_normal",
    "kaiming_uniform",
    "lecun_normal",
    "lecun_uniform",
    "lsuv",
    "merge_pretrained",
    "model_structure",
    "models",
    "mup",
    "nnx_init_sharded",
    "normal",
    "ones",
    "orthogonal",
    "per_layer",
    "recipes",
    "reinit",
    "rules",
    "scale",
    "sharding",
    "sparse",
    "structure",
    "truncated_normal",
    "truncated_normal_between",
    "uniform",
    "uniform_between",
    "variance_scaling",
    "xavier_normal",
    "xavier_uniform",
    "zeros",
]
