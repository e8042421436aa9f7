"""Sharding without collectives: the process's place from torchrun's environment, every K-th video, the run id that
tells this run's status files from an earlier run's, and rank 0's wait (final, stale, silent and missing ranks)."""
from __future__ import annotations

import json
import os
import time

import pytest

from pointtrack_cli.batch import Shard
from pointtrack_cli.batch.shard import RankStatus, read_status, status_path, wait_for_ranks
from pointtrack_cli.errors import PtrackError


def test_place_from_the_environment():
    assert Shard.from_env({}) == Shard(0, 1, 0, None)  # no launcher: one process
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "TORCHELASTIC_RUN_ID": "abc",
                "TORCHELASTIC_RESTART_COUNT": "2"}
    assert Shard.from_env(torchrun) == Shard(3, 4, 1, "abc/2")  # a restart is another run
    assert Shard.from_env({**torchrun, "PTRACK_RUN_ID": "mine"}).run_id == "mine"
    assert Shard.from_env({"RANK": "0", "WORLD_SIZE": "2", "SLURM_JOB_ID": "77", "SLURM_STEP_ID": "1"}).run_id == "slurm-77.1"
    with pytest.raises(PtrackError, match="--rdzv-id"):  # torchrun on several nodes without --rdzv-id: no run id
        Shard.from_env({"RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "none"})
    with pytest.raises(PtrackError, match="0 <= RANK < WORLD_SIZE"):
        Shard.from_env({"RANK": "2", "WORLD_SIZE": "2", "PTRACK_RUN_ID": "x"})
    with pytest.raises(PtrackError, match="WORLD_SIZE='two'"):
        Shard.from_env({"WORLD_SIZE": "two"})


def test_every_kth_item_each_once():
    items = list(range(11))
    shares = [Shard(r, 3, 0, "x").take(items) for r in range(3)]
    assert shares[1] == [1, 4, 7, 10]
    assert sorted(sum(shares, [])) == items
    assert all(Shard(r, 3).owner(i) == r for r in range(3) for i in shares[r])


def test_rank_zero_waits_for_final_states_and_gives_up_on_silent_or_stale_ranks(tmp_path):
    shard0 = Shard(0, 4, 0, "run-2")
    with RankStatus(tmp_path, Shard(1, 4, 0, "run-2"), 1) as status:  # rank 1 of this run: ends normally
        status.update([{"index": 1, "status": "tracked"}])
    with pytest.raises(RuntimeError):  # rank 2 of this run: fails, and says so
        with RankStatus(tmp_path, Shard(2, 4, 0, "run-2"), 1):
            raise RuntimeError("boom")
    with RankStatus(tmp_path, Shard(3, 4, 0, "run-1"), 1):  # rank 3 of an earlier run: stale
        pass
    t0 = time.monotonic()
    found = wait_for_ranks(tmp_path, shard0, timeout=0.5, poll=0.05)
    assert 0.5 <= time.monotonic() - t0 < 10
    assert found[1]["state"] == "done" and found[1]["rows"] == [{"index": 1, "status": "tracked"}]
    assert found[2]["state"] == "failed" and found[2]["error"] == "boom"
    assert found[3] is None  # its file belongs to run-1
    assert json.loads(status_path(tmp_path, 3).read_text())["run"] == "run-1"

    # A rank of this run whose file says "running" but has not been touched (no heartbeat) for the timeout: lost.
    with RankStatus(tmp_path, Shard(3, 4, 0, "run-2"), 1):
        pass
    data = json.loads(status_path(tmp_path, 3).read_text())
    status_path(tmp_path, 3).write_text(json.dumps({**data, "state": "running"}))
    os.utime(status_path(tmp_path, 3), (time.time() - 60, time.time() - 60))
    found = wait_for_ranks(tmp_path, shard0, timeout=1.0, poll=0.05)
    assert found[3]["state"] == "running" and read_status(tmp_path, 3, shard0) is not None


def test_one_process_writes_no_status_files(tmp_path):
    with RankStatus(tmp_path, Shard(), 3) as status:
        status.update([{"index": 0}])
        status.request_stop()
        assert not status.stop_requested()
    assert not any(tmp_path.iterdir())
