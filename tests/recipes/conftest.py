"""The recipes' tests share `_recipe_helpers` (beside this file)."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
