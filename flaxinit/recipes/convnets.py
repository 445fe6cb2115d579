"""Convolutional and residual-network recipes: He init, zero-init residuals, Fixup, ReZero.

Defaults name the zoo's :class:`~flaxinit.models.ResNet` (``conv1``/``conv2``,
``bn1``/``bn2`` per block, ``alpha`` ReZero gates, Fixup's ``bias1a ... bias2b`` and
``scale``) and Linen's auto-names (``Conv_0``, ``BatchNorm_1``). Rules here act on each
leaf whole: a stacked (``nn.scan``) conv needs ``per_layer``.
"""

from __future__ import annotations

from flaxinit._checks import check_choice, check_int
from flaxinit.initializers import kaiming_normal, variance_scaling
from flaxinit.recipes._common import (
    NORM_BIAS,
    NORM_SCALE,
    Patterns,
    Rules,
    norm_gain,
    rules_for,
)
from flaxinit.rules import fill
from flaxinit.rules.patterns import role_pattern

__all__ = ["CONV_KERNEL", "fixup", "he_cnn", "rezero", "zero_init_residual"]

# Conv kernels: a module named Conv_0 / ConvTranspose_0 / conv1 / conv_stem / deconv1.
CONV_KERNEL = role_pattern("conv", r"re:(?:.*/)?(?:[Cc]onv|deconv)[^/]*/kernel")


def he_cnn(
    *,
    mode: str = "fan_out",
    convs: Patterns = CONV_KERNEL,
    norm_scales: Patterns = NORM_SCALE,
    norm_biases: Patterns = NORM_BIAS,
) -> Rules:
    """He init for ReLU CNNs: conv kernels N(0, 2 / fan), norm scale 1 and shift 0.

    ``fan = fan_out = out_channels · kh · kw`` by default (torchvision's ResNet,
    ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``); ``mode="fan_in"`` gives
    the paper's forward-pass form. A plain (untruncated) normal.

    Sources: He et al. 2015, "Delving Deep into Rectifiers"; torchvision
    ``torchvision/models/resnet.py`` (``ResNet.__init__``).

    Args:
      mode: ``"fan_out"`` or ``"fan_in"``.
      convs, norm_scales, norm_biases: the patterns.

    Example:
      >>> from flaxinit.models import ResNet
      >>> from flaxinit.recipes import he_cnn
      >>> init = ResNet(num_blocks=1, width=8).init
      >>> shapes = jax.eval_shape(init, jax.random.key(0), jnp.ones((1, 8, 8, 3)))
      >>> report = explain_rules(shapes, he_cnn())
      >>> [p for p in report.untouched if p.startswith("params")]
      ['params/head/bias', 'params/head/kernel']
    """
    r = "he_cnn"
    check_choice(mode, r, "mode", ("fan_in", "fan_out"))
    return [
        *rules_for(convs, kaiming_normal(mode=mode, nonlinearity="relu"), r, "convs"),
        *rules_for(norm_scales, norm_gain(1.0), r, "norm_scales"),
        *rules_for(norm_biases, fill(0.0), r, "norm_biases"),
    ]


LAST_NORM_SCALE = role_pattern("norm_scale:residual", "bn2/scale")


def zero_init_residual(*, last_norms: Patterns = LAST_NORM_SCALE) -> Rules:
    """Zero-γ: the scale of the last norm of every residual block is 0, so each block
    starts as the identity.

    With ``structure=`` the default selects the norm scales whose output reaches a
    residual add directly (``@norm_scale:residual``: the last norm of each branch,
    never a projection shortcut's, whatever the names). Without it, the default names
    the zoo's basic block (``bn2``); torchvision's ``Bottleneck`` is ``bn3``, and
    Flax's ImageNet example ``ResNetBlock_*/BatchNorm_1/scale`` or
    ``BottleneckResNetBlock_*/BatchNorm_2/scale``.

    Sources: Goyal et al. 2017, "Accurate, Large Minibatch SGD" §5.1; torchvision
    ``resnet.py`` (``zero_init_residual``); google/flax ``examples/imagenet/models.py``.

    Example:
      >>> from flaxinit.models import ResNet
      >>> from flaxinit.recipes import he_cnn, zero_init_residual
      >>> init = ResNet(num_blocks=1, width=8).init
      >>> shapes = jax.eval_shape(init, jax.random.key(0), jnp.ones((1, 8, 8, 3)))
      >>> report = explain_rules(shapes, he_cnn() + zero_init_residual()).by_path()
      >>> report["params/blocks_0/bn2/scale"].actions  # the branch's last norm: gain 0
      ('fill(1 - norm_offset)', 'fill(0 - norm_offset)')
      >>> report["params/blocks_0/bn1/scale"].actions
      ('fill(1 - norm_offset)',)
    """
    return rules_for(last_norms, norm_gain(0.0), "zero_init_residual", "last_norms")


def fixup(
    num_blocks: int,
    m: int = 2,
    *,
    branch: Patterns = None,
    last: Patterns = None,
    head: Patterns = "head/*",
    scalar_biases: Patterns = r"re:(?:.*/)?bias[0-9]+[ab]",
    multipliers: Patterns = "scale",
) -> Rules:
    """Fixup: residual networks without normalization (Zhang, Dauphin, Ma 2019).

    With ``L = num_blocks`` residual branches of ``m`` layers each:

    * the first ``m - 1`` layers of each branch: He normal times ``L^(-1/(2m-2))``,
      i.e. N(0, 2 / fan_out · L^(-1/(m-1))) as in the reference code (fan_out He);
    * the last layer of each branch: 0; the classification layer (kernel and bias): 0;
    * the scalar biases (``bias1a``, ``bias1b``, ...): 0; the scalar multipliers: 1.

    CIFAR ResNet-110 (54 branches, m = 2): ×0.136; ResNet-50 (16 blocks, m = 3): ×0.5.

    Sources: Zhang et al. 2019, "Fixup Initialization" (ICLR); hongyi-zhang/Fixup
    ``cifar/models/fixup_resnet_cifar.py``, ``imagenet/models/fixup_resnet_imagenet.py``.

    Args:
      num_blocks: ``L``.
      m: layers per branch, >= 2.
      branch: the first ``m - 1`` layers' kernels (default ``conv1/kernel`` ...
        ``conv{m-1}/kernel``).
      last: the last layer's kernel (default ``conv{m}/kernel``).
      head, scalar_biases, multipliers: the patterns.

    Example:
      >>> from flax import nnx
      >>> from flaxinit.models import NNXResNet
      >>> from flaxinit.recipes import fixup
      >>> make = lambda: NNXResNet(3, 2, width=8, norm=False, gate="fixup", rngs=nnx.Rngs(0))
      >>> report = explain_rules(nnx.eval_shape(make), fixup(num_blocks=2)).by_path()
      >>> report["blocks/1/conv1/kernel"].actions
      ('reinit(he_normal(fan_out) × 2^(-1/2) = ×0.7071)',)
    """
    r = "fixup"
    L = check_int(num_blocks, r, "num_blocks", at_least=1)
    m = check_int(m, r, "m", at_least=2)
    if branch is None:
        branch = tuple(f"conv{i}/kernel" for i in range(1, m))
    if last is None:
        last = f"conv{m}/kernel"
    factor = L ** (-1 / (2 * m - 2))
    init = variance_scaling(2.0 * factor**2, "fan_out", "normal")
    init.__name__ = f"he_normal(fan_out) × {L}^(-1/{2 * m - 2}) = ×{factor:.4g}"
    return [
        *rules_for(branch, init, r, "branch"),
        *rules_for(last, fill(0.0), r, "last"),
        *rules_for(head, fill(0.0), r, "head"),
        *rules_for(scalar_biases, fill(0.0), r, "scalar_biases"),
        *rules_for(multipliers, fill(1.0), r, "multipliers"),
    ]


def rezero(*, gates: Patterns = "alpha") -> Rules:
    """ReZero: every residual gate α in ``x + α F(x)`` starts at 0.

    Source: Bachlechner et al. 2021, "ReZero is All You Need" (UAI);
    majumderb/rezero ``rezero/transformer/rztx.py`` (``resweight``). SkipInit (De &
    Smith 2020) is the same with a gate per block.

    Example:
      >>> from flaxinit.recipes import rezero
      >>> tree = {"block_0": {"alpha": jnp.ones(())}, "block_1": {"resweight": jnp.ones(())}}
      >>> tree = apply_rules(tree, rezero(gates=("alpha", "resweight")))
      >>> float(tree["block_0"]["alpha"]), float(tree["block_1"]["resweight"])
      (0.0, 0.0)
    """
    return rules_for(gates, fill(0.0), "rezero", "gates")
