"""LSTM recipe: Xavier inputs, orthogonal recurrences per gate, forget-gate bias 1.

Flax's LSTM layouts (flax 0.12):

* Linen ``nn.LSTMCell`` and ``nn.OptimizedLSTMCell`` (the same tree): input kernels
  ``ii``, ``if``, ``ig``, ``io`` ``(in, H)`` without bias, recurrent ``hi``, ``hf``,
  ``hg``, ``ho`` ``(H, H)`` with biases; the forget bias is ``hf/bias``;
* NNX ``nnx.LSTMCell``: the same names, the input forget gate ``if_``;
* NNX ``nnx.OptimizedLSTMCell``: fused ``dense_i/kernel`` ``(in, 4H)`` (no bias),
  ``dense_h/kernel`` ``(H, 4H)`` and ``dense_h/bias`` ``(4H,)``, gates i, f, g, o
  along the last axis, so the forget bias is ``dense_h/bias[H:2H]``. NNX's default
  ``orthogonal()`` on the whole ``(H, 4H)`` leaves the gate blocks non-orthogonal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax

from flaxinit._checks import check_bool, check_number
from flaxinit.initializers import blockwise, orthogonal, xavier_uniform
from flaxinit.recipes._common import Patterns, Rules, rules_for
from flaxinit.rules import at, fill
from flaxinit.rules.actions import Action, RuleContext, to_action

__all__ = ["lstm"]

_GATES = 4

# NNX's fused OptimizedLSTMCell is the only stock cell with a ``dense_h/bias``
# (``GRUCell`` and ``SimpleCell`` have ``dense_h`` without a bias): each default
# per-gate pattern also matches it, so that on a fused cell every rule matches and
# the first one raises naming ``fused=True``, instead of strict mode's bare "matched
# no leaf" or, with ``strict=False``, a fused cell left as it was without a word.
_FUSED_MARK = "dense_h/bias"


def _or_fused(per_gate: str) -> str:
    """A per-gate default pattern that also matches a fused cell's ``dense_h/bias``."""
    body = per_gate[3:] if per_gate.startswith("re:") else per_gate
    return rf"re:(?:.*/)?(?:{body.removeprefix('(?:.*/)?')}|{_FUSED_MARK})"


@dataclasses.dataclass(frozen=True, repr=False)
class _PerGate(Action):
    """``action`` on per-gate LSTM leaves; on a fused cell's ``dense_h/bias``, a
    ``ValueError`` naming ``lstm(fused=True)``."""

    action: Action

    @property
    def needs_key(self) -> bool:  # type: ignore[override]
        return self.action.needs_key

    def __repr__(self) -> str:
        return repr(self.action)

    @staticmethod
    def _check(ctx: RuleContext) -> None:
        if ctx.path == _FUSED_MARK or ctx.path.endswith("/" + _FUSED_MARK):
            cell = ctx.path[: -len(_FUSED_MARK)] or "the cell"
            raise ValueError(
                f"lstm(): {ctx.path!r} belongs to NNX's fused OptimizedLSTMCell "
                f"({cell!r}: dense_i/kernel (in, 4H), dense_h/kernel (H, 4H) and "
                "dense_h/bias (4H,), the gates i, f, g, o side by side on the last axis), "
                "and lstm() without fused=True targets per-gate cells: its forget-gate "
                "pattern 'hf/bias' matched no leaf there, and the cell would keep Flax's "
                "init (forget bias 0, one orthogonal matrix across the 4 gates). Use "
                "lstm(fused=True) for this cell (for a model with both kinds of cell, "
                "combine lstm() and lstm(fused=True) with patterns naming each cell)"
            )

    def __call__(self, key: Any, leaf: jax.Array, ctx: RuleContext) -> jax.Array:
        self._check(ctx)
        return self.action(key, leaf, ctx)

    def call_stacked(self, keys: Any, leaf: jax.Array, ctxs: Sequence[RuleContext]) -> jax.Array:
        self._check(ctxs[0])
        return self.action.call_stacked(keys, leaf, ctxs)


def _forget_slice(ctx):
    h = ctx.shape[-1] // _GATES
    return (..., slice(h, 2 * h))


def lstm(
    forget_bias: float = 1.0,
    *,
    fused: bool = False,
    input_kernels: Patterns = None,
    recurrent_kernels: Patterns = None,
    biases: Patterns = None,
    forget_biases: Patterns = None,
) -> Rules:
    """The LSTM init: input kernels Xavier uniform, recurrent kernels orthogonal per
    gate, biases 0, forget-gate bias ``forget_bias``.

    Each gate's input kernel ``(in, H)`` is Xavier uniform, U(-a, a) with
    ``a = sqrt(6 / (in + H))`` (Keras' ``glorot_uniform``); each gate's recurrent
    kernel ``(H, H)`` is a Haar orthogonal matrix (Saxe et al. 2013); the forget gate's
    bias is 1 (Gers et al. 2000; Jozefowicz et al. 2015, which found it closes the gap
    to the GRU; Keras' ``unit_forget_bias=True``). Flax cells have one bias per gate
    (PyTorch has two, ``bias_ih`` + ``bias_hh``: set only one, or the effective bias
    doubles).

    ``fused=False`` (default) targets the per-gate cells: Linen ``LSTMCell`` and
    ``OptimizedLSTMCell``, NNX ``LSTMCell``. ``fused=True`` targets NNX's fused
    ``OptimizedLSTMCell``: the same distribution gate by gate, through
    ``blockwise(..., 4)`` on ``dense_i``/``dense_h`` and ``at[..., H:2H]`` on the bias.
    A rule list cannot see the tree, so the per-gate defaults also match a fused
    cell's ``dense_h/bias`` (the stock cell that has one) and raise ``ValueError``
    there naming ``fused=True``, with ``strict=False`` too.

    Sources: Gers, Schmidhuber, Cummins 2000; Jozefowicz, Zaremba, Sutskever 2015 (ICML);
    Keras ``keras/src/layers/rnn/lstm.py`` (``unit_forget_bias``); flax
    ``flax/linen/recurrent.py``, ``flax/nnx/nn/recurrent.py``.

    Args:
      forget_bias: the forget gate's bias.
      fused: target NNX's fused ``OptimizedLSTMCell`` layout.
      input_kernels: default ``i[ifgo]_?/kernel`` (per gate) or ``dense_i/kernel``.
      recurrent_kernels: default ``h[ifgo]/kernel`` or ``dense_h/kernel``.
      biases: default ``h[ifgo]/bias`` or ``dense_h/bias``.
      forget_biases: default ``hf/bias`` or ``dense_h/bias`` (its ``[H:2H]`` slice).
        Patterns given here are used as they are (no fused-cell check).

    Example:
      >>> from flaxinit.recipes import lstm
      >>> params = {"hf": {"bias": jnp.zeros(4)}, "hi": {"bias": jnp.ones(4)}}
      >>> params = apply_rules(params, lstm(), strict=False)
      >>> params["hf"]["bias"], params["hi"]["bias"]
      (Array([1., 1., 1., 1.], dtype=float32), Array([0., 0., 0., 0.], dtype=float32))
    """
    r = "lstm"
    forget_bias = check_number(forget_bias, r, "forget_bias")
    fused = check_bool(fused, r, "fused")
    if fused:
        defaults = ("dense_i/kernel", "dense_h/kernel", "dense_h/bias", "dense_h/bias")
        xavier = blockwise(xavier_uniform(), _GATES)
        ortho = blockwise(orthogonal(), _GATES)
        forget = at(_forget_slice, fill(forget_bias))
    else:
        # Each default also matches a fused cell's dense_h/bias, to raise there.
        defaults = (
            _or_fused(r"re:(?:.*/)?i[ifgo]_?/kernel"),
            _or_fused(r"re:(?:.*/)?h[ifgo]/kernel"),
            _or_fused(r"re:(?:.*/)?h[ifgo]/bias"),
            _or_fused(r"re:(?:.*/)?hf/bias"),
        )
        xavier, ortho, forget = xavier_uniform(), orthogonal(), fill(forget_bias)
    given = (input_kernels, recurrent_kernels, biases, forget_biases)
    actions = (xavier, ortho, fill(0.0), forget)
    names = ("input_kernels", "recurrent_kernels", "biases", "forget_biases")
    rules: Rules = []
    for pattern, default, action, name in zip(given, defaults, actions, names, strict=True):
        if pattern is None and not fused:
            action = _PerGate(to_action(action))
        rules += rules_for(default if pattern is None else pattern, action, r, name)
    return rules
