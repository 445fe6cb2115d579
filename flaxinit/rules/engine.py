"""``apply_rules`` and ``explain_rules``: a static plan from paths, then array work.

Matching happens once, in Python, on static paths (at trace time under ``jax.jit``):
the plan maps each leaf to the rules that hit it, in list order. Running the plan
is then only array operations, so the compiled program holds no path logic and
the same key and tree give bitwise the same result, jitted or not.

Keys. With ``k = key``, ``h(s) = zlib.crc32(s.encode())`` (a stable 32-bit hash;
never Python's salted ``hash``) and ``fold = jax.random.fold_in``:

* a leaf without a layer index uses ``fold(k, h(path))``;
* a leaf with one (``.../layers_3/...``, ``.../blocks/3/...``) uses
  ``fold(fold(k, h(canonical)), 3)``, ``canonical`` being the path with the index
  removed (``.../layers/...``, ``.../blocks/...``);
* slice ``i`` of a stacked leaf uses ``fold(fold(k, h(path)), i)``: a stacked
  leaf's path *is* the canonical path of its layers, so slice ``i`` gets the key
  (and the values) layer ``i`` gets in the unrolled model;
* each rule then folds in ``h(f"{pattern}#{n}")``, ``n`` counting earlier rules
  with the same pattern, so two rules on one leaf draw independently, and adding
  or removing a rule with another pattern does not change this rule's draws.

Keys depend on the key and the path string only: adding, removing or reordering
other leaves never changes a leaf's values.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import functools
import numbers
import re
import types
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flaxinit.rules.actions import (
    PerLayer,
    Reinit,
    RuleContext,
    check_result,
    to_action,
    vmap_matches_loop,
)
from flaxinit.rules.paths import FlatTree, LeafInfo, flatten_tree
from flaxinit.rules.patterns import Pattern, compile_pattern, role_needs_structure
from flaxinit.tables import format_table

__all__ = [
    "LeafReport",
    "RulesReport",
    "UnmatchedRule",
    "apply_rules",
    "apply_rules_",
    "explain_rules",
    "stable_hash",
]

_CONTEXT_FIELDS = {f.name for f in dataclasses.fields(RuleContext)}


def stable_hash(text: str) -> int:
    """A 32-bit hash of ``text`` that is the same in every process (CRC-32).

    Python's ``hash`` of a string is salted per process, so it cannot key draws.

    Example:
      >>> stable_hash("params/dense/kernel") == stable_hash("params/dense/kernel")
      True
    """
    return zlib.crc32(text.encode("utf-8"))


# --------------------------------------------------------------------------- rules


@dataclasses.dataclass(frozen=True)
class Rule:
    """A validated rule: its position, compiled pattern, value and key tag."""

    index: int
    pattern: Pattern
    value: Any
    tag: int


def compile_rules(
    rules: Iterable[Any], convert: Callable[[Any], Any] = to_action, what: str = "action"
) -> list[Rule]:
    """Validates ``(pattern, value)`` pairs and compiles their patterns.

    Raises:
      TypeError: ``rules`` is not a sequence of pairs, or a pattern or value has the
        wrong type.
      ValueError: a pattern is malformed.
    """
    if isinstance(rules, (str, bytes, Mapping)) or not isinstance(rules, Iterable):
        raise TypeError(
            f"rules must be a sequence of (pattern, {what}) pairs, got {type(rules).__name__}"
        )
    out: list[Rule] = []
    seen: dict[str, int] = {}
    for i, rule in enumerate(rules):
        if not isinstance(rule, (tuple, list)) or len(rule) != 2:
            raise TypeError(f"rule {i} must be a (pattern, {what}) pair, got {rule!r}")
        pattern = compile_pattern(rule[0])
        value = convert(rule[1])
        # A role selector draws with its fallback's tag: the same values with and
        # without a structure wherever both select the leaf.
        source = pattern.fallback_source or pattern.source
        n = seen.get(source, 0)
        seen[source] = n + 1
        out.append(Rule(i, pattern, value, stable_hash(f"{source}#{n}")))
    return out


# Words that name the same thing in different codebases, for suggesting paths: a
# rule written for one naming (``fc2/kernel``) finds its leaf in another
# (``MlpBlock_0/Dense_1/kernel``).
_SYNONYMS = {
    "fc": "dense",
    "linear": "dense",
    "dense": "dense",
    "densegeneral": "dense",
    "lin": "dense",
    "mlp": "mlp",
    "mlpblock": "mlp",
    "ffn": "mlp",
    "ffw": "mlp",
    "feedforward": "mlp",
    "attn": "attention",
    "attention": "attention",
    "multiheaddotproductattention": "attention",
    "multiheadattention": "attention",
    "selfattention": "attention",
    "ln": "norm",
    "norm": "norm",
    "layernorm": "norm",
    "rmsnorm": "norm",
    "bn": "norm",
    "batchnorm": "norm",
    "groupnorm": "norm",
    "emb": "embedding",
    "embed": "embedding",
    "embedding": "embedding",
    "embedder": "embedding",
    "wte": "embedding",
    "kernel": "kernel",
    "w": "kernel",
    "weight": "kernel",
    "bias": "bias",
    "b": "bias",
    "scale": "scale",
    "gamma": "scale",
    "conv": "conv",
    "head": "head",
    "logits": "head",
    "out": "out",
    "proj": "out",
    "o": "out",
}
_TOKEN = re.compile(r"[A-Za-z]+|[0-9]+")


def _tokens(segment: str) -> tuple[set[str], set[int]]:
    """A segment's words (through the synonyms) and numbers."""
    words, numbers = set(), set()
    for tok in _TOKEN.findall(segment):
        if tok.isdigit():
            numbers.add(int(tok))
        else:
            low = tok.lower()
            words.add(_SYNONYMS.get(low, low))
    joined = re.sub(r"[^a-z]", "", segment.lower())
    if joined in _SYNONYMS:
        words.add(_SYNONYMS[joined])
    return words, numbers


def _segment_score(want: str, have: str) -> float:
    if "*" in want or "?" in want or "[" in want:
        try:
            hit = compile_pattern("/" + want).matches(have)
        except ValueError:
            hit = False
        return 1.5 if hit else 0.0  # a wildcard segment that fits is a full match
    (ww, wn), (hw, hn) = _tokens(want), _tokens(have)
    score = 1.0 if ww & hw else 0.0
    if wn and hn and (wn & hn or {n - 1 for n in wn} & hn):
        score += 0.5  # the same index, or a 1-based name for a 0-based one (fc2, Dense_1)
    return score + 0.25 * difflib.SequenceMatcher(None, want.lower(), have.lower()).ratio()


def closest_paths(pattern: Pattern, paths: Sequence[str], n: int = 3) -> tuple[str, ...]:
    """The ``n`` existing paths most like ``pattern`` (for error messages): compared
    segment by segment from the end, by word (``fc`` ~ ``Dense``, ``attn`` ~
    ``MultiHeadDotProductAttention``) and index, then by spelling."""
    if not paths:
        return ()
    source = pattern.source
    if source.startswith("re:"):
        return tuple(difflib.get_close_matches(source[3:], paths, n=n, cutoff=0.0))
    want = [seg for seg in source.lstrip("/").split("/") if seg != "**"]

    def score(path: str) -> float:
        have = path.split("/")
        tail = have[-len(want) :]
        total = sum(
            _segment_score(w, h) for w, h in zip(reversed(want), reversed(tail), strict=False)
        )
        return total - 0.01 * abs(len(have) - len(want))

    ranked = sorted(paths, key=lambda p: -score(p))
    return tuple(ranked[:n])


def _matcher(pattern: Pattern, structure: Any, paths: Sequence[str]) -> Callable[[int], bool]:
    """``leaf index -> bool`` for one pattern (a role selector reads ``structure``)."""
    if pattern.role is None:
        fullmatch = pattern.regex.fullmatch
        return lambda n: fullmatch(paths[n]) is not None
    if structure is None:
        if not pattern.fallback:
            raise ValueError(role_needs_structure(pattern.source))
        regexes = [p.regex.fullmatch for p in pattern.fallback]
        return lambda n: any(m(paths[n]) is not None for m in regexes)
    selected = set(structure.select(pattern.role))
    if pattern.within is not None:
        inside = pattern.within.regex.fullmatch
        return lambda n: structure.leaves[n].path in selected and inside(paths[n]) is not None
    return lambda n: structure.leaves[n].path in selected


def match_rules(
    rules: Sequence[Rule], infos: Sequence[LeafInfo], structure: Any = None
) -> list[list[Rule]]:
    """Per leaf, the rules whose pattern matches it, in rule order.

    ``structure`` is a :class:`StructureView` (``apply_rules(..., structure=)``);
    without one a ``@role`` pattern uses its fallback paths or raises ``ValueError``.
    """
    paths = [info.path for info in infos]
    matchers = [(r, _matcher(r.pattern, structure, paths)) for r in rules]
    return [[r for r, m in matchers if m(n)] for n in range(len(infos))]


@dataclasses.dataclass(frozen=True)
class StructureView:
    """A model structure lined up with one tree's leaves (``leaves[n]`` is leaf n's)."""

    structure: Any
    leaves: tuple[Any, ...]

    def select(self, role: str) -> list[str]:
        return self.structure.select(role)

    @property
    def num_layers(self) -> int | None:
        return self.structure.num_layers


def view_structure(structure: Any, infos: Sequence[LeafInfo]) -> StructureView | None:
    """Lines ``structure`` up with ``infos``; raises naming the first leaf it lacks."""
    if structure is None:
        return None
    from flaxinit.structure import ModelStructure

    if not isinstance(structure, ModelStructure):
        raise TypeError(
            "structure must be a ModelStructure from fi.model_structure(model, *inputs), "
            f"got {type(structure).__name__}"
        )
    return StructureView(structure, tuple(structure.check_tree(infos)))


def unmatched(
    rules: Sequence[Rule],
    hits: Sequence[Sequence[Rule]],
    infos: Sequence[LeafInfo],
    structure: StructureView | None = None,
) -> list[UnmatchedRule]:
    """The rules that matched no leaf, with the closest existing paths (for a role
    selector: the roles the model's leaves play)."""
    used = {r.index for leaf in hits for r in leaf}
    paths = [i.path for i in infos]
    out = []
    for r in rules:
        if r.index in used:
            continue
        pattern = r.pattern
        if pattern.role is not None and structure is not None and pattern.optional:
            continue
        if pattern.role is not None and structure is not None:
            present = tuple(dict.fromkeys(role for leaf in structure.leaves for role in leaf.roles))
            out.append(UnmatchedRule(r.index, pattern.source, present, True, pattern.origin))
        elif pattern.role is not None:
            close = tuple(p for f in pattern.fallback for p in closest_paths(f, paths))
            source = f"{pattern.fallback_source} (the fallback of {pattern.source})"
            out.append(UnmatchedRule(r.index, source, close[:3], False, pattern.origin))
        else:
            closest = closest_paths(pattern, paths)
            out.append(UnmatchedRule(r.index, pattern.source, closest, False, pattern.origin))
    return out


def raise_unmatched(missing: Sequence[UnmatchedRule], what: str = "rule") -> None:
    """Raises ``ValueError`` naming every pattern that matched nothing."""
    if not missing:
        return
    lines = [
        f"{what} {m.index} pattern {m.pattern!r} matched no leaf; "
        + (
            "no leaf plays that role; the model's roles: " + ", ".join(m.closest)
            if m.roles
            else "closest paths: "
            + (", ".join(repr(p) for p in m.closest) or "(the tree has no array leaves)")
        )
        + (
            f"; the pattern is {m.origin}'s default: pass {m.origin.split('(')[0]}"
            f"({m.origin.split('(')[1].split('=')[0]}=<this model's pattern>) or None to drop "
            "the rule, or structure=fi.model_structure(model, *inputs) to select by role"
            if m.origin
            else ""
        )
        for m in missing
    ]
    if any(m.origin for m in missing):
        # Skipping a recipe's rule would apply the rest of a recipe that may not fit.
        raise ValueError("\n".join(lines))
    raise ValueError("\n".join(lines) + "\n(pass strict=False to allow rules that match nothing)")


# --------------------------------------------------------------------------- context


@dataclasses.dataclass(frozen=True)
class _Options:
    extra: Mapping[str, Any]
    num_layers: int | None
    layer_of: Callable[[str], int | None] | None

    @staticmethod
    def make(context: Mapping[str, Any] | None) -> _Options:
        context = dict(context or {})
        num_layers = context.pop("num_layers", None)
        layer_of = context.pop("layer_of", None)
        if num_layers is not None and (
            isinstance(num_layers, bool) or not isinstance(num_layers, numbers.Integral)
        ):
            raise TypeError(f"context['num_layers'] must be an int, got {num_layers!r}")
        if layer_of is not None and not callable(layer_of):
            raise TypeError(f"context['layer_of'] must be a function path -> int, got {layer_of!r}")
        for name in context:
            if not isinstance(name, str):
                raise TypeError(f"context keys must be strings, got {name!r}")
            if name in _CONTEXT_FIELDS or name == "replace":
                raise ValueError(f"context key {name!r} would shadow RuleContext.{name}")
        return _Options(context, None if num_layers is None else int(num_layers), layer_of)


def _stack_axis(info: LeafInfo, action: Any) -> tuple[int | None, Any]:
    """The stacked axis a rule uses on a leaf, and the action to run."""
    axis = info.stacked_axis
    if isinstance(action, PerLayer):
        # A leaf whose path names its layer (`layers_3/...`) is one layer already,
        # so one rule list serves the stacked and the unrolled layout.
        axis = None if info.layer is not None else action.axis
        action = action.action
    if axis is not None:
        nd = len(info.shape)
        if not -nd <= axis < nd:
            raise ValueError(
                f"per_layer: axis {axis} is out of range for the leaf at {info.path!r} "
                f"of shape {info.shape}"
            )
        axis %= nd
    return axis, action


class _Layers:
    """Layer indices and layer counts for a plan (see ``RuleContext.num_layers``)."""

    def __init__(
        self,
        infos: Sequence[LeafInfo],
        hits: Sequence[Sequence[Rule]],
        opts: _Options,
        structure: StructureView | None = None,
    ) -> None:
        self.opts = opts
        self.structure = structure
        self.groups: dict[str, int] = {}
        counts: list[int] = []
        if opts.layer_of is not None:
            self.layers = [opts.layer_of(i.path) for i in infos]
            counts += [v + 1 for v in self.layers if v is not None]
        else:
            self.layers = [i.layer for i in infos]
            for info in infos:
                if info.layer is not None:
                    g = info.layer_group
                    self.groups[g] = max(self.groups.get(g, 0), info.layer + 1)
            counts += list(self.groups.values())
        for info, leaf_rules in zip(infos, hits, strict=True):
            for r in leaf_rules:
                axis, _ = _stack_axis(info, r.value)
                if axis is not None:
                    counts.append(info.shape[axis])
        self.tree_max = max(counts, default=None)

    def signature(self) -> tuple[Any, ...]:
        """What the contexts depend on besides the leaf (hashable if the context is)."""
        opts = self.opts
        return (
            tuple(sorted(self.groups.items())),
            self.tree_max,
            opts.num_layers,
            opts.layer_of,
            tuple(sorted(opts.extra.items())),
            None if self.structure is None else self.structure.num_layers,
        )

    def leaf_signature(self, n: int) -> Any:
        """The structure facts leaf ``n``'s contexts hold (None without a structure)."""
        return None if self.structure is None else self.structure.leaves[n].signature()

    def _structural(self, n: int, drop_axis: int | None = None) -> dict[str, Any]:
        """The context fields a structure gives leaf ``n`` (one slice's, with the
        stacked ``drop_axis`` removed and later axes renumbered)."""
        if self.structure is None:
            return {}
        leaf = self.structure.leaves[n]

        def axes(group: tuple[int, ...]) -> tuple[int, ...]:
            if drop_axis is None:
                return group
            return tuple(a - (a > drop_axis) for a in group if a != drop_axis)

        fields: dict[str, Any] = {
            "role": leaf.role,
            "residual_output": leaf.residual_output,
            "norm_offset": leaf.norm_offset,
        }
        if leaf.fan_in_axes or leaf.fan_out_axes:
            fields["fan_in_axes"] = axes(leaf.fan_in_axes)
            fields["fan_out_axes"] = axes(leaf.fan_out_axes)
            fields["batch_axes"] = axes(leaf.batch_axes)
        return fields

    def _num_layers(self, info: LeafInfo) -> int | None:
        opts = self.opts
        if opts.num_layers is not None:
            return opts.num_layers
        if opts.layer_of is None and info.layer_group in self.groups:
            return self.groups[info.layer_group]
        if self.structure is not None and self.structure.num_layers is not None:
            return self.structure.num_layers
        return self.tree_max

    def context(self, n: int, info: LeafInfo) -> RuleContext:
        """The context of the whole (unstacked) leaf ``n``."""
        layer = self.layers[n]
        if layer is None and self.structure is not None:
            layer = self.structure.leaves[n].layer
        return RuleContext.make(
            path=info.path,
            shape=info.shape,
            dtype=info.dtype,
            layer=layer,
            num_layers=self._num_layers(info),
            stacked=False,
            extra=self.opts.extra,
            **self._structural(n),
        )

    def slices(self, n: int, info: LeafInfo, axis: int) -> list[RuleContext]:
        """One context per slice of a stacked leaf."""
        length = info.shape[axis]
        shape = info.shape[:axis] + info.shape[axis + 1 :]
        num = self.opts.num_layers if self.opts.num_layers is not None else length
        structural = self._structural(n, drop_axis=axis)
        return [
            RuleContext.make(
                path=info.path,
                shape=shape,
                dtype=info.dtype,
                layer=i,
                num_layers=num,
                stacked=True,
                extra=self.opts.extra,
                **structural,
            )
            for i in range(length)
        ]


# --------------------------------------------------------------------------- plan


@dataclasses.dataclass
class Plan:
    """The static result of matching: which rules hit which leaf."""

    flat: FlatTree
    rules: list[Rule]
    hits: list[list[Rule]]
    layers: _Layers

    def missing(self) -> list[UnmatchedRule]:
        return unmatched(self.rules, self.hits, self.flat.infos, self.layers.structure)


def make_plan(
    tree: Any, rules: Iterable[Any], context: Mapping[str, Any] | None, structure: Any = None
) -> Plan:
    """Flattens ``tree``, compiles ``rules`` and matches them (all in Python)."""
    compiled = compile_rules(rules)
    opts = _Options.make(context)
    flat = flatten_tree(tree)
    view = view_structure(structure, flat.infos)
    hits = match_rules(compiled, flat.infos, view)
    _check_stacks(flat.infos, hits, view)
    return Plan(flat, compiled, hits, _Layers(flat.infos, hits, opts, view))


def _check_stacks(
    infos: Sequence[LeafInfo], hits: Sequence[Sequence[Rule]], structure: StructureView | None
) -> None:
    """Raises where a ``per_layer`` without ``axis=`` would slice a leaf that nothing
    says is a stack of layers (see :func:`flaxinit.rules.per_layer`)."""
    modules: dict[str, list[LeafInfo]] = {}
    for info in infos:
        modules.setdefault(info.path.rpartition("/")[0], []).append(info)
    for n, (info, leaf_rules) in enumerate(zip(infos, hits, strict=True)):
        for rule in leaf_rules:
            action = rule.value
            if not isinstance(action, PerLayer) or action.explicit or info.layer is not None:
                continue
            what = (
                f"rule {rule.index} ({rule.pattern.source!r}, {action!r}) takes the leaf at "
                f"{info.path!r} of shape {info.shape} for a stack of layers along axis 0"
            )
            if structure is not None:
                layer_axis = structure.leaves[n].layer_axis
                if layer_axis == 0:
                    continue
                raise ValueError(
                    f"{what}, but the model's computation "
                    + (
                        "uses it whole (it is not scanned)"
                        if layer_axis is None
                        else f"stacks it along axis {layer_axis}"
                    )
                    + "; name the axis with per_layer(..., axis=) or narrow the pattern"
                )
            if info.stacked_axis is not None or not info.shape:
                continue
            siblings = modules[info.path.rpartition("/")[0]]
            if all(s.shape and s.shape[0] == info.shape[0] for s in siblings):
                continue
            others = ", ".join(f"{s.path} {s.shape}" for s in siblings if s is not info)
            raise ValueError(
                f"{what}, but nothing says it is one: no 'layers' partition name, no layer "
                f"index in its path, and its module's other leaves ({others}) do not share "
                "that length. If it is a stack, say so with per_layer(..., axis=0) (or pass "
                "structure=fi.model_structure(...)); otherwise narrow the pattern"
            )


# --------------------------------------------------------------------------- keys


def _check_key(key: Any) -> Any:
    if key is None:
        return None
    if not hasattr(key, "dtype") or not hasattr(key, "shape"):
        raise TypeError(f"key must be a jax.random.key or PRNGKey, got {key!r}")
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key must be a single key, got a key array of shape {key.shape}")
        return key
    if key.dtype != jnp.uint32 or len(key.shape) != 1:
        raise TypeError(
            "key must be a typed key (jax.random.key) or a legacy uint32 key "
            f"(jax.random.PRNGKey), got an array of dtype {key.dtype} and shape {key.shape}"
        )
    return key


def _leaf_key(key: Any, info: LeafInfo) -> Any:
    if info.layer is not None:
        base = jax.random.fold_in(key, np.uint32(stable_hash(info.canonical)))
        return jax.random.fold_in(base, np.uint32(info.layer))
    return jax.random.fold_in(key, np.uint32(stable_hash(info.path)))


def _slice_keys(key: Any, info: LeafInfo, length: int, tag: int) -> Any:
    base = jax.random.fold_in(key, np.uint32(stable_hash(info.path)))
    if not vmap_matches_loop(base):
        # rbg-family keys fold in differently under vmap: build the keys one by one so
        # that slice i gets exactly the key of unrolled layer i.
        return jnp.stack(
            [
                jax.random.fold_in(jax.random.fold_in(base, np.uint32(i)), np.uint32(tag))
                for i in range(length)
            ]
        )
    layer_keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(
        jnp.arange(length, dtype=jnp.uint32)
    )
    return jax.vmap(lambda k: jax.random.fold_in(k, np.uint32(tag)))(layer_keys)


# --------------------------------------------------------------------------- apply


# --------------------------------------------------------------------------- layout


def _named(sharding: Any) -> Any:
    """``sharding`` if it is a ``NamedSharding`` that splits some axis, else None."""
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return None
    if all(entry is None for entry in sharding.spec):
        return None
    return sharding


def _own_layout(x: Any) -> Any:
    """The layout a leaf's new value should get when none is given: a placed array's
    sharding, or under explicit mesh axes the sharding in a traced leaf's type."""
    if isinstance(x, jax.core.Tracer):
        try:
            sharding = jax.typeof(x).sharding
        except Exception:  # not an array type
            return None
        named = _named(sharding)
        return named if named is not None and named.mesh.explicit_axes else None
    if isinstance(x, jax.Array) and x.committed:
        return _named(x.sharding)
    return None


def _given_layouts(flat: FlatTree, shardings: Any) -> list[Any]:
    """Per array leaf of ``flat``, its entry of the ``shardings`` tree (or None)."""
    try:
        outer = flat.treedef.flatten_up_to(shardings)
    except (ValueError, TypeError) as e:
        raise TypeError(
            "shardings must be a tree with the structure of `tree` holding a "
            "NamedSharding (or None) per leaf, as nn.get_sharding or "
            f"nnx.get_named_sharding give: {e}"
        ) from None
    out = []
    for o, i in flat.slots:
        item = outer[o]
        if item is not None and not isinstance(item, jax.sharding.Sharding):
            subs = jax.tree_util.tree_leaves(item)
            item = subs[max(i, 0)] if 0 <= i < len(subs) else (subs[0] if subs else None)
        if item is not None and not isinstance(item, jax.sharding.Sharding):
            raise TypeError(
                f"shardings: the entry for {flat.infos[len(out)].path!r} must be a "
                f"NamedSharding or None, got {item!r}"
            )
        out.append(_named(item))
    return out


def _in_layout(step: Callable[..., Any], x: Any, keys: Any, layout: Any) -> Any:
    """``step(x, keys)``, its result produced directly in ``layout`` (a NamedSharding).

    Under explicit mesh axes the step runs with them made automatic and its result
    is laid out as ``layout`` (``jax.sharding.auto_axes``), so a re-draw is generated
    shard by shard instead of replicated and then resharded; under automatic axes a
    sharding constraint on the result lets the partitioner do the same. Values do
    not depend on the layout (``jax_threefry_partitionable``). Arrays enter as
    arguments, never closed over: a traced value typed on the explicit mesh may not
    be used inside the automatic one.
    """
    if layout is None:
        return step(x, keys)
    explicit = tuple(layout.mesh.explicit_axes)
    if explicit:
        return jax.sharding.auto_axes(step, axes=explicit, out_sharding=layout)(x, keys)
    out = step(x, keys)
    if isinstance(out, jax.core.Tracer):
        return jax.lax.with_sharding_constraint(out, layout)
    return out


def _rule_keys(key: Any, steps: Sequence[tuple[int, LeafInfo, tuple[Rule, ...]]]) -> dict:
    """The key of every (leaf, rule) step that draws on an unstacked leaf, all at once:
    ``{position in steps: {rule step: key}}``.

    Each key is ``fold_in`` of the leaf's path hash (then its layer index) and the
    rule's tag, as :func:`_leaf_key` derives it; one vectorized chain of fold-ins
    replaces one per step, which XLA would otherwise compile one by one (threefry is
    unrolled into the program). Only where ``vmap`` draws what a loop draws
    (threefry); otherwise (and for no key) an empty dict: the steps derive their own.
    """
    if key is None or not vmap_matches_loop(key):
        return {}
    chains = []
    for i, (_, info, hits) in enumerate(steps):
        for step, rule in enumerate(hits):
            axis, action = _stack_axis(info, rule.value)
            if axis is not None or not action.needs_key:
                continue
            if info.layer is not None:
                chain = (stable_hash(info.canonical), info.layer, rule.tag)
            else:
                chain = (stable_hash(info.path), rule.tag)
            chains.append(((i, step), chain))
    keys = {}
    for length in sorted({len(chain) for _, chain in chains}):
        group = [(where, chain) for where, chain in chains if len(chain) == length]
        constants = np.asarray([chain for _, chain in group], np.uint32)

        def derive(row, length=length):
            k = key
            for j in range(length):
                k = jax.random.fold_in(k, row[j])
            return k

        derived = jax.vmap(derive)(constants)
        for j, ((leaf, step), _) in enumerate(group):
            keys.setdefault(leaf, {})[step] = derived[j]
    return keys


def _run_leaf(
    layers: _Layers,
    n: int,
    info: LeafInfo,
    hits: Sequence[Rule],
    x: Any,
    key: Any,
    layout: Any = None,
    step_keys: Mapping[int, Any] | None = None,
) -> Any:
    x = jnp.asarray(x)
    step_keys = step_keys or {}
    leaf_key = None
    for step, rule in enumerate(hits):
        if step:
            # Each rule works on the materialized result of the previous one: XLA
            # would otherwise fold a re-draw's std and a later scale into one
            # constant, which rounds differently for a stacked (vector of factors)
            # and an unrolled (scalar factor) leaf.
            x = jax.lax.optimization_barrier(x)
        axis, action = _stack_axis(info, rule.value)
        what = f"rule {rule.index} ({rule.pattern.source!r}, {rule.value!r})"
        needs_key = key is not None and action.needs_key
        if axis is None:
            k = None
            if needs_key and step in step_keys:
                k = step_keys[step]
            elif needs_key:
                leaf_key = _leaf_key(key, info) if leaf_key is None else leaf_key
                k = jax.random.fold_in(leaf_key, np.uint32(rule.tag))
            ctx = layers.context(n, info)
            keys = k

            def run_step(x, k, action=action, ctx=ctx):
                return action(k, x, ctx)
        else:
            keys = _slice_keys(key, info, info.shape[axis], rule.tag) if needs_key else None
            ctxs = layers.slices(n, info, axis)

            def run_step(x, keys, action=action, ctxs=ctxs, axis=axis, what=what):
                xs = jnp.moveaxis(x, axis, 0)
                out = action.call_stacked(keys, xs, ctxs)
                return jnp.moveaxis(check_result(info.path, what, xs, out), 0, axis)

        try:
            out = _in_layout(run_step, x, keys, layout)
        except (TypeError, ValueError) as e:
            raise _naming_the_leaf(e, what, info) from e
        x = check_result(info.path, what, x, out)
    return x


def _naming_the_leaf(error: Exception, what: str, info: LeafInfo) -> Exception:
    """``error`` with the rule and the leaf named, unless it names the leaf already
    (an initializer failing on a 1-D leaf only says it needs two axes)."""
    text = str(error)
    where = f"{what} failed on the leaf at {info.path!r} of shape {info.shape}"
    if info.path in text:
        return error
    if type(error) not in (TypeError, ValueError):
        error.add_note(where)  # a subclass may not take a message: keep it, add ours
        return error
    return type(error)(f"{where}: {text}")


def _draw_problem(info: LeafInfo, rule: Rule, action: Any) -> str | None:
    """Why a re-draw cannot draw this leaf (a fan-based initializer on a 1-D bias),
    found by tracing it on the shape; None if it can."""
    init = getattr(action, "init", None)
    if not isinstance(action, Reinit) or init is None or len(info.shape) >= 2:
        return None
    try:
        jax.eval_shape(lambda k: init(k, info.shape, info.dtype), jax.random.key(0))
    except Exception as e:  # what the initializer says is the reason shown
        return (
            f"#{rule.index} {action!r} cannot draw {info.path!r} of shape {info.shape}: "
            f"{str(e).splitlines()[0]}"
        )
    return None


def _fingerprint(obj: Any, depth: int = 0) -> Any:
    """A hashable key equal for value-equal rule sets, so that calling a recipe again
    (new closures, the same code and captured values) reuses the compiled program.

    Functions are keyed by their code, defaults, captured values and the globals
    their code reads (a ``lambda ctx: FACTOR`` sees a changed ``FACTOR``);
    dataclasses by type and fields; other objects only if they compare by value.
    An object hashed by identity could change between calls without changing its
    key, so it, like anything unhashable, raises ``TypeError``: the caller then
    compiles without the cache, as for an unhashable context value.
    """
    if depth > 24:
        raise TypeError("too deep to fingerprint")
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, np.dtype)):
        return obj
    if isinstance(obj, tuple):
        return tuple(_fingerprint(x, depth + 1) for x in obj)
    if isinstance(obj, frozenset):
        return frozenset(_fingerprint(x, depth + 1) for x in obj)
    if isinstance(obj, types.FunctionType):
        cells = tuple(c.cell_contents for c in obj.__closure__ or ())
        kwdefaults = tuple(sorted((obj.__kwdefaults__ or {}).items()))
        names = _global_names(obj.__code__)
        # A global function, class or module is the same code while it is the same
        # object (rebinding the name gives a new one): keyed by identity, not followed.
        reads = tuple(
            (name, _global_key(obj.__globals__[name], depth))
            for name in sorted(names)
            if name in obj.__globals__
        )
        return (
            "function",
            obj.__code__,
            _fingerprint(obj.__defaults__, depth + 1),
            _fingerprint(kwdefaults, depth + 1),
            _fingerprint(cells, depth + 1),
            reads,
        )
    if isinstance(obj, (types.ModuleType, type, types.BuiltinFunctionType)):
        return obj  # modules, classes and builtins: the same object is the same code
    if isinstance(obj, functools.partial):
        kwargs = tuple(sorted(obj.keywords.items()))
        return ("partial", *_fingerprint((obj.func, obj.args, kwargs), depth + 1))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = tuple(getattr(obj, f.name) for f in dataclasses.fields(obj) if f.compare)
        return (type(obj), _fingerprint(fields, depth + 1))
    if type(obj).__hash__ is object.__hash__:
        raise TypeError(f"{type(obj).__name__} is hashed by identity")
    hash(obj)
    return (type(obj), obj)


def _global_key(value: Any, depth: int) -> Any:
    if isinstance(value, (types.FunctionType, types.ModuleType, type, types.BuiltinFunctionType)):
        return ("object", id(value), value)
    return _fingerprint(value, depth + 1)


def _global_names(code: types.CodeType) -> set[str]:
    """The global names ``code`` and the functions defined in it may read."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


_PROGRAMS: collections.OrderedDict[Any, Any] = collections.OrderedDict()
_MAX_PROGRAMS = 32


def _program(
    plan: Plan, touched: Sequence[int], shardings: Any, layouts: Sequence[Any] | None = None
) -> Callable[..., Any]:
    """The jitted array work of a plan, cached by what it computes.

    One jitted program runs the array work, also when called eagerly: XLA
    reassociates chained constant multiplications (a re-draw's std, then a scale)
    inside a program, so op-by-op execution would round differently. Under an
    outer jit this inner jit is inlined: the same program, the same bits. The
    closure holds leaf descriptions and rules, never the tree's arrays. Called
    eagerly on jax arrays, each new leaf keeps its input's sharding. ``layouts``
    (one NamedSharding or None per touched leaf) are the layouts each rule's result
    is produced in, inside the program (see :func:`_in_layout`).
    """
    steps = [(n, plan.flat.infos[n], tuple(plan.hits[n])) for n in touched]
    layers = plan.layers
    layouts = tuple(layouts) if layouts is not None else (None,) * len(steps)

    def run(xs: list[Any], key: Any) -> list[Any]:
        keys = _rule_keys(key, steps)
        return [
            _run_leaf(
                layers,
                n,
                info,
                hits,
                x,
                key,
                layout,
                keys.get(i),
            )
            for i, ((n, info, hits), x, layout) in enumerate(zip(steps, xs, layouts, strict=True))
        ]

    make = lambda: jax.jit(run, out_shardings=shardings)
    try:
        leaves = tuple(
            (info, hits, layers.layers[n], layers.leaf_signature(n)) for n, info, hits in steps
        )
        signature = _fingerprint(
            (leaves, layers.signature(), shardings and tuple(shardings), layouts)
        )
        hash(signature)
    except TypeError:  # an unhashable action argument or context value: no cache
        return make()
    fn = _PROGRAMS.get(signature)
    if fn is None:
        fn = _PROGRAMS[signature] = make()
        if len(_PROGRAMS) > _MAX_PROGRAMS:
            _PROGRAMS.popitem(last=False)
    else:
        _PROGRAMS.move_to_end(signature)
    return fn


def apply_rules(
    tree: Any,
    rules: Sequence[tuple[Any, Any]],
    *,
    key: Any = None,
    context: Mapping[str, Any] | None = None,
    strict: bool = True,
    shardings: Any = None,
    structure: Any = None,
) -> Any:
    """Rewrites the leaves of a parameter tree that the rules' patterns match.

    Every rule whose pattern matches a leaf's path applies, in list order, each to
    the result of the previous one. The result has the structure, shapes, dtypes
    and metadata (boxes, NNX Variables) of ``tree``; an NNX module gives a new
    module and leaves the input alone (see :func:`apply_rules_` to update in place).
    Matching runs in Python when called (at trace time under ``jax.jit``); only
    array work remains in the compiled program. Keys come from ``key`` and each
    leaf's path only (see the module docstring), so jitted and eager calls agree
    bitwise and adding other leaves changes nothing here.

    Args:
      tree: a Linen variable dict (with or without ``params``, boxed or not), an
        ``nnx.State``, an NNX module, or any pytree of arrays.
      rules: ``(pattern, action)`` pairs; see :mod:`flaxinit.rules` for patterns and
        actions.
      key: a ``jax.random.key`` or legacy ``PRNGKey``; needed by re-draws.
      context: extra entries for ``ctx`` (``ctx.d_model``); ``num_layers`` overrides
        the count read from the tree and ``layer_of`` (a function ``path -> int |
        None``) replaces the built-in layer-index parser.
      strict: raise ``ValueError`` if a rule matches no leaf.
      shardings: where each rewritten leaf lives: a tree with the structure of
        ``tree`` holding a ``NamedSharding`` (or None) per leaf, as
        ``nn.get_sharding``/``nnx.get_named_sharding`` give. Each rule's result is
        then produced directly in that layout (under automatic mesh axes with a
        sharding constraint, under explicit ones with ``jax.sharding.auto_axes``),
        so a re-draw never materializes a full copy on one device. By default a
        leaf's own layout is used: a placed array's ``.sharding``, or under
        explicit mesh axes the sharding in a traced leaf's type. Under an outer
        ``jax.jit`` with automatic axes a traced leaf has no layout of its own;
        pass ``shardings`` (``flaxinit.sharding`` does). Values never depend on it.
      structure: a :class:`~flaxinit.structure.ModelStructure` of the model the
        tree belongs to (``fi.model_structure(model, *inputs)``). It resolves
        ``@role`` patterns, gives each rule's context the leaf's ``role``, fan axes
        and ``norm_offset``, and makes re-draws without declared axes use the fan
        axes the model contracts (an Einsum kernel ``(heads, d, head_dim)`` is
        drawn with fan_in ``d``, fan_out ``heads * head_dim``).

    Returns:
      The rewritten tree.

    Raises:
      ValueError: a rule matched nothing (``strict``), an action changed a leaf's
        shape or dtype, a scale factor is not finite, a re-draw has no key, a
        ``@role`` pattern has no ``structure``, or ``structure`` describes another
        model (the first path that differs is named).
      TypeError: a rule is not a ``(pattern, action)`` pair.

    Example:
      >>> import jax, flax.linen as nn
      >>> from flaxinit.initializers import he_normal
      >>> from flaxinit.rules import fill
      >>> params = nn.Dense(4).init(jax.random.key(0), jax.numpy.ones((1, 3)))
      >>> params = apply_rules(params, [("kernel", he_normal()), ("bias", fill(0.1))],
      ...                      key=jax.random.key(1))
    """
    shardings_tree = shardings
    plan = make_plan(tree, rules, context, structure)
    if strict:
        raise_unmatched(plan.missing())
    key = _check_key(key)
    arrays = list(plan.flat.arrays)
    touched = [n for n, leaf_rules in enumerate(plan.hits) if leaf_rules]
    if not touched:
        return plan.flat.rebuild(arrays)

    xs = [arrays[n] for n in touched]
    # Eagerly, a committed (placed) array's new value keeps its sharding; under an
    # outer jit the outer program decides.
    shardings = [
        x.sharding
        if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and x.committed
        else None
        for x in xs
    ]
    if shardings_tree is None:
        layouts = [_own_layout(x) for x in xs]
    else:
        given = _given_layouts(plan.flat, shardings_tree)
        layouts = [given[n] for n in touched]
        # Eagerly, a given layout is also where the new value is placed.
        shardings = [
            s if layout is None or isinstance(x, jax.core.Tracer) else layout
            for s, layout, x in zip(shardings, layouts, xs, strict=True)
        ]
    if all(s is None for s in shardings):
        shardings = None
    if all(layout is None for layout in layouts):
        layouts = None
    new = _program(plan, touched, shardings, layouts)(xs, key)
    for n, x in zip(touched, new, strict=True):
        arrays[n] = x
    return plan.flat.rebuild(arrays)


def apply_rules_(module: Any, rules: Sequence[tuple[Any, Any]], **kwargs: Any) -> Any:
    """``apply_rules`` on an NNX module, writing the new values into it in place.

    Equivalent to ``nnx.update(module, nnx.state(apply_rules(module, rules, ...)))``;
    the module's Variables keep their identity and metadata. Returns ``module``.

    Example:
      >>> from flax import nnx
      >>> from flaxinit.rules import fill
      >>> model = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
      >>> _ = apply_rules_(model, [("bias", fill(0.5))])
    """
    from flax import nnx

    if not isinstance(module, nnx.Module):
        raise TypeError(f"apply_rules_ updates an nnx.Module in place, got {type(module).__name__}")
    new = apply_rules(module, rules, **kwargs)
    nnx.update(module, nnx.state(new))
    return module


# --------------------------------------------------------------------------- explain


@dataclasses.dataclass(frozen=True)
class LeafReport:
    """One leaf in an :class:`RulesReport`.

    Attributes:
      path: the leaf's path.
      shape: the leaf's shape.
      dtype: the leaf's dtype.
      layer: the layer index read from the path, or None.
      stacked_axis: the ``'layers'`` axis from the leaf's metadata, or None.
      rules: the indices of the rules that hit the leaf, in order.
      patterns: their patterns.
      actions: their actions' descriptions (``per layer`` when run per slice).
      role: with ``structure=``, the leaf's role; else None.
      fan_axes: with ``structure=``, the fan axes a re-draw on this leaf uses
        (``in[1] out[0, 2]``); empty otherwise.
    """

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    layer: int | None
    stacked_axis: int | None
    rules: tuple[int, ...]
    patterns: tuple[str, ...]
    actions: tuple[str, ...]
    role: str | None = None
    fan_axes: str = ""

    @property
    def touched(self) -> bool:
        """Whether any rule hit this leaf."""
        return bool(self.rules)


@dataclasses.dataclass(frozen=True)
class UnmatchedRule:
    """A rule that matched no leaf, with the closest existing paths."""

    index: int
    pattern: str
    closest: tuple[str, ...]
    roles: bool = False
    origin: str | None = None


class RulesReport(Sequence[LeafReport]):
    """What ``explain_rules`` found: one :class:`LeafReport` per leaf, in tree order.

    A sequence of records (``report[0].path``, ``[r.path for r in report if
    r.touched]``) with ``untouched`` (paths no rule hit), ``unmatched_rules`` (rules
    that hit nothing), ``legend`` (``(index, pattern, action)`` per rule) and
    ``problems`` (what would fail or be lost: a fan-based re-draw of a 1-D leaf, a
    scale that a later re-draw of the same leaf overwrites); ``str(report)`` is an
    aligned table, the legend and the problems.
    """

    def __init__(
        self,
        records: Sequence[LeafReport],
        unmatched_rules: Sequence[UnmatchedRule],
        legend: Sequence[tuple[int, str, str]] = (),
        problems: Sequence[str] = (),
    ) -> None:
        self.records = tuple(records)
        self.unmatched_rules = tuple(unmatched_rules)
        self.untouched = tuple(r.path for r in self.records if not r.touched)
        self.legend = tuple(legend)
        self.problems = tuple(problems)

    def __getitem__(self, i: Any) -> Any:
        return self.records[i]

    def __len__(self) -> int:
        return len(self.records)

    def by_path(self) -> dict[str, LeafReport]:
        """The records keyed by path."""
        return {r.path: r for r in self.records}

    def __repr__(self) -> str:
        touched = sum(r.touched for r in self.records)
        return (
            f"RulesReport({len(self.records)} leaves, {touched} touched, "
            f"{len(self.unmatched_rules)} unmatched rules)"
        )

    def __str__(self) -> str:
        rows = []
        structural = any(r.role is not None for r in self.records)
        for r in self.records:
            layer = "" if r.layer is None else str(r.layer)
            if r.stacked_axis is not None:
                layer = f"stack@{r.stacked_axis}"
            chain = " -> ".join(f"#{i} {a}" for i, a in zip(r.rules, r.actions, strict=True))
            row = [r.path, str(r.shape), str(r.dtype), layer]
            if structural:
                row += [r.role or "", r.fan_axes]
            rows.append([*row, chain or "-"])
        headers = ["path", "shape", "dtype", "layer"]
        if structural:
            headers += ["role", "fan axes"]
        out = format_table([*headers, "rules"], rows) if rows else "(no leaves)"
        if self.legend:
            out += "\nrules:"
            for index, pattern, action in self.legend:
                out += f"\n  #{index} {pattern!r} -> {action}"
        if self.problems:
            out += "\nproblems:"
            for problem in self.problems:
                out += f"\n  {problem}"
        if self.unmatched_rules:
            out += "\nunmatched rules:"
            for m in self.unmatched_rules:
                near = "roles in the model" if m.roles else "closest"
                out += f"\n  #{m.index} {m.pattern!r}; {near}: {', '.join(m.closest) or '-'}"
        return out


def _describe_step(info: LeafInfo, rule: Rule) -> str:
    axis, action = _stack_axis(info, rule.value)
    if axis is None:
        return repr(action)
    return f"per layer(axis {axis}, {info.shape[axis]} layers): {action!r}"


def _fan_axes(layers: _Layers, n: int, info: LeafInfo, hits: Sequence[Rule]) -> str:
    """The fan axes a re-draw on leaf ``n`` uses (from the structure), for reports."""
    if layers.structure is None or not any(getattr(r.value, "needs_key", False) for r in hits):
        return ""
    ctx = layers.context(n, info)
    if ctx.fan_in_axes is None:
        return ""
    used = "" if ctx.structural_axes is not None else " (= Flax's)"
    batch = f" batch{list(ctx.batch_axes)}" if ctx.batch_axes else ""
    return f"in{list(ctx.fan_in_axes)} out{list(ctx.fan_out_axes)}{batch}{used}"


def explain_rules(
    tree: Any,
    rules: Sequence[tuple[Any, Any]],
    *,
    context: Mapping[str, Any] | None = None,
    structure: Any = None,
) -> RulesReport:
    """Says what :func:`apply_rules` would do, leaf by leaf, without doing it.

    Works on arrays and on abstract trees (``jax.eval_shape`` output). Rules that
    match nothing are reported, not raised.

    Returns:
      A :class:`RulesReport`: per leaf its path, shape, dtype, layer index, and the
      rules that hit it in order with their actions; plus ``untouched`` and
      ``unmatched_rules``. ``print(report)`` shows a table.

    Example:
      >>> import jax, flax.linen as nn
      >>> from flaxinit.rules import fill
      >>> v = jax.eval_shape(nn.Dense(4).init, jax.random.key(0), jax.numpy.ones((1, 3)))
      >>> report = explain_rules(v, [("bias", fill(0.0))])
      >>> report.untouched
      ('params/kernel',)
    """
    plan = make_plan(tree, rules, context, structure)
    records = []
    for n, info in enumerate(plan.flat.infos):
        hits = plan.hits[n]
        records.append(
            LeafReport(
                path=info.path,
                shape=info.shape,
                dtype=info.dtype,
                layer=plan.layers.context(n, info).layer,
                stacked_axis=info.stacked_axis,
                rules=tuple(r.index for r in hits),
                patterns=tuple(r.pattern.source for r in hits),
                actions=tuple(_describe_step(info, r) for r in hits),
                role=None
                if plan.layers.structure is None
                else plan.layers.structure.leaves[n].role,
                fan_axes=_fan_axes(plan.layers, n, info, hits),
            )
        )
    problems = []
    for n, info in enumerate(plan.flat.infos):
        hits = plan.hits[n]
        for step, rule in enumerate(hits):
            _, action = _stack_axis(info, rule.value)
            problem = _draw_problem(info, rule, action)
            if problem:
                problems.append(problem)
            if getattr(action, "overwrites", False):
                lost = [r for r in hits[:step] if not getattr(r.value, "overwrites", False)]
                problems += [
                    f"#{r.index} {r.value!r} on {info.path!r} is overwritten by "
                    f"#{rule.index} {action!r}"
                    for r in lost
                ]
    legend = [(r.index, r.pattern.source, repr(r.value)) for r in plan.rules]
    return RulesReport(records, plan.missing(), legend, problems)
