"""Reproductions of the literature's initialization claims, run with flaxinit's public API.

``python -m experiments list`` names them; ``python -m experiments run NAME --quick`` runs
one and writes ``results/NAME/`` (``result.json`` with every number, PNG plots and a
``summary.md`` saying whether the claim held). See ``experiments/README.md``.

This package imports nothing heavy at import time, so the runner can set ``XLA_FLAGS``
(simulated devices) before JAX is first imported.
"""

# In the order they are run and listed: the module names under experiments/.
EXPERIMENTS = (
    "symmetry",
    "depth_signal",
    "he_vs_xavier",
    "orthogonal_depth",
    "lsuv",
    "batchnorm",
    "residual_zero_init",
    "transformer_depth",
    "lstm_forget_bias",
    "prior_bias",
    "sparse_init",
    "mnist1d",
    "sharded_sweep",
    "mutransfer",
)

__all__ = ["EXPERIMENTS"]
