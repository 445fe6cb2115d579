"""Recipes: the field's initialization practices as ready rule sets.

Each recipe is a function returning a plain list of ``(pattern, action)`` rules for
:func:`flaxinit.rules.apply_rules` (and ``apply_rules_``, ``explain_rules``): initialize
a model the ordinary way, then rewrite the parameters the recipe names. Recipes compose
by list concatenation (later rules act on the result of earlier ones)::

    from flaxinit.recipes import gpt2, he_cnn, zero_init_residual
    params = apply_rules(params, gpt2(num_layers=12), key=jax.random.key(0))
    variables = apply_rules(variables, he_cnn() + zero_init_residual(), key=key)
    print(explain_rules(params, gpt2(12)))  # which rule hits which leaf

Every pattern a recipe uses is a keyword argument whose default names the stock Flax
modules and the zoo in :mod:`flaxinit.models`; pass your own names, or ``None`` to drop
a rule (except where a default depends on other arguments, as in ``lstm`` and ``fixup``:
there ``None`` means that default and ``[]`` drops the rule). ``strict=True`` (the
default of ``apply_rules``) raises when a recipe's pattern finds nothing, e.g. ``gpt2``
on a model without attention. Formulas, std conventions and sources are in each
recipe's docstring.

==========================  ======================================================
family                      recipes
==========================  ======================================================
convnets                    ``he_cnn``, ``zero_init_residual``, ``fixup``, ``rezero``
transformers                ``transformer``, ``gpt2``, ``megatron``, ``bert``,
                            ``llama_depth_init``, ``olmo_mitchell``, ``t5``,
                            ``deepnet`` (``deepnorm_constants``), ``small_init``,
                            ``wang_init``, ``vit``
recurrent                   ``lstm``
gan                         ``dcgan``, ``dcgan_he``
output                      ``prior_bias``, ``positive_bias``, ``unit_variance``
==========================  ======================================================
"""

from flaxinit.recipes._common import (
    ATTN_OUT,
    EMBEDDING,
    KEY,
    MLP_IN,
    MLP_OUT,
    NORM_BIAS,
    NORM_SCALE,
    QUERY,
    VALUE,
)
from flaxinit.recipes.convnets import CONV_KERNEL, fixup, he_cnn, rezero, zero_init_residual
from flaxinit.recipes.gan import dcgan, dcgan_he
from flaxinit.recipes.output import positive_bias, prior_bias, unit_variance
from flaxinit.recipes.recurrent import lstm
from flaxinit.recipes.transformers import (
    DeepNormConstants,
    bert,
    deepnet,
    deepnorm_constants,
    gpt2,
    llama_depth_init,
    megatron,
    olmo_mitchell,
    small_init,
    t5,
    transformer,
    vit,
    wang_init,
)

__all__ = [
    "ATTN_OUT",
    "CONV_KERNEL",
    "EMBEDDING",
    "KEY",
    "MLP_IN",
    "MLP_OUT",
    "NORM_BIAS",
    "NORM_SCALE",
    "QUERY",
    "VALUE",
    "DeepNormConstants",
    "bert",
    "dcgan",
    "dcgan_he",
    "deepnet",
    "deepnorm_constants",
    "fixup",
    "gpt2",
    "he_cnn",
    "llama_depth_init",
    "lstm",
    "megatron",
    "olmo_mitchell",
    "positive_bias",
    "prior_bias",
    "rezero",
    "small_init",
    "t5",
    "transformer",
    "unit_variance",
    "vit",
    "wang_init",
    "zero_init_residual",
]
