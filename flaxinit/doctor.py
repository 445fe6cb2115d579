"""The doctor's command line: ``python -m flaxinit.doctor`` (installed as ``flaxinit-doctor``).

The comparison itself, and the Python API ``fi.doctor``, live in
:mod:`flaxinit.diagnostics.doctor`; run with ``--help`` for the options.
"""

import sys
import types

from flaxinit.diagnostics.doctor import DoctorError, DoctorReport, doctor, main

__all__ = ["DoctorError", "DoctorReport", "doctor", "main"]


class _CallableModule(types.ModuleType):
    """Importing this module rebinds ``flaxinit.doctor`` from the function to the module
    (Python sets a package's attribute to each submodule it imports); calling the module
    calls the function, so ``fi.doctor(model, batch)`` works either way."""

    def __call__(self, *args, **kwargs):
        return doctor(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
