"""An LSTM sequence classifier, Linen and NNX, over any of Flax's LSTM cells.

``num_layers`` recurrent layers (``nn.RNN``/``nnx.RNN``), the last step's output into a
``head``. Parameter layouts (what the ``lstm`` recipe targets):

* Linen ``nn.LSTMCell`` and ``nn.OptimizedLSTMCell`` (same tree): ``rnn_i/cell/`` with
  input kernels ``ii``, ``if``, ``ig``, ``io`` ``(in, H)`` (no bias) and recurrent
  ``hi``, ``hf``, ``hg``, ``ho`` ``(H, H)`` with biases;
* NNX ``nnx.LSTMCell``: ``rnn/i/cell/`` the same, the input forget gate named ``if_``;
* NNX ``nnx.OptimizedLSTMCell``: fused ``dense_i/kernel`` ``(in, 4H)`` and
  ``dense_h/kernel`` ``(H, 4H)``, ``dense_h/bias`` ``(4H,)``, gates in order i, f, g, o.
"""

from __future__ import annotations

import flax.linen as nn
import jax
from flax import nnx

__all__ = ["CELLS", "LSTMClassifier", "NNXLSTMClassifier"]

CELLS = ("lstm", "optimized")


def _check(cell: str) -> None:
    if cell not in CELLS:
        raise ValueError(f"LSTMClassifier: cell must be one of {CELLS}, got cell={cell!r}")


class LSTMClassifier(nn.Module):
    """An LSTM classifier (Linen): ``cell`` is ``"lstm"`` (``nn.LSTMCell``) or
    ``"optimized"`` (``nn.OptimizedLSTMCell``).

    Example:
      >>> from flaxinit.models import LSTMClassifier
      >>> init = LSTMClassifier(hidden=8).init
      >>> shapes = jax.eval_shape(init, jax.random.key(0), jnp.ones((1, 5, 3)))
      >>> shapes["params"]["rnn_0"]["cell"]["hf"]["bias"].shape
      (8,)
    """

    hidden: int = 16
    num_layers: int = 1
    num_classes: int = 4
    cell: str = "optimized"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _check(self.cell)
        cls = nn.OptimizedLSTMCell if self.cell == "optimized" else nn.LSTMCell
        for i in range(self.num_layers):
            x = nn.RNN(cls(self.hidden, parent=None), name=f"rnn_{i}")(x)
        return nn.Dense(self.num_classes, name="head")(x[:, -1])


class NNXLSTMClassifier(nnx.Module):
    """The LSTM classifier of :class:`LSTMClassifier`, in NNX: ``cell`` is ``"lstm"``
    (``nnx.LSTMCell``) or ``"optimized"`` (``nnx.OptimizedLSTMCell``, fused gates).

    Example:
      >>> from flax import nnx
      >>> from flaxinit.models import NNXLSTMClassifier
      >>> model = nnx.eval_shape(lambda: NNXLSTMClassifier(3, hidden=8, rngs=nnx.Rngs(0)))
      >>> model.rnn[0].cell.dense_h.kernel.shape
      (8, 32)
    """

    def __init__(
        self,
        in_features: int,
        hidden: int = 16,
        num_layers: int = 1,
        num_classes: int = 4,
        cell: str = "optimized",
        *,
        rngs: nnx.Rngs,
    ):
        _check(cell)
        cls = nnx.OptimizedLSTMCell if cell == "optimized" else nnx.LSTMCell
        sizes = [in_features] + [hidden] * num_layers
        self.rnn = nnx.List(
            [nnx.RNN(cls(sizes[i], hidden, rngs=rngs), rngs=False) for i in range(num_layers)]
        )
        self.head = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        # The RNNs hold no RNG state (rngs=False): the zero carry gets a throwaway stream.
        for layer in self.rnn:
            x = layer(x, rngs=nnx.Rngs(carry=0))
        return self.head(x[:, -1])
