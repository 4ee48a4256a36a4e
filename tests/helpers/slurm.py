"""The local one-node SLURM cluster (tools/slurm/local_cluster.sh) as the tests use it: submit, signal,
requeue, wait for a job state."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from tests.helpers.cli import REPO

CLUSTER_SCRIPT = REPO / "tools" / "slurm" / "local_cluster.sh"


def cluster_problem() -> str | None:
    """None when the local cluster takes jobs, after starting it if this process may (root); else why not."""
    if run_quietly([str(CLUSTER_SCRIPT), "status"]) == 0:
        return None
    if os.geteuid() != 0:
        return "no local SLURM cluster and not root (start one: sudo tools/slurm/local_cluster.sh start)"
    conf = Path("/etc/slurm/slurm.conf")
    if run_quietly(["sinfo"]) == 0 and not (conf.is_file() and "local_cluster.sh" in conf.read_text()):
        return "a SLURM cluster other than tools/slurm/local_cluster.sh's is configured here: not submitting to it"
    done = subprocess.run([str(CLUSTER_SCRIPT), "start"], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return f"the local SLURM cluster did not start: {(done.stderr or done.stdout).strip().splitlines()[-1:]}"
    return None


def run_quietly(argv: list[str]) -> int:
    """Exit status of a command, its output discarded (127 when it is not installed)."""
    try:
        return subprocess.run(argv, capture_output=True, timeout=60).returncode
    except FileNotFoundError:
        return 127


def command(*argv: str) -> str:
    """stdout of a SLURM command that must succeed."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr.strip()}"
    return done.stdout


def sbatch(script: Path, args: list[str], sbatch_options: list[str], env: dict[str, str], cwd: Path) -> str:
    """Submit `script ARGS` from `cwd` (the job's SLURM_SUBMIT_DIR); returns the job id."""
    done = subprocess.run(["sbatch", "--parsable", *sbatch_options, str(script), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def job_fields(job: str) -> dict[str, str]:
    """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...)."""
    return dict(re.findall(r"(\w+)=(\S*)", command("scontrol", "show", "job", job)))


def wait_for_job(job: str, states: set[str], timeout: float, restarts: int | None = None) -> dict[str, str]:
    """Wait until the job is in one of `states` (with `restarts` restarts, when given); returns its fields."""
    deadline = time.monotonic() + timeout
    while True:
        fields = job_fields(job)
        if fields["JobState"] in states and (restarts is None or int(fields["Restarts"]) == restarts):
            return fields
        assert time.monotonic() < deadline, f"job {job} still {fields['JobState']} after {timeout} s: {fields}"
        time.sleep(0.5)


def release_requeued(job: str) -> None:
    """A requeued job waits ~2 minutes (Reason=BeginTime) before it may start again: let it start now, as an
    administrator can, so the test does not wait."""
    wait_for_job(job, {"PENDING"}, timeout=120, restarts=1)
    command("scontrol", "update", f"JobId={job}", "StartTime=now")


def wait_for_file(path: Path, job: str, timeout: float) -> None:
    """Wait until `path` exists while the job runs."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        state = job_fields(job)["JobState"]
        assert state in {"PENDING", "RUNNING", "CONFIGURING"}, f"job {job} is {state} before {path.name} appeared"
        assert time.monotonic() < deadline, f"{path.name} did not appear in {timeout} s"
        time.sleep(0.2)
