"""The per-video loop: each video as its single run would be (arrays and job key), the model built once, a rerun
that skips, a failing video reported while the others go on (or --fail-fast), a model that cannot be built ending
the batch, and ranks merged by rank 0 from their status files and manifests (run here one after another)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import pointtrack_cli.api as api
from pointtrack_cli import load_tracks
from pointtrack_cli.batch import Shard, track_batch
from pointtrack_cli.batch.shard import status_path
from pointtrack_cli.errors import PtrackError
from tests.helpers.clips import clips

LK = dict(model="lk", grid=3, formats="npz", overlay=False)


def statuses(done) -> list[tuple[str, str]]:
    return [(r.video, r.status) for r in done.rows]


def test_each_video_as_its_single_run_then_a_rerun_skips(tmp_path):
    root = clips(tmp_path / "v", "a", "sub/b", "c")
    (root / "c.csv").write_text("t,x,y\n0,10,12\n2,30,20\n")  # c's own queries, beside it
    done = track_batch([root], tmp_path / "out", shard=Shard(), **LK)
    assert statuses(done) == [("a", "tracked"), ("c", "tracked"), ("sub/b", "tracked")] and done.ok
    assert [(r.frames, r.points) for r in done.rows] == [(6, 9), (6, 11), (6, 9)]  # grid 9 + c's 2 queries
    for name, queries in (("a", None), ("c", root / "c.csv")):
        single = api.track_to(tmp_path / "single" / name, root / name, queries=queries, **LK)
        batch = load_tracks(tmp_path / "out" / name / "tracks.npz")
        assert np.array_equal(batch.tracks, single.result.tracks, equal_nan=True)
        manifest = json.loads((tmp_path / "out" / name / "ptrack.json").read_text())
        assert manifest["job_key"] == single.key  # the same job: either run skips the other's outputs
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()}
    again = track_batch([root], tmp_path / "out", shard=Shard(), **LK)
    assert [s for _, s in statuses(again)] == ["skipped"] * 3 and again.ok
    assert [(r.frames, r.points) for r in again.rows] == [(6, 9), (6, 11), (6, 9)]  # as recorded in the manifests
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()} == stamps


def test_the_model_is_built_once_per_setting(tmp_path, monkeypatch):
    built = []
    real = api.build_single_tracker
    monkeypatch.setattr(api, "build_single_tracker", lambda model, **kw: built.append(kw["support_grid"]) or real(model, **kw))
    root = clips(tmp_path / "v", "a", "b", "c")
    assert track_batch([root], tmp_path / "o1", shard=Shard(), **LK).ok
    assert built == [False]  # three videos, one tracker
    (root / "b.csv").write_text("t,x,y\n0,10,12\n")  # explicit queries may get a support grid: a second setting
    built.clear()
    assert track_batch([root], tmp_path / "o2", shard=Shard(), **LK).ok
    assert sorted(built) == [False, True]


def test_a_failing_video_is_reported_and_the_others_go_on_unless_fail_fast(tmp_path):
    root = clips(tmp_path / "v", "a", "c", bad=("b.mp4",))
    done = track_batch([root], tmp_path / "out", shard=Shard(), **LK)
    assert statuses(done) == [("a", "tracked"), ("b", "failed"), ("c", "tracked")] and not done.ok
    assert "cannot read video" in done.rows[1].error and "\n" not in done.rows[1].error
    assert not (tmp_path / "out" / "b").exists()  # a failed video leaves no folder it created
    fast = track_batch([root], tmp_path / "out", fail_fast=True, shard=Shard(), **LK)
    assert statuses(fast) == [("a", "skipped"), ("b", "failed"), ("c", "not run")]
    assert fast.counts == {"tracked": 0, "skipped": 1, "failed": 1, "not run": 1, "missing": 0}


def test_a_model_that_cannot_be_built_ends_the_batch(tmp_path, monkeypatch):
    def broken(model, **kw):
        raise PtrackError("weights unavailable")
    monkeypatch.setattr(api, "build_single_tracker", broken)
    with pytest.raises(PtrackError, match="weights unavailable"):
        track_batch([clips(tmp_path / "v", "a", "b")], tmp_path / "out", shard=Shard(), **LK)
    assert not (tmp_path / "out" / "a").exists() and not (tmp_path / "out" / "b").exists()


def test_ranks_merged_from_status_files_and_manifests(tmp_path):
    root = clips(tmp_path / "v", "a", "b", "c", "d", "e")
    out = tmp_path / "out"
    one = track_batch([root], out, shard=Shard(1, 2, 0, "run-1"), **LK)  # rank 1 first: rank 0 waits for it
    assert not one.merged and statuses(one) == [("b", "tracked"), ("d", "tracked")]
    (out / "d" / "ptrack.json").unlink()  # rank 1 said tracked, but its outputs are gone
    zero = track_batch([root], out, shard=Shard(0, 2, 0, "run-1"), timeout=30, **LK)
    assert zero.merged and [r.rank for r in zero.rows] == [0, 1, 0, 1, 0]
    assert statuses(zero) == [("a", "tracked"), ("b", "tracked"), ("c", "tracked"), ("d", "failed"), ("e", "tracked")]
    assert "no ptrack.json" in zero.rows[3].error and not zero.ok

    # Another run: rank 1's file is of run-1 (stale), and rank 1 never starts: its videos are missing.
    lost = track_batch([root], out, shard=Shard(0, 2, 0, "run-2"), timeout=0.5, **LK)
    assert statuses(lost) == [("a", "skipped"), ("b", "missing"), ("c", "skipped"), ("d", "missing"), ("e", "skipped")]
    assert lost.rows[1].error == "rank 1 did not report within 0.5 s"
    assert json.loads(status_path(out, 0).read_text())["state"] == "done"

    # Rank 1 read the inputs before a clip was added, rank 0 after: rank 1's rows are not taken for this list.
    track_batch([root], out, shard=Shard(1, 2, 0, "run-3"), **LK)
    clips(root, "f")
    odd = track_batch([root], out, shard=Shard(0, 2, 0, "run-3"), timeout=30, **LK)
    assert [(r.video, r.status) for r in odd.rows if r.rank == 1] == [("b", "missing"), ("d", "missing"), ("f", "missing")]
    assert "expanded the inputs to other videos" in odd.rows[1].error


def test_fail_fast_stops_every_rank(tmp_path):
    root = clips(tmp_path / "v", "a", "c", "d", bad=("b.mp4",))  # sorted: a, b (bad), c, d; rank 1 takes b and d
    out = tmp_path / "out"
    one = track_batch([root], out, fail_fast=True, shard=Shard(1, 2, 0, "run-3"), **LK)
    assert statuses(one) == [("b", "failed"), ("d", "not run")]
    zero = track_batch([root], out, fail_fast=True, shard=Shard(0, 2, 0, "run-3"), timeout=30, **LK)
    assert statuses(zero) == [("a", "not run"), ("b", "failed"), ("c", "not run"), ("d", "not run")]
