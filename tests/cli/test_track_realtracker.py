"""The CLI reproduces the official predictor fixtures end to end, and weight problems give clear errors.

Frames are written as a PNG folder, queries as CSV and the fill-rule weights as a ``.pth`` file, then
``ptrack track FOLDER --model realtracker-... --weights W.pth --resolution 96x128 ...`` runs like a user would.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pointtrack_cli import load_tracks
from pointtrack_cli.synthetic import write_png_folder
from tests.helpers.realtracker_weights import fill_state_dict
from tests.helpers import FIXTURES

FIX = FIXTURES / "realtracker"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("weights")
    paths = {"offline": d / "offline.pth", "online": d / "online.pth"}
    torch.save(fill_state_dict(False), paths["offline"])
    torch.save(fill_state_dict(True), paths["online"])
    return paths


def _case(name: str, tmp_path: Path) -> tuple[dict, Path]:
    z = dict(np.load(FIX / f"{name}.npz"))
    folder = write_png_folder(z["video"], tmp_path / "frames")
    return z, folder


def _assert_matches(r, tracks, visibility, ambiguous, tol, from_frame):
    """Compare frames at/after each point's query frame (before it ptrack writes NaN without --backward)."""
    T, N = visibility.shape
    after = np.arange(T)[:, None] >= from_frame[None, :]
    err = np.abs(r.tracks.astype(np.float64) - tracks)[after]
    assert err.max() <= tol, f"max |err| {err.max():.3g} > tol {tol:.3g}"
    check = after & ~ambiguous
    np.testing.assert_array_equal(r.visibility[check], visibility[check])
    assert np.isnan(r.tracks[~after]).all()


def test_cli_offline_queries_match_fixture(tmp_path, cli, weights):
    z, folder = _case("pred_offline_queries_72x100", tmp_path)
    q = tmp_path / "q.csv"
    np.savetxt(q, z["queries"], delimiter=",", header="t,x,y", comments="", fmt="%.6f")
    res = cli(["track", folder, "--model", "realtracker-offline", "--weights", weights["offline"], "--resolution", "96x128",
               "--queries", q, "--out", tmp_path / "out", "--quiet", "--no-overlay"])
    assert res.exit_code == 0, res.output
    r = load_tracks(tmp_path / "out")
    assert r.tracks.shape == z["tracks"].shape
    _assert_matches(r, z["tracks"], z["visibility"], z["visibility_ambiguous"], float(z["tol_coords"]),
                    z["queries"][:, 0].astype(int))
    assert r.meta["weights"]["source"] == "local file"


def test_cli_offline_backward_matches_fixture(tmp_path, cli, weights):
    z, folder = _case("pred_offline_backward_72x100", tmp_path)
    q = tmp_path / "q.json"
    q.write_text(str(z["queries"].tolist()))
    res = cli(["track", folder, "--model", "realtracker-offline", "--weights", weights["offline"], "--resolution", "96x128",
               "--queries", q, "--backward", "--out", tmp_path / "out", "--quiet", "--no-overlay"])
    assert res.exit_code == 0, res.output
    r = load_tracks(tmp_path / "out")
    _assert_matches(r, z["tracks"], z["visibility"], z["visibility_ambiguous"], float(z["tol_coords"]),
                    np.zeros(len(z["queries"]), int))  # every frame has an estimate with --backward


def test_cli_offline_grid_matches_fixture(tmp_path, cli, weights):
    z, folder = _case("pred_offline_grid_72x100", tmp_path)
    res = cli(["track", folder, "--model", "realtracker-offline", "--weights", weights["offline"], "--resolution", "96x128",
               "--grid", 4, "--grid-frame", 5, "--out", tmp_path / "out", "--quiet", "--no-overlay"])
    assert res.exit_code == 0, res.output
    r = load_tracks(tmp_path / "out")
    _assert_matches(r, z["tracks"], z["visibility"], z["visibility_ambiguous"], float(z["tol_coords"]),
                    np.full(16, 5))


def test_cli_online_grid_matches_fixture(tmp_path, cli, weights):
    z, folder = _case("pred_online_grid_72x100", tmp_path)
    res = cli(["track", folder, "--model", "realtracker-online", "--weights", weights["online"], "--resolution", "96x128",
               "--grid", 3, "--grid-frame", 2, "--out", tmp_path / "out", "--quiet", "--no-overlay"])
    assert res.exit_code == 0, res.output
    r = load_tracks(tmp_path / "out")
    _assert_matches(r, z["tracks_call0"], z["visibility_call0"], z["visibility_ambiguous_call0"],
                    float(z["tol_coords"]), np.full(9, 2))


def _err(res) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    return " ".join(res.output.split())


def test_weight_errors(tmp_path, cli, weights, png_video):
    args = ["track", png_video, "--resolution", "96x128", "--out", tmp_path / "o", "--quiet", "--grid", 2]
    # the offline checkpoint given to the online model
    assert "online" in _err(cli(args + ["--model", "realtracker-online", "--weights", weights["offline"]]))
    # wrong key layout
    sd = dict(fill_state_dict(False))
    sd["extra.weight"] = sd.pop("fnet.conv1.weight")
    torch.save(sd, tmp_path / "renamed.pth")
    msg = _err(cli(args + ["--model", "realtracker-offline", "--weights", tmp_path / "renamed.pth"]))
    assert "missing" in msg and "fnet.conv1.weight" in msg and "unexpected" in msg
    # truncated file
    blob = weights["offline"].read_bytes()
    (tmp_path / "cut.pth").write_bytes(blob[: len(blob) // 3])
    assert "truncated" in _err(cli(args + ["--model", "realtracker-offline", "--weights", tmp_path / "cut.pth"]))
    # a pickle with code in it is refused, not executed
    torch.save({"model": {"w": torch.zeros(1)}, "obj": Path("x")}, tmp_path / "evil.pth")
    assert "cannot read weights" in _err(cli(args + ["--model", "realtracker-offline", "--weights", tmp_path / "evil.pth"]))
    # resolution not a multiple of the stride
    assert "multiples of 4" in _err(cli(args[:-2] + ["--resolution", "98x128", "--model", "realtracker-offline"]))


def test_safetensors_weights(tmp_path, cli, weights, png_video):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in fill_state_dict(False).items()}, str(tmp_path / "w.safetensors"))
    res = cli(["track", png_video, "--model", "realtracker-offline", "--weights", tmp_path / "w.safetensors",
               "--resolution", "64x96", "--grid", 2, "--end", 6, "--out", tmp_path / "o", "--quiet", "--no-overlay"])
    assert res.exit_code == 0, res.output
    assert load_tracks(tmp_path / "o").tracks.shape == (6, 4, 2)


def test_hub_offline_and_not_cached(tmp_path, cli, png_video):
    msg = _err(cli(["track", png_video, "--model", "realtracker-offline", "--out", tmp_path]))
    assert "facebook/cotracker3" in msg and "scaled_offline.pth" in msg and "--weights" in msg


def test_hub_unreachable(tmp_path, png_video):
    """A real download attempt against an address that refuses connections (retry waits skipped)."""
    env = dict(os.environ, HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9")
    code = ("import huggingface_hub.utils._http as h, sys; h.time.sleep = lambda s: None; "
            "from pointtrack_cli.cli import main; sys.argv = ['ptrack'] + sys.argv[1:]; main()")
    proc = subprocess.run([sys.executable, "-c", code, "track", str(png_video), "--model", "realtracker-online",
                           "--out", str(tmp_path / "o")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    msg = " ".join(proc.stderr.split())
    assert "cannot download scaled_online.pth" in msg and "facebook/cotracker3" in msg and "--weights" in msg
