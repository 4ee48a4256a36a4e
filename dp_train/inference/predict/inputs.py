"""What `predict` reads and where each result goes: images, videos and folders of frames found under `--input`,
their output paths, and the refusal to replace anything that is already there."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dp_train.inference.predict.errors import UsageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
"""File name endings (compared lower-case) taken as images when scanning a directory."""
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg"})
"""File name endings (compared lower-case) taken as videos: each is a clip."""
OUTPUT_SUFFIXES = (".npy", ".png")
"""Files written per image or frame: `<stem>.npy` and `<stem>.png`."""
SUMMARY_FILES = ("summary.csv", "summary.json")


@dataclass(frozen=True)
class Item:
    """One input of the run: an image, or a clip (a video file, or a folder of frames read in name order).

    `output` is an image's output path without suffix, or a clip's output folder (frame k goes to
    `<output>/<k:06d>.npy` and `.png`)."""

    path: Path
    output: Path
    frames: tuple[Path, ...] = ()
    video: bool = False

    @property
    def is_clip(self) -> bool:
        """Whether the item is a clip (several frames, one focal length, a temporal-stability figure)."""
        return self.video or bool(self.frames)


def frame_name(index: int) -> str:
    """A clip's output stem of frame `index`: six digits, so names sort in frame order."""
    return f"{index:06d}"


def natural_key(path: Path) -> list[object]:
    """Sort key that puts `frame_2` before `frame_10` (digit runs compared as numbers)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def find_items(input_path: Path, output_dir: Path, recursive: bool = False, sequence: bool = False) -> list[Item]:
    """The inputs to process, sorted by path: `input_path` itself if a file (a video suffix makes it a clip),
    else the images and videos in the directory (`recursive`: and below), skipping any under `output_dir`. With
    `sequence`, the images of each folder are one clip instead of separate images."""
    if not input_path.exists():
        raise UsageError(f"input path not found: {input_path}")
    if input_path.is_file():
        if sequence and input_path.suffix.lower() not in VIDEO_SUFFIXES:
            raise UsageError(f"--sequence needs a folder of frames or a video file, got {input_path}")
        paths = [input_path]
    else:
        candidates = input_path.rglob("*") if recursive else input_path.iterdir()
        nested = output_dir if output_dir.resolve() != input_path.resolve() else None
        paths = sorted(p for p in candidates if p.is_file() and _is_input(p) and not _is_within(p, nested))
    videos = [p for p in paths if p.suffix.lower() in VIDEO_SUFFIXES]
    images = [p for p in paths if p not in set(videos)]
    if sequence and input_path.is_dir():
        folders: dict[Path, list[Path]] = {}
        for image in images:
            folders.setdefault(image.parent, []).append(image)
        clips = [_frame_clip(folder, sorted(frames, key=natural_key), input_path, output_dir)
                 for folder, frames in folders.items()]
        singles = videos
    else:
        clips, singles = [], videos + images
    items = clips + [Item(p, stem, video=p in set(videos)) for p, stem in zip(singles, _stems(singles, input_path,
                                                                                              output_dir))]
    return sorted(items, key=lambda item: item.path)


def _is_input(path: Path) -> bool:
    """Whether a file found in a scanned directory is an image or a video (by its suffix)."""
    return path.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES


def _is_within(path: Path, directory: Path | None) -> bool:
    """Whether `path` lies inside `directory` (both resolved; never when `directory` is None)."""
    return directory is not None and directory.resolve() in path.resolve().parents


def _frame_clip(folder: Path, frames: list[Path], input_path: Path, output_dir: Path) -> Item:
    """A folder of frames as one clip, written to `<output>/<the folder's path from the input>`, or to
    `<output>/<the input's name>` for the input folder's own frames."""
    relative = folder.relative_to(input_path)
    return Item(folder, output_dir / (relative if relative.parts else input_path.name), frames=tuple(frames))


def _stems(paths: list[Path], input_path: Path, output_dir: Path) -> list[Path]:
    """Output path without suffix for each image or video; same-stem inputs in one folder get `<stem>_<ext>`."""
    root = input_path if input_path.is_dir() else input_path.parent
    relative = [p.relative_to(root) for p in paths]
    plain = [rel.parent / rel.stem for rel in relative]
    counts: dict[Path, int] = {}
    for stem in plain:
        counts[stem] = counts.get(stem, 0) + 1
    return [
        output_dir / (stem if counts[stem] == 1 else stem.parent / f"{rel.stem}_{rel.suffix[1:].lower()}")
        for stem, rel in zip(plain, relative)
    ]


def targets(item: Item) -> list[Path]:
    """The files the item's outputs will be (a video's frame count is unknown before it is read: none)."""
    if not item.is_clip:
        return [item.output.with_name(item.output.name + suffix) for suffix in OUTPUT_SUFFIXES]
    return [item.output / (frame_name(k) + suffix) for k in range(len(item.frames)) for suffix in OUTPUT_SUFFIXES]


def check_outputs(items: list[Item], output_dir: Path, overwrite: bool) -> None:
    """Never replace an input file. Unless `overwrite`, also refuse to write beside input images or frames (a
    later run would read the outputs as inputs), to replace any existing file (outputs of an earlier run, or the
    user's) and to write a video's frames into a folder that holds files."""
    files = [target for item in items for target in targets(item)] + [output_dir / n for n in SUMMARY_FILES]
    inputs = {p.resolve() for item in items for p in (item.frames or (item.path,))}
    for target in files:
        if target.resolve() in inputs:
            raise UsageError(f"output {target} would overwrite an input image; choose another --output")
    if overwrite:
        return
    written = {p.parent.resolve() for p in files[:-len(SUMMARY_FILES)]}
    beside = written & {p.parent for p in inputs}
    if beside:
        raise UsageError(f"--output {output_dir} would put outputs beside the input images in {min(beside)}; choose "
                         "another folder (or pass --overwrite)")
    existing = [t for t in files if t.exists()] + [i.output for i in items if i.video and _holds_files(i.output)]
    if existing:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise UsageError(f"--output {output_dir} already holds {existing[0].name}{more}: pass --overwrite to replace "
                         "them, or choose another folder")


def _holds_files(folder: Path) -> bool:
    """Whether `folder` exists and has anything in it."""
    return folder.is_dir() and any(folder.iterdir())
