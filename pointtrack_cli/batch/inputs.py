"""Which videos a command's inputs name, in which order, into which output subfolder, with which query file.

Each input is a video file, a folder of numbered images (one video), a folder holding video files and/or image
folders (a batch; walked recursively), or a quoted glob (``"clips/*.mp4"``, ``"data/**/*.mov"``). Rules:

* A folder is a **folder of videos** when it (or a folder below it) holds a video file (:data:`VIDEO_EXTS`) or an
  image folder; its loose images are then ignored (masks, thumbnails). Any other folder is one video (a folder of
  images; without images its reader says "no frames", as for a single video). Hidden entries (``.name``) and folders holding a ptrack output set (``ptrack.json``, or
  the staging folder of a stopped run) are skipped, and so is the output folder with everything below it.
* A glob keeps the files with a video suffix and the folders it matches (read by the folder rules); a file given
  by name is a video whatever its suffix (ffmpeg decides), as for a single video.
* The videos are sorted by absolute path, each once. **Batch mode**: more than one video, or any input a folder
  of videos. One video given as a file or image folder keeps the single-video behaviour.
* Output subfolder (batch mode): the video's path relative to the common parent of all the videos, without its
  suffix (``day1/cat.mp4`` -> ``day1/cat``); where two names would collide (``cat.mp4`` and ``cat.mov``, or a
  folder ``cat``) those keep their suffix. Equal stems in different folders never collide.
* Query file per video (batch mode, no ``--queries``): ``<stem>.csv`` or ``<stem>.json`` beside the video (beside
  an image folder: ``<folder name>.csv``); both present is an error. A video without one gets the grid (or
  ``--grid``/``--point``/``--mask``, which combine with the file as for one video). ``--queries FILE``: one file
  for every video.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import PtrackError
from ..io.outputs import set_state
from ..io.video import IMAGE_EXTS

VIDEO_EXTS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".gif", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts",
              ".mts", ".m2ts", ".3gp", ".ogv")
QUERY_SUFFIXES = (".csv", ".json")
GLOB_CHARS = ("*", "?", "[")


@dataclass(frozen=True)
class VideoInput:
    """One video of a batch: ``path`` (absolute), ``name`` (its output subfolder, ``/``-separated), ``queries``
    (its own query file, or None), ``index`` (its place in the sorted list: rank r of K takes ``index % K == r``)."""

    path: Path
    name: str
    queries: Path | None
    index: int


@dataclass
class Inputs:
    """The expanded inputs: the videos in order, and whether this is a batch (see the module docstring)."""

    videos: list[VideoInput]
    batch: bool

    @property
    def paths(self) -> list[Path]:
        return [v.path for v in self.videos]


def is_glob(text: str) -> bool:
    return any(c in text for c in GLOB_CHARS)


def _holds_outputs(folder: Path) -> bool:
    """A folder with a ptrack output set (complete or stopped): outputs, never inputs."""
    try:
        return set_state(folder) != "none"
    except OSError:
        return False


def _has_images(folder: Path) -> bool:
    try:
        return any(p.suffix.lower() in IMAGE_EXTS and p.is_file() for p in folder.iterdir())
    except OSError:
        return False


def _output_file(path: Path, exclude: Iterable[Path]) -> bool:
    """A file a glob matched inside the output folder or inside an output set (a previous run's overlay.mp4)."""
    real = path.resolve()
    return _holds_outputs(path.parent) or any(Path(e).resolve() in real.parents for e in exclude)


class _Walker:
    """Recursive reading of the folder ``root`` with the skip rules (hidden entries, output sets, link loops, and
    the ``exclude`` folders below ``root``: one that holds ``root`` itself, ``--out .`` say, excludes nothing)."""

    def __init__(self, root: Path, exclude: Iterable[Path]) -> None:
        real = root.resolve()
        self.exclude = [e for e in (Path(p).resolve() for p in exclude) if not (e == real or e in real.parents)]
        self.seen: set[Path] = set()

    def skipped(self, path: Path) -> bool:
        real = path.resolve()
        return any(real == e or e in real.parents for e in self.exclude)

    def folder(self, folder: Path) -> tuple[list[Path], bool]:
        """(videos, is a folder of videos) of ``folder``: ``([folder], False)`` for an image folder."""
        real = folder.resolve()
        if real in self.seen or _holds_outputs(folder):
            return [], True
        self.seen.add(real)
        try:
            entries = sorted(folder.iterdir())
        except OSError as exc:
            raise PtrackError(f"cannot read folder {folder}: {exc.strerror} (check its permissions)") from None
        found: list[Path] = []
        for p in entries:
            if p.name.startswith(".") or self.skipped(p):
                continue
            if p.is_dir():
                found += self.folder(p)[0]
            elif p.suffix.lower() in VIDEO_EXTS and p.is_file():
                found.append(p)
        if found:
            return found, True
        return ([folder], False) if _has_images(folder) else ([], True)


def expand(inputs: Sequence[str | Path], exclude: Iterable[Path] = ()) -> tuple[list[Path], bool]:
    """The videos ``inputs`` name (absolute, sorted, each once) and whether any input was a folder of videos."""
    exclude = list(exclude)
    found: list[Path] = []
    folder_of_videos = False
    for item in inputs:
        text = str(item)
        path = Path(text).expanduser()
        if not path.exists() and is_glob(text):
            matches = [Path(m) for m in sorted(glob.glob(str(path), recursive=True))]
            kept: list[Path] = []
            for m in matches:
                if m.is_dir():
                    videos, many = _Walker(m, exclude).folder(m)
                    kept += videos
                    folder_of_videos |= many and bool(videos)
                elif m.suffix.lower() in VIDEO_EXTS and not _output_file(m, exclude):
                    kept.append(m)
            if not kept:
                raise PtrackError(f"no video matches {text} (video files: {', '.join(VIDEO_EXTS[:6])}, ...; or "
                                  "folders of numbered images)")
            found += kept
        elif path.is_dir():
            videos, many = _Walker(path, exclude).folder(path)
            found += videos or [path]  # nothing inside: one (empty) image folder, which its reader refuses
            folder_of_videos |= many and bool(videos)
        elif path.exists():
            found.append(path)
        else:
            raise PtrackError(f"video not found: {path} (check the path; quote a glob such as \"clips/*.mp4\")")
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p.absolute())
    return sorted(unique.values(), key=lambda p: p.as_posix()), folder_of_videos


def output_names(paths: Sequence[Path]) -> list[str]:
    """Each video's output subfolder: its path relative to the common parent, suffix dropped unless that collides."""
    if not paths:
        return []
    parent = Path(os.path.commonpath([str(p.parent) for p in paths]))
    rel = [p.relative_to(parent) for p in paths]
    short = [r.with_suffix("") if (p.is_file() and r.suffix) else r for p, r in zip(paths, rel)]
    counts: dict[str, int] = {}
    for s in short:
        counts[s.as_posix()] = counts.get(s.as_posix(), 0) + 1
    return [(s if counts[s.as_posix()] == 1 else r).as_posix() for s, r in zip(short, rel)]


def query_file(video: Path) -> Path | None:
    """``<stem>.csv`` or ``<stem>.json`` beside ``video`` (an image folder: ``<name>.csv`` beside it), if present."""
    stem = video.stem if video.is_file() else video.name
    found = [video.with_name(stem + s) for s in QUERY_SUFFIXES if video.with_name(stem + s).is_file()]
    if len(found) > 1:
        raise PtrackError(f"{video.name} has two query files, {found[0].name} and {found[1].name}: keep one")
    return found[0] if found else None


def plan_inputs(inputs: Sequence[str | Path], *, queries: str | Path | None = None,
                exclude: Iterable[Path] = ()) -> Inputs:
    """Expand ``inputs`` (see the module docstring); ``exclude``: folders never read (the output folder).

    In batch mode each video gets its output subfolder name and its query file: ``queries`` (one for all) when
    given, else the file beside it (or None).
    """
    if not inputs:
        raise PtrackError("no input: give a video file, a folder of images, a folder of videos, or a quoted glob")
    paths, folder_of_videos = expand(inputs, exclude)
    batch = len(paths) > 1 or folder_of_videos
    names = output_names(paths)
    if queries is not None or not batch:
        files = [None if queries is None else Path(queries)] * len(paths)
    else:
        files = [query_file(p) for p in paths]
    return Inputs([VideoInput(p, n, q, i) for i, (p, n, q) in enumerate(zip(paths, names, files))], batch)
