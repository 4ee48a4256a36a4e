"""The network's loop of `predict`: frames in batches through the network, then each one's focal length and
metric depth at its own size; one focal length per clip, and each clip's temporal-stability figure.

A batch holds frames resized to the network's input, of any inputs (images of different sizes batch together:
the resize is per frame, before batching). Every frame's result equals `DepthPro.infer` on it alone up to the
reordering of float sums inside the batched layers (`metric_depth` is shared with `infer`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from dp_train.evaluation.per_image import focal_from_fov
from dp_train.evaluation.temporal import TemporalChange
from dp_train.inference.predict.errors import reason
from dp_train.inference.predict.reading import Frame
from dp_train.model import DepthPro
from dp_train.model.network import metric_depth
from dp_train.utils.exif import focal_35mm_to_px

Forward = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class Prediction:
    """A frame's result: float32 depth (H, W) in metres and its focal length, or the reason it has none."""

    frame: Frame
    depth: np.ndarray | None = None
    focal_px: float | None = None
    focal_source: str | None = None
    error: str | None = None


@dataclass
class Clip:
    """What a clip's frames share: the focal length decided at its first frame, its size, its stability metric."""

    metric: TemporalChange
    focal_px: float | None = None
    focal_source: str | None = None
    size: tuple[int, int] | None = None
    error: str | None = None


def choose_focal(f_px: float | None, focal_35mm: float | None, width: int, height: int) -> tuple[float | None, str]:
    """Focal length in pixels and its source: given > exif > estimated (None, left to the network)."""
    if f_px is not None:
        return f_px, "given"
    if focal_35mm is not None:
        return focal_35mm_to_px(focal_35mm, width, height), "exif"
    return None, "estimated"


class BatchRunner:
    """Runs frames through `forward` (the network, compiled or not) `batch_size` at a time.

    Args:
        model: the network (its device, dtype and heads).
        forward: what runs it: `model` itself or `torch.compile(model)`.
        f_px: the focal length given for every input, or None.
        clip_items: indices of the items that are clips.
        batch_size: frames per forward.
        pad: fill a short last batch up to `batch_size` (repeating its last frame), so a compiled network sees
            one batch shape only and does not compile again for the last batch.
    """

    def __init__(self, model: DepthPro, forward: Forward, f_px: float | None, clip_items: Iterable[int],
                 batch_size: int, pad: bool = False) -> None:
        self.model, self.forward, self.f_px = model, forward, f_px
        self.batch_size, self.pad = batch_size, pad
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.clips = {index: Clip(TemporalChange().to(self.device)) for index in clip_items}

    def predictions(self, frames: Iterable[Frame]) -> Iterator[Prediction]:
        """Each frame's Prediction (a frame that could not be read passes through with its error)."""
        batch: list[Frame] = []
        for frame in frames:
            if frame.error is not None:
                yield Prediction(frame, error=frame.error)
                continue
            batch.append(frame)
            if len(batch) == self.batch_size:
                yield from self._run(batch)
                batch = []
        if batch:
            yield from self._run(batch)

    def temporal_change(self, item: int) -> float | None:
        """A clip's mean frame-to-frame relative depth change (None with fewer than two consecutive frames)."""
        metric = self.clips[item].metric
        if not metric.update_called:
            return None
        value = float(metric.compute()["temporal_change"])
        return value if math.isfinite(value) else None

    @torch.inference_mode()
    def _run(self, batch: list[Frame]) -> Iterator[Prediction]:
        """One forward over the batch, then each frame's focal length and metric depth at its own size. A failure
        (out of memory, say) fails the frames it concerns, as one bad file does, not the run."""
        images = [frame.image for frame in batch]
        images += images[-1:] * (self.batch_size - len(batch) if self.pad else 0)
        with_fov = any(self._needs_estimate(frame) for frame in batch) and self.model.fov is not None
        try:
            canonical, fov = self.forward(torch.stack(images).to(device=self.device, dtype=self.dtype),
                                          with_fov=with_fov)
        except Exception as err:  # noqa: BLE001 - reported per frame, as before batching
            yield from (Prediction(frame, error=reason(err)) for frame in batch)
            return
        for i, frame in enumerate(batch):
            try:
                yield self._predicted(frame, canonical[i:i + 1], None if fov is None else fov[i:i + 1])
            except Exception as err:  # noqa: BLE001 - one frame's failure is reported and skipped
                yield Prediction(frame, error=reason(err))

    def _predicted(self, frame: Frame, canonical: torch.Tensor, fov: torch.Tensor | None) -> Prediction:
        """The frame's focal length and metric depth at its own size (its clip's stability metric updated)."""
        focal, source = self._focal(frame, fov)
        depth = metric_depth(canonical, torch.tensor([focal], device=self.device), frame.height, frame.width)
        if frame.item in self.clips:
            self.clips[frame.item].metric.update(depth, torch.zeros(1), torch.tensor([frame.index]))
        return Prediction(frame, depth[0].cpu().numpy(), focal, source)

    def _needs_estimate(self, frame: Frame) -> bool:
        """Whether the frame's focal length is to come from the FOV head (no --f-px, no EXIF, not yet set for
        its clip)."""
        clip = self.clips.get(frame.item)
        decided = clip is not None and (clip.focal_px is not None or clip.error is not None)
        return self.f_px is None and frame.focal_35mm is None and not decided

    def _focal(self, frame: Frame, fov: torch.Tensor | None) -> tuple[float, str]:
        """The frame's focal length in pixels and its source; for a clip, the one its first frame gave."""
        clip = self.clips.get(frame.item)
        if clip is None:
            return self._own_focal(frame, fov)
        if clip.error is not None:
            raise ValueError(clip.error)
        if clip.size is None:
            clip.size = (frame.width, frame.height)
            try:
                clip.focal_px, clip.focal_source = self._own_focal(frame, fov)
            except ValueError as err:
                clip.error = f"{err} (the clip's first frame, whose focal length the clip takes)"
                raise ValueError(clip.error) from None
        if clip.size != (frame.width, frame.height):
            raise ValueError(f"frame is {frame.width}x{frame.height}, the clip's first frame {clip.size[0]}x"
                             f"{clip.size[1]}: a clip has one size (one focal length in pixels)")
        return clip.focal_px, clip.focal_source

    def _own_focal(self, frame: Frame, fov: torch.Tensor | None) -> tuple[float, str]:
        """Focal length of the frame itself: --f-px, else EXIF, else the FOV head's estimate."""
        focal, source = choose_focal(self.f_px, frame.focal_35mm, frame.width, frame.height)
        if focal is not None:
            return focal, source
        if fov is None:
            raise ValueError("no focal length given (--f-px or EXIF) and the network has no FOV head")
        focal = float(focal_from_fov(fov, frame.width)[0])
        if not (math.isfinite(focal) and focal > 0):
            raise ValueError(f"the FOV head estimated an invalid focal length ({focal:g} px); pass --f-px")
        return focal, source
