"""LightningModule that trains Depth Pro: depth objective, optional FOV objective, optimisation, logging."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
import torch
from torch import nn

from dp_train.evaluation.scoring import epoch_logs, first_image_panel, metric_collection, real_images, score_batch
from dp_train.losses import Objective, depth_objective, fov_objective
from dp_train.model import DepthProConfig, build_depth_pro, load_weights
from dp_train.model.lora import LoraConfig, merge_lora
from dp_train.model.network import seam_positions
from dp_train.model.parallelize import parallelize
from dp_train.utils.ranges import POSITIVE, Range, check_ranges
from dp_train.runtime.per_rank import gather_per_rank, own_entry, rng_state, set_rng_state
from dp_train.train.optim import adamw_per_step, parameter_groups
from dp_train.train.step_logs import TrainingLogs
from dp_train.train.curriculum import lr_restarts
from dp_train.train.distill import Teacher
from dp_train.train.trainable import prepare_trainable, trainable_summary
from dp_train.train.schedules import build_schedule, drop_legacy_state

MODEL_RANGES: dict[str, Range] = {
    "trim_fraction": Range(0, 1, high_open=True), "derivative_scales": Range(1), "lr_encoder": POSITIVE,
    "lr_decoder": POSITIVE, "weight_decay": Range(0), "min_lr_ratio": Range(0, 1), "teacher_weight": Range(0),
}
"""Range of each numeric `model` value (a negative LR drives the loss to inf; trimming every pixel leaves none)."""


def build_network(preset: str, network: dict[str, Any] | None) -> nn.Module:
    """Build the network from a preset plus field overrides, naming a bad override field in one line."""
    try:
        cfg = DepthProConfig.preset(preset, **(network or {}))
    except TypeError as err:
        raise ValueError(f"model.network: {err}".replace("DepthProConfig.__init__() ", "")) from None
    return build_depth_pro(cfg)


def float32(output: torch.Tensor) -> torch.autocast:
    """Autocast switched off on `output`'s device: under bf16-mixed / 16-mixed the network runs in half precision
    but the loss does not (the derivative losses' gradient kernels are convolutions, which autocast would run in
    half precision too)."""
    return torch.autocast(output.device.type, enabled=False)


class DepthProModule(L.LightningModule):
    """Trains Depth Pro's depth network (`mode="depth"`) or its FOV head with the rest frozen (`mode="fov"`).

    Args:
        preset: network preset (`depth_pro_l`, `base`, `small`, `tiny`).
        network: overrides of preset fields, e.g. `{vit_img_size: 128, dinov2_weights: dinov2.pth}`.
        init_from: weights to start from: Apple's `depth_pro.pt`, a `.safetensors`, or a previous stage's `.ckpt`.
        init_strict: require `init_from` to fit exactly (False: load what fits, e.g. a checkpoint without FOV head).
        mode: "depth" trains the depth objective, "fov" only the FOV head (the depth network frozen).
        loss: the depth objective's table (dp_train/losses/objective.py): per term a weight, the samples it applies
            to and whether it is SSI; a curriculum stage sets its own.
        trim_fraction: share of worst pixels dropped per real-world image.
        derivative_scales: pyramid levels of the MAGE/MALE/MSGE losses (paper, Eq. 2: M = 6).
        lr_encoder: learning rate of the pretrained ViT encoders (paper, Tab. 16: 1.28e-5 at batch 128).
        lr_decoder: learning rate of the randomly initialised decoder, heads and fusion layers (paper: 1.28e-4).
        weight_decay: AdamW weight decay (not applied to norms, biases, embeddings, layer scales). At 0 (the
            paper's, Tab. 16) AdamW is exactly the paper's Adam: the decoupled decay term vanishes.
        lr_schedule: "constant_step" (the paper's: warm-up, constant, then x `min_lr_ratio` from `decay_at`)
            or "cosine" (warm-up, then cosine decay to `min_lr_ratio`); see dp_train/train/schedules.py.
        warmup_steps: linear LR warm-up: optimizer steps (an int) or a share of the run (a float below 1;
            paper: 0.01).
        min_lr_ratio: the LR at the end of the decay, relative to the peak (paper: x0.1).
        decay_at: share of the run after which "constant_step" drops to `min_lr_ratio` (paper: 1 % warm-up +
            80 % constant = 0.81).
        freeze_vit_norms: keep the ViTs' LayerNorms at their initial (pretrained) values (paper, Tab. 16:
            "Pretrained LayerNorm: Frozen").
        fov_loss: the FOV stage's loss: "l2_fov" (the paper's L2, Sec. 3.3, on the horizontal FOV in radians) or
            "l1_log_focal" (L1 on log focal length); see dp_train/losses/fov.py.
        fsdp_param_dtype: compute dtype of parameters under FSDP2 (`ModelParallelStrategy`); gradients are
            reduced and the optimizer steps in float32 either way.
        compile: `torch.compile` each ViT block and decoder fusion stage (regional; 15-20 % faster steps on an
            H200 at per-GPU batch 2-4, about 40 s of compiling at the first step: results/gpu_h200.md).
        channels_last: keep convolution weights NHWC (6 % faster steps on an H200, same memory).
        boundary_metrics: compute the boundary F1 / recall metrics during validation.
        log_images_every_n_val_steps: log an RGB | GT | prediction | error panel every N validation batches (0: never).
        teacher: weights of a frozen teacher network (ours; `.safetensors`, `.ckpt` or `depth_pro.pt`, built in the
            shape the file records): every training image gets a term matching the teacher's outputs, so image-only
            shards train too (dp_train/train/distill.py; never in the optimizer or the checkpoint).
        teacher_weight: weight of the teacher term next to the ground-truth objective.
        teacher_far: pixels the teacher places farther than this canonical depth (1 / its canonical inverse depth,
            metres at f_px = W) get no teacher term (ours; None: every pixel).
        freeze: parts of the network kept as loaded (ours): `patch_encoder`, `image_encoder`, `fov_encoder`,
            `decoder`, `heads` (dp_train/train/trainable.py).
        lora: low-rank adaptation of the ViTs (ours; dp_train/model/lora.py): the adapted ViTs are frozen and only
            rank-r updates of their linear layers train, at `lora.lr`. Checkpoints keep the factors (exact
            resume); `export` and every loader merge them into Apple's layout. Not under FSDP.
    """

    def __init__(
        self,
        preset: str = "depth_pro_l",
        network: dict[str, Any] | None = None,
        init_from: str | None = None,
        init_strict: bool = True,
        mode: Literal["depth", "fov"] = "depth",
        loss: Objective = Objective(),
        trim_fraction: float = 0.2,
        derivative_scales: int = 6,
        lr_encoder: float = 1.28e-5,
        lr_decoder: float = 1.28e-4,
        weight_decay: float = 0.0,
        lr_schedule: Literal["constant_step", "cosine"] = "constant_step",
        warmup_steps: int | float = 0.01,
        min_lr_ratio: float = 0.1,
        decay_at: float = 0.81,
        freeze_vit_norms: bool = True,
        fov_loss: Literal["l2_fov", "l1_log_focal"] = "l2_fov",
        fsdp_param_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16",
        compile: bool = False,
        channels_last: bool = False,
        boundary_metrics: bool = True,
        log_images_every_n_val_steps: int = 20,
        teacher: str | None = None,
        teacher_weight: float = 1.0,
        teacher_far: float | None = None,
        freeze: list[str] | None = None,
        lora: LoraConfig | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_ranges("model", self.hparams, MODEL_RANGES)
        self.net = build_network(preset, network)
        if init_from:
            load_weights(self.net, init_from, strict=init_strict)
        self.mode = mode
        loss.check("model.loss")
        self.loss_weights = loss
        build_schedule(lr_schedule, warmup_steps, 1, min_lr_ratio, decay_at)  # refuse bad settings before any work
        self.lora = prepare_trainable(self.net, mode, freeze_vit_norms, freeze or [], lora)
        self.teacher = (Teacher(teacher, mode, teacher_weight, derivative_scales, fov_loss, teacher_far)
                        if teacher else None)
        self.eval_metrics = nn.ModuleDict()
        self._step_logs = TrainingLogs()
        self._resumed_rng: dict[str, Any] | None = None

    def configure_model(self) -> None:
        """Apply activation checkpointing (`network.grad_checkpointing`), channels_last, regional compile and, when
        the strategy sets a device mesh (`ModelParallelStrategy`), FSDP2 sharding in `fsdp_param_dtype`
        (dp_train/model/parallelize.py)."""
        hparams = self.hparams
        parallelize(self.net, self.device_mesh, hparams.fsdp_param_dtype, self.net.config.grad_checkpointing,
                    compile=hparams.compile, channels_last=hparams.channels_last)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add every rank's RNG states (a collective: Lightning builds the checkpoint on all ranks)."""
        checkpoint["rng_per_rank"] = gather_per_rank(rng_state())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep this rank's RNG states for the first training batch after the resume (see below); drop what
        earlier versions patched into the LR schedule (dp_train/train/schedules.py: `drop_legacy_state`); merge a
        LoRA checkpoint's factors when this module has none."""
        drop_legacy_state(checkpoint)
        if self.lora is None and "state_dict" in checkpoint:  # a LoRA run's checkpoint evaluated without LoRA
            checkpoint["state_dict"] = merge_lora(checkpoint["state_dict"])
        if "rng_per_rank" in checkpoint:
            self._resumed_rng = own_entry(checkpoint["rng_per_rank"], "RNG state")

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        """Restore the checkpoint's RNG states just before the first batch after a resume: creating the
        data loaders in between draws from them, so restoring at load time would shift every draw."""
        if self._resumed_rng is not None:
            set_rng_state(self._resumed_rng)
            self._resumed_rng = None

    # ------------------------------------------------------------------ setup

    def source_names(self, split: str) -> list[str]:
        """Source names from the datamodule (batch `source` ids index them)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        names = datamodule.source_names(split) if datamodule is not None else []
        return names or ["all"]

    def sequence_sources(self, split: str) -> set[str]:
        """Names of the sources whose samples are frames of clips (`sequence: true`): scored for temporal change."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        sources = datamodule.sources(split) if hasattr(datamodule, "sources") else []
        return {s.name for s in sources if getattr(s, "sequence", False)}

    def setup(self, stage: str) -> None:
        """Create metric collections per evaluated source (registered before DDP wraps the module)."""
        for split in ("val", "test") if stage == "test" else ("val",):
            sequences = self.sequence_sources(split)
            for name in self.source_names(split):
                if f"{split}__{name}" not in self.eval_metrics:
                    self.eval_metrics[f"{split}__{name}"] = metric_collection(
                        self.hparams.boundary_metrics, name in sequences, self.net.config)

    def configure_optimizers(self) -> dict:
        """AdamW (Adam at weight decay 0) with separate encoder / decoder learning rates; the LR schedule per step."""
        hp = self.hparams
        total, restarts = 1, []
        if self._trainer is not None:
            total, restarts = int(self.trainer.estimated_stepping_batches), lr_restarts(self.trainer.callbacks)
        schedule = build_schedule(hp.lr_schedule, hp.warmup_steps, total, hp.min_lr_ratio, hp.decay_at, restarts)
        groups = parameter_groups(self.net, hp.lr_encoder, hp.lr_decoder, hp.weight_decay,
                                  self.lora.lr if self.lora else None)
        rank_zero_info(trainable_summary(self.net))
        return adamw_per_step(groups, schedule)

    # --------------------------------------------------------------- training

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Canonical inverse depth and FOV (degrees) for a normalised batch."""
        return self.net(image)

    @property
    def training_use(self) -> str:
        """What the training samples feed (dp_train/data/samples.py): the mode, or "distill" with a teacher, which
        labels the samples that have no depth or focal length."""
        return self.mode if self.teacher is None else "distill"

    def objective(self, batch: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Loss terms and per-image loss for the current mode (depth and FOV objectives stay separate), plus the
        teacher's term with a `teacher`."""
        if self.mode == "fov":  # the frozen depth network records no autograd graph; its features reach
            pred, fov = self.net(batch["image"])  # the FOV head detached (through forward: FSDP needs the root call)
            with float32(fov):
                terms, per_image = fov_objective(fov.float(), batch["f_px"], batch["image"].shape[-1],
                                                 self.hparams.fov_loss)
        else:
            pred, fov = self.net(batch["image"], with_fov=False)
            with float32(pred):
                terms, per_image = depth_objective(
                    pred.float(), batch["target"], batch["valid"], batch["metric"], batch["synthetic"],
                    batch["sparse"], self.loss_weights, self.hparams.trim_fraction, self.hparams.derivative_scales,
                    seam_positions(self.net.config),
                )
        if self.teacher is None:
            return terms, per_image
        return self.teacher.add_term(terms, per_image, batch["image"], pred, fov)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """One optimisation step's loss, with per-term, per-source, data-health and throughput logs."""
        terms, per_image = self.objective(batch)
        for name, value in terms.items():
            self.log(f"train/{name}", value, batch_size=batch["image"].shape[0], prog_bar=name == "loss")
        self._step_logs.log(self, batch, per_image.detach(), self.source_names("train"))
        return terms["loss"]

    # ------------------------------------------------------------- evaluation

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Per-source metrics on the validation sources."""
        self._evaluation_step("val", batch, batch_idx)

    def test_step(self, batch: dict, batch_idx: int) -> dict[str, Any]:
        """Per-source metrics on the test (benchmark) sources; returns the network's outputs and the scored
        images, which callbacks read (the evaluation report, dp_train/evaluation/report.py)."""
        return self._evaluation_step("test", batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        """Log val/<source>/<metric> and val/<metric> (first source)."""
        self._log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        """Log test/<source>/<metric> and test/<metric> (first source)."""
        self._log_evaluation("test")

    def _evaluation_step(self, split: str, batch: dict, batch_idx: int) -> dict[str, Any]:
        """Update per-source metrics on metric depth (with ground-truth focal) and focal length, at the ground
        truth's resolution where the batch carries it (`test`, `validate`; dp_train/evaluation/scoring.py)."""
        pred, fov = self.net(batch["image"])
        names = self.source_names(split)
        for index, name in enumerate(names[: len(batch["bad_records"])]):  # skipped records, summed over ranks
            self.log(f"{split}/bad_records_{name}", batch["bad_records"][index].float(), reduce_fx="sum",
                     on_step=False, on_epoch=True, sync_dist=True, batch_size=1)
        images = score_batch([self.eval_metrics[f"{split}__{name}"] for name in names], pred, fov, batch)
        every = self.hparams.log_images_every_n_val_steps
        if every and batch_idx % every == 0 and real_images(batch).all():
            self._log_panel(f"{split}/panel_{batch_idx}", batch, pred)
        return {"pred": pred, "fov": fov, "images": images}

    def _log_evaluation(self, split: str) -> None:
        """Compute, log and reset every source's metrics (dp_train/evaluation/scoring.py: `epoch_logs`)."""
        for key, value, prog_bar in epoch_logs(self.eval_metrics, split, self.source_names(split)):
            self.log(key, value, prog_bar=prog_bar)

    def _log_panel(self, key: str, batch: dict, pred: torch.Tensor) -> None:
        """Send an RGB | GT | prediction | error panel of the batch's first image to the logger."""
        logger = self.logger
        if logger is None or not self.trainer.is_global_zero:
            return
        panel = first_image_panel(batch, pred)
        if hasattr(logger, "log_image"):
            logger.log_image(key=key, images=[panel], step=self.global_step)
        elif hasattr(logger.experiment, "add_image"):
            logger.experiment.add_image(key, panel, self.global_step, dataformats="HWC")
