"""tests/lsuv: the shared helpers live beside this file (`import _lsuv_helpers`)."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
