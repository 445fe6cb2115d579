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

from flaxinit.initializers import blockwise, orthogonal, xavier_uniform
from flaxinit.recipes._common import Patterns, Rules, check_float, rules_for
from flaxinit.rules import at, fill

__all__ = ["lstm"]

_GATES = 4


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

    Example:
      >>> from flaxinit.recipes import lstm
      >>> params = {"hf": {"bias": jnp.zeros(4)}, "hi": {"bias": jnp.ones(4)}}
      >>> params = apply_rules(params, lstm(), strict=False)
      >>> params["hf"]["bias"], params["hi"]["bias"]
      (Array([1., 1., 1., 1.], dtype=float32), Array([0., 0., 0., 0.], dtype=float32))
    """
    r = "lstm"
    forget_bias = check_float(forget_bias, r, "forget_bias")
    if not isinstance(fused, bool):
        raise TypeError(f"{r}: fused must be a bool, got fused={fused!r}")
    if fused:
        defaults = ("dense_i/kernel", "dense_h/kernel", "dense_h/bias", "dense_h/bias")
        xavier = blockwise(xavier_uniform(), _GATES)
        ortho = blockwise(orthogonal(), _GATES)
        forget = at(_forget_slice, fill(forget_bias))
    else:
        defaults = (
            r"re:(?:.*/)?i[ifgo]_?/kernel",
            r"re:(?:.*/)?h[ifgo]/kernel",
            r"re:(?:.*/)?h[ifgo]/bias",
            "hf/bias",
        )
        xavier, ortho, forget = xavier_uniform(), orthogonal(), fill(forget_bias)
    given = (input_kernels, recurrent_kernels, biases, forget_biases)
    ins, recs, bs, fs = (d if g is None else g for g, d in zip(given, defaults, strict=True))
    return [
        *rules_for(ins, xavier, r, "input_kernels"),
        *rules_for(recs, ortho, r, "recurrent_kernels"),
        *rules_for(bs, fill(0.0), r, "biases"),
        *rules_for(fs, forget, r, "forget_biases"),
    ]
