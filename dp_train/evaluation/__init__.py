"""Evaluation: per-image scoring at the ground truth's resolution, metrics (torchmetrics state and sync), the
evaluation report and the paper's tables it is compared with."""
