"""A real ``ptrack track`` process stopped mid-write: SIGKILL at every named write point (the folder a kill there
leaves, taken while the process is paused at it, then a real kill), SIGTERM (one line, exit 143, staging removed),
and a real full disk (a small tmpfs, where mounting is allowed). After each: the previous complete set untouched,
or an incomplete set without a manifest that readers refuse; the next run leaves one clean set, no temporaries."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pointtrack_cli import load_tracks
from pointtrack_cli.errors import PtrackError
from pointtrack_cli.io.identity import file_sha256
from pointtrack_cli.io.outputs import set_state, verify

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

# A child that runs `ptrack ARGS...` (the real CLI: its signal handling included) and pauses at every named write
# point of io/outputs.py: it reports the point through MARKER.<n> and waits for MARKER.<n>.go (or a signal).
_PAUSING_PTRACK = r"""
import json, os, sys, time
import pointtrack_cli.io.outputs as O

marker, args = sys.argv[1], sys.argv[2:]
real, count = O.write_point, [0]


def pause(point, path):
    real(point, path)
    count[0] += 1
    n = count[0]
    part = f"{marker}.{n}.part"
    with open(part, "w") as f:
        json.dump({"point": point, "path": str(path)}, f)
    os.replace(part, f"{marker}.{n}")
    while not os.path.exists(f"{marker}.{n}.go"):
        time.sleep(0.01)


O.write_point = pause
from pointtrack_cli.cli.app import app
app(args, prog_name="ptrack")
"""


class PausingRun:
    """``ptrack ARGS`` in a child process, driven pause by pause."""

    def __init__(self, args: list, work: Path) -> None:
        self.marker, self.err = work / "paused", work / "child.err"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        with open(self.err, "wb") as stderr:
            self.proc = subprocess.Popen([sys.executable, "-c", _PAUSING_PTRACK, str(self.marker), *map(str, args)],
                                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        self.n = 0

    def next_pause(self) -> str | None:
        """Wait for the next pause; its point name, or None when the process ended."""
        self.n += 1
        path, deadline = Path(f"{self.marker}.{self.n}"), time.monotonic() + 180
        while not path.exists():
            if self.proc.poll() is not None:
                return None
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"the child did not reach pause {self.n} within 180 s:\n{self.err.read_text()[-3000:]}")
            time.sleep(0.01)
        return json.loads(path.read_text())["point"]

    def go(self) -> None:
        Path(f"{self.marker}.{self.n}.go").touch()

    def kill(self, sig: int = signal.SIGKILL) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        return self.proc.wait(timeout=120)


def _files(folder: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def previous(tmp_path, png_video, cli) -> tuple[Path, dict[str, str]]:
    """A complete set of job A (lk, 4x4 grid, npz + csv + overlay) and a user's file."""
    out = tmp_path / "out"
    res = cli(["track", png_video, "--model", "lk", "--grid", "4", "--out", out, "--quiet"])
    assert res.exit_code == 0, res.output
    (out / "notes.txt").write_text("mine")
    return out, _files(out)


def _job_b(png_video, out) -> list:
    """Job B: another grid, npz only, replacing A (its csv and overlay must go)."""
    return ["track", png_video, "--model", "lk", "--grid", "3", "--format", "npz", "--no-overlay", "--overwrite",
            "--out", out, "--quiet"]


def _check_state(folder: Path, before: dict[str, str]) -> str:
    """Previous set byte-identical with its manifest, or no manifest and readers refuse: never a mixed set."""
    if (folder / "ptrack.json").exists():
        assert _files(folder) == before
        assert verify(json.loads((folder / "ptrack.json").read_text()), folder, checksums=True) is None
        return "previous"
    assert set_state(folder) == "incomplete"
    with pytest.raises(PtrackError, match="incomplete output set"):
        load_tracks(folder)
    return "incomplete"


def _rerun_leaves_one_clean_set(folder: Path, png_video, cli) -> None:
    res = cli(_job_b(png_video, folder))
    assert res.exit_code == 0, res.output
    assert set(_files(folder)) == {"tracks.npz", "ptrack.json", "notes.txt"}
    assert _hidden(folder) == []  # no staging folder, no temporary file
    assert load_tracks(folder).num_points == 9


def test_sigkill_at_every_write_point(previous, png_video, tmp_path, cli):
    """Paused at each point in turn, the folder is what a SIGKILL there leaves (no cleanup runs while paused):
    each copy holds the previous set or an incomplete one, and a rerun repairs it. Then a real SIGKILL, mid-commit."""
    out, before = previous
    child = PausingRun(_job_b(png_video, out), tmp_path)
    seen = {}
    try:
        while (point := child.next_pause()) is not None:
            snap = tmp_path / "snapshots" / f"{len(seen):02d}"
            shutil.copytree(out, snap, symlinks=True)
            seen[point] = _check_state(snap, before)
            if point == "commit:move:tracks.npz":
                assert child.kill() == -signal.SIGKILL  # a real kill, half-way through the commit
                break
            child.go()
    finally:
        child.kill()
    assert list(seen) == ["write:tracks.npz", "commit:journal", "commit:unlink-manifest", "commit:move:tracks.npz"]
    assert seen == {"write:tracks.npz": "previous", "commit:journal": "previous",
                    "commit:unlink-manifest": "incomplete", "commit:move:tracks.npz": "incomplete"}
    assert _check_state(out, before) == "incomplete"
    assert (out / "notes.txt").read_text() == "mine"
    for snap in sorted((tmp_path / "snapshots").iterdir()):
        _rerun_leaves_one_clean_set(snap, png_video, cli)
    _rerun_leaves_one_clean_set(out, png_video, cli)


def test_sigkill_after_the_last_points(previous, png_video, tmp_path, cli):
    """The rest of the commit: removing the old formats, writing the manifest, removing the staging folder."""
    out, before = previous
    child = PausingRun(_job_b(png_video, out), tmp_path)
    seen = {}
    try:
        while (point := child.next_pause()) is not None:
            if point.startswith(("commit:remove:", "commit:manifest", "commit:cleanup")):
                snap = tmp_path / "snapshots" / point.replace(":", "_")
                shutil.copytree(out, snap, symlinks=True)
                seen[point] = "complete" if point == "commit:cleanup" else _check_state(snap, before)
            if point == "commit:cleanup":
                # The new set is complete: its manifest verifies; only the (journal-only) staging folder remains.
                assert set(_files(out)) == {"tracks.npz", "ptrack.json", "notes.txt"}
                assert verify(json.loads((out / "ptrack.json").read_text()), out, checksums=True) is None
                assert child.kill() == -signal.SIGKILL
                break
            child.go()
    finally:
        child.kill()
    assert seen == {"commit:remove:overlay.mp4": "incomplete", "commit:remove:tracks.csv": "incomplete",
                    "commit:manifest": "incomplete", "commit:cleanup": "complete"}
    assert load_tracks(out).num_points == 9  # complete: readable despite the leftover staging folder
    for snap in sorted((tmp_path / "snapshots").iterdir()):
        _rerun_leaves_one_clean_set(snap, png_video, cli)


@pytest.mark.parametrize("sig,code,line", [
    (signal.SIGTERM, 143, "terminated (signal 15); partial outputs removed"),
    (signal.SIGINT, 130, "interrupted; partial outputs removed"),
])
def test_sigterm_or_ctrl_c_mid_write_is_one_line_and_leaves_the_previous_set(previous, png_video, tmp_path, cli,
                                                                             sig, code, line):
    out, before = previous
    child = PausingRun(_job_b(png_video, out), tmp_path)
    try:
        assert child.next_pause() == "write:tracks.npz"
        assert child.kill(sig) == code
    finally:
        child.kill()
    err = child.err.read_text().strip()
    assert err.splitlines() == [line], err
    assert _check_state(out, before) == "previous"
    assert _hidden(out) == []  # the staging folder went with the run
    _rerun_leaves_one_clean_set(out, png_video, cli)


@pytest.fixture
def small_disk(tmp_path):
    """A 128 KiB tmpfs (root and a kernel that allows it), else the test is skipped."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mnt)], capture_output=True)
    except OSError:
        pytest.skip("no mount command")
    if proc.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {proc.stderr.decode().strip()[:100]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_real_full_disk_is_one_line_and_keeps_the_previous_set(small_disk, png_video, cli):
    out = small_disk / "out"
    res = cli(["track", png_video, "--model", "lk", "--grid", "3", "--format", "npz", "--no-overlay", "--out", out,
               "--quiet"])
    assert res.exit_code == 0, res.output
    before = _files(out)
    # 30x30 points over 24 frames: the CSV alone is ~1 MB, far beyond what is left
    res = cli(["track", png_video, "--model", "lk", "--grid", "30", "--overwrite", "--out", out, "--quiet"])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert text.startswith("error: cannot write") and "No space left on device" in text and "Traceback" not in text
    assert len(res.output.strip().splitlines()) <= 2  # one line (soft-wrapped at most once by the console)
    assert _files(out) == before and _hidden(out) == []
    assert verify(json.loads((out / "ptrack.json").read_text()), out, checksums=True) is None
