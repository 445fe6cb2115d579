"""muP: hyperparameter transfer across width (and depth) for unmodified Flax models.

Tune on a small model, train the big one with the same learning rate and init scale
(Yang et al. 2022, *Tensor Programs V*, arXiv:2203.03466). flaxinit reads which
axes grow from the same model at a base width, so the model's code is unchanged::

    base = base_model.init(key, x)                           # the model at the tuned width
    params = fi.apply_rules(params, fi.mup.rules(params, base), key=key)
    tx = optax.chain(optax.adam(lr), fi.mup.scale_updates(params, base))

* :func:`base_shapes`: which axes are infinite and each leaf's kind (input, hidden,
  output, vector, finite), as microsoft/mup's ``set_base_shapes``;
* :func:`rules`: muP's init as rules for :func:`flaxinit.apply_rules`;
* :func:`scale_updates`: muP's per-leaf learning rates as an optax transform
  (:func:`learning_rate_multipliers` and :func:`update_labels` for
  ``optax.multi_transform``);
* :func:`parametrize`: both, per leaf, with the reasons, as a table;
* :func:`coord_check`: microsoft/mup's coordinate check, as data and a plot.

The formulation (TP-V Table 3 relative to the base width, forward multipliers moved
into init and learning rate by the abc-symmetry, depth by Depth-muP or CompleteP)
is written out in :mod:`flaxinit.mup.parametrization`.
"""

# The module is not named coord_check: importing a submodule binds its name on the package,
# which would hide the function (pytest's importlib mode does so when collecting doctests).
from flaxinit.mup.coordinate_check import CoordCheck, coord_check
from flaxinit.mup.parametrization import (
    LeafParametrization,
    Parametrization,
    RescaleRMS,
    learning_rate_multipliers,
    parametrize,
    rules,
    scale_updates,
    update_labels,
)
from flaxinit.mup.shapes import KINDS, BaseShapes, LeafShape, base_shapes

__all__ = [
    "KINDS",
    "BaseShapes",
    "CoordCheck",
    "LeafParametrization",
    "LeafShape",
    "Parametrization",
    "RescaleRMS",
    "base_shapes",
    "coord_check",
    "learning_rate_multipliers",
    "parametrize",
    "rules",
    "scale_updates",
    "update_labels",
]
