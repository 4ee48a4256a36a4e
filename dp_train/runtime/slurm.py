"""The SLURM job this process runs in: its id, and requeueing it."""

from __future__ import annotations

import logging
import os
import re
import subprocess

log = logging.getLogger(__name__)


def slurm_job_id() -> str | None:
    """The job id as `scontrol requeue` wants it (`ARRAYJOB_TASK` for array jobs), or None outside SLURM."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID")
    return job if job and re.fullmatch(r"[0-9_]+", job) else None


def requeue_job() -> None:
    """`scontrol requeue` this SLURM job (the job must be requeueable: `#SBATCH --requeue`)."""
    job = slurm_job_id()
    if job is None:
        log.warning("not inside a SLURM job: nothing to requeue")
        return
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.error("could not requeue SLURM job %s: %s", job, err)
        return
    if done.returncode != 0:
        log.error("scontrol requeue %s failed: %s", job, done.stderr.strip())
    else:
        log.warning("requeued SLURM job %s", job)
