"""Surviving a cluster: atomic checkpoints, per-rank state, the FSDP2 strategy's sharded checkpoints read safely,
and SLURM signals, preemption and requeueing."""
