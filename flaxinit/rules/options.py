"""The caller's options that every rule's context shares: ``context``, ``num_layers``
and ``layer_of``, validated once per call.

Invariants: ``context`` holds only the user's own entries, never a name a
:class:`~flaxinit.rules.RuleContext` attribute would hide; ``num_layers`` is an int or
None and ``layer_of`` a function or None. The entries ``context['num_layers']`` and
``context['layer_of']`` are the deprecated spelling of the arguments: they keep working
for one release and warn.
"""

from __future__ import annotations

import dataclasses
import numbers
import sys
from collections.abc import Callable, Mapping
from typing import Any

from flaxinit._deprecation import warn_renamed

__all__ = ["Options", "warn_from_caller"]

# The arguments that used to be read out of ``context``.
_MOVED = ("num_layers", "layer_of")


def _caller_stacklevel() -> int:
    """The ``stacklevel`` (for a ``warnings.warn`` called from :func:`warn_renamed`, called
    from our caller) of the first frame outside flaxinit, so a warning points at the
    user's line whichever flaxinit function passed the value along."""
    frame = sys._getframe(2)  # the function that calls warn_from_caller
    level = 3
    while frame is not None and frame.f_globals.get("__name__", "").startswith("flaxinit."):
        frame = frame.f_back
        level += 1
    return level


def warn_from_caller(old: str, new: str) -> None:
    """:func:`~flaxinit._deprecation.warn_renamed`, attributed to the first caller
    outside flaxinit.

    Example:
      >>> import warnings
      >>> with warnings.catch_warnings(record=True) as caught:
      ...     warnings.simplefilter("always")
      ...     warn_from_caller("old", "new")
      >>> caught[0].category.__name__, str(caught[0].message)
      ('DeprecationWarning', 'old is deprecated and will be removed in the next release: use new')
    """
    warn_renamed(old, new, stacklevel=_caller_stacklevel())


@dataclasses.dataclass(frozen=True)
class Options:
    """What ``apply_rules(..., context=, num_layers=, layer_of=)`` says beyond the rules.

    Attributes:
      extra: the user's ``context`` entries (``ctx.d_model``).
      num_layers: overrides the layer count read from the tree, or None.
      layer_of: a function ``path -> int | None`` replacing the built-in layer-index
        parser, or None.
    """

    extra: Mapping[str, Any]
    num_layers: int | None
    layer_of: Callable[[str], int | None] | None

    @staticmethod
    def make(
        context: Mapping[str, Any] | None,
        num_layers: int | None = None,
        layer_of: Callable[[str], int | None] | None = None,
    ) -> Options:
        """Validated options; ``num_layers``/``layer_of`` inside ``context`` still work
        and warn (deprecated).

        Raises:
          TypeError: ``num_layers`` is not an int, ``layer_of`` is not callable, a
            context key is not a string, or an argument is given twice.
          ValueError: a context key would hide an attribute of ``RuleContext``.

        Example:
          >>> Options.make({"d_model": 64}, num_layers=12)
          Options(extra={'d_model': 64}, num_layers=12, layer_of=None)
        """
        from flaxinit.rules.actions import RuleContext

        if context is not None and not isinstance(context, Mapping):
            raise TypeError(f"context must be a dict of names to values, got {context!r}")
        extra = dict(context or {})
        given = {"num_layers": num_layers, "layer_of": layer_of}
        for name in _MOVED:
            if name not in extra:
                continue
            warn_from_caller(f"context[{name!r}]", f"apply_rules(..., {name}=...)")
            value = extra.pop(name)
            if value is not None and given[name] is not None:
                raise TypeError(f"{name} is given twice: as an argument and in context")
            if value is not None:
                given[name] = value
        num_layers, layer_of = given["num_layers"], given["layer_of"]
        if num_layers is not None and (
            isinstance(num_layers, bool) or not isinstance(num_layers, numbers.Integral)
        ):
            raise TypeError(f"num_layers must be an int, got {num_layers!r}")
        if layer_of is not None and not callable(layer_of):
            raise TypeError(f"layer_of must be a function path -> int, got {layer_of!r}")
        reserved = RuleContext.reserved_names()
        for name in extra:
            if not isinstance(name, str):
                raise TypeError(f"context keys must be strings, got {name!r}")
            if name in reserved:
                raise ValueError(f"context key {name!r} would shadow RuleContext.{name}")
        return Options(extra, None if num_layers is None else int(num_layers), layer_of)
