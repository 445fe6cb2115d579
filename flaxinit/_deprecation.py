"""Renamed public names: the old name keeps working for one release and warns.

Every rename goes through here, so the warning reads the same everywhere and names the
replacement. The warning is attributed to the caller (``stacklevel``), so pytest's
``error::DeprecationWarning:flaxinit.*`` filter fails the suite when flaxinit itself still
uses an old name, while user code only sees the warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["module_getattr", "warn_renamed"]


def warn_renamed(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warns that ``old`` is deprecated in favour of ``new``.

    Example:
      >>> import warnings
      >>> with warnings.catch_warnings(record=True) as caught:
      ...     warnings.simplefilter("always")
      ...     warn_renamed("fi.old", "fi.new", stacklevel=2)
      >>> str(caught[0].message)
      'fi.old is deprecated and will be removed in the next release: use fi.new'
    """
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release: use {new}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def module_getattr(
    module: str, renamed: Mapping[str, tuple[str, Callable[[], Any]]]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) that serves renamed names with a warning.

    ``renamed`` maps an old attribute name to ``(new_name, load)``, where ``load()``
    returns the object now found under ``new_name`` (a function, so nothing is imported
    until the old name is used).

    Example:
      >>> import warnings
      >>> getattr_ = module_getattr("flaxinit", {"old": ("flaxinit.new", lambda: 42)})
      >>> with warnings.catch_warnings(record=True) as caught:
      ...     warnings.simplefilter("always")
      ...     getattr_("old")
      42
      >>> caught[0].category.__name__
      'DeprecationWarning'
    """

    def __getattr__(name: str) -> Any:
        if name in renamed:
            new, load = renamed[name]
            warn_renamed(f"{module}.{name}", new)
            return load()
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
