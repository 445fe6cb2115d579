"""Suggestions for a pattern that matched nothing: the existing paths most like it.

Only error messages and reports use this; nothing here changes what a rule matches.
Paths are compared segment by segment from the end, by word through a table of
synonyms (``fc`` ~ ``Dense``, ``attn`` ~ ``MultiHeadDotProductAttention``), by index
(``fc2`` ~ ``Dense_1``), then by spelling.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from flaxinit.rules.patterns import Pattern, compile_pattern

__all__ = ["closest_paths"]

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
    ``MultiHeadDotProductAttention``) and index, then by spelling.

    Example:
      >>> paths = ["params/Dense_0/kernel", "params/Dense_1/kernel", "params/Dense_1/bias"]
      >>> closest_paths(compile_pattern("fc2/kernel"), paths, n=1)
      ('params/Dense_1/kernel',)
    """
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
