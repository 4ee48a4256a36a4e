"""Reading `predict`'s inputs ahead of the network: every image, every frame of a folder and every frame of a
video, decoded and resized to the network's input on a pool of threads, delivered in input order.

Videos are read with OpenCV's `cv2.VideoCapture` (its FFmpeg backend: mp4, mov, avi, mkv, webm, ...): OpenCV is
already a dependency (the data pipeline resizes with it), so video costs no new package, and the backend applies a
video's rotation tag. PyAV would give finer errors and exact timestamps, which per-frame depth does not need.
A video decodes in order on the reading thread; only the resizing of its frames goes to the pool.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from dp_train.inference.images import image_to_tensor, load_image
from dp_train.inference.predict.errors import reason
from dp_train.inference.predict.inputs import Item
from dp_train.inference.predict.threads import ReadAhead


@dataclass
class Frame:
    """An image or a clip's frame, resized to the network's input, or the reason it could not be read."""

    item: int
    """Index of its input in the run's item list."""
    index: int
    """Frame index within its clip (0 for an image)."""
    name: str
    """What a warning names: the file, or `<video> frame <k>`."""
    image: torch.Tensor | None = None
    """(3, S, S) float32 in [-1, 1] at the network's input size S."""
    width: int = 0
    height: int = 0
    focal_35mm: float | None = None
    error: str | None = None


def network_input(image: np.ndarray, size: int) -> torch.Tensor:
    """H x W x 3 array in [0, 1] -> (3, size, size) in [-1, 1], resized as `DepthPro.infer` resizes (bilinear,
    half-pixel centres), so a batch of these gives what `infer` gives image by image."""
    tensor = image_to_tensor(image)
    if tensor.shape[-2:] == (size, size):
        return tensor
    return F.interpolate(tensor[None], size=(size, size), mode="bilinear", align_corners=False)[0]


def read_file(item: int, index: int, path: Path, size: int) -> Frame:
    """An image file (EXIF orientation applied, its EXIF 35 mm focal length kept) as a Frame."""
    try:
        image, focal_35mm = load_image(path)
        return Frame(item, index, str(path), network_input(image, size), image.shape[1], image.shape[0], focal_35mm)
    except Exception as err:  # noqa: BLE001 - one bad file is reported and skipped, not fatal
        return Frame(item, index, str(path), error=reason(err))


def decoded_frame(item: int, index: int, name: str, bgr: np.ndarray, size: int) -> Frame:
    """A decoded 8-bit BGR video frame as a Frame."""
    rgb = bgr[..., ::-1].astype(np.float32) / 255.0
    return Frame(item, index, f"{name} frame {index}", network_input(rgb, size), bgr.shape[1], bgr.shape[0])


@contextmanager
def quiet_video_log() -> Iterator[None]:
    """Silence OpenCV's and FFmpeg's own console messages while a video is opened and read: a file they cannot
    read is reported once, as predict reports files, not as several lines of library log."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET; read when FFmpeg opens a file
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def video_frames(path: Path) -> Iterator[np.ndarray]:
    """The decoded frames of a video, in order, as H x W x 3 uint8 BGR. Raises ValueError when it cannot be opened
    or holds no frame."""
    with quiet_video_log():
        capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        try:
            if not capture.isOpened():
                raise ValueError("cannot open it as a video (not a video, or a codec this OpenCV build lacks)")
            count = 0
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                count += 1
                yield frame
            if not count:
                raise ValueError("the video holds no frame that decodes")
        finally:
            capture.release()


def video_problem(path: Path) -> str | None:
    """Why the video cannot be read (it does not open, or its first frame does not decode), or None."""
    frames = video_frames(path)
    try:
        next(frames)
    except ValueError as err:
        return str(err)
    finally:
        frames.close()
    return None


def video_length(path: Path) -> int:
    """The frame count a video's container states (0 when unknown or unreadable): for the progress bar only."""
    with quiet_video_log():
        capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT) if capture.isOpened() else 0
        capture.release()
    return max(int(count), 0)


def _jobs(index: int, item: Item, size: int) -> Iterator[Callable[[], Frame]]:
    """One call per frame of the item that returns it read; a video is decoded here, as the calls are made."""
    if not item.is_clip:
        yield partial(read_file, index, 0, item.path, size)
    elif not item.video:
        yield from (partial(read_file, index, k, path, size) for k, path in enumerate(item.frames))
    else:
        try:
            for k, bgr in enumerate(video_frames(item.path)):
                yield partial(decoded_frame, index, k, str(item.path), bgr, size)
        except Exception as err:  # noqa: BLE001 - an unreadable video is reported and skipped
            error = Frame(index, -1, str(item.path), error=reason(err))
            yield lambda: error


def read_frames(items: list[Item], size: int, workers: int, ahead: int) -> Iterator[Frame]:
    """Every frame of `items` in order, read and resized by `workers` threads (as many frames in flight), at most
    `ahead` frames ready before the caller takes them."""

    def produce() -> Iterator[Frame]:
        pending: deque[Future[Frame]] = deque()
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="predict-decode") as pool:
            for index, item in enumerate(items):
                for job in _jobs(index, item, size):
                    pending.append(pool.submit(job))
                    if len(pending) >= workers:
                        yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    return iter(ReadAhead(produce, ahead))
