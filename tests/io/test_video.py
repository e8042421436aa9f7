"""Video input: files through ffmpeg, image folders (lossless), frame selection and resizing."""
from __future__ import annotations

import imageio_ffmpeg
import numpy as np
import pytest

from tests.helpers import H, T, W
from pointtrack_cli.errors import PtrackError
from pointtrack_cli.io.video import open_video
from pointtrack_cli.synthetic import translating_frames


def test_mp4_metadata_and_frames(mp4_video, frames):
    r = open_video(mp4_video)
    assert (r.num_frames, r.width, r.height, r.fps) == (T, W, H, 12.0)
    got = r.read_all()
    assert got.shape == (T, H, W, 3) and got.dtype == np.uint8
    # Lossy codec (and 4:2:0 chroma): close to the source, not equal; each decoded frame is nearest to
    # its own source frame, so order and count are right.
    diff = np.abs(got[:, None].astype(np.int16) - frames[None].astype(np.int16)).mean(axis=(2, 3, 4))
    np.testing.assert_array_equal(diff.argmin(axis=1), np.arange(T))
    assert np.diag(diff).max() < 8.0


def test_png_folder_is_lossless(png_video, frames):
    r = open_video(png_video)
    assert (r.num_frames, r.width, r.height) == (T, W, H)
    np.testing.assert_array_equal(r.read_all(), frames)


def test_streaming_yields_one_frame_at_a_time(mp4_video):
    it = iter(open_video(mp4_video))
    first = next(it)
    assert first.shape == (H, W, 3)
    it.close()  # stopping early must not hang or leak ffmpeg


def test_start_end_stride(png_video, frames):
    r = open_video(png_video, start=3, end=20, stride=4)
    np.testing.assert_array_equal(r.frame_indices, [3, 7, 11, 15, 19])
    np.testing.assert_array_equal(r.read_all(), frames[3:20:4])


def test_max_size_downsizes_and_maps_back(png_video):
    r = open_video(png_video, max_size=64)
    assert (r.width, r.height) == (64, 48)
    assert r.read_all().shape == (T, 48, 64, 3)
    xy = np.array([[0.0, 0.0], [127.0, 95.0], [40.25, 17.5]])
    np.testing.assert_allclose(r.to_source(r.from_source(xy)), xy, atol=1e-9)
    # Pixel-centre aware: the centre of the small frame is the centre of the big one.
    np.testing.assert_allclose(r.to_source(np.array([[31.5, 23.5]])), [[63.5, 47.5]])


@pytest.mark.parametrize("ext,codec,pix", [("mov", "libx264", "yuv420p"), ("mkv", "libx264", "yuv420p"),
                                           ("avi", "mpeg4", "yuv420p"), ("webm", "libvpx-vp9", "yuv420p"),
                                           ("gif", "gif", "rgb8")])
def test_other_containers(tmp_path, ext, codec, pix):
    path = tmp_path / f"clip.{ext}"
    w = imageio_ffmpeg.write_frames(str(path), (64, 48), fps=10, codec=codec, pix_fmt_out=pix, macro_block_size=1,
                                    ffmpeg_log_level="error")
    w.send(None)
    for f in translating_frames(5, 48, 64):
        w.send(f)
    w.close()
    r = open_video(path)
    assert (r.num_frames, r.width, r.height) == (5, 64, 48)
    assert r.read_all().shape == (5, 48, 64, 3)


def test_errors(tmp_path, mp4_video):
    with pytest.raises(PtrackError, match="not found"):
        open_video(tmp_path / "nope.mp4")
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(PtrackError, match="cannot read video"):
        open_video(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PtrackError, match="no frames"):
        open_video(tmp_path / "empty")
    with pytest.raises(PtrackError, match="beyond the last frame"):
        open_video(mp4_video, start=T)
    with pytest.raises(PtrackError, match="empty frame range"):
        open_video(mp4_video, start=5, end=5)
