"""Checkpoints survive interrupted saves: an error half-way through any file, a pair mixed from two saves, and a
real process SIGKILLed mid-write; ``--resume`` then finds the newest complete pair and cleans up."""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors.torch import load_file

import pointtrack_cli.finetune.checkpoint as C
from pointtrack_cli.finetune import run_finetune
from pointtrack_cli.finetune.checkpoint import CheckpointManager, load_state, weights_metadata
from pointtrack_cli.weights.state_dict import read_state_dict
from tests.finetune.runs import copy_run, tiny_config

ROOT = Path(__file__).resolve().parents[2]


def _checkpoint_files(run: Path) -> list[Path]:
    """Every file of ``run`` that carries a checkpoint's name (``last.*``, ``best.*``, ``checkpoints/step_*``)."""
    return sorted([p for p in run.iterdir() if p.is_file() and p.name.split(".")[0] in ("last", "best")]
                  + (sorted(p for p in (run / "checkpoints").iterdir() if not p.name.startswith("."))
                     if (run / "checkpoints").is_dir() else []))


def _digests(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in _checkpoint_files(run)}


def _assert_complete(run: Path) -> None:
    """No file under a checkpoint's name is partial: each one reads in full."""
    for p in _checkpoint_files(run):
        if p.suffix == ".safetensors":
            load_file(str(p))  # checks that the data covers every tensor of the header
        elif p.name.endswith(".state.pt"):
            load_state(p)
        else:
            json.loads(p.read_text())


def _tiny_checkpoint(shift: float) -> tuple[dict, dict]:
    weights = {"fnet.conv1.weight": torch.arange(24.0).reshape(2, 3, 2, 2) + shift, "fnet.conv1.bias": torch.full((2,), shift)}
    state = {"optimizer": {"state": {0: {"exp_avg": torch.ones(3) * shift}}, "param_groups": [{"lr": 1e-5}]},
             "rng": [{"torch": torch.zeros(4, dtype=torch.uint8)}], "best": None}
    return weights, state


class Interrupted(Exception):
    """Stands for whatever stops a save half-way (a full disk, a signal turned into an exception)."""


def _interrupt(monkeypatch, ckpt, where: str) -> None:
    """Make the next ``ckpt.save`` stop at ``where``: half-way through writing the weights / the state file,
    or just before re-pointing ``last.safetensors`` / ``last.state.pt``."""

    def half_then_fail(data: bytes, path) -> None:
        Path(path).write_bytes(data[: len(data) // 2])
        raise Interrupted(where)

    if where == "weights":
        serialize = safetensors.torch.save
        monkeypatch.setattr(C, "save_file",  # the name checkpoint.save_weights calls
                            lambda tensors, filename, metadata=None: half_then_fail(serialize(tensors, metadata=metadata), filename))
    elif where == "state":
        real_save = torch.save

        def save(obj, f) -> None:
            buf = io.BytesIO()
            real_save(obj, buf)
            half_then_fail(buf.getvalue(), f)

        monkeypatch.setattr(torch, "save", save)
    else:
        real_link = C._link_or_copy
        stop = ckpt.last[0] if where == "before-last" else ckpt.last[1]

        def link(src: Path, dst: Path) -> None:
            if dst == stop:
                raise Interrupted(where)
            real_link(src, dst)

        monkeypatch.setattr(C, "_link_or_copy", link)


@pytest.mark.parametrize("where", ["weights", "state", "before-last", "between-last"])
def test_save_interrupted_by_an_error_leaves_a_resumable_checkpoint(tmp_path, monkeypatch, where):
    ckpt = CheckpointManager(tmp_path, keep_last=2)
    w1, s1 = _tiny_checkpoint(1.0)
    w2, s2 = _tiny_checkpoint(2.0)
    ckpt.save(1, w1, {"student": "x"}, s1)
    before = _digests(tmp_path)
    with monkeypatch.context() as mp:
        _interrupt(mp, ckpt, where)
        with pytest.raises(Interrupted):
            ckpt.save(2, w2, {"student": "x"}, s2)
    after = _digests(tmp_path)
    # Only a re-link that completed may have changed a file; nothing partial carries a checkpoint's name.
    assert {k for k in before if after.get(k) != before[k]} == ({"last.safetensors"} if where == "between-last" else set())
    assert not [p.name for p in tmp_path.rglob(".*")]  # the error path removed its temporary file
    _assert_complete(tmp_path)
    w, s, step = ckpt.find_resumable()
    if where in ("weights", "state"):
        assert (w, s, step) == (*ckpt.last, 1)
    else:  # step 2 was fully written before the interruption: resume from it (last.* stale or mismatched)
        assert (w, s, step) == (*ckpt.step_paths(2), 2)
    want = w1 if step == 1 else w2
    assert all(torch.equal(v, want[k]) for k, v in read_state_dict(w).items())
    assert load_state(s)["optimizer"]["state"][0]["exp_avg"][0] == step
    ckpt.save(2, w2, {"student": "x"}, s2)  # the next save repairs last.*
    assert ckpt.find_resumable() == (*ckpt.last, 2)


def test_resume_refuses_a_pair_mixed_from_two_saves_of_one_step(tmp_path, monkeypatch):
    """Two saves of step 2 (e.g. a step redone after a resume), the second stopped between the two last.* links:
    both files say step 2, but they come from different saves."""
    ckpt = CheckpointManager(tmp_path, keep_last=2)
    (wa, sa), (wb, sb) = _tiny_checkpoint(1.0), _tiny_checkpoint(5.0)
    ckpt.save(2, wa, {}, sa)
    with monkeypatch.context() as mp:
        _interrupt(mp, ckpt, "between-last")
        with pytest.raises(Interrupted):
            ckpt.save(2, wb, {}, sb)
    assert weights_metadata(ckpt.last[0])["step"] == "2" and load_state(ckpt.last[1])["step"] == 2
    w, s, step = ckpt.find_resumable()
    assert (w, s, step) == (*ckpt.step_paths(2), 2)
    assert torch.equal(read_state_dict(w)["fnet.conv1.bias"], wb["fnet.conv1.bias"])
    assert load_state(s)["optimizer"]["state"][0]["exp_avg"][0] == 5.0


# A process that saves step STEP of RUN_DIR (new weights, same layout) and stops half-way through writing each
# file: it writes the first half and fsyncs it, tells the parent through MARKER.<n> (n = 1: the weights, 2: the
# state), then waits: after the weights for the parent's go-ahead (MARKER.go), after the state until the parent
# kills it with SIGKILL (no Python cleanup runs, as in a real crash).
_SAVE_THEN_HANG = r"""
import io, itertools, json, os, sys, time
from pathlib import Path

import safetensors.torch
import torch

import pointtrack_cli.finetune.checkpoint as C
from pointtrack_cli.finetune.checkpoint import CheckpointManager, load_state, weights_metadata
from pointtrack_cli.weights.state_dict import read_state_dict

run, marker, step = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ckpt = CheckpointManager(run, keep_last=1)
weights = {k: v + 0.5 for k, v in read_state_dict(ckpt.last[0]).items()}
meta = {k: v for k, v in weights_metadata(ckpt.last[0]).items() if k not in ("format", "step", "save_id")}
state = {k: v for k, v in load_state(ckpt.last[1]).items() if k not in ("step", "save_id")}
pauses = itertools.count(1)


def write_in_two_halves(data, path):
    n = next(pauses)
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        part = Path(f"{marker}.{n}.part")
        part.write_text(json.dumps({"path": str(path), "written": len(data) // 2, "size": len(data)}))
        os.replace(part, f"{marker}.{n}")
        while n == 2 or not os.path.exists(f"{marker}.go"):
            time.sleep(0.01)
        f.write(data[len(data) // 2:])


serialize, real_save = safetensors.torch.save, torch.save
C.save_file = lambda t, f, metadata=None: write_in_two_halves(serialize(t, metadata=metadata), f)


def save(obj, f):
    buf = io.BytesIO()
    real_save(obj, buf)
    write_in_two_halves(buf.getvalue(), f)


torch.save = save
ckpt.save(step, weights, meta, state)
sys.exit(3)
"""


class SavingProcess:
    """:data:`_SAVE_THEN_HANG` in a child process, driven pause by pause."""

    def __init__(self, run: Path, step: int, work: Path) -> None:
        self.marker, self.err = work / "paused", work / "child.err"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        with open(self.err, "wb") as stderr:
            self.proc = subprocess.Popen([sys.executable, "-c", _SAVE_THEN_HANG, str(run), str(self.marker), str(step)],
                                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)

    def wait_for_pause(self, n: int) -> dict:
        """Block until the child is half-way through its ``n``-th file; returns what it wrote."""
        path, deadline = Path(f"{self.marker}.{n}"), time.monotonic() + 120
        while not path.exists():
            if self.proc.poll() is not None:
                pytest.fail(f"the saving process ended ({self.proc.returncode}) before pause {n}:\n"
                            f"{self.err.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the saving process did not reach pause {n} within 120 s")
            time.sleep(0.01)
        return json.loads(path.read_text())

    def resume(self) -> None:
        Path(f"{self.marker}.go").touch()

    def kill(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(timeout=60)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_run_killed_mid_checkpoint_write_keeps_last_checkpoint_and_resumes(stopped_run, videos, weights, tmp_path):
    """A real process saving step 2 is SIGKILLed half-way through writing the state file (after its weights file,
    itself checked while half-written): step 1's files stay byte-identical, nothing partial takes a checkpoint's
    name, and --resume starts from step 1 and cleans up.

    The resume trains no step (``--stop-at 1``) to keep this test short: the files it resumes from are asserted
    byte-identical to ``stopped_run``'s, from which test_resume_gives_the_same_weights continues exactly.
    """
    out = copy_run(stopped_run, tmp_path / "k")
    ckpt = CheckpointManager(out)
    before = _digests(out)
    assert set(before) == {"last.safetensors", "last.state.pt", "best.safetensors", "best.json",
                           "checkpoints/step_0000001.safetensors", "checkpoints/step_0000001.state.pt"}

    def check(info: dict, new_files: set[str]) -> None:
        partial = Path(info["path"])
        # The write goes to a temporary name next to its target, and has really stopped half-way.
        assert partial.name.startswith(".step_0000002.") and partial in ckpt.temporaries()
        assert partial.stat().st_size == info["written"] < info["size"]
        after = _digests(out)
        assert {k: after.get(k) for k in before} == before  # step 1 untouched, byte for byte
        assert set(after) - set(before) == new_files
        _assert_complete(out)
        assert not ckpt.step_paths(2)[1].exists()
        assert ckpt.find_resumable() == (*ckpt.last, 1)

    child = SavingProcess(out, 2, tmp_path)
    try:
        check(child.wait_for_pause(1), set())  # the same files a kill at this point would leave
        child.resume()
        info = child.wait_for_pause(2)
        assert child.kill() == -signal.SIGKILL  # killed mid-write, not finished
    finally:
        child.kill()
    # The step-2 weights were complete (and renamed) but have no state to pair with.
    check(info, {"checkpoints/step_0000002.safetensors"})
    assert weights_metadata(ckpt.step_paths(2)[0])["step"] == "2"
    after_kill = _digests(out)

    resumed = run_finetune(tiny_config(videos, out, weights, resume=True, stop_at=1))  # loads weights, optimizer, RNG
    assert resumed.start_step == 1 and resumed.steps_done == 0
    assert not ckpt.temporaries()  # resume removed what the killed save left
    assert _digests(out) == after_kill  # and touched no checkpoint
