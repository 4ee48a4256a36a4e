"""What a training step logs besides its loss terms: the mixture at work per source, data health and
throughput. Kept apart from the LightningModule, which calls `TrainingLogs.log` once per training batch."""

from __future__ import annotations

import time

import lightning as L
import torch


class TrainingLogs:
    """Per-source samples and loss, the running count of skipped bad records, samples per second."""

    def __init__(self) -> None:
        self._bad_records: torch.Tensor | None = None
        self._last_batch_time: float | None = None

    def log(self, module: L.LightningModule, batch: dict, per_image: torch.Tensor, sources: list[str]) -> None:
        """Log this batch's per-source, data-health and throughput values through `module.log`."""
        self._log_per_source(module, per_image, batch["source"], sources)
        self._log_data_health(module, batch["bad_records"], sources)
        self._log_throughput(module, batch["image"].shape[0])

    @staticmethod
    def _log_per_source(module: L.LightningModule, per_image: torch.Tensor, source: torch.Tensor,
                        sources: list[str]) -> None:
        """Per source: samples in this batch (shows the mixture at work) and their mean loss."""
        for index, name in enumerate(sources):
            chosen = source == index
            module.log(f"train/samples_{name}", chosen.sum().float(), batch_size=1)
            if chosen.any():
                module.log(f"train/loss_{name}", per_image[chosen].mean(), batch_size=int(chosen.sum()))

    def _log_data_health(self, module: L.LightningModule, bad_records: torch.Tensor, sources: list[str]) -> None:
        """Running count of skipped bad records per source on this rank (see data/health.py)."""
        if self._bad_records is None:
            self._bad_records = torch.zeros_like(bad_records)
        self._bad_records += bad_records
        for index, name in enumerate(sources[: len(bad_records)]):
            module.log(f"data/bad_records_{name}", self._bad_records[index].float(), reduce_fx="max")

    def _log_throughput(self, module: L.LightningModule, batch_size: int) -> None:
        """Samples per second over all ranks, from the wall time between training batches."""
        now = time.perf_counter()
        if self._last_batch_time is not None:
            rate = batch_size * module.trainer.world_size / max(now - self._last_batch_time, 1e-9)
            module.log("train/samples_per_s", rate, prog_bar=True, rank_zero_only=True)
        self._last_batch_time = now
