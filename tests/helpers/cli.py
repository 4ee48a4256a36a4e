"""Running `python -m dp_train` as a child process, as users do (multi-process strategies need their own process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.paths import REPO



def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child run: this checkout importable, no wandb, one thread per process."""
    return os.environ | {"PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"} | extra


def dp_train_command(command: str, recipe_path: Path, *extra: str) -> list[str]:
    """The argv of `python -m dp_train COMMAND --recipe RECIPE EXTRA...`."""
    return [sys.executable, "-m", "dp_train", command, "--recipe", str(recipe_path), *extra]


def launch(run: Path, command: str, recipe_path: Path, *extra: str) -> None:
    """Run `python -m dp_train COMMAND` in `run` (ranks > 0 are started by Lightning) and require success."""
    done = subprocess.run(dp_train_command(command, recipe_path, *extra), env=child_env(), cwd=run,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def run_dp_train(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m dp_train ARGV` in `cwd`, as typed (the checkout importable), whatever its exit code."""
    return subprocess.run([sys.executable, "-m", "dp_train", *argv], cwd=cwd, env=child_env(), capture_output=True,
                          text=True, timeout=600)


def run_tool(script: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python tools/SCRIPT ARGV` in `cwd`, as typed (the old names of the data commands), whatever its exit code."""
    return subprocess.run([sys.executable, str(REPO / "tools" / script), *argv], cwd=cwd, env=child_env(),
                          capture_output=True, text=True, timeout=600)


def one_error_line(stderr: str) -> str:
    """The single `error:` line of a refused command; fails on a traceback or on more than one error line."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]
