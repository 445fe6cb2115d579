"""tests/sharding: the GPT-style test models live beside this file (`import gpt_models`)."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
