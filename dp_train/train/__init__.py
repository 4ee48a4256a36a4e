"""Training: the LightningModule (training step, optimiser groups, evaluation steps), the curriculum and the
learning-rate schedules."""
