"""dp_train: a training framework for Depth Pro (sharp monocular metric depth)."""

__version__ = "0.1.0"
