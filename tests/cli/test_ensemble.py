"""`ptrack ensemble` end to end: fixture frames as PNGs, candidates as tracks.npz files, fill-rule weights as .pt."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pointtrack_cli.api import ensemble
from pointtrack_cli.ensemble import run as ensemble_run
from pointtrack_cli.errors import PtrackError
from pointtrack_cli.io.video import ArrayVideo
from pointtrack_cli.io.writers import save_npz
from pointtrack_cli.result import TrackResult, load_tracks
from pointtrack_cli.synthetic import write_png_folder
from tests.helpers import FIXTURES, run_cli
from tests.helpers.verifier_weights import fill_state_dict

FIX = FIXTURES / "verifier" / "case_s_T8_48x64.npz"


def invoke(args):
    return run_cli(["ensemble", *args])


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """PNG frames, one tracks.npz per candidate (ptrack schema) and a fill-rule checkpoint."""
    root = tmp_path_factory.mktemp("ensemble")
    with np.load(FIX) as z:
        data = {k: z[k] for k in z.files}
    T, N, M, _ = data["candidate_tracks"].shape
    frames = write_png_folder(data["video"], root / "frames")
    files = []
    for m in range(M):
        r = TrackResult(
            tracks=data["candidate_tracks"][:, :, m], visibility=data["candidate_visibility"][:, :, m],
            visibility_prob=data["candidate_visibility"][:, :, m].astype(np.float32), confidence=np.ones((T, N), np.float32),
            queries=data["queries"], frame_indices=np.arange(T), fps=30.0, size=(data["video"].shape[2], data["video"].shape[1]),
            model=f"teacher{m}",
        )
        files.append(save_npz(r, root / f"cand{m}.npz"))
    weights = root / "verifier_fill.pt"
    torch.save({"model": {"module." + k: v for k, v in fill_state_dict().items()}, "epoch": 0}, weights)
    return data, frames, files, weights, root


def test_cli_reproduces_fixture_selection(case):
    data, frames, files, weights, root = case
    out = root / "out_verifier"
    res = invoke([frames, "--candidates", *files, "--verifier-weights", weights, "--out", out, "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "cand0.npz" in res.output  # the summary table of choices
    tracks = load_tracks(out / "tracks.npz")
    clear = data["top2_margin_fp64"] > 5e-4
    assert clear.all()  # case s has no near-tie
    assert np.array_equal(tracks.tracks, data["selected_tracks"])
    assert np.array_equal(tracks.visibility, data["selected_visibility"])
    assert tracks.model == "ensemble" and np.array_equal(tracks.queries, data["queries"])
    with np.load(out / "selection.npz", allow_pickle=False) as sel:
        assert np.array_equal(sel["chosen"], data["selected_index"])
        assert np.abs(sel["scores"] - data["probs"]).max() < 1e-4
        assert np.abs(sel["rank_logits"] - data["rank_logits"]).max() < 1e-4
        assert np.array_equal(sel["candidates"], data["candidate_tracks"])
        assert np.array_equal(sel["candidate_visibility"], data["candidate_visibility"])
        assert list(sel["teachers"]) == [f"cand{m}.npz" for m in range(4)]
    assert (out / "tracks.csv").is_file() and (out / "overlay.mp4").is_file()


def test_median_needs_no_weights_and_missing_weights_say_so(case):
    data, frames, files, _, root = case
    out = root / "out_median"
    res = invoke([frames, "--candidates", ",".join(map(str, files)), "--select", "median", "--out", out, "--no-overlay", "--quiet"])
    assert res.exit_code == 0, res.output
    with np.load(out / "selection.npz") as sel:
        assert str(sel["select"]) == "median"
    assert np.array_equal(load_tracks(out).visibility, data["selected_visibility"])
    # Verifier selection without weights (tests run offline): one clear line suggesting --select median.
    res = invoke([frames, "--candidates", *files, "--out", root / "out_none", "--quiet"])
    assert res.exit_code == 2
    assert "verifier" in res.output and "--select median" in res.output and "Traceback" not in res.output


def test_bad_candidate_file_is_rejected(case, tmp_path):
    data, frames, files, _, _ = case
    r = load_tracks(files[0])
    r.tracks, r.visibility = r.tracks[:5], r.visibility[:5]
    r.visibility_prob, r.confidence, r.frame_indices = r.visibility_prob[:5], r.confidence[:5], r.frame_indices[:5]
    short = save_npz(r, tmp_path / "short.npz")
    res = invoke([frames, "--candidates", files[0], short, "--select", "median", "--out", tmp_path / "o", "--quiet"])
    assert res.exit_code == 2 and "short.npz" in res.output


def test_python_api_with_lk_teacher_and_candidate_file(frames, tmp_path):
    """Teachers run on the decoded frames; their tracks are mixed with a file's; median and random need no weights."""
    video = ArrayVideo(frames)
    q = np.array([[0, 30.0, 40.0], [3, 64.0, 50.0], [0, 100.0, 20.0]])
    first = ensemble(video, q, teachers=["lk"], select="median")
    assert first.teachers == ["lk"] and first.candidates.shape == (len(frames), 3, 1, 2)
    assert np.allclose(first.result.tracks, first.candidates[:, :, 0], equal_nan=True)
    path = save_npz(first.result, tmp_path / "lk.npz")
    both = ensemble(video, None, teachers=["lk"], candidates=[path], select="random", seed=3)
    assert both.teachers == ["lk", "lk.npz"] and both.candidates.shape[2] == 2
    assert np.allclose(both.candidates[:, :, 0], both.candidates[:, :, 1], equal_nan=True)  # same tracker, same frames
    assert np.array_equal(both.result.queries, first.result.queries)
    arrays = both.selection_arrays()
    assert set(arrays) >= {"candidates", "candidate_visibility", "scores", "chosen", "teachers"}
    assert sum(both.counts().values()) > 0


def test_verifier_file_is_checked_before_the_teachers_and_read_after_them(case, tmp_path, monkeypatch):
    """A mis-shaped verifier file fails in seconds with one line (no teacher has run); a good one is not held
    in memory while the teachers run (it is read again for the verifier stage, after the last teacher)."""
    data, frames, _, weights, _ = case
    video = ArrayVideo(data["video"])
    q = np.array([[0, 30.0, 20.0], [2, 40.0, 30.0]])
    sd = fill_state_dict()
    key = next(k for k, v in sd.items() if v.ndim == 2)
    sd[key] = sd[key][:, :-1]
    bad = tmp_path / "verifier_bad.pt"
    torch.save(sd, bad)
    events = []
    stage = lambda name, total: events.append(name)  # noqa: E731
    with pytest.raises(PtrackError, match=key):
        ensemble(video, q, teachers=["lk"], verifier_weights=bad, device="cpu", stage=stage)
    assert events == []
    res = invoke([frames, "--teachers", "lk", "--verifier-weights", bad, "--out", tmp_path / "o", "--quiet"])
    assert res.exit_code == 2 and key in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()

    reads = []
    reload = ensemble_run.reload_verifier_weights
    monkeypatch.setattr(ensemble_run, "reload_verifier_weights", lambda info: (reads.append(list(events)), reload(info))[1])
    out = ensemble(video, q, teachers=["lk"], verifier_weights=weights, device="cpu", stage=stage)
    assert reads == [["teacher lk"]] and events[-1] == "verifier"
    assert out.result.meta["verifier_weights"]["path"] == str(weights.resolve())


def test_missing_estimates_before_query_frame_leave_later_frames_alone(case, tmp_path):
    """A forward-only teacher gives NaN before each query frame: those entries are masked, later frames keep
    exactly the official selection (the verifier hides pre-query frames from its temporal attention)."""
    data, frames, files, weights, _ = case
    r = load_tracks(files[0])
    before = np.arange(r.num_frames)[:, None] < r.queries[None, :, 0]
    assert before.any()
    r.tracks[before] = np.nan
    r.visibility[before] = False
    gappy = save_npz(r, tmp_path / "gappy.npz")
    video = ArrayVideo(data["video"])
    res = ensemble(video, None, candidates=[gappy, *files[1:]], verifier_weights=weights, device="cpu")
    after = ~before
    assert np.abs(res.logits[after] - data["rank_logits"][after]).max() < 1e-4
    assert np.array_equal(res.chosen[after], data["selected_index"][after])
    assert np.array_equal(res.result.tracks[after], data["selected_tracks"][after])
    assert np.all(res.chosen[before] != 0) and np.all(res.scores[before][:, 0] == 0)
    # Before the query frame the gappy teacher does not vote: majority among the three others.
    votes = data["candidate_visibility"][:, :, 1:].sum(-1)
    assert np.array_equal(res.result.visibility[before], (votes * 2 > 3)[before])
