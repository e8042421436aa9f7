"""``ptrack eval tapvid --model ensemble:...`` and ``--oracle`` end to end on (cut-down) mini TAP-Vid DAVIS."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import pointtrack_cli.api as api
# `from ... import`, not `import pointtrack_cli.ensemble.tracker as`: the package attribute pointtrack_cli.ensemble
# is the api function ensemble(), which that form would look the submodule up on.
from pointtrack_cli.ensemble import tracker as ensemble_tracker
from pointtrack_cli.eval.datasets import load_pickle
from pointtrack_cli.eval.metrics import METRIC_NAMES
from pointtrack_cli.eval.oracle import oracle_tracks
from pointtrack_cli.trackers.base import Tracker, TrackOutput
from tests.helpers import FIXTURES, run_cli
from tests.helpers.verifier_weights import fill_state_dict

MINI = FIXTURES / "tapvid" / "mini_davis.pkl"
DELTA, AJ, OA = "average_pts_within_thresh", "average_jaccard", "occlusion_accuracy"


def run(*args):
    return run_cli(["eval", "tapvid", "--dataset", "davis", *args])


class Still(Tracker):
    """Test teacher: every point stays at its query position, always visible; honours ``backward``."""

    def __init__(self, backward: bool) -> None:
        self.name, self.backward = "still", backward

    def track(self, video, queries, progress=None):
        q = np.asarray(queries, np.float64)
        tracks = np.broadcast_to(q[None, :, 1:3], (video.num_frames, len(q), 2))
        ones = np.ones((video.num_frames, len(q)), np.float32)
        return TrackOutput(tracks, ones > 0, ones, ones)


@pytest.fixture
def builds(monkeypatch):
    """Register the test teacher ``still`` and record every single-tracker build ``(id, kwargs)``.

    Patched where they are looked up: ``pointtrack_cli.api.build_tracker`` builds each teacher with the
    registry's builder, and :func:`~pointtrack_cli.ensemble.tracker.parse_spec` checks ids against ``tracker_ids``.
    """
    calls = []
    real_build, real_ids = api.build_single_tracker, ensemble_tracker.tracker_ids

    def build(model, **kw):
        calls.append((model, kw))
        return Still(kw.get("backward", False)) if model == "still" else real_build(model, **kw)

    monkeypatch.setattr(api, "build_single_tracker", build)
    monkeypatch.setattr(ensemble_tracker, "tracker_ids", lambda: real_ids() + ["still"])
    return calls


def _cut(root: Path, frames: int) -> Path:
    """The first two mini-DAVIS videos cut to ``frames`` frames and 8 tracks, as a TAP-Vid DAVIS pickle."""
    data = load_pickle(MINI)
    cut = {name: {"video": v["video"][:frames], "points": v["points"][:8, :frames], "occluded": v["occluded"][:8, :frames]}
           for name, v in list(data.items())[:2]}
    path = root / f"tiny{frames}_davis.pkl"
    path.write_bytes(pickle.dumps(cut, protocol=4))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """Six frames: with the official stride 5, strided queries sit on frames 0 and 5 (frames before a query exist)."""
    return _cut(tmp_path_factory.mktemp("tiny"), 6)


@pytest.fixture(scope="module")
def tiny3(tmp_path_factory) -> Path:
    """Three frames for the verifier runs: its CNN alone costs about 1.5-3 s per frame on 2 CPU cores."""
    return _cut(tmp_path_factory.mktemp("tiny3"), 3)


@pytest.fixture(scope="module")
def verifier_pt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("verifier") / "verifier_fill.pt"
    torch.save({"model": {"module." + k: v for k, v in fill_state_dict().items()}, "epoch": 0}, path)
    return path


def _rows(payload: dict) -> dict[str, dict]:
    return {r["name"]: r for r in payload["comparison"]["rows"]}


def test_median_ensemble_with_oracle_on_mini_davis(tmp_path, builds):
    out = tmp_path / "ens.json"
    res = run("--data", MINI, "--model", "ensemble:lk,still", "--select", "median", "--oracle", "--limit", "1",
              "--json", out, "--quiet")
    assert res.exit_code == 0, res.output
    assert "per-frame oracle" in res.output and "ensemble (median)" in res.output
    got = json.loads(out.read_text())
    rows = _rows(got)
    assert [r["role"] for r in got["comparison"]["rows"]] == ["teacher", "teacher", "ensemble", "oracle"]
    assert set(rows) == {"lk", "still", "ensemble (median)", "oracle"}
    assert all(set(r["mean"]) == set(METRIC_NAMES) for r in rows.values())
    # The oracle picks the closest candidate: no teacher can be within a threshold more often.
    for name in ("lk", "still"):
        for k in [DELTA] + [f"pts_within_{d}" for d in (1, 2, 4, 8, 16)]:
            assert rows["oracle"]["mean"][k] >= rows[name]["mean"][k]
    assert rows["oracle"]["mean"][DELTA] > rows["still"]["mean"][DELTA]  # LK moves points: it helps somewhere
    assert rows["oracle"]["mean"][OA] == 1.0  # ground-truth visibility, as the official oracle
    assert rows["ensemble (median)"]["mean"] == got["mean"]
    assert got["videos"][0]["comparison"]["oracle"] == rows["oracle"]["mean"]  # one video: mean = that video
    # Teachers were built once, with eval's settings (forward only in 'first', no own support grid).
    assert [m for m, _ in builds] == ["lk", "still"]
    assert all(kw["backward"] is False and kw["support_grid"] is False for _, kw in builds)

    # The "lk" row is LK alone, exactly as `--model lk` scores it (same queries and support points).
    alone = tmp_path / "lk.json"
    res = run("--data", MINI, "--model", "lk", "--limit", "1", "--json", alone, "--quiet")
    assert res.exit_code == 0, res.output
    lk = json.loads(alone.read_text())["mean"]
    assert all(abs(rows["lk"]["mean"][k] - lk[k]) < 1e-12 for k in METRIC_NAMES)


def test_verifier_selection_loads_everything_once(tmp_path, tiny3, verifier_pt, builds, monkeypatch):
    loads = []
    real_load = ensemble_tracker.load_verifier_weights
    monkeypatch.setattr(ensemble_tracker, "load_verifier_weights", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    out = tmp_path / "v.json"
    res = run("--data", tiny3, "--model", "ensemble:lk,still", "--select", "verifier", "--verifier-weights", verifier_pt,
              "--oracle", "--json", out, "--device", "cpu", "--quiet")
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    assert got["num_videos"] == 2
    assert len(loads) == 1 and [m for m, _ in builds] == ["lk", "still"]  # once per run, not per video
    assert got["tracker_settings"]["select"] == "verifier"
    assert Path(got["weights"]["verifier"]["path"]).name == verifier_pt.name
    rows = _rows(got)
    assert rows["ensemble (verifier)"]["mean"] == got["mean"]
    for name in ("lk", "still", "ensemble (verifier)"):  # the verifier picks a candidate, so it is bounded too
        assert rows["oracle"]["mean"][DELTA] >= rows[name]["mean"][DELTA]
    for video in got["videos"]:
        assert video["comparison"]["oracle"][DELTA] >= video["metrics"][DELTA]


def test_strided_mode_tracks_backward_through_the_teachers(tmp_path, tiny, builds):
    out, preds = tmp_path / "s.json", tmp_path / "preds"
    res = run("--data", tiny, "--model", "ensemble:lk,still", "--select", "median", "--mode", "strided", "--oracle",
              "--json", out, "--save-predictions", preds, "--quiet")
    assert res.exit_code == 0, res.output
    assert [m for m, _ in builds] == ["lk", "still"] and all(kw["backward"] is True for _, kw in builds)
    # Queries on frame 5 have estimates on frames 0-4: the backward teachers' candidates reached the output.
    with np.load(preds / "synth-aurora.npz") as z:
        late = z["queries"][:, 0] == 5
        assert late.any() and np.isfinite(z["tracks"][:5, late]).all()
    rows = _rows(json.loads(out.read_text()))
    assert all(rows["oracle"]["mean"][DELTA] >= rows[n]["mean"][DELTA] for n in ("lk", "still"))


def test_single_protocol_assembles_candidates_per_query(tmp_path, tiny, builds):
    """Per-query calls give the same teacher/oracle numbers as one joint call (both teachers are per-point)."""
    numbers = {}
    for protocol in ("joint", "single"):
        out = tmp_path / f"{protocol}.json"
        res = run("--data", tiny, "--model", "ensemble:lk,still", "--select", "median", "--oracle", "--protocol", protocol,
                  "--no-support", "--limit", "1", "--json", out, "--quiet")
        assert res.exit_code == 0, res.output
        numbers[protocol] = json.loads(out.read_text())["comparison"]["rows"]
    assert numbers["joint"] == numbers["single"]


def test_oracle_tracks_rules():
    gt = np.array([[[0.0, 0.0], [10.0, 10.0], [5.0, 5.0]]])  # [Q=1, T=3, 2]
    cand = np.array([[[[1, 0], [3, 0]], [[10, 12], [10, 10.5]], [[np.nan, np.nan], [np.nan, np.nan]]]], float)
    tracks, chosen = oracle_tracks(cand, gt)
    assert chosen.tolist() == [[0, 1, -1]]
    assert np.array_equal(tracks[0, :2], [[1, 0], [10, 10.5]]) and np.isnan(tracks[0, 2]).all()
    cand[0, 0, 0] = np.nan  # an absent candidate is never the closest
    assert oracle_tracks(cand, gt)[1][0, 0] == 1


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--model", "lk", "--oracle"], "--oracle needs an ensemble model"),
        (["--model", "lk", "--select", "median"], "--select needs an ensemble model"),
        (["--model", "ensemble:lk,nosuch"], "unknown teacher 'nosuch'"),
        (["--model", "ensemble:"], "name the teachers"),
        (["--model", "ensemble:lk", "--select", "best"], "--select 'best'"),
        (["--model", "ensemble:lk", "--weights", "w.pth", "--select", "median"], "ID=PATH"),
        (["--model", "ensemble:lk", "--select", "median", "--occlusion-rule", "cotracker3"], "majority vote"),
        # No weights, Hub unreachable (tests run offline): fail before tracking, suggest the weight-free selection.
        (["--model", "ensemble:lk,lk", "--oracle"], "--select median"),
    ],
)
def test_errors_are_one_line_exit_2(args, needle):
    res = run("--data", MINI, "--limit", "1", "--quiet", *args)
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
