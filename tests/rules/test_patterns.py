"""The glob language: a table of matches, anchoring, regexes, and syntax errors."""

import re

import pytest

from flaxinit.rules import Pattern, compile_pattern

LINEN = "params/block_3/attn/out/kernel"
NNX = "blocks/3/attn/out/kernel"
TOP = "attn/out/kernel"

# (pattern, path, expected)
TABLE = [
    # A bare name hits that name at any depth, only as a whole segment.
    ("kernel", LINEN, True),
    ("kernel", "params/dense/kernel_2", False),
    ("kernel", "kernel", True),
    ("ernel", LINEN, False),
    # `*` is one segment and needs a segment to exist.
    ("*/attn/out/kernel", LINEN, True),
    ("*/attn/out/kernel", NNX, True),
    ("*/attn/out/kernel", TOP, False),
    ("*/out/kernel", LINEN, True),
    ("params/*/kernel", "params/dense/kernel", True),
    ("params/*/kernel", LINEN, False),  # `*` never crosses a '/'
    ("Conv_*/kernel", "params/Conv_0/kernel", True),
    ("Conv_*/kernel", "params/Conv_12/kernel", True),
    ("Conv_*/kernel", "params/ConvTranspose_0/kernel", False),
    ("*", "a/b/c", True),  # any last segment
    # `**` at the start, in the middle and at the end; zero segments allowed.
    ("**/attn/out/kernel", TOP, True),
    ("**/attn/out/kernel", LINEN, True),
    ("**/kernel", "kernel", True),
    ("params/**/kernel", "params/kernel", True),
    ("params/**/kernel", LINEN, True),
    ("params/**/kernel", "batch_stats/x/kernel", False),
    ("block_3/**", LINEN, True),
    ("block_3/**", "params/block_3", True),
    ("block_3/**", "params/block_30/attn", False),
    ("attn/**/kernel", LINEN, True),
    ("a/**/b/**/c", "a/b/c", True),
    ("a/**/b/**/c", "x/a/1/2/b/3/c", True),
    ("a/**/b/**/c", "a/1/c", False),
    ("**", "anything/at/all", True),
    # A leading '/' anchors at the root.
    ("/params/**/kernel", LINEN, True),
    ("/params/**/kernel", "enc/params/x/kernel", False),
    ("/attn/out/kernel", TOP, True),
    ("/attn/out/kernel", LINEN, False),
    ("/params/*", "params/bias", True),
    ("/params/*", "params/dense/bias", False),
    # `?` is one character within a segment.
    ("layers_?/mlp/kernel", "params/layers_3/mlp/kernel", True),
    ("layers_?/mlp/kernel", "params/layers_12/mlp/kernel", False),
    ("layers_??/mlp/kernel", "params/layers_12/mlp/kernel", True),
    ("a?c", "a/c", False),  # `?` never matches '/'
    # `[...]` sets, ranges and negation.
    ("layers_[0-2]/**", "params/layers_1/mlp/kernel", True),
    ("layers_[0-2]/**", "params/layers_3/mlp/kernel", False),
    ("layers_[!0-2]/**", "params/layers_3/mlp/kernel", True),
    ("layers_[!0-2]/**", "params/layers_0/mlp/kernel", False),
    ("[hi]f/bias", "params/lstm/hf/bias", True),
    ("[hi]f/bias", "params/lstm/if/bias", True),
    ("[hi]f/bias", "params/lstm/gf/bias", False),
    ("a[!x]b", "a/b", False),  # a negated class never matches '/'
    ("a[!x]b", "a-b", True),
    ("a[]]b", "a]b", True),  # ']' first in a class is literal
    ("a[!]]b", "a]b", False),
    ("a[!]]b", "axb", True),
    # Escapes and regex metacharacters are literal in globs.
    ("a\\*b", "a*b", True),
    ("a\\*b", "axb", False),
    ("w.b", "w.b", True),
    ("w.b", "wxb", False),
    ("mlp/~/linear_0/w", "mlp/~/linear_0/w", True),  # Haiku names
    ("(x)", "(x)", True),
    # Numeric segments (NNX list items).
    ("blocks/3/**", NNX, True),
    ("blocks/3/**", "blocks/30/attn", False),
    # Case-sensitive.
    ("conv_*/kernel", "params/Conv_0/kernel", False),
    # Regular expressions: fullmatch on the whole path.
    (r"re:.*/h_\d+/attn/c_proj/kernel", "params/h_11/attn/c_proj/kernel", True),
    (r"re:.*/h_\d+/attn/c_proj/kernel", "h_11/attn/c_proj/kernel", False),
    ("re:kernel", LINEN, False),  # no implicit suffix match for regexes
    ("re:.*kernel", LINEN, True),
    ("re:params/(block|layers)_[0-9]+/.*", LINEN, True),
    ("re:.*(query|key|value)/kernel", "params/attn/key/kernel", True),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), TABLE)
def test_glob_table(pattern, path, expected):
    assert compile_pattern(pattern).matches(path) is expected


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "empty"),
        ("/", "empty"),
        ("a//b", "empty segment"),
        ("a/", "empty segment"),
        ("a[bc", "unbalanced '\\['"),
        ("a[/]b", "unbalanced '\\['"),  # '/' splits segments before classes
        ("a]b", "unbalanced '\\]'"),
        ("a[]", "unbalanced"),
        ("a**", "whole segment"),
        ("a/b**/c", "whole segment"),
        ("abc\\", "trailing"),
        ("re:", "empty regular expression"),
        ("re:(", "bad regular expression"),
        ("re:a[", "bad regular expression"),
    ],
)
def test_bad_syntax_raises(pattern, message):
    with pytest.raises(ValueError, match=message) as info:
        compile_pattern(pattern)
    assert repr(pattern) in str(info.value)


@pytest.mark.parametrize("pattern", [None, 3, b"kernel", ("kernel",)])
def test_non_string_pattern_is_a_type_error(pattern):
    with pytest.raises(TypeError, match="pattern must be a string"):
        compile_pattern(pattern)


def test_compiled_regex_object_and_pattern_passthrough():
    p = compile_pattern(re.compile(r"params/.*/KERNEL", re.IGNORECASE))
    assert p.matches("params/dense/kernel")
    assert p.source == "re:params/.*/KERNEL"
    assert compile_pattern(p) is p


def test_compiled_once_and_anchoring_flag():
    assert compile_pattern("*/attn/kernel") is compile_pattern("*/attn/kernel")
    assert isinstance(compile_pattern("kernel"), Pattern)
    assert not compile_pattern("kernel").anchored
    assert compile_pattern("/params/kernel").anchored
    assert compile_pattern("re:x").anchored
    assert repr(compile_pattern("kernel")) == "Pattern('kernel')"
