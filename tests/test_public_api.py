"""The top-level surface (issue 18): exactly the names a user types daily, every one of
them resolving; every name that left the top level or was renamed still works for one
release, warns with its replacement's name, and gives the same object or the same draws;
``import flaxinit`` loads neither matplotlib nor the lazily loaded subpackages."""

from __future__ import annotations

import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest

import flaxinit as fi
import flaxinit.initializers as fii

TOP_LEVEL = [
    # The initializer catalogue.
    "Initializer",
    "constant",
    "zeros",
    "ones",
    "normal",
    "uniform",
    "uniform_between",
    "truncated_normal",
    "truncated_normal_between",
    "variance_scaling",
    "glorot_normal",
    "glorot_uniform",
    "xavier_normal",
    "xavier_uniform",
    "he_normal",
    "he_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "lecun_normal",
    "lecun_uniform",
    "orthogonal",
    "delta_orthogonal",
    "sparse",
    "identity",
    "dirac",
    "calculate_gain",
    "compute_fans",
    # Rules and their actions.
    "apply_rules",
    "apply_rules_",
    "explain_rules",
    "RuleContext",
    "scale",
    "fill",
    "reinit",
    "at",
    "per_layer",
    "merge_pretrained",
    # The procedures.
    "lsuv",
    "health_report",
    "doctor",
    "model_structure",
    "init_sharded",
    "nnx_init_sharded",
    # Subpackages.
    "initializers",
    "rules",
    "recipes",
    "mup",
    "diagnostics",
    "structure",
    "sharding",
    "models",
    "inspection",
]

# Old top-level name -> (the replacement as the warning names it, how to reach it).
MOVED = {
    "ActivationRecord": "flaxinit.diagnostics.ActivationRecord",
    "Finding": "flaxinit.diagnostics.Finding",
    "GradientRecord": "flaxinit.diagnostics.GradientRecord",
    "HealthReport": "flaxinit.diagnostics.HealthReport",
    "Thresholds": "flaxinit.diagnostics.Thresholds",
    "WeightRecord": "flaxinit.diagnostics.WeightRecord",
    "activation_stats": "flaxinit.diagnostics.activation_stats",
    "gradient_stats": "flaxinit.diagnostics.gradient_stats",
    "weight_stats": "flaxinit.diagnostics.weight_stats",
    "DoctorError": "flaxinit.diagnostics.doctor.DoctorError",
    "DoctorReport": "flaxinit.diagnostics.doctor.DoctorReport",
    "LSUVReport": "flaxinit.lsuv.LSUVReport",
    "LayerFit": "flaxinit.lsuv.LayerFit",
    "RulesReport": "flaxinit.rules.RulesReport",
    "rule_labels": "flaxinit.rules.rule_labels",
    "rule_mask": "flaxinit.rules.rule_mask",
    "LeafStructure": "flaxinit.structure.LeafStructure",
    "ModelStructure": "flaxinit.structure.ModelStructure",
    "partition_specs": "flaxinit.sharding.partition_specs",
    "scaled": "flaxinit.initializers.scaled",
    "blockwise": "flaxinit.initializers.blockwise",
    "stacked": "flaxinit.initializers.layerwise",
    "truncated_std": "flaxinit.initializers.truncated_normal_std",
    "uniform_range": "flaxinit.uniform_between",
}

RENAMED_IN_INITIALIZERS = {
    "uniform_range": "uniform_between",
    "truncated_std": "truncated_normal_std",
    "stacked": "layerwise",
}


def _resolve(dotted: str):
    import importlib

    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _old(module, name):
    """``module.<name>`` and the warnings its access raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = getattr(module, name)
    return value, [w for w in caught if w.category is DeprecationWarning]


def test_all_is_exactly_the_daily_surface():
    assert sorted(fi.__all__) == sorted(TOP_LEVEL)
    assert len(set(TOP_LEVEL)) == len(TOP_LEVEL)


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_every_top_level_name_resolves_without_warning(name):
    value, caught = _old(fi, name)
    assert value is not None
    assert not caught, name
    assert name in dir(fi)


@pytest.mark.parametrize("name", sorted(MOVED))
def test_moved_names_warn_with_their_new_home_and_are_the_same_object(name):
    value, caught = _old(fi, name)
    assert len(caught) == 1, name
    message = str(caught[0].message)
    assert f"flaxinit.{name} is deprecated" in message
    assert f"use {MOVED[name]}" in message
    assert value is _resolve(MOVED[name])
    assert caught[0].filename == __file__  # attributed to the caller, not to flaxinit
    assert name not in fi.__all__


@pytest.mark.parametrize(("old", "new"), sorted(RENAMED_IN_INITIALIZERS.items()))
def test_renamed_initializers_warn_in_their_subpackage(old, new):
    value, caught = _old(fii, old)
    assert len(caught) == 1
    assert f"use flaxinit.initializers.{new}" in str(caught[0].message)
    assert value is getattr(fii, new)


@pytest.mark.parametrize("module", [fi, fii], ids=["flaxinit", "flaxinit.initializers"])
def test_trunc_normal_keeps_its_bounds_keywords_and_draws(module):
    old, caught = _old(module, "trunc_normal")
    assert len(caught) == 1
    assert "truncated_normal_between" in str(caught[0].message)
    key = jax.random.key(3)
    drawn = old(mean=0.1, std=0.5, a=-0.4, b=0.6)(key, (64,))
    expected = fi.truncated_normal_between(mean=0.1, std=0.5, minval=-0.4, maxval=0.6)(key, (64,))
    np.testing.assert_array_equal(drawn, expected)
    # Its own argument names in its errors.
    with pytest.raises(ValueError, match=r"trunc_normal: b must be > a=1, got b=0\.0"):
        old(a=1.0, b=0.0)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        _ = fi.nonexistent


def test_import_loads_neither_matplotlib_nor_the_lazy_subpackages():
    code = (
        "import sys, flaxinit as fi\n"
        "lazy = ['matplotlib', 'flaxinit.diagnostics', 'flaxinit.mup', 'flaxinit.recipes',"
        " 'flaxinit.sharding', 'flaxinit.models']\n"
        "print([m for m in lazy if m in sys.modules])\n"
        "from flaxinit import health_report, init_sharded\n"
        "print(fi.recipes.__name__, 'flaxinit.diagnostics' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == "[]", out
    assert out[1] == "flaxinit.recipes True", out


def test_no_lazy_submodule_is_named_like_a_name_its_package_exports():
    # Importing a submodule binds its name on the package. pytest's importlib mode does
    # that when it collects the doctests of a module not loaded yet (the lazily loaded
    # subpackages), which replaced fi.mup.coord_check by its module. The initializers
    # load with flaxinit itself, before any collection; the CLI module flaxinit.doctor
    # is callable on purpose.
    import importlib
    import pkgutil

    clashes = []
    for info in pkgutil.walk_packages(fi.__path__, "flaxinit."):
        if not info.ispkg or info.name == "flaxinit.initializers":
            continue
        package = importlib.import_module(info.name)
        for sub in pkgutil.iter_modules(package.__path__):
            if sub.name in getattr(package, "__all__", ()):
                clashes.append(f"{info.name}.{sub.name}")
    for sub in pkgutil.iter_modules(fi.__path__):
        if sub.name in fi.__all__ and not sub.ispkg and sub.name not in ("doctor", "inspection"):
            clashes.append(f"flaxinit.{sub.name}")
    assert clashes == []
