"""Selection strategies on arrays (verifier arg-max + majority vote, random teacher, median)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pointtrack_cli.ensemble import selection as S
from tests.helpers import FIXTURES

FIX = FIXTURES / "verifier"


@pytest.mark.parametrize("name", ["case_s_T8_48x64.npz", "case_a_T24_96x128.npz", "case_b_T30_72x112.npz"])
def test_official_selection_from_fixture_logits(name):
    with np.load(FIX / name) as z:
        sel = S.select_verifier(z["candidate_tracks"], z["candidate_visibility"], z["rank_logits"])
        assert np.array_equal(sel.chosen, z["selected_index"])
        assert np.array_equal(sel.tracks, z["selected_tracks"])
        assert np.array_equal(sel.visibility, z["selected_visibility"])
        assert np.abs(sel.scores - z["probs"]).max() < 1e-6
        assert np.allclose(sel.scores.sum(-1), 1.0, atol=1e-6)


def test_argmax_ties_pick_first_and_majority_is_strict():
    cand = np.arange(1 * 1 * 4 * 2, dtype=np.float32).reshape(1, 1, 4, 2)
    logits = np.array([[[0.5, 2.0, 2.0, 1.0]]])
    vis = np.array([[[True, True, False, False]]])  # 2 of 4: a tie is "occluded"
    sel = S.select_verifier(cand, vis, logits)
    assert sel.chosen[0, 0] == 1
    assert np.array_equal(sel.tracks[0, 0], cand[0, 0, 1])
    assert not sel.visibility[0, 0]
    vis[0, 0, 2] = True  # 3 of 4
    assert S.select_verifier(cand, vis, logits).visibility[0, 0]
    # The verifier plays no part in visibility: the chosen teacher's own flag is not used.
    assert not S.majority_visibility(np.array([[[False, True, False]]]))[0, 0]


def test_absent_candidates_are_never_chosen_and_do_not_vote():
    cand = np.zeros((2, 1, 3, 2), np.float32)
    cand[:, 0, :, 0] = [10, 20, 30]
    cand[0, 0, 1] = np.nan  # teacher 1 has no estimate at frame 0
    cand[1] = np.nan  # nobody at frame 1
    logits = np.array([[[0.0, 9.0, 1.0]], [[1.0, 2.0, 3.0]]])
    vis = np.array([[[True, True, False]], [[True, True, True]]])
    sel = S.select_verifier(cand, vis, logits)
    assert sel.chosen[0, 0] == 2 and sel.tracks[0, 0, 0] == 30
    assert sel.scores[0, 0, 1] == 0 and abs(sel.scores[0, 0].sum() - 1) < 1e-6
    assert not sel.visibility[0, 0]  # 1 of the 2 present says visible: not a strict majority
    assert sel.chosen[1, 0] == -1 and np.isnan(sel.tracks[1, 0]).all() and not sel.visibility[1, 0]
    assert np.all(sel.scores[1, 0] == 0)


def test_fill_for_verifier_only_touches_missing_estimates():
    cand = np.random.default_rng(0).normal(size=(4, 2, 3, 2)).astype(np.float32) * 50
    cand[:2, 1, 0] = np.nan  # before point 1's query frame, teacher 0 gives nothing
    queries = np.array([[0, 5.0, 6.0], [2, 7.0, 8.0]], np.float32)
    filled, absent = S.fill_for_verifier(cand, queries)
    assert np.array_equal(absent, np.isnan(cand).any(-1))
    assert np.array_equal(filled[~absent], cand[~absent])  # no re-centring of real candidates
    assert np.array_equal(filled[:2, 1, 0], [[7.0, 8.0], [7.0, 8.0]])
    assert np.array_equal(S.before_query(queries, 4)[:, 1], [True, True, False, False])
    assert np.array_equal(S.before_query(np.array([[2.7, 0, 0]]), 4)[:, 0], [True, True, False, False])  # truncation


def test_random_is_one_teacher_per_video_and_seeded():
    rng = np.random.default_rng(1)
    cand = rng.normal(size=(5, 3, 4, 2)).astype(np.float32)
    vis = rng.random((5, 3, 4)) > 0.5
    a, b = S.select_random(cand, vis, seed=7), S.select_random(cand, vis, seed=7)
    assert np.array_equal(a.chosen, b.chosen)
    z = int(a.chosen[0, 0])
    assert np.all(a.chosen == z)
    assert np.array_equal(a.tracks, cand[:, :, z]) and np.array_equal(a.visibility, vis[:, :, z])
    assert np.all(a.scores[..., z] == 1) and a.scores.sum() == a.scores[..., z].sum()
    picks = {int(S.select_random(cand, vis, seed=s).chosen[0, 0]) for s in range(40)}
    assert len(picks) == 4


def test_median_of_visible_candidates():
    cand = np.array([[[[0, 0], [10, 1], [2, 2], [100, 100]]]], np.float32)  # [1, 1, 4, 2]
    vis = np.array([[[True, True, True, False]]])
    sel = S.select_median(cand, vis)
    assert np.array_equal(sel.tracks[0, 0], [2, 1])  # coordinate-wise, the outlier (not visible) ignored
    assert sel.visibility[0, 0]
    assert np.allclose(sel.scores[0, 0], [1 / 3, 1 / 3, 1 / 3, 0])
    assert sel.chosen[0, 0] == 2  # nearest candidate to the median
    none_vis = S.select_median(cand, np.zeros_like(vis))
    assert np.array_equal(none_vis.tracks[0, 0], [6, 1.5]) and not none_vis.visibility[0, 0]
    cand[0, 0, 0] = np.nan
    sel = S.select_median(cand, vis)
    assert np.array_equal(sel.tracks[0, 0], [6, 1.5])


def test_chosen_counts_skip_frames_before_query():
    chosen = np.array([[0, 1], [0, 1], [2, -1]])
    queries = np.array([[0, 0, 0], [1, 0, 0]], np.float32)
    assert list(S.chosen_counts(chosen, 3)) == [2, 2, 1]
    assert list(S.chosen_counts(chosen, 3, queries)) == [2, 1, 1]
