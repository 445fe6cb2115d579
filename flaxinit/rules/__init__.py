r"""Path rules: rewrite parameter trees after ``init`` with glob patterns.

Initialize a model the ordinary way, then say in a few lines how parts of its
parameter tree must differ::

    import math
    from flaxinit.initializers import he_normal, normal
    from flaxinit.rules import apply_rules, explain_rules, fill, scale, at

    rules = [
        ("Conv_*/kernel", he_normal()),                       # re-draw
        ("**/attn/out/kernel",
         scale(lambda ctx: 1 / math.sqrt(2 * ctx.num_layers))),  # depth scaling
        ("*/hf/bias", fill(1.0)),                             # LSTM forget gate
        ("*/dense_h/bias", at[..., 16:32](fill(1.0))),        # fused NNX LSTM, H=16
    ]
    print(explain_rules(variables, rules))                    # what would happen
    variables = apply_rules(variables, rules, key=jax.random.key(0))

Paths
-----
A leaf's path is its keys joined by ``/``: dict keys, attribute names and list
indices (as numbers). Flax boxes (``nn.Partitioned``, ``nn.LogicallyPartitioned``)
and NNX ``Variable``s are invisible (no trailing ``value``) and are rebuilt around
the new values with their metadata. Examples: Linen
``params/block_3/attn/out/kernel``, NNX ``blocks/3/attn/out/kernel``, Haiku
``mlp/~/linear_0/w``, Equinox ``layers/0/weight``. ``tree_paths(tree)`` lists them.

Pattern language
----------------
A pattern is split into segments at ``/``:

===================  ===============================================================
``*``                any characters within one segment (``Conv_*`` hits ``Conv_0``)
``**``               zero or more whole segments; only as a whole segment
``?``                one character within a segment
``[abc]`` ``[0-9]``  one character of a set or range; ``[!...]`` negates
``\*``               a literal ``*`` (any character after ``\`` is literal)
leading ``/``        anchors the pattern at the root
``re:...``           a Python regular expression, ``fullmatch``-ed on the whole path
===================  ===============================================================

A pattern ``@role`` selects the leaves the model's computation gives that role
(``@mlp_out``, ``@attention_out``, ``@norm_scale``; groups ``@kernel``, ``@attention``,
``@mlp``, ``@norm``, ``@residual_output``; ``:residual`` narrows to leaves whose output
reaches a residual add, ``@norm_scale:residual``). It needs ``structure=
fi.model_structure(model, *inputs)`` in ``apply_rules``/``explain_rules``/
``rule_labels``/``rule_mask``, and raises without it; see :mod:`flaxinit.structure`.

A glob without a leading ``/`` matches any *suffix* of the path on a segment
boundary, as if it began with ``**/``. Wildcards never cross a ``/``. Examples:

* ``kernel`` hits ``params/dense/kernel``, not ``params/dense/kernel_2``.
* ``*/attn/out/kernel`` hits ``params/block_3/attn/out/kernel`` and
  ``blocks/3/attn/out/kernel``, not a top-level ``attn/out/kernel`` (``*`` needs a
  segment); ``**/attn/out/kernel`` hits all three.
* ``/params/head/*`` hits ``params/head/kernel``, not
  ``params/enc/params/head/kernel``; ``/params/**`` hits every leaf under
  ``params`` and nothing under ``batch_stats``.
* ``encoder/**/bias`` hits ``encoder/bias`` and ``encoder/layers_0/mlp/bias``,
  not ``decoder/mlp/bias``.
* ``layers_?/mlp/*`` hits ``layers_3/mlp/kernel``, not ``layers_12/mlp/kernel``;
  ``layers_[0-5]/**`` hits the leaves of layers 0 to 5 only.
* ``re:.*/h_\d+/attn/c_proj/kernel`` hits ``params/h_11/attn/c_proj/kernel``, not
  ``h_11/attn/c_proj/kernel`` (a regex must match the whole path).

Matching is case-sensitive. Bad syntax (an empty pattern, an unbalanced ``[``, a
``**`` inside a segment such as ``a**``, an empty segment, a bad regex) raises
``ValueError`` when the rules are built.

Rules
-----
``rules`` is a sequence of ``(pattern, action)`` pairs. Every rule that matches a
leaf applies, in list order, each to the result of the previous one (re-draw then
scale composes); ``explain_rules`` shows the chain. With ``strict=True`` (the
default) a rule that matches no leaf raises ``ValueError`` naming the pattern and
the closest existing paths. Actions: an initializer ``(key, shape, dtype)`` or
``reinit(init, ...)``, ``scale``, ``fill``, ``at``, ``per_layer``, or your own
function ``(key, leaf, ctx)`` wrapped in ``action(fn)``; see
:mod:`flaxinit.rules.actions`.

Model structure
---------------
With ``structure=``, each rule's ``ctx`` also has the leaf's ``role``, fan axes and
``norm_offset``, and re-draws without declared axes are drawn on the axes the model
contracts (a Gemma-style ``(heads, d, head_dim)`` kernel gets fan_in ``d``).

Layers
------
``ctx.layer`` is read from the path: a segment ``<name>_<int>`` whose name is ``h``
or ends in ``block(s)``/``layer(s)`` (``layers_3``, ``h_3``, ``block_3``,
``Block_3``, ``encoderblock_3``), or a number right after such a name
(``blocks/3``). Linen auto-names like ``Dense_0`` are not depths. A stacked leaf
(``nn.scan``/``nnx.vmap`` with partition name ``'layers'``, or a rule wrapped in
``per_layer``) is processed per slice with ``ctx.layer = i`` (and
``ctx.is_layer_slice``) and gets, slice by
slice, exactly the values the same rules give the unrolled model
(``layers/...`` stacked vs ``layers_i/...``, ``blocks/...`` vs ``blocks/i/...``).

Keys
----
Each leaf's key is ``fold_in(key, crc32(path))`` (with the layer index folded in
separately, see :mod:`flaxinit.rules.keys`), so values depend on the key and the
path only, never on other leaves or the tree's order, jitted or not.

Modules
-------
``actions`` (what a rule does, ``RuleContext``), ``patterns`` (the glob language),
``paths`` (trees to path records and back), ``matching`` (rules compiled and matched),
``options`` (``context``/``num_layers``/``layer_of``), ``planning`` (per-leaf plans and
layer contexts), ``keys`` (the one key derivation), ``layout`` (where results are
produced), ``program`` (the compiled array work and its cache), ``engine``
(``apply_rules``), ``report`` (``explain_rules``), ``suggest`` (closest paths for
errors), ``optax_labels`` and ``pretrained``.
"""

from flaxinit.rules.actions import (
    Action,
    RuleContext,
    action,
    at,
    fill,
    per_layer,
    reinit,
    scale,
)
from flaxinit.rules.engine import apply_rules, apply_rules_
from flaxinit.rules.keys import stable_hash
from flaxinit.rules.matching import UnmatchedRule
from flaxinit.rules.optax_labels import rule_labels, rule_mask
from flaxinit.rules.paths import layer_index, tree_paths
from flaxinit.rules.patterns import Pattern, compile_pattern
from flaxinit.rules.pretrained import MergeRecord, MergeReport, merge_pretrained
from flaxinit.rules.report import LeafReport, RulesReport, explain_rules

__all__ = [
    "Action",
    "LeafReport",
    "MergeRecord",
    "MergeReport",
    "Pattern",
    "RuleContext",
    "RulesReport",
    "UnmatchedRule",
    "action",
    "apply_rules",
    "apply_rules_",
    "at",
    "compile_pattern",
    "explain_rules",
    "fill",
    "layer_index",
    "merge_pretrained",
    "per_layer",
    "reinit",
    "rule_labels",
    "rule_mask",
    "scale",
    "stable_hash",
    "tree_paths",
]
