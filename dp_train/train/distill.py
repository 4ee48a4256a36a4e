"""Distillation: a frozen teacher network whose outputs are targets for the student (`model.teacher`).

Ours: the paper trains no student from a teacher. The teacher is any Depth Pro network a weights file holds (Apple's
`depth_pro.pt`, a `.safetensors` or a training `.ckpt`), built in the shape the file records (`read_weights`,
`config_for`). Every training image gets the teacher term; an image-only sample (written without depth, e.g. by
`make_shards --images DIR --image-only`) gets the teacher term only, a sample with ground truth its usual objective
plus the teacher term.

Choices, ours:
- The term, in `mode="depth"`: MAE + MAGE (multi-scale Scharr gradient error), weight 1.0 each, between the student's
  and the teacher's canonical inverse depth over every pixel, untrimmed: the stage objectives' own terms and units
  (dp_train/losses/), so `teacher_weight: 1.0` weighs the teacher like a ground-truth map. Not scale-invariant:
  canonical inverse depth `f / (W D)` is what both networks output, so matching it passes on the teacher's metric
  scale, the only scale an image-only sample has. MAGE because the teacher's map is dense, like a synthetic ground
  truth, so every derivative is defined, and it passes on the teacher's edges. (A log-space L1 would weigh far
  pixels as much as near ones; MAE on inverse depth weighs near pixels more, as the depth objective does.)
- `model.teacher_far` (ours): pixels the teacher places beyond this canonical depth (1 / C, metres at f_px = W)
  get no teacher term. A teacher's labels are least reliable where its own ground truth had none: sky and beyond
  the sensors' range are invalid in most depth sets, and a network extrapolates there (the toy start gives sky
  canonical depths of 16-41 m, and its sky pulled a toy student's whole map far: results/distillation.md, where
  `teacher_far: 10` takes the student's AbsRel from 1.04 to 0.58).
- In `mode="fov"`: the FOV loss (`model.fov_loss`) with the teacher's FOV as the target (a teacher with an FOV
  head is then required). In depth mode the FOV head is frozen and gets no teacher term.
- Sizes: the student's image batch is resized (bilinear) to the teacher's input and the teacher's map back to the
  student's size. Canonical inverse depth `f_px / (W D)` does not change when a square image is resized (f_px
  scales with W), nor does an FOV, so the targets need no other correction. Shrinking is antialiased.

Kept outside the LightningModule's modules (a plain attribute, not an `nn.Module` child): the teacher is not in
the module's parameters (never in the optimizer, never wrapped as trainable by DDP nor sharded by FSDP), not in its
`state_dict` (checkpoints and exports keep the student's layout), and never switched to train mode. It moves to the
student's device at its first batch and runs under the step's autocast; a copy of the module (EMA) shares it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from dp_train.losses import Objective, depth_objective, fov_objective
from dp_train.model import DepthPro, build_depth_pro
from dp_train.model.weights import check_state_dict_fits, config_for, read_weights

TEACHER_OBJECTIVE = Objective(mae=1.0, mage=1.0)
"""The depth term against the teacher's map (see the module docstring for why)."""


def load_teacher(path: str | Path, mode: str) -> DepthPro:
    """The frozen network of weights file `path`, in the shape the file records (eval mode, no gradients); a
    file that cannot be read or holds no Depth Pro network is one ValueError naming `model.teacher`."""
    try:
        state, shape = read_weights(path)
        with torch.device("meta"):  # shapes only: the file's tensors replace every parameter below
            net = build_depth_pro(config_for(state, shape))
        check_state_dict_fits(net, state, str(path))
        net.load_state_dict(state, assign=True)
    except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise ValueError(f"model.teacher: {message}") from None
    if mode == "fov" and net.fov is None:
        raise ValueError(f"model.teacher: {path} has no FOV head, and mode 'fov' matches the teacher's FOV")
    return net.float().eval().requires_grad_(False)


def resized(x: torch.Tensor, size: int) -> torch.Tensor:
    """A (B, C, S, S) batch at `size` x `size` (bilinear as `DepthPro.infer`; antialiased when shrinking)."""
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < x.shape[-1])


class Teacher:
    """A frozen teacher and the term that matches the student to it (see the module docstring)."""

    def __init__(self, path: str | Path, mode: str, weight: float, scales: int, fov_loss: str,
                 far: float | None = None) -> None:
        if far is not None and not (math.isfinite(far) and far > 0):
            raise ValueError(f"model.teacher_far={far}: must be > 0 (a canonical depth in metres) or null")
        self.net = load_teacher(path, mode)
        self.mode, self.weight, self.scales, self.fov_loss, self.far = mode, weight, scales, fov_loss, far

    def __deepcopy__(self, memo: dict) -> Teacher:
        """Shared, not copied: a copy of the student (EMA's averaged model) needs no second frozen network."""
        return self

    @torch.no_grad()
    def targets(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The teacher's canonical inverse depth at the student's size (float32) and, in FOV mode, its FOV in
        degrees, for a normalised student batch."""
        if next(self.net.parameters()).device != image.device:
            self.net.to(image.device)
        pred, fov = self.net(resized(image, self.net.img_size), with_fov=self.mode == "fov")
        return resized(pred.float(), image.shape[-1]), fov

    def add_term(self, terms: dict[str, torch.Tensor], per_image: torch.Tensor, image: torch.Tensor,
                 pred: torch.Tensor | None, fov: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The student's objective (`terms`, `per_image`) plus `weight` x the teacher term on every image of the
        batch; the term is logged as "teacher" (unweighted). `pred` / `fov`: the student's outputs."""
        target, target_fov = self.targets(image)
        width = image.shape[-1]
        with torch.autocast(image.device.type, enabled=False):  # the loss in float32, as the module's own
            if self.mode == "fov":
                teacher_f_px = 0.5 * width / torch.tan(torch.deg2rad(target_fov.float()) / 2)
                matched, per = fov_objective(fov.float(), teacher_f_px, width, self.fov_loss)
            else:
                near = target * self.far >= 1 if self.far else torch.ones_like(target, dtype=torch.bool)
                flags = torch.ones(len(target), dtype=torch.bool, device=target.device)
                matched, per = depth_objective(pred.float(), target, near, flags, flags, ~flags,
                                               TEACHER_OBJECTIVE, 0.0, self.scales)
        total = terms["loss"] + self.weight * matched["loss"]
        return terms | {"teacher": matched["loss"], "loss": total}, per_image + self.weight * per
