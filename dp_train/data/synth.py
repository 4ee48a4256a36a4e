"""The procedural world moved to ``dp_train.synth``; this name keeps existing imports working."""

from dp_train.synth import *  # noqa: F401,F403
from dp_train.synth import __all__  # noqa: F401
