"""Depth Pro network, presets and weights I/O."""

from dp_train.model.config import PRESETS, DepthProConfig
from dp_train.model.network import DepthPro, build_depth_pro
from dp_train.model.weights import load_weights, read_state_dict, save_weights

__all__ = ["PRESETS", "DepthPro", "DepthProConfig", "build_depth_pro", "load_weights", "read_state_dict", "save_weights"]
