"""The run's full configuration saved beside its logs, never over an earlier run's.

Lightning's `SaveConfigCallback` either refuses a log folder that already holds a
`config.yaml` or replaces it. Runs share log folders here (WandbLogger's `runs/`,
a resume with `--ckpt_path` into the folder it was started in), so the first
would refuse every second run and the second loses the record of the first.
`VersionedSaveConfig` numbers the file instead, as `ModelCheckpoint` numbers its
checkpoints: `config.yaml`, then `config-v1.yaml`, `config-v2.yaml`, ... A run
whose configuration is already saved there under one of these names (the same
command run again) writes none.
"""

from __future__ import annotations

from itertools import count
from pathlib import Path

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info


class VersionedSaveConfig(SaveConfigCallback):
    """Saves the config to the log folder as the first free `config.yaml`, `config-v1.yaml`, ... (rank 0)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Write the config once per run; every rank calls this (the log folder is a broadcast)."""
        if self.already_saved:
            return
        log_dir = trainer.log_dir
        if trainer.is_global_zero and log_dir is not None:
            text = self.parser.dump(self.config, skip_none=False)
            path = free_path(Path(log_dir) / self.config_filename, text)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "x", encoding="utf-8") as fh:
                    fh.write(text)
                if path.name != self.config_filename:
                    rank_zero_info(f"{path.parent / self.config_filename} belongs to an earlier run: this run's "
                                   f"config is saved as {path}")
        self.already_saved = True


def free_path(path: Path, text: str) -> Path | None:
    """`path`, or the first `<stem>-vN<suffix>` beside it that does not exist; None when one of them on the way
    already holds exactly `text`."""
    for version in count():
        candidate = path if version == 0 else path.with_name(f"{path.stem}-v{version}{path.suffix}")
        if not candidate.exists():
            return candidate
        if candidate.is_file() and candidate.read_text(encoding="utf-8", errors="replace") == text:
            return None
