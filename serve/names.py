"""The rule a served thing's name follows: it names Triton models and files (a model's, a ControlNet's, a LoRA's)."""

import re

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
"""A name that names Triton models and files (a ControlNet's, a served model's)."""
NAME_RULE = "lower case letters, digits, - and _ (at most 32, the first a letter or digit)"
DEFAULT_MODEL = "easel-default"
"""The name the embedded default model is served under."""
