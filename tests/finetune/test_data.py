"""Fine-tuning data: video discovery, clips, shards, the per-epoch order, and the SIFT queries."""
from __future__ import annotations

import numpy as np

from pointtrack_cli.finetune import data as D
from pointtrack_cli.finetune.sampling import sift_frames, sift_queries
from pointtrack_cli.synthetic import translating_frames
from tests.finetune.runs import HW


def test_discovery_lists_and_skips_unreadable(videos):
    found, skipped = D.discover_videos(videos)
    assert [v.rel for v in found] == ["lab/cells", "short.mp4", "walk.mp4"]
    reasons = {s.path: s.reason for s in skipped}
    assert set(reasons) == {"broken.mp4", "notes.txt"} and "cannot read video" in reasons["broken.mp4"]
    clips, short = D.make_clips(found, clip_len=8, min_frames=8)
    assert [c.describe() for c in clips] == ["lab/cells[0:8:1]"] + [f"walk.mp4[{s}:{s + 8}:1]" for s in (0, 8, 16, 24)]
    assert [s.path for s in short] == ["short.mp4"]
    assert len({c.clip_id for c in clips}) == 5
    frames = D.read_clip(clips[2], HW)
    assert frames.shape == (8, *HW, 3) and frames.dtype == np.uint8
    online, short = D.make_clips(found, clip_len=16, min_frames=16)
    assert [c.describe() for c in online] == ["walk.mp4[0:16:1]", "walk.mp4[16:32:1]"]
    assert sorted(s.path for s in short) == ["lab/cells", "short.mp4"]
    # Shards partition the clips; each epoch visits every clip of the shard once.
    assert D.shard(clips, 0, 2) + D.shard(clips, 1, 2) == [clips[i] for i in (0, 2, 4, 1, 3)]
    order = [D.clip_for_step(5, s, seed=0, rank=0) for s in range(10)]
    assert sorted(order[:5]) == list(range(5)) and sorted(order[5:]) == list(range(5))


def test_sift_queries_follow_spec():
    frames = np.stack(list(translating_frames(40, 64, 96, (0.5, 0.2), seed=8)))
    q, enough = sift_queries(frames, 16, np.random.default_rng(0))
    assert enough and q.shape == (16, 3) and q.dtype == np.float32
    assert q[:, 0].max() <= int(0.25 * 40) and np.all(q == np.trunc(q))  # early frames, truncated pixels
    q2, _ = sift_queries(frames, 16, np.random.default_rng(0))
    assert np.array_equal(q, q2)
    assert sift_frames(40, np.random.default_rng(1)).shape == (8,)
    flat = np.full((40, 64, 96, 3), 128, np.uint8)  # no keypoints: random queries, sample masked
    q3, enough3 = sift_queries(flat, 16, np.random.default_rng(0))
    assert not enough3 and q3.shape == (16, 3) and q3[:, 0].max() <= 10
