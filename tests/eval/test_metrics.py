"""TAP-Vid metrics against the official compute_tapvid_metrics outputs (tests/fixtures/tapvid/metrics_*.npz)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pointtrack_cli.eval.metrics import METRIC_NAMES, compute_tapvid_metrics, evaluation_mask, mean_over_videos
from tests.helpers import FIXTURES

FIXTURES = FIXTURES / "tapvid"
CASES = sorted(p.stem.removeprefix("metrics_") for p in FIXTURES.glob("metrics_*.npz"))


def _args(z) -> tuple:
    return (z["query_points"], z["gt_occluded"], z["gt_tracks"], z["pred_occluded"], z["pred_tracks"], str(z["query_mode"]))


def test_all_fixture_cases_present():
    assert len(CASES) == 15


@pytest.mark.parametrize("case", CASES)
def test_metrics_match_official(case):
    z = np.load(FIXTURES / f"metrics_{case}.npz")
    per_video = compute_tapvid_metrics(*_args(z))
    trackwise = compute_tapvid_metrics(*_args(z), get_trackwise_metrics=True)
    mean = mean_over_videos(per_video)
    mean_from_list = mean_over_videos([{k: v[b] for k, v in per_video.items()} for b in range(len(z["query_points"]))])
    assert list(per_video) == list(METRIC_NAMES)
    for k in METRIC_NAMES:
        np.testing.assert_allclose(per_video[k], z[f"expected__{k}"], rtol=0, atol=1e-6, equal_nan=True, err_msg=k)
        np.testing.assert_allclose(trackwise[k], z[f"expected_trackwise__{k}"], rtol=0, atol=1e-6, equal_nan=True, err_msg=k)
        np.testing.assert_allclose(mean[k], z[f"expected_mean__{k}"], rtol=0, atol=1e-6, equal_nan=True, err_msg=k)
        np.testing.assert_allclose(mean_from_list[k], z[f"expected_mean__{k}"], rtol=0, atol=1e-6, equal_nan=True)
        assert per_video[k].dtype == np.float64


def test_float32_inputs_are_promoted():
    """The boundary case fails in float32 arithmetic; float32 *inputs* must still be scored in float64."""
    z = np.load(FIXTURES / "metrics_float64_boundary.npz")
    args = list(_args(z))
    got = compute_tapvid_metrics(*args)
    for k in METRIC_NAMES:
        np.testing.assert_allclose(got[k], z[f"expected__{k}"], rtol=0, atol=1e-6)
    # Squaring in float32 would move points across the strict thresholds: make sure the fixture catches it.
    d32 = np.sum(np.square(args[4].astype(np.float32) - args[2].astype(np.float32)), axis=-1)
    d64 = np.sum(np.square(args[4] - args[2]), axis=-1)
    assert any(((d32 < t * t) != (d64 < t * t)).any() for t in (1, 2, 4, 8, 16))


def test_evaluation_mask_rules():
    first = evaluation_mask(np.array([2.0]), 5, "first")
    strided = evaluation_mask(np.array([2.0]), 5, "strided")
    assert first.tolist() == [[False, False, False, True, True]]
    assert strided.tolist() == [[True, True, False, True, True]]
    # numpy rounding: halves to even
    assert evaluation_mask(np.array([2.5]), 5, "strided").tolist() == [[True, True, False, True, True]]
    assert evaluation_mask(np.array([3.5]), 5, "strided").tolist() == [[True, True, True, True, False]]


def test_bad_inputs_raise():
    qp = np.zeros((1, 2, 3))
    occ = np.zeros((1, 2, 4), bool)
    tr = np.zeros((1, 2, 4, 2))
    with pytest.raises(ValueError, match="query_mode"):
        compute_tapvid_metrics(qp, occ, tr, occ, tr, "middle")
    with pytest.raises(ValueError, match="pred_tracks"):
        compute_tapvid_metrics(qp, occ, tr, occ, tr[:, :, :3], "first")
    with pytest.raises(ValueError, match="query frames"):
        compute_tapvid_metrics(qp + [[[9, 0, 0]]], occ, tr, occ, tr, "first")
