"""Training objectives on canonical inverse depth (terms, the per-stage table) and of the FOV head."""

from dp_train.losses.fov import fov_objective
from dp_train.losses.objective import Objective, Term, depth_objective
from dp_train.losses.terms import derivative_losses, mae, mse, ssi_mae

__all__ = ["Objective", "Term", "depth_objective", "derivative_losses", "fov_objective", "mae", "mse", "ssi_mae"]
