"""Output sets (``io/outputs.py``): the manifest is written last; an injected full disk at every named write point
leaves the previous complete set or a recognisably incomplete one, never a mixed set with a manifest; the next
run removes every temporary; the rerun rule; files ptrack did not write are never touched; umask; locks."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from pointtrack_cli.errors import PtrackError, WriteError
from pointtrack_cli.io import outputs as O
from pointtrack_cli.io.identity import digest, file_sha256
from pointtrack_cli.result import check_set_member

OLD = {"tracks.npz": b"old npz", "tracks.csv": b"old csv", "overlay.mp4": b"old overlay"}
NEW = {"tracks.npz": b"new npz!", "selection.npz": b"new selection"}
OLD_JOB, NEW_JOB = {"model": "lk"}, {"model": "protracker"}
NAMES = ("tracks.npz", "tracks.csv", "overlay.mp4", "selection.npz")


def write_set(folder: Path, files: dict[str, bytes], job: dict, overwrite: bool = False) -> list[Path]:
    with O.OutputSet(folder, names=NAMES, overwrite=overwrite) as outs:
        if outs.decide(digest(job), job):
            return outs.files
        for name, data in files.items():
            with outs.path(name) as p:
                p.write_bytes(data)
        return outs.commit(digest(job), job)


def leftovers(folder: Path) -> list[str]:
    """Staging folders and temporary files: what a finished run must not leave."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def content(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}


def assert_complete(folder: Path, files: dict[str, bytes], job: dict) -> None:
    m = json.loads((folder / "ptrack.json").read_text())
    assert m["job_key"] == digest(job) and m["job"] == job and m["format"] == O.FORMAT and m["ptrack_version"]
    assert [f["name"] for f in m["files"]] == list(files)
    for f in m["files"]:
        assert (folder / f["name"]).read_bytes() == files[f["name"]]
        assert f["size"] == len(files[f["name"]]) and f["sha256"] == file_sha256(folder / f["name"])
    assert O.verify(m, folder, checksums=True) is None


def assert_previous_or_incomplete(folder: Path) -> str:
    """The invariant after any failure: the previous complete set untouched, or no manifest at all."""
    if (folder / "ptrack.json").exists():
        assert_complete(folder, OLD, OLD_JOB)
        assert {k: v for k, v in content(folder).items() if k in NAMES} == OLD
        return "previous"
    assert O.set_state(folder) in ("incomplete", "none")
    return "incomplete"


@pytest.fixture
def old(tmp_path) -> Path:
    out = tmp_path / "out"
    write_set(out, OLD, OLD_JOB)
    (out / "keep.txt").write_text("mine")  # a user's file: never touched
    (out / ".hidden").write_text("mine too")
    return out


def test_manifest_lists_files_and_is_written_last(old):
    assert_complete(old, OLD, OLD_JOB)
    assert leftovers(old) == [".hidden"]
    assert O.set_state(old) == "complete"


def test_rerun_rule_skip_refuse_overwrite(old):
    before = {p.name: p.stat().st_mtime_ns for p in old.iterdir()}
    write_set(old, {"tracks.npz": b"other"}, OLD_JOB)  # same job, complete: skipped, nothing rewritten
    assert {p.name: p.stat().st_mtime_ns for p in old.iterdir()} == before
    with pytest.raises(PtrackError, match=r"another job \(model: \"lk\" -> \"protracker\"\).*--overwrite"):
        write_set(old, NEW, NEW_JOB)
    assert_complete(old, OLD, OLD_JOB)
    write_set(old, NEW, NEW_JOB, overwrite=True)  # replaces it: the old formats not written now go too
    assert_complete(old, NEW, NEW_JOB)
    assert content(old) == {**NEW, "ptrack.json": (old / "ptrack.json").read_bytes(), "keep.txt": b"mine"}
    assert leftovers(old) == [".hidden"]


def test_same_job_with_a_changed_file_is_written_again(old):
    (old / "tracks.csv").write_bytes(b"old cs!")  # same size, other content: only the checksum sees it
    write_set(old, OLD, OLD_JOB)
    assert_complete(old, OLD, OLD_JOB)


POINTS = (["write:tracks.npz", "write:selection.npz", "commit:journal", "commit:unlink-manifest",
           "commit:move:tracks.npz", "commit:move:selection.npz"]
          + [f"commit:remove:{n}" for n in ("overlay.mp4", "tracks.csv")] + ["commit:manifest", "commit:cleanup"])


@pytest.mark.parametrize("point", POINTS)
def test_full_disk_at_every_write_point(old, monkeypatch, point):
    """ENOSPC injected at each named point of a run replacing the set: one WriteError naming the folder or file;
    before the commit the previous set is untouched, during it nothing of ptrack's remains; no staging, no
    temporaries; the next run completes. After the manifest landed (cleanup) the new set is complete."""
    monkeypatch.setenv(O.FAIL_ENV, point)
    with pytest.raises(WriteError, match="No space left on device.*PTRACK_FAIL_AT") as err:
        write_set(old, NEW, NEW_JOB, overwrite=True)
    assert isinstance(err.value, OSError) and str(old) in str(err.value)
    if point == "commit:cleanup":
        assert_complete(old, NEW, NEW_JOB)
    else:
        state = assert_previous_or_incomplete(old)
        assert state == ("previous" if point.startswith("write:") or point == "commit:journal" else "incomplete")
        if state == "incomplete":  # aborted mid-commit: every name the set owned is gone, nothing mixed remains
            assert set(content(old)) == {"keep.txt"}
    assert leftovers(old) == [".hidden"] and (old / "keep.txt").read_text() == "mine"
    monkeypatch.delenv(O.FAIL_ENV)
    write_set(old, NEW, NEW_JOB, overwrite=True)
    assert_complete(old, NEW, NEW_JOB)
    assert set(content(old)) == {"tracks.npz", "selection.npz", "ptrack.json", "keep.txt"}
    assert leftovers(old) == [".hidden"]


def test_a_crash_mid_commit_is_recognised_and_repaired(old, tmp_path):
    """What a SIGKILL between the manifest's removal and the new one leaves (no cleanup ran): readers refuse the
    set; the next run (another job, no --overwrite needed: nothing complete is there) removes the old names the
    journal lists, the staging folder and the stray temporaries, and writes a clean set."""
    staging = old / ".ptrack.json.staging-deadbeef"
    staging.mkdir()
    (staging / "journal.json").write_text(json.dumps({"manifest": "ptrack.json", "owned": sorted(OLD) + ["selection.npz"]}))
    (staging / "selection.npz").write_bytes(b"half")
    (old / "ptrack.json").unlink()
    (old / "tracks.npz").write_bytes(b"new npz!")  # moved in before the crash
    (old / ".tracks.0123abcd.tmp.npz").write_bytes(b"x")  # a temporary of an older ptrack's atomic write
    (old / ".ptrack.4567cdef.tmp.json").write_bytes(b"{")
    assert O.set_state(old) == "incomplete"
    with pytest.raises(PtrackError, match="incomplete output set"):
        check_set_member(old / "tracks.csv")
    write_set(old, {"tracks.npz": b"third"}, {"model": "third"})
    assert_complete(old, {"tracks.npz": b"third"}, {"model": "third"})
    assert set(content(old)) == {"tracks.npz", "ptrack.json", "keep.txt"}
    assert leftovers(old) == [".hidden"]


def test_failure_before_writing_removes_the_folders_it_created(tmp_path):
    out = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError):
        with O.OutputSet(out, names=NAMES) as outs:
            with outs.path("tracks.npz") as p:
                p.write_bytes(b"x")
            raise RuntimeError("tracking failed")
    assert not (tmp_path / "a").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(RuntimeError):
        with O.OutputSet(kept, names=NAMES):
            raise RuntimeError("tracking failed")
    assert kept.is_dir() and list(kept.iterdir()) == []  # existed before: stays


def test_files_and_manifest_honour_the_umask(tmp_path):
    old_mask = os.umask(0o027)
    try:
        write_set(tmp_path / "o", NEW, NEW_JOB)
    finally:
        os.umask(old_mask)
    for p in (tmp_path / "o").iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, p  # 0o666 & ~0o027; mkstemp would give 0o600


@pytest.mark.skipif(O.fcntl is None, reason="needs flock")
def test_a_second_writer_is_refused(tmp_path):
    with O.OutputSet(tmp_path, names=NAMES):
        with pytest.raises(PtrackError, match="another ptrack run is writing"):
            O.OutputSet(tmp_path, names=NAMES).open()
    write_set(tmp_path, NEW, NEW_JOB)  # released


def test_readers_check_sizes_and_manifests(old):
    check_set_member(old / "tracks.csv")
    check_set_member(old / "keep.txt")  # not a set file: passes
    (old / "tracks.csv").write_bytes(b"truncated")
    with pytest.raises(PtrackError, match="modified or truncated"):
        check_set_member(old / "tracks.csv")
    (old / "ptrack.json").write_text("{")
    with pytest.raises(PtrackError, match="not a readable ptrack manifest"):
        check_set_member(old / "tracks.csv")
    with pytest.raises(PtrackError, match="cannot read"):
        write_set(old, NEW, NEW_JOB)


def test_a_manifest_cannot_make_ptrack_delete_outside_the_folder(tmp_path):
    out = tmp_path / "o"
    write_set(out, NEW, NEW_JOB)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    m = json.loads((out / "ptrack.json").read_text())
    m["files"].append({"name": "../victim.txt", "size": 4, "sha256": ""})
    (out / "ptrack.json").write_text(json.dumps(m))
    with pytest.raises(PtrackError, match="not a ptrack manifest"):
        write_set(out, OLD, OLD_JOB, overwrite=True)
    assert victim.read_text() == "keep"
