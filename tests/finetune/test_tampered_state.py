"""A training-state file replaced by one that holds Python objects (tampering) is refused with a message that says
so, not treated as "no checkpoint yet"; it never runs code, and torch's weights_only=False advice is not quoted."""
from __future__ import annotations

import pytest
import torch

from pointtrack_cli.errors import PtrackError
from pointtrack_cli.finetune.checkpoint import CheckpointManager, load_state

RAN = []


class Payload:
    """What a crafted file would run on unpickling, if it were unpickled freely."""

    def __reduce__(self):
        return (RAN.append, ("code ran",))


def test_tampered_training_state_is_refused_with_the_reason(tmp_path):
    ckpt = CheckpointManager(tmp_path, keep_last=1)
    weights = {"fnet.conv1.weight": torch.zeros(2, 3, 2, 2)}
    ckpt.save(1, weights, {}, {"optimizer": {}, "rng": []})
    assert ckpt.find_resumable() == (*ckpt.last, 1)
    for path in (ckpt.last[1], ckpt.step_paths(1)[1]):  # every state file (last.* may be a hard link or a copy)
        path.unlink()
        torch.save({"step": 1, "optimizer": Payload()}, path)
    with pytest.raises(PtrackError) as err:
        ckpt.find_resumable()
    msg = str(err.value)
    assert "was not written by ptrack finetune or was altered" in msg and "Python objects" in msg
    assert "first save" not in msg and "weights_only" not in msg
    with pytest.raises(PtrackError, match="ptrack refuses such files"):
        load_state(ckpt.last[1])
    assert RAN == []
    torch.save([1, 2], ckpt.last[1])  # plain data, but not a training state
    with pytest.raises(PtrackError, match="holds a list, not ptrack finetune's dict"):
        load_state(ckpt.last[1])
