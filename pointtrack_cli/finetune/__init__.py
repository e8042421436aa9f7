"""Pseudo-label fine-tuning of RealTracker on unlabeled videos (``ptrack finetune``).

Two recipes (spec ``realtracker.md`` sec. 13-14, ``verifier.md`` sec. 3 and 6):

* ``random-teacher`` (CoTracker3): per step one frozen teacher, drawn uniformly, labels the clip;
* ``verifier`` (Track-On-R, with a RealTracker student): the verifier picks, per frame and point, the best
  of all teachers' tracks; visibility is the teachers' majority vote.

Modules, bottom up: :mod:`.data` (videos -> clips, sharding), :mod:`.sampling` (SIFT queries), :mod:`.losses`
(the track loss), :mod:`.labels` (teachers, recipes, label cache), :mod:`.config` (:class:`FinetuneConfig`,
defaults, validation), :mod:`.checkpoint` (safetensors weights + training state), :mod:`.distributed` (process
group, collectives, local launch), :mod:`.run_dir` (config.json, data.json, metrics.jsonl), :mod:`.student`
(model, optimiser, schedule, loss of a batch, evaluation), :mod:`.report` (:class:`Reporter` events and the
summary), :mod:`.trainer` (the loop). Python use::

    from pointtrack_cli.finetune import FinetuneConfig, run_finetune
    summary = run_finetune(FinetuneConfig("videos/", "run/", student="realtracker-online", steps=2000))
"""
from __future__ import annotations

from .config import FinetuneConfig
from .report import FinetuneSummary, Reporter
from .trainer import launch_local, run_finetune

__all__ = ["FinetuneConfig", "FinetuneSummary", "Reporter", "launch_local", "run_finetune"]
