"""Issue 16 at the command line: reruns (skip, refuse, --overwrite), one line for every failure, limits and
warnings, foreign and damaged inputs, hostile files. Kills of a real process: ``tests/io/test_outputs_kill.py``."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

import pointtrack_cli.device as device
import pointtrack_cli.queries as queries_module
from pointtrack_cli import api, load_tracks
from pointtrack_cli.errors import PtrackError, WriteError
from pointtrack_cli.io import writers
from pointtrack_cli.io.outputs import FAIL_ENV
from pointtrack_cli.io.video import open_video
from pointtrack_cli.synthetic import translating_frames, write_mp4
from pointtrack_cli.trackers.lk import LKTracker
from tests.helpers import T


def _one_line_error(res, *needles) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    text = " ".join(res.output.split())
    assert text.count("error:") == 1, text
    text = text[text.index("error:"):]  # after any progress bar of the work done before the failure
    for n in needles:
        assert n in text, text
    return text


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -------------------------------------------------------------------------------------------------------------
# Reruns


def test_rerun_skipped_refused_or_overwritten(cli, png_video, tmp_path):
    out = tmp_path / "o"
    base = ["track", png_video, "--model", "lk", "--grid", "3", "--out", out]
    assert cli(base + ["--quiet"]).exit_code == 0
    first = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert _names(out) == ["overlay.mp4", "ptrack.json", "tracks.csv", "tracks.npz"]

    res = cli(base + ["--quiet"])  # the same job: one line, nothing recomputed (even with --quiet)
    assert res.exit_code == 0 and res.output.strip().startswith("skipped:") and len(res.output.strip().splitlines()) <= 2
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == first

    res = cli(base + ["--format", "npz", "--no-overlay"])  # another job (other files asked for): refused
    _one_line_error(res, "holds the complete outputs of another job", "files", "--overwrite")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == first

    res = cli(base + ["--format", "npz", "--no-overlay", "--overwrite", "--quiet"])  # replaced, old formats gone
    assert res.exit_code == 0, res.output
    assert _names(out) == ["ptrack.json", "tracks.npz"]
    assert json.loads((out / "ptrack.json").read_text())["job"]["files"] == {"formats": ["npz"], "overlay": False}


def test_job_key_follows_inputs_not_out_or_quiet(cli, tmp_path, frames):
    video = write_mp4(frames[:8], tmp_path / "v.mp4", fps=12)
    q = tmp_path / "q.csv"
    q.write_text("t,x,y\n0,20,20\n")
    out = tmp_path / "o"
    base = ["track", video, "--model", "lk", "--queries", q, "--no-overlay", "--out", out]
    assert cli(base + ["--quiet"]).exit_code == 0
    assert cli(base).output.strip().startswith("skipped:")  # --quiet is not part of the job
    assert cli(base[:-1] + [tmp_path / "o2", "--quiet"]).exit_code == 0  # nor is --out: o2 gets the same key
    keys = [json.loads((tmp_path / d / "ptrack.json").read_text())["job_key"] for d in ("o", "o2")]
    assert keys[0] == keys[1]
    q.write_text("t,x,y\n0,21,20\n")  # other queries
    _one_line_error(cli(base), "another job", "queries")
    q.write_text("t,x,y\n0,20,20\n")
    os.utime(video, ns=(1, 1))  # the video replaced (its time changed)
    _one_line_error(cli(base), "another job", "video")
    _one_line_error(cli(base[:-2] + ["--backward", "--out", out]), "another job", "backward")


def test_ensemble_follows_the_same_rules(cli, png_video, tmp_path, monkeypatch):
    out = tmp_path / "e"
    base = ["ensemble", png_video, "--teachers", "lk,lk", "--select", "median", "--grid", "2", "--no-overlay",
            "--out", out, "--quiet"]
    assert cli(base).exit_code == 0
    assert _names(out) == ["ptrack.json", "selection.npz", "tracks.csv", "tracks.npz"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert cli(base).output.strip().startswith("skipped:")
    monkeypatch.setenv(FAIL_ENV, "write:selection.npz")
    _one_line_error(cli(base[:-1] + ["--grid", "3", "--overwrite", "--quiet"]), "selection.npz", "No space left")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous set, untouched
    monkeypatch.delenv(FAIL_ENV)
    _one_line_error(cli(base[:-1] + ["--grid", "3", "--quiet"]), "another job", "queries")
    assert cli(base[:-1] + ["--grid", "3", "--format", "npz", "--overwrite", "--quiet"]).exit_code == 0
    assert _names(out) == ["ptrack.json", "selection.npz", "tracks.npz"]


def test_python_api_rerun_rule(png_video, tmp_path):
    out = tmp_path / "o"
    done = api.track_to(out, png_video, model="lk", grid=2, overlay=False)
    assert not done.skipped and done.result.num_points == 4
    again = api.track_to(out, png_video, model="lk", grid=2, overlay=False)
    assert again.skipped and again.result is None and again.files == done.files
    result = api.track(png_video, model="lk", grid=3)
    with pytest.raises(PtrackError, match="another job"):
        api.write_outputs(result, out, overlay=False)
    files = api.write_outputs(result, out, overlay=False, overwrite=True)
    assert load_tracks(out).num_points == 9 and [p.name for p in files] == ["tracks.npz", "tracks.csv"]


def test_a_failed_run_removes_the_folder_it_created(cli, png_video, tmp_path):
    out = tmp_path / "new" / "o"
    _one_line_error(cli(["track", png_video, "--model", "lk", "--point", "0,500,10", "--out", out]), "outside")
    assert not (tmp_path / "new").exists()
    out.mkdir(parents=True)  # a folder that existed stays
    _one_line_error(cli(["track", png_video, "--model", "lk", "--point", "0,500,10", "--out", out]), "outside")
    assert out.is_dir() and _names(out) == []


def test_files_honour_the_umask(cli, png_video, tmp_path):
    old = os.umask(0o022)
    try:
        assert cli(["track", png_video, "--model", "lk", "--grid", "2", "--out", tmp_path / "o", "--quiet"]).exit_code == 0
    finally:
        os.umask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "o").iterdir()} == {0o644}


# -------------------------------------------------------------------------------------------------------------
# Every failure is one line


def test_write_failures_are_one_line(cli, png_video, tmp_path, monkeypatch):
    monkeypatch.setenv(FAIL_ENV, "write:tracks.csv")
    text = _one_line_error(cli(["track", png_video, "--model", "lk", "--grid", "2", "--out", tmp_path / "o"]),
                           "cannot write", "tracks.csv", "No space left on device", "disk is full")
    assert str(tmp_path / "o") in text
    assert not (tmp_path / "o").exists()  # created by the failed run: removed
    monkeypatch.delenv(FAIL_ENV)

    def no_memory(*a, **k):
        raise MemoryError()

    monkeypatch.setattr(writers, "save_csv", no_memory)
    _one_line_error(cli(["track", png_video, "--model", "lk", "--grid", "2", "--out", tmp_path / "o"]),
                    "out of memory while writing", "tracks.csv")

    def huge(self, *a, **k):
        raise MemoryError("Unable to allocate 74.5 GiB for an array with shape (100000, 100000, 2) and data type float32")

    monkeypatch.setattr(LKTracker, "track", huge)
    _one_line_error(cli(["track", png_video, "--model", "lk", "--grid", "2", "--out", tmp_path / "o"]),
                    "out of memory", "74.5 GiB", "--max-size")

    def gone(self, *a, **k):
        raise PermissionError(13, "Permission denied", "/some/late/file")

    monkeypatch.setattr(LKTracker, "track", gone)
    _one_line_error(cli(["track", png_video, "--model", "lk", "--grid", "2", "--out", tmp_path / "o"]),
                    "Permission denied: /some/late/file")


def test_write_errors_reach_python_callers_as_one_line(png_video, tmp_path, monkeypatch):
    result = api.track(png_video, model="lk", grid=2)
    monkeypatch.setenv(FAIL_ENV, "write:tracks.npz")
    with pytest.raises(WriteError, match="cannot write .*tracks.npz: No space left on device") as err:
        api.write_outputs(result, tmp_path / "o", overlay=False)
    assert isinstance(err.value, OSError) and isinstance(err.value, PtrackError)


def test_grid_zero_and_grids_too_large_for_memory(cli, png_video, tmp_path, monkeypatch):
    _one_line_error(cli(["track", png_video, "--model", "lk", "--grid", "0", "--out", tmp_path / "o"]), "--grid 0")
    monkeypatch.setattr(device, "available_memory", lambda: 8 << 30)
    _one_line_error(cli(["track", png_video, "--model", "lk", "--grid", "100000", "--out", tmp_path / "o"]),
                    "--grid 100000 (10,000,000,000 points over 24 frames) needs about", "TiB", "8.0 GiB available",
                    "fewer points")
    # the tracker's own estimate: protracker keeps the clip and a 256 MiB flow cache
    monkeypatch.setattr(device, "available_memory", lambda: 64 << 20)
    _one_line_error(cli(["track", png_video, "--model", "protracker", "--grid", "5", "--out", tmp_path / "o"]),
                    "tracking 25 points over 24 frames with protracker needs about", "--max-size")
    assert not (tmp_path / "o").exists()


def test_denser_than_pixels_warns_in_one_line(cli, png_video, tmp_path):
    res = cli(["track", png_video, "--model", "lk", "--grid", "120", "--end", "2", "--no-overlay", "--format", "npz",
               "--out", tmp_path / "o", "--quiet"])
    assert res.exit_code == 0, res.output
    warning = [line for line in res.output.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "14,400 points on a 128x96 frame, more points than pixels" in warning[0]
    q = np.zeros((128 * 96 + 1, 3))
    q[:, 1], q[:, 2] = np.arange(len(q)) % 128, (np.arange(len(q)) // 128) % 96
    np.save(tmp_path / "q.npy", q)
    res = cli(["track", png_video, "--model", "lk", "--queries", tmp_path / "q.npy", "--end", "2", "--no-overlay",
               "--format", "npz", "--out", tmp_path / "o2", "--quiet"])
    assert res.exit_code == 0 and "warning: the queries put 12,289 points on one 128x96 frame" in " ".join(res.output.split())


@pytest.mark.parametrize("suffix", [".csv", ".npy", ".json"])
def test_query_files_are_capped(cli, png_video, tmp_path, monkeypatch, suffix):
    monkeypatch.setattr(queries_module, "MAX_QUERY_ROWS", 5)
    rows = [[0, 10 + i, 10] for i in range(6)]
    path = tmp_path / f"q{suffix}"
    if suffix == ".csv":
        path.write_text("t,x,y\n" + "".join(f"{t},{x},{y}\n" for t, x, y in rows))
    elif suffix == ".npy":
        np.save(path, np.array(rows, float))
    else:
        path.write_text(json.dumps(rows))
    _one_line_error(cli(["track", png_video, "--model", "lk", "--queries", path, "--out", tmp_path / "o"]),
                    "more than the 5 a query file may hold")


def test_csv_with_a_utf8_bom_reads(cli, png_video, tmp_path):
    q = tmp_path / "q.csv"
    q.write_bytes("t,x,y\r\n0,20.5,30\r\n".encode("utf-8-sig"))  # as Excel saves "CSV UTF-8"
    res = cli(["track", png_video, "--model", "lk", "--queries", q, "--no-overlay", "--out", tmp_path / "o", "--quiet"])
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(load_tracks(tmp_path / "o").queries, [[0, 20.5, 30]])


def test_nothing_to_write_and_weights_for_weight_free_trackers_are_errors(cli, png_video, tmp_path):
    _one_line_error(cli(["track", png_video, "--model", "lk", "--format", "", "--no-overlay", "--out", tmp_path / "o"]),
                    "nothing to write")
    _one_line_error(cli(["ensemble", png_video, "--teachers", "lk", "--select", "median", "--format", "",
                         "--no-overlay", "--out", tmp_path / "o"]), "nothing to write")
    w = tmp_path / "w.pth"
    torch.save({"x": torch.zeros(1)}, w)
    _one_line_error(cli(["track", png_video, "--model", "lk", "--weights", w, "--out", tmp_path / "o"]),
                    "--weights is not used by --model lk")
    _one_line_error(cli(["track", png_video, "--model", "protracker", "--weights", w, "--out", tmp_path / "o"]),
                    "--weights with --model protracker is only used by --features realtracker")
    _one_line_error(cli(["track", png_video, "--model", "protracker", "--resolution", "8x8", "--grid", "4",
                         "--out", tmp_path / "o"]), "--resolution 8x8")
    assert not (tmp_path / "o").exists()


# -------------------------------------------------------------------------------------------------------------
# Damaged video


@pytest.fixture(scope="module")
def damaged_mp4(tmp_path_factory) -> Path:
    """A 48-frame H.264 mp4 with 200 random bytes written over three places in its middle."""
    frames = np.stack(list(translating_frames(48, 96, 128, (0.7, 0.3), seed=3)))
    path = write_mp4(frames, tmp_path_factory.mktemp("damaged") / "damaged.mp4", fps=12)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for frac in (0.4, 0.5, 0.6):
        i = int(len(data) * frac)
        data[i:i + 200] = rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def test_decode_errors_are_counted_warned_and_strict(cli, damaged_mp4, mp4_video, tmp_path):
    res = cli(["track", damaged_mp4, "--model", "lk", "--grid", "2", "--no-overlay", "--out", tmp_path / "o"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "warning: damaged.mp4: ffmpeg reported" in text and "decode error" in text and "--strict-decode" in text
    assert "decode errors" in text  # the summary row
    r = load_tracks(tmp_path / "o")
    assert r.num_frames == 48 and r.meta["decode_errors"] > 0 and "error while decoding" in " ".join(r.meta["decode_messages"])
    _one_line_error(cli(["track", damaged_mp4, "--model", "lk", "--grid", "2", "--strict-decode", "--out", tmp_path / "s"]),
                    "is damaged: ffmpeg reported a decode error", "drop --strict-decode")
    assert not (tmp_path / "s").exists()
    clean = open_video(mp4_video, strict_decode=True)  # an intact file decodes without any
    assert len(list(clean)) == T and clean.decode_errors == 0


# -------------------------------------------------------------------------------------------------------------
# Foreign track files (ensemble --candidates and load_tracks)


def _foreign(tmp_path: Path, name: str, **changes) -> Path:
    t, n = T, 4
    arrays = {"tracks": np.full((t, n, 2), 20.0, np.float32), "visibility": np.ones((t, n), bool),
              "queries": np.array([[0, 20, 20]] * n, np.float32), "frame_indices": np.arange(t), "fps": np.float64(12),
              "size": np.array([128, 96]), "meta": np.str_("{}")}
    arrays.update(changes)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(tmp_path / name, **arrays)
    return tmp_path / name


@pytest.mark.parametrize("change,needle", [
    ({"tracks": np.full((T, 4, 2), 20 + 1j)}, "array 'tracks' holds complex values"),
    ({"tracks": np.full((T, 4, 2), "20")}, "array 'tracks' holds string values"),
    ({"tracks": np.full((T, 4, 2), 20, np.int64)}, "array 'tracks' holds int64 values"),
    ({"tracks": np.full((T, 4, 3), 20.0)}, "array 'tracks' has shape [24, 4, 3], expected [?, ?, 2]"),
    ({"tracks": np.full((T, 4, 2), 1e30)}, "array 'tracks' has a coordinate 1e+30"),
    ({"tracks": np.full((T, 4, 2), np.inf)}, "array 'tracks' holds infinite values"),
    ({"visibility": np.ones((T, 5), bool)}, "array 'visibility' has shape [24, 5], expected [24, 4]"),
    ({"visibility": np.full((T, 4), "yes")}, "array 'visibility' holds string values"),
    ({"queries": np.zeros((4, 2))}, "array 'queries' has shape [4, 2], expected [4, 3]"),
    ({"fps": np.str_("fast")}, "array 'fps' holds string values"),
    ({"meta": np.str_("{not json")}, "array 'meta' is not a JSON object"),
])
def test_foreign_track_files_are_checked(tmp_path, change, needle):
    path = _foreign(tmp_path, "foreign.npz", **change)
    with pytest.raises(PtrackError) as err:
        load_tracks(path)
    assert str(path) in str(err.value) and needle in str(err.value), str(err.value)


def test_candidate_files_checked_at_the_command_line(cli, png_video, tmp_path):
    ok = _foreign(tmp_path, "ok.npz")
    assert load_tracks(ok).num_points == 4 and np.isnan(np.nan)  # the well-formed file passes
    far = _foreign(tmp_path, "far.npz", tracks=np.full((T, 4, 2), 1e30, np.float32))
    _one_line_error(cli(["ensemble", png_video, "--candidates", ok, far, "--select", "median", "--out", tmp_path / "o"]),
                    "far.npz", "coordinate 1e+30")
    bare = _foreign(tmp_path, "bare.npz", queries=None)
    _one_line_error(cli(["ensemble", png_video, "--candidates", bare, "--select", "median", "--out", tmp_path / "o"]),
                    "bare.npz", "no 'queries' array")
    assert not (tmp_path / "o").exists()


# -------------------------------------------------------------------------------------------------------------
# Hostile weights


def test_refused_weights_do_not_quote_torchs_hint(cli, png_video, tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "obj": Path("x")}, evil)
    text = _one_line_error(cli(["track", png_video, "--model", "realtracker-offline", "--weights", evil, "--out",
                                tmp_path / "o"]), "holds Python objects", "ptrack refuses such files")
    assert "weights_only" not in text and "trust" not in text
