"""Video input, one family: :class:`VideoReader` streams a file or image folder; :class:`ArrayVideo` holds frames in memory.

Both are the :class:`Video` every tracker takes: frames ``[H, W, 3]`` uint8 RGB in order (``__iter__``) or
all at once (``read_all``), plus where they came from: ``frame_indices`` (source frame numbers after
``start``/``end``/``stride``), ``source_size`` (w, h) and the pixel maps ``to_source``/``from_source`` for the
``max_size`` downscale. ``VideoReader.decode()`` reads a selection once into an ``ArrayVideo`` that keeps
this provenance (what the ensemble needs: every teacher, the verifier and the overlay see the same frames).

Damaged files: ffmpeg conceals corrupt data (it repeats or smears blocks) and goes on, so a damaged video
still yields every frame. :class:`VideoReader` runs ffmpeg at log level ``error`` and counts the lines it
reports while decoding (``decode_errors``, the first few in ``decode_messages``): callers warn about them and
record them; ``strict_decode=True`` makes the first one an error. A stream shorter than its header announces
is trimmed (``num_frames`` shrinks), not an error.
"""
from __future__ import annotations

import math
import re
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Callable, Iterator

import cv2
import imageio_ffmpeg
import numpy as np

from ..errors import PtrackError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def numbered_images(folder: Path) -> list[Path]:
    """Image files of a folder in frame order (numeric part of the name, then the name)."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS]

    def key(p: Path) -> tuple:
        nums = re.findall(r"\d+", p.stem)
        return (int(nums[-1]) if nums else math.inf, p.name)

    return sorted(files, key=key)


class _Decoder:
    """ffmpeg decoding a file to raw RGB frames (the command imageio-ffmpeg's ``read_frames`` runs, so frames are
    identical), with its error lines collected by a thread (a full stderr pipe would block ffmpeg)."""

    def __init__(self, path: str, w: int, h: int) -> None:
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", path,
               "-pix_fmt", "rgb24", "-vcodec", "rawvideo", "-f", "image2pipe", "-"]
        self.size = w * h * 3
        self.errors: list[str] = []
        # Own process group: Ctrl-C in a terminal reaches ptrack, which stops ffmpeg itself (as imageio does).
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=not sys.platform.startswith("win"))
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        for line in self.proc.stderr:
            text = line.decode(errors="replace").strip()
            if text:
                self.errors.append(text)

    def frames(self) -> Iterator[bytes]:
        """Each frame's bytes; at the end of the stream, waits for ffmpeg so every error line is counted."""
        while True:
            buf = self.proc.stdout.read(self.size)
            if len(buf) < self.size:
                break  # end of stream (a partial last frame is dropped, as imageio does not yield it either)
            yield buf
        self.proc.wait()
        self._thread.join(timeout=5)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self._thread.join(timeout=5)
        if not self._thread.is_alive():  # the collector has seen the end of stderr: its pipe can go
            self.proc.stderr.close()


def _count_frames(path: str) -> int:
    """Frame count by stream copy (no decoding: much faster than imageio's decode-based count)."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-i", path, "-map", "0:v:0", "-c", "copy", "-f", "null", "-"]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.decode(errors="ignore"))
    counts = re.findall(rb"frame=\s*(\d+)", proc.stderr)
    return int(counts[-1]) if counts else 0


class Video:
    """Frames and their provenance (see the module docstring); subclasses provide the frames.

    Attributes (after selection and resizing): ``num_frames``, ``height``, ``width``, ``fps``; ``path``;
    ``frame_indices`` ``[T]`` source frame numbers; ``source_size`` (w, h) of the original video;
    ``source_num_frames`` frames in the source; ``scale`` the ``max_size`` factor (1.0: original pixels).
    """

    path: Path
    fps: float
    num_frames: int
    height: int
    width: int
    frame_indices: np.ndarray
    source_size: tuple[int, int]
    source_num_frames: int
    scale: float = 1.0

    def __iter__(self) -> Iterator[np.ndarray]:
        """Yield frames ``[H, W, 3]`` uint8 RGB, in order, one at a time."""
        raise NotImplementedError

    def read_all(self) -> np.ndarray:
        """All selected frames ``[T, H, W, 3]`` uint8."""
        raise NotImplementedError

    def source_frames(self) -> Iterator[np.ndarray]:
        """Selected frames at the original size (for the overlay)."""
        raise NotImplementedError

    def to_source(self, xy: np.ndarray) -> np.ndarray:
        """Pixels of the (possibly resized) frames -> original-video pixels (pixel-centre aware)."""
        if self.scale == 1.0:
            return np.asarray(xy, dtype=np.float64)
        sx, sy = self.source_size[0] / self.width, self.source_size[1] / self.height
        xy = np.asarray(xy, dtype=np.float64)
        return np.stack([(xy[..., 0] + 0.5) * sx - 0.5, (xy[..., 1] + 0.5) * sy - 0.5], axis=-1)

    def from_source(self, xy: np.ndarray) -> np.ndarray:
        """Original-video pixels -> pixels of the frames handed to the tracker."""
        if self.scale == 1.0:
            return np.asarray(xy, dtype=np.float64)
        sx, sy = self.width / self.source_size[0], self.height / self.source_size[1]
        xy = np.asarray(xy, dtype=np.float64)
        return np.stack([(xy[..., 0] + 0.5) * sx - 0.5, (xy[..., 1] + 0.5) * sy - 0.5], axis=-1)


class VideoReader(Video):
    """A :class:`Video` streamed from a video file or image folder (memory does not grow with length)."""

    def __init__(
        self,
        path: str | Path,
        start: int = 0,
        end: int | None = None,
        stride: int = 1,
        max_size: int | None = None,
        strict_decode: bool = False,
    ) -> None:
        self.path = Path(path)
        self.strict_decode = strict_decode
        self.decode_errors = 0  # error lines ffmpeg reported in the worst full pass so far (see the module docstring)
        self.decode_messages: list[str] = []
        if not self.path.exists():
            raise PtrackError(f"video not found: {self.path} (check the path)")
        if stride < 1:
            raise PtrackError(f"--stride must be >= 1, got {stride}")
        if start < 0:
            raise PtrackError(f"--start must be >= 0, got {start}")
        self.is_folder = self.path.is_dir()
        if self.is_folder:
            self._files = numbered_images(self.path)
            if not self._files:
                raise PtrackError(f"no frames: folder {self.path} holds no images ({', '.join(IMAGE_EXTS)})")
            first = self._read_image(self._files[0])
            self.source_num_frames = len(self._files)
            src_h, src_w = first.shape[:2]
            self.fps = 30.0  # image folders carry no rate; DAVIS is 24-30 fps
        else:
            src_w, src_h, self.fps, self.source_num_frames = self._probe_file()
        self.source_size = (int(src_w), int(src_h))
        if end is None:
            end = self.source_num_frames
        if start >= self.source_num_frames:
            raise PtrackError(
                f"--start {start} is beyond the last frame ({self.source_num_frames - 1}) of {self.path.name}"
            )
        if end <= start:
            raise PtrackError(f"empty frame range: --end {end} must be greater than --start {start}")
        end = min(end, self.source_num_frames)
        self.frame_indices = np.arange(start, end, stride, dtype=np.int64)
        self.num_frames = len(self.frame_indices)
        self.scale = 1.0
        if max_size is not None:
            if max_size < 16:
                raise PtrackError(f"--max-size must be at least 16 pixels, got {max_size}")
            longer = max(src_w, src_h)
            if longer > max_size:
                self.scale = max_size / longer
        self.width = max(1, round(src_w * self.scale))
        self.height = max(1, round(src_h * self.scale))

    # -- probing and decoding ------------------------------------------------------------------
    def _probe_file(self) -> tuple[int, int, float, int]:
        try:
            gen = imageio_ffmpeg.read_frames(str(self.path), pix_fmt="rgb24")
            meta = next(gen)
            gen.close()
            nframes = _count_frames(str(self.path))
        except (RuntimeError, OSError, StopIteration, ValueError) as exc:
            msg = str(exc).strip().splitlines()
            raise PtrackError(
                f"cannot read video {self.path}: {msg[-1][:160] if msg else 'ffmpeg failed'} "
                "(the file is corrupt or not a video ffmpeg can decode)"
            ) from None
        w, h = meta.get("source_size") or meta["size"]
        if nframes <= 0:
            raise PtrackError(f"no frames: {self.path} contains no video frames")
        fps = float(meta.get("fps") or 30.0)
        return int(w), int(h), fps, int(nframes)

    def _read_image(self, path: Path) -> np.ndarray:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise PtrackError(f"cannot read image {path} (corrupt or unsupported file)")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def _source_frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """(source index, frame) for the selected frames at the original size."""
        wanted = set(self.frame_indices.tolist())
        last = int(self.frame_indices[-1])
        if self.is_folder:
            for i in self.frame_indices:
                frame = self._read_image(self._files[int(i)])
                if frame.shape[:2] != (self.source_size[1], self.source_size[0]):
                    raise PtrackError(
                        f"image {self._files[int(i)].name} is {frame.shape[1]}x{frame.shape[0]}, "
                        f"but the first frame is {self.source_size[0]}x{self.source_size[1]} (all frames must match)"
                    )
                yield int(i), frame
            return
        w, h = self.source_size
        dec = _Decoder(str(self.path), w, h)
        i = -1
        try:
            for i, buf in enumerate(dec.frames()):
                self._check_decode(dec.errors, i)
                if i > last:
                    break
                if i in wanted:
                    # bytearray: a writable frame (torch.from_numpy warns on read-only buffers)
                    yield i, np.frombuffer(bytearray(buf), dtype=np.uint8).reshape(h, w, 3)
            else:
                self._check_decode(dec.errors, i)  # errors reported after the last frame
        except OSError as exc:
            raise PtrackError(f"decoding {self.path} failed at frame {i + 1}: {exc}") from None
        finally:
            dec.close()
            if len(dec.errors) > self.decode_errors:
                self.decode_errors, self.decode_messages = len(dec.errors), dec.errors[:5]

    def _check_decode(self, errors: list[str], frame: int) -> None:
        if errors and self.strict_decode:
            raise PtrackError(f"{self.path} is damaged: ffmpeg reported a decode error by frame {frame} "
                              f"({errors[0][:120]}); drop --strict-decode to track it anyway")

    # -- FrameSource API -----------------------------------------------------------------------
    def __iter__(self) -> Iterator[np.ndarray]:
        n = 0
        for _, frame in self._source_frames():
            if self.scale != 1.0:
                frame = cv2.resize(frame, (self.width, self.height), interpolation=cv2.INTER_AREA)
            n += 1
            yield frame
        if n < self.num_frames:
            # Containers sometimes announce more frames than they decode; trim so shapes stay consistent.
            self.num_frames = n
            self.frame_indices = self.frame_indices[:n]
            if n == 0:
                raise PtrackError(f"no frames could be decoded from {self.path} (corrupt video)")

    def read_all(self) -> np.ndarray:
        """All selected frames ``[T, H, W, 3]`` uint8 (only for trackers that need the whole clip)."""
        frames = list(self)
        return np.stack(frames) if frames else np.zeros((0, self.height, self.width, 3), np.uint8)

    def source_frames(self) -> Iterator[np.ndarray]:
        """Selected frames at the original size (for the overlay)."""
        for _, frame in self._source_frames():
            yield frame

    def decode(self, progress: Callable[[int], None] | None = None) -> "ArrayVideo":
        """Read the selection once into memory (``progress(1)`` per frame), keeping its provenance."""
        frames = []
        for f in self:
            frames.append(f)
            if progress is not None:
                progress(1)
        arr = np.stack(frames) if frames else np.zeros((0, self.height, self.width, 3), np.uint8)
        return ArrayVideo(arr, self.fps, source=self)


class ArrayVideo(Video):
    """A :class:`Video` over frames already in memory ``[T, H, W, 3]`` uint8.

    source: the video they were read from (``VideoReader.decode``): frame numbers, original size and pixel
    maps come from it. Without one the frames are their own source (frames 0..T-1, original pixels).
    """

    def __init__(self, frames: np.ndarray, fps: float = 30.0, *, source: Video | None = None) -> None:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [T, H, W, 3], got {frames.shape}")
        self.frames = np.ascontiguousarray(frames, dtype=np.uint8)
        self.num_frames, self.height, self.width = self.frames.shape[:3]
        self.fps = float(fps)
        self._source = source
        if source is None:
            self.path = Path("<frames in memory>")
            self.frame_indices = np.arange(self.num_frames, dtype=np.int64)
            self.source_size = (self.width, self.height)
            self.source_num_frames = self.num_frames
            self.scale = 1.0
        else:
            self.path = source.path
            self.frame_indices = np.asarray(source.frame_indices, np.int64)[: self.num_frames]
            self.source_size = tuple(source.source_size)
            self.source_num_frames = int(source.source_num_frames)
            self.scale = float(source.scale)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.frames)

    def read_all(self) -> np.ndarray:
        return self.frames

    def source_frames(self) -> Iterator[np.ndarray]:
        if self._source is not None and self.scale != 1.0:
            return self._source.source_frames()
        return iter(self.frames)


def open_video(
    path: str | Path, start: int = 0, end: int | None = None, stride: int = 1, max_size: int | None = None,
    strict_decode: bool = False,
) -> VideoReader:
    """Open a video file or image folder for streaming; see :class:`VideoReader`."""
    return VideoReader(path, start=start, end=end, stride=stride, max_size=max_size, strict_decode=strict_decode)


def selection_meta(start: int, end: int | None, stride: int, max_size: int | None, video: Video) -> dict:
    """The frame selection as given, and the size tracked at (for a result's ``meta``)."""
    return {"start": start, "end": end, "stride": stride, "max_size": max_size, "tracked_size": [video.width, video.height]}


def decode_report(video: Video, meta: dict) -> None:
    """Record ffmpeg's decode errors of ``video`` in ``meta`` and warn about them (a damaged file still yields
    frames: see the module docstring)."""
    n = int(getattr(video, "decode_errors", 0) or 0)
    meta["decode_errors"] = n
    if n:
        meta["decode_messages"] = list(getattr(video, "decode_messages", []))
        warnings.warn(f"{video.path.name}: ffmpeg reported {n} decode error(s) (the file is damaged; tracks on the "
                      "affected frames may be wrong; --strict-decode refuses such files)", stacklevel=3)
