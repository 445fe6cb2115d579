"""``merge_pretrained``: start from pretrained leaves, keep fresh ones where needed."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from flaxinit.rules.matching import compile_rules, match_rules, raise_unmatched, unmatched
from flaxinit.rules.paths import flatten_tree
from flaxinit.tables import RecordTable, format_table

__all__ = ["MergeRecord", "MergeReport", "merge_pretrained"]

PRETRAINED = "pretrained"
FRESH = "fresh"
REINIT = "reinit"
# How many shape mismatches an error names before it counts the rest.
_SHOWN = 5


@dataclasses.dataclass(frozen=True)
class MergeRecord:
    """Where one leaf of the merged tree came from.

    Attributes:
      path: the leaf's path.
      source: ``'pretrained'`` (loaded), ``'fresh'`` (no pretrained leaf at this
        path) or ``'reinit'`` (a ``reinit`` pattern matched it).
      shape: the leaf's shape in the fresh tree.
      dtype: the leaf's dtype in the fresh tree.
      pretrained_shape: the pretrained leaf's shape, or None if there is none.
      cast_from: the pretrained dtype when it differed and was cast, else None.
    """

    path: str
    source: str
    shape: tuple[int, ...]
    dtype: np.dtype
    pretrained_shape: tuple[int, ...] | None
    cast_from: np.dtype | None = None


@dataclasses.dataclass(frozen=True)
class MergeReport(RecordTable[MergeRecord]):
    """One :class:`MergeRecord` per leaf of the merged tree, plus the lists
    ``loaded``, ``fresh``, ``reinitialized`` and ``unused`` (pretrained paths the
    fresh tree does not have); ``str(report)`` is a table."""

    unused: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "unused", tuple(self.unused))

    def _paths(self, source: str) -> tuple[str, ...]:
        return tuple(r.path for r in self.records if r.source == source)

    @property
    def loaded(self) -> tuple[str, ...]:
        """The paths loaded from the pretrained tree."""
        return self._paths(PRETRAINED)

    @property
    def fresh(self) -> tuple[str, ...]:
        """The paths with no pretrained leaf, kept freshly initialized."""
        return self._paths(FRESH)

    @property
    def reinitialized(self) -> tuple[str, ...]:
        """The paths a ``reinit`` pattern kept freshly initialized."""
        return self._paths(REINIT)

    def __repr__(self) -> str:
        return (
            f"MergeReport({len(self.loaded)} loaded, {len(self.fresh)} fresh, "
            f"{len(self.reinitialized)} reinitialized, {len(self.unused)} unused)"
        )

    def headers(self) -> list[str]:
        return ["path", "source", "shape", "pretrained shape"]

    def row(self, record: MergeRecord) -> list[str]:
        cast = "" if record.cast_from is None else f" (cast from {record.cast_from})"
        pretrained = "-" if record.pretrained_shape is None else str(record.pretrained_shape)
        return [record.path, record.source + cast, str(record.shape), pretrained]

    def footer(self) -> list[str]:
        return ["unused pretrained leaves: " + ", ".join(self.unused)] if self.unused else []

    def __str__(self) -> str:
        if not self.records:  # the fresh tree has no leaves: the bare header, as always
            return "\n".join([format_table(self.headers(), []), *self.footer()])
        return super().__str__()


def merge_pretrained(
    fresh: Any,
    pretrained: Any,
    *,
    reinit: str | Sequence[Any] = (),
    strict: bool = True,
) -> tuple[Any, MergeReport]:
    """Loads pretrained leaves into a freshly initialized tree.

    For every leaf of ``fresh``: if a ``reinit`` pattern matches its path it stays
    fresh; else if ``pretrained`` has a leaf at the same path with the same shape,
    that leaf is used (cast to the fresh dtype if they differ); else (a new layer,
    such as a new classification head) it stays fresh. The result has ``fresh``'s
    structure and metadata; ``pretrained`` can be any tree with the same paths
    (a plain dict from a checkpoint, ``nnx.to_pure_dict`` output, boxed or not).

    Args:
      fresh: the freshly initialized tree (Linen dict, ``nnx.State``, NNX module...).
      pretrained: the pretrained tree.
      reinit: patterns of leaves to keep fresh even if a pretrained leaf exists.
      strict: raise ``ValueError`` if a ``reinit`` pattern matches no fresh leaf.

    Returns:
      ``(merged, report)``: the merged tree and a :class:`MergeReport` saying what
      came from where (and which pretrained leaves went unused).

    Raises:
      ValueError: a shape mismatch that no ``reinit`` pattern covers (naming the
        first 5 such paths with both shapes, and how many more), or the two trees
        share no path at all.

    Example:
      >>> import jax, flax.linen as nn
      >>> x = jax.numpy.ones((1, 3))
      >>> old = nn.Dense(10).init(jax.random.key(0), x)
      >>> new = nn.Dense(5).init(jax.random.key(1), x)
      >>> merged, report = merge_pretrained(new, old, reinit=["params/*"])
      >>> report.reinitialized
      ('params/bias', 'params/kernel')
    """
    if isinstance(reinit, str):
        reinit = [reinit]
    rules = compile_rules([(p, True) for p in reinit], convert=lambda v: v, what="pattern")
    f = flatten_tree(fresh)
    p = flatten_tree(pretrained)
    by_path = {info.path: (info, a) for info, a in zip(p.infos, p.arrays, strict=True)}
    fresh_paths = {info.path for info in f.infos}
    if f.infos and p.infos and not fresh_paths & by_path.keys():
        raise ValueError(
            "merge_pretrained: the fresh and pretrained trees share no path "
            f"(fresh has e.g. {f.infos[0].path!r}, pretrained has e.g. {p.infos[0].path!r}); "
            "is one of them missing (or adding) a level such as 'params'?"
        )
    hits = match_rules(rules, f.infos)
    if strict:
        raise_unmatched(unmatched(rules, hits, f.infos), what="reinit pattern")
    arrays = list(f.arrays)
    records = []
    mismatched = []
    for n, info in enumerate(f.infos):
        pre = by_path.get(info.path)
        pre_shape = None if pre is None else pre[0].shape
        if hits[n]:
            records.append(MergeRecord(info.path, REINIT, info.shape, info.dtype, pre_shape))
        elif pre is None:
            records.append(MergeRecord(info.path, FRESH, info.shape, info.dtype, None))
        elif pre_shape != info.shape:
            mismatched.append(f"{info.path!r}: fresh {info.shape} vs pretrained {pre_shape}")
        else:
            value, cast = pre[1], None
            if np.dtype(pre[0].dtype) != info.dtype:
                value, cast = value.astype(info.dtype), pre[0].dtype
            arrays[n] = value
            records.append(
                MergeRecord(info.path, PRETRAINED, info.shape, info.dtype, pre_shape, cast)
            )
    if mismatched:
        shown = "; ".join(mismatched[:_SHOWN])
        rest = len(mismatched) - _SHOWN
        more = f"; and {rest} more" if rest > 0 else ""
        count = f"{len(mismatched)} leaves" if len(mismatched) > 1 else "1 leaf"
        raise ValueError(
            f"merge_pretrained: shape mismatch at {count}: {shown}{more} (add a reinit= "
            "pattern to keep such leaves freshly initialized)"
        )
    unused = [path for path in by_path if path not in fresh_paths]
    return f.rebuild(arrays), MergeReport(tuple(records), tuple(unused))
