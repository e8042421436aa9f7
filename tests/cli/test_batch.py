"""Batch mode at the command line: one summary table, a rerun that skips, exit 1 when a video fails (--fail-fast,
--quiet), one video keeping the single-video behaviour, `ensemble` on many videos, two ranks under torchrun, and
a batch killed with SIGKILL mid-way that resumes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pointtrack_cli.io.outputs import set_state
from tests.helpers.clips import clips

ROOT = Path(__file__).resolve().parents[2]
LK = ["--model", "lk", "--grid", "3", "--format", "npz", "--no-overlay"]
_SHARD_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PTRACK_RUN_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID")


def rows(output: str) -> dict[str, str]:
    """video -> status cell of the summary table."""
    found = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) >= 5 and cells[4].split(":")[0] in ("tracked", "skipped", "failed", "not run", "missing"):
            found[cells[0]] = cells[4].split(":")[0]
    return found


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _SHARD_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_summary_rerun_and_failures(cli, tmp_path):
    root = clips(tmp_path / "v", "a", "b")
    out = tmp_path / "out"
    res = cli(["track", root, *LK, "--out", out])
    assert res.exit_code == 0, res.output
    assert "ptrack track: 2 videos into" in res.output and rows(res.output) == {"a": "tracked", "b": "tracked"}
    assert set_state(out / "a") == set_state(out / "b") == "complete"
    res = cli(["track", root, *LK, "--out", out])
    assert res.exit_code == 0 and rows(res.output) == {"a": "skipped", "b": "skipped"}

    (root / "aa.mp4").write_bytes(b"not a video")  # sorted between a and b
    res = cli(["track", root, *LK, "--out", out])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert rows(res.output) == {"a": "skipped", "aa": "failed", "b": "skipped"}
    assert "cannot read video" in " ".join(res.output.split())
    res = cli(["track", root, *LK, "--out", out, "--fail-fast"])
    assert res.exit_code == 1 and rows(res.output) == {"a": "skipped", "aa": "failed", "b": "not run"}
    res = cli(["track", root, *LK, "--out", out, "--quiet"])  # quiet: only the failure, one line
    lines = [line for line in res.output.splitlines() if not line.startswith("warning:")]  # unclosed ffmpeg pipes (io/video.py)
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("failed: aa: cannot read video"), res.output


def test_one_video_keeps_the_single_video_behaviour(cli, tmp_path, monkeypatch):
    root = clips(tmp_path / "v", "clip")
    monkeypatch.chdir(tmp_path)
    res = cli(["track", root / "clip", *LK])
    assert res.exit_code == 0 and "ptrack track: " not in res.output  # the single-video summary
    assert set_state(tmp_path / "clip_ptrack") == "complete" and not (tmp_path / "ptrack_out").exists()
    res = cli(["track", root, *LK])  # a folder of videos, even of one: a batch into ./ptrack_out/<name>
    assert res.exit_code == 0 and rows(res.output) == {"clip": "tracked"}
    assert set_state(tmp_path / "ptrack_out" / "clip") == "complete"
    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("PTRACK_RUN_ID", "one-video")):
        monkeypatch.setenv(name, value)
    res = cli(["track", root / "clip", *LK, "--out", tmp_path / "r1"])  # under torchrun: rank 0 tracks the one video
    assert res.exit_code == 0 and "one video only; rank 0 tracks it" in res.output and not (tmp_path / "r1").exists()


def test_ensemble_on_many_videos(cli, tmp_path):
    root = clips(tmp_path / "v", "a", "b")
    out = tmp_path / "out"
    res = cli(["ensemble", root, "--teachers", "lk,lk", "--select", "median", "--grid", "3", "--no-overlay",
               "--out", out])
    assert res.exit_code == 0, res.output
    assert rows(res.output) == {"a": "tracked", "b": "tracked"}
    assert (out / "a" / "selection.npz").is_file() and set_state(out / "b") == "complete"
    res = cli(["ensemble", root, "--candidates", out / "a" / "tracks.npz", "--out", tmp_path / "o2"])
    assert res.exit_code == 2 and "--candidates belong to one video" in " ".join(res.output.split())


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_two_ranks_under_torchrun(tmp_path):
    root = clips(tmp_path / "v", "a", "b", "c", "d")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pointtrack_cli", "track", str(root), *LK, "--out", str(out)]
    res = subprocess.run(cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ptrack track: 4 videos into" in res.stderr and ", 2 ranks" in res.stderr
    assert rows(res.stderr) == {n: "tracked" for n in "abcd"}
    assert "rank 1 of 2: 2 tracked; rank 0 prints the summary" in res.stderr
    for rank, names in ((0, ["a", "c"]), (1, ["b", "d"])):  # every 2nd video of the sorted list
        status = json.loads((out / ".ptrack-batch" / f"rank-{rank}.json").read_text())
        assert status["state"] == "done" and [r["video"] for r in status["rows"]] == names
    assert all(set_state(out / n) == "complete" for n in "abcd")


# A child running `ptrack ARGS` that stops while writing the second video and waits to be killed.
_STOPS_AT_SECOND_VIDEO = r"""
import sys, time
import pointtrack_cli.io.outputs as O

marker, args = sys.argv[1], sys.argv[2:]
real, writes = O.write_point, []


def pause(point, path):
    real(point, path)
    if point.startswith("write:"):
        writes.append(point)
        if len(writes) == 2:
            open(marker, "w").close()
            time.sleep(600)


O.write_point = pause
from pointtrack_cli.cli.app import app
app(args, prog_name="ptrack")
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_a_killed_batch_resumes(cli, tmp_path):
    root = clips(tmp_path / "v", "a", "b", "c")
    out, marker = tmp_path / "out", tmp_path / "paused"
    args = ["track", str(root), *LK, "--out", str(out)]
    with open(tmp_path / "child.err", "wb") as err:
        child = subprocess.Popen([sys.executable, "-c", _STOPS_AT_SECOND_VIDEO, str(marker), *args], cwd=ROOT,
                                 env=child_env(), stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert child.poll() is None, (tmp_path / "child.err").read_text()[-3000:]
            assert time.monotonic() < deadline, "the child did not reach the second video"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert set_state(out / "a") == "complete" and set_state(out / "b") == "incomplete"
    assert not (out / "c").exists()
    res = cli(args)
    assert res.exit_code == 0, res.output
    assert rows(res.output) == {"a": "skipped", "b": "tracked", "c": "tracked"}
    assert all(set_state(out / n) == "complete" for n in "abc")
    assert not [p for p in (out / "b").iterdir() if p.name.startswith(".")]  # the killed run's staging is gone
